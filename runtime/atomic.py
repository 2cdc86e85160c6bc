"""Atomic writes: write to a temporary file in the same folder, then rename over the target.

A crash leaves either the old file or the new one, never half a file; long jobs use the
presence of a final file as "this piece is done" when they resume.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path


def temp_path_beside(target: str | os.PathLike, suffix: str | None = None) -> Path:
    """Create an empty temporary file next to ``target`` (same folder, so a rename is atomic).

    mkstemp makes 0600 files; the file gets the permissions a plain open() would give.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=suffix or target.suffix or ".tmp", dir=target.parent
    )
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    return Path(tmp)


def remove_temporaries(folder: str | os.PathLike, names: Iterable[str], depth: int = 1) -> None:
    """Remove the temporaries (:func:`temp_path_beside`) a killed writer left of the files
    ``names`` (glob patterns) in ``folder`` and, with ``depth`` 2, in its subfolders, so a
    resumed job ends with exactly the files of an uninterrupted one. Only for files that no
    other process may be writing (the caller holds the lock that guards them)."""
    folder = Path(folder)
    for level in ["", "*/"][:depth]:
        for name in names:
            for tmp in folder.glob(f"{level}.{name}.*"):
                if tmp.is_file():
                    tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; rename it onto ``target`` on success.

    ``suffix`` defaults to the target's suffix so writers that pick a format by extension
    (OpenCV, numpy) still work.
    """
    tmp_path = temp_path_beside(target, suffix)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(target: str | os.PathLike, obj, indent: int | None = None) -> None:
    """Serialise ``obj`` as JSON to ``target`` atomically."""
    with atomic_path(target, suffix=".json") as tmp, open(tmp, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=indent)
        fh.flush()
        os.fsync(fh.fileno())


def write_bytes(target: str | os.PathLike, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
