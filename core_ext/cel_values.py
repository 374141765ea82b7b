"""Python forms of the CEL values the core evaluates, for inputs and results.

Python's own types cover most CEL values (None, bool, int, float, str, bytes, list); the
classes here carry what Python cannot: `uint` apart from `int`, timestamps and durations
with nanoseconds, type values, maps whose keys Python would merge (`true` and `1`), and
errors, which are values in CEL rather than exceptions.
"""

from __future__ import annotations

import datetime
from typing import NamedTuple


class Uint(int):
    """A CEL `uint` (64-bit unsigned); an int that remembers it is unsigned."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Uint({int(self)})"


class Timestamp(NamedTuple):
    """A CEL timestamp: seconds since the Unix epoch (UTC) and nanoseconds in [0, 1e9)."""

    seconds: int
    nanos: int = 0

    @classmethod
    def from_datetime(cls, value: datetime.datetime) -> Timestamp:
        """Convert an aware datetime (a naive one is taken as UTC)."""
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.UTC)
        delta = value - datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
        micros = (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds
        seconds, micros = divmod(micros, 1_000_000)
        return cls(seconds, micros * 1000)


class Duration(NamedTuple):
    """A CEL duration: whole seconds (floor) and nanoseconds in [0, 1e9)."""

    seconds: int
    nanos: int = 0

    @classmethod
    def from_timedelta(cls, value: datetime.timedelta) -> Duration:
        """Convert a timedelta (microsecond resolution)."""
        micros = (value.days * 86400 + value.seconds) * 1_000_000 + value.microseconds
        seconds, micros = divmod(micros, 1_000_000)
        return cls(seconds, micros * 1000)

    @classmethod
    def from_nanos(cls, nanos: int) -> Duration:
        """Build from a total number of nanoseconds."""
        seconds, nanos = divmod(nanos, 1_000_000_000)
        return cls(seconds, nanos)


class TypeValue(str):
    """A CEL type value, named as CEL names it: "int", "list", "google.protobuf.Timestamp"."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"TypeValue({str(self)!r})"


class MapValue(tuple):
    """A CEL map as its (key, value) pairs, in insertion order.

    CEL keeps `true`, `1` and `1u` as distinct keys where a Python dict would merge them, so
    maps travel as pairs; `dict(map_value)` gives a dict when the keys allow it.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return f"MapValue({list(self)!r})"


class CelError:
    """An evaluation error as a value (CEL errors are values): division by zero, overflow..."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message

    def __repr__(self) -> str:
        return f"CelError({self.message!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CelError) and other.message == self.message

    def __hash__(self) -> int:
        return hash(("CelError", self.message))


__all__ = ["CelError", "Duration", "MapValue", "Timestamp", "TypeValue", "Uint"]
