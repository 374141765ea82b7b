"""The server's clock: the system clock, or a file the tests and simulations move.

Every time the server decides with (request skew checks, hold expiries, the
sweeper, settlement days) comes from one Clock, so a test can put the whole
server at any instant: `--clock-file PATH` makes the server read the time, in
seconds since the epoch, from that file (re-read when it changes).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Protocol


class Clock(Protocol):
    """Seconds since the epoch, as a float."""

    def __call__(self) -> float: ...


def system_clock() -> float:
    """The system's wall clock."""
    return time.time()


class FileClock:
    """A clock whose time is the number written in a file."""

    __slots__ = ("_path", "_mtime_ns", "_value")

    def __init__(self, path: Path) -> None:
        self._path = path
        self._mtime_ns = -1
        self._value = 0.0

    def __call__(self) -> float:
        mtime_ns = os.stat(self._path).st_mtime_ns
        if mtime_ns != self._mtime_ns:
            self._value = float(self._path.read_text().strip())
            self._mtime_ns = mtime_ns
        return self._value


def clock_for(path: Path | None) -> Clock:
    """The file clock when a path is given, else the system clock."""
    return FileClock(path) if path is not None else system_clock
