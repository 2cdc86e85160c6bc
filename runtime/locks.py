"""One writer per output folder: a command holds its folder's lock while it writes there.

Two commands writing one folder with different inputs both used to finish, one silently
overwriting the other's results. :func:`folder_lock` takes an operating-system file lock
(``filelock``: released by the kernel when the process dies, so a killed run leaves no
stale lock) on ``FOLDER/.omama.lock``; a second command gets one clear error at once.
Commands whose shards share a folder lock one name per shard (``name``); a command that
writes one file locks that file (:func:`file_lock`).
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
def folder_lock(
    folder: str | os.PathLike,
    command: str,
    name: str = LOCK_NAME,
    instead: str | None = "another output folder",
) -> Iterator[Path]:
    """Hold the lock ``folder/name`` (folder created if needed) while ``command`` writes it.

    Raises OmamaError at once when another process holds it, suggesting ``instead`` (None
    where the folder follows from other flags, e.g. ROOT's Masks folders).
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OmamaError(f"{folder} exists and is not a folder: give {command} a folder")
    folder.mkdir(parents=True, exist_ok=True)
    with _held(folder / name, f"{folder} is being written", command, instead):
        yield folder


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, command: str) -> Iterator[Path]:
    """Hold the lock of the one file ``command`` writes (``.NAME.omama.lock`` beside it).

    Raises OmamaError at once when another process holds it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = path.parent / f".{path.name}{LOCK_NAME}"
    with _held(lock_path, f"{path} is being written", command, "another output file"):
        yield path


@contextlib.contextmanager
def _held(lock_path: Path, busy: str, command: str, instead: str | None) -> Iterator[None]:
    lock = FileLock(lock_path, timeout=0)
    try:
        lock.acquire()
    except Timeout as exc:
        other = f" or give {command} {instead}" if instead else ""
        raise OmamaError(f"{busy} by another omama command; wait for it to finish{other}") from exc
    try:
        yield
    finally:
        lock.release()
