"""The one module that knows how a PAN is handled.

A PAN arrives in a request, is checked (digits, length, Luhn), turned into a
keyed hash (HMAC-SHA256 with the server secret) and dropped. Everything past
this module sees only the hash: Redis keys, logs, events and errors never
hold a PAN. The secret comes from a key file; for the embedded default one is
generated on first start and kept in the data folder, because losing it makes
every registered PAN unknown.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from payauth.core import KeyedHash

PAN_MIN_DIGITS = 12
PAN_MAX_DIGITS = 19
KEY_BYTES = 32
# A fixed message whose keyed hash is stored in Redis on first start, so a
# server started with another secret refuses to run instead of declining
# every card as unknown.
_KEY_CHECK_MESSAGE = b"payauth pan key check v1"
# A digit's ASCII code to the ASCII code of its Luhn double (2d, less 9 when above 9).
_LUHN_DOUBLED = bytes.maketrans(b"0123456789", b"0246813579")


def luhn_valid(digits: str) -> bool:
    """Whether a string of ASCII digits passes the Luhn check: every second digit from the
    right doubled (less 9 when above 9), and the sum a multiple of 10.

    On the digits' bytes, as python-stdnum's `luhn.is_valid` decides (the tests check it
    against that): the doubling is a byte translation and the sums are C loops, a tenth of
    the pure-Python walk's cost, paid by every authorization that sends a PAN."""
    reversed_bytes = digits.encode("ascii")[::-1]
    total = (sum(reversed_bytes[::2]) + sum(reversed_bytes[1::2].translate(_LUHN_DOUBLED))
             - 48 * len(reversed_bytes))
    return total % 10 == 0


def pan_problem(pan: str) -> str | None:
    """Say what is wrong with a PAN, without quoting it; None when it is valid."""
    if not pan.isascii() or not pan.isdigit():
        return "must contain digits only"
    if not PAN_MIN_DIGITS <= len(pan) <= PAN_MAX_DIGITS:
        return f"must have {PAN_MIN_DIGITS} to {PAN_MAX_DIGITS} digits"
    if not luhn_valid(pan):
        return "fails the Luhn check"
    return None


class PanHasher:
    """Turns PANs into the keyed hashes everything else uses in their place."""

    __slots__ = ("_hash",)

    def __init__(self, key: bytes) -> None:
        self._hash = KeyedHash(key)

    def hash(self, pan: str) -> str:
        """Return the keyed hash of a valid PAN as 64 hex characters."""
        return self._hash.hexdigest(pan.encode("ascii"))

    def key_check(self) -> str:
        """Return a value that identifies the secret without revealing it."""
        return self._hash.hexdigest(_KEY_CHECK_MESSAGE)

    def __repr__(self) -> str:
        return "PanHasher(<secret>)"


def load_or_create_key(path: Path, create: bool = True) -> bytes:
    """Read the hex secret at `path`; generate and persist one (mode 0600) when absent."""
    if path.exists():
        text = path.read_text().strip()
        try:
            key = bytes.fromhex(text)
        except ValueError as exc:
            raise ValueError(f"PAN key file {path} does not hold hex characters") from exc
        if len(key) < KEY_BYTES:
            raise ValueError(f"PAN key file {path} holds {len(key)} bytes; at least "
                             f"{KEY_BYTES} are needed")
        return key
    if not create:
        raise FileNotFoundError(f"PAN key file {path} does not exist")
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(KEY_BYTES)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key.hex() + "\n")
    return key
