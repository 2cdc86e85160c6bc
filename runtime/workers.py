"""Process pools whose workers never outlive the command that started them.

A worker busy with a take keeps running when its parent is killed (``kill -9``, an OOM
kill, a closed terminal): it holds memory, keeps writing, and races a rerun over the same
files. :func:`process_pool` starts workers that ask the kernel to kill them when their
parent dies (Linux ``prctl(PR_SET_PDEATHSIG)``; elsewhere a worker notices at its next task).
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
from concurrent.futures import ProcessPoolExecutor

_PR_SET_PDEATHSIG = 1


def process_pool(workers: int, start_method: str | None = "spawn") -> ProcessPoolExecutor:
    """``workers`` processes that die with this one; ``start_method`` "spawn" (no forked
    threads or locks) or None for the platform's default."""
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context(start_method),
        initializer=die_with_parent,
        initargs=(os.getpid(),),
    )


def die_with_parent(parent_pid: int) -> None:
    """In a worker: be killed with SIGKILL when the parent process dies."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before the request took effect
        os._exit(1)
