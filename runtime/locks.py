"""One writer per output folder: a command holds its folder's lock while it writes there.

Two commands writing one folder with different inputs both used to finish, one silently
overwriting the other's results. :func:`folder_lock` takes an operating-system file lock
(``filelock``: released by the kernel when the process dies, so a killed run leaves no
stale lock) on ``FOLDER/.omama.lock``; a second command gets one clear error at once.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from runtime.errors import OmamaError

LOCK_NAME = ".omama.lock"


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, command: str) -> Iterator[Path]:
    """Hold the lock of ``folder`` (created if needed) while ``command`` writes it.

    Raises OmamaError at once when another process holds it.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(folder / LOCK_NAME, timeout=0)
    try:
        lock.acquire()
    except Timeout as exc:
        raise OmamaError(
            f"{folder} is being written by another omama command; wait for it to finish or "
            f"give {command} another output folder"
        ) from exc
    try:
        yield folder
    finally:
        lock.release()
