"""Sharing one feature cache between runs, the way a package manager shares its cache.

Shards on several machines write one cache at once by design, so a cache has no single
writer lock. Instead, two operating-system locks (``filelock``; the kernel releases them when
a process dies, so a killed run leaves none behind):

- ``CACHE/.omama-meta.lock``, held for a moment while a run checks or creates ``meta.json``
  and ``backbone.safetensors``: of two runs with other settings, the second to get there is
  refused in one line (whichever started first), and those files never mix both runs.
- ``CACHE/.omama-shard-<i>of<n>.lock``, held while a run writes its shard's chunks: a second
  run of the same shard waits for it (and says so), then re-reads the index and skips what
  the first one cached. Runs of different shards never wait for each other.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

log = logging.getLogger(__name__)

META_LOCK = ".omama-meta.lock"


def shard_lock_name(shard: tuple[int, int]) -> str:
    return f".omama-shard-{shard[0]:03d}of{shard[1]:03d}.lock"


@contextlib.contextmanager
def meta_lock(out: Path) -> Iterator[None]:
    """Hold ``CACHE/.omama-meta.lock`` (the folder is created if needed)."""
    out.mkdir(parents=True, exist_ok=True)
    with FileLock(out / META_LOCK):
        yield


@contextlib.contextmanager
def shard_lock(out: Path, shard: tuple[int, int]) -> Iterator[None]:
    """Hold the lock of ``shard`` of the cache at ``out``; wait (with one log line) while
    another run holds it."""
    lock = FileLock(out / shard_lock_name(shard))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.warning(
            "another omama features run is writing shard %d/%d of %s: waiting for it to "
            "finish, then skipping the images it cached",
            *shard,
            out,
        )
        lock.acquire()
    try:
        yield
    finally:
        lock.release()
