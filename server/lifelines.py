"""Tie a child process's life to its parent's.

The embedded redis-server and the worker processes must not outlive the
`payauth serve` that started them: if the supervisor is killed outright, the
kernel sends each of them SIGTERM (PR_SET_PDEATHSIG), and they shut down
cleanly instead of holding the data folder or the port as orphans.
"""

from __future__ import annotations

import ctypes
import os
import signal

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int | None = None) -> None:
    """Ask for SIGTERM when the parent dies; if it already has, send it now."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if parent_pid is not None and os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGTERM)
