"""The compiled decision core of payauth.

Only the names below are public; the server imports them from here, never
from the extension modules themselves.
"""

from payauth.core.keyed_hash import KeyedHash

__all__ = ["KeyedHash"]
