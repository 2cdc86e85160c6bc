"""A checkpoint of several files that becomes visible all at once.

A run's checkpoint is several files (weights, optimizer moments, counters); written one
after another in place, a kill between two of them left a mix of two checkpoints. Here every
checkpoint is a numbered folder, and a pointer file names the one that counts::

    RUN/checkpoints/latest.json        {"generation": 7, "contents_sha256": ...}
    RUN/checkpoints/000007/            the files + contents.json (sha256 and size of each)
    RUN/checkpoints/.tmp-000008-XXXX/  a checkpoint being written

Writing (:func:`commit`): the files go into a temporary folder, ``contents.json`` (their list,
sha256 and size; a different thing from an artifacts manifest) last; files and folder are
fsynced; the folder is renamed to its generation number; the pointer is replaced atomically
(and fsynced); only then are older generations deleted. Reading (:func:`latest`) follows the
pointer alone and checks ``contents.json`` against the files, so a kill at any instant
leaves the old checkpoint or the new one, never a mix: a folder that is renamed but not yet
pointed to is ignored, and :func:`remove_stale` deletes it and any temporary folder on the
next start.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from runtime.atomic import temp_path_beside, write_json
from runtime.errors import OmamaError
from runtime.manifest import sha256_file

FOLDER = "checkpoints"
POINTER = "latest.json"
CONTENTS = "contents.json"
FORMAT = "omama.checkpoint"
TEMP_PREFIX = ".tmp-"


@dataclass(frozen=True)
class Generation:
    """One complete, verified checkpoint folder."""

    number: int
    path: Path
    contents: dict

    def file(self, name: str) -> Path:
        if name not in self.contents["files"]:
            raise OmamaError(f"checkpoint {self.path} holds no {name}")
        return self.path / name


def fsync_path(path: Path) -> None:
    """Flush a file's or a folder's entry to the disk (a rename is durable once its folder
    is fsynced)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def folder_of(run: Path) -> Path:
    return Path(run) / FOLDER


def read_pointer(run: Path) -> dict | None:
    """The pointer of ``run`` (None before the first checkpoint)."""
    path = folder_of(run) / POINTER
    if not path.is_file():
        return None
    try:
        pointer = json.loads(path.read_text(encoding="utf-8"))
        int(pointer["generation"]), str(pointer["contents_sha256"])
    except (ValueError, KeyError, TypeError) as exc:
        raise OmamaError(f"{path} is not a checkpoint pointer ({exc})") from exc
    return pointer


def generation_path(run: Path, number: int) -> Path:
    return folder_of(run) / f"{number:06d}"


def current_path(run: Path) -> Path | None:
    """The folder the pointer names, unverified (to link unchanged files from)."""
    pointer = read_pointer(run)
    return generation_path(run, int(pointer["generation"])) if pointer else None


def link_or_copy(src: Path, dst: Path) -> None:
    """``dst`` as a hard link to ``src`` (no bytes copied), a copy where links fail."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def publish(generation: Generation, run: Path, exclude: tuple[str, ...] = ()) -> None:
    """Put the files of ``generation`` (but ``exclude``) in ``run``, each atomically.

    Readers of one of them (``omama export --matcher RUN/best.safetensors``) see the old
    file or the new one, never a partial one.
    """
    for name in sorted(generation.contents["files"]):
        if name in exclude:
            continue
        tmp = temp_path_beside(run / name)
        tmp.unlink()
        try:
            link_or_copy(generation.path / name, tmp)
            os.replace(tmp, run / name)
        finally:
            tmp.unlink(missing_ok=True)


def stage(run: Path) -> Path:
    """A new, empty temporary folder for the next checkpoint's files."""
    folder = folder_of(run)
    folder.mkdir(parents=True, exist_ok=True)
    pointer = read_pointer(run)
    number = 1 + (pointer["generation"] if pointer else 0)
    staged = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{number:06d}-", dir=folder))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staged, 0o777 & ~umask)  # mkdtemp's 0700 would hide the checkpoint from the group
    return staged


def commit(run: Path, staged: Path, info: dict) -> Generation:
    """Make the files of ``staged`` (from :func:`stage`) the run's checkpoint.

    ``info`` (JSON: step, epoch, ...) goes into contents.json. The previous generation is
    deleted only once the pointer names the new one.
    """
    pointer = read_pointer(run)
    number = 1 + (pointer["generation"] if pointer else 0)
    files = {}
    for path in sorted(staged.iterdir()):
        if not path.is_file() or path.name == CONTENTS:
            raise OmamaError(f"{staged}: unexpected {path.name} in a checkpoint")
        fsync_path(path)
        files[path.name] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
    contents = {"format": FORMAT, "generation": number, **info, "files": files}
    write_json(staged / CONTENTS, contents, indent=1)
    fsync_path(staged)
    target = generation_path(run, number)
    if target.exists():  # renamed by a run killed before its pointer update: never pointed to
        shutil.rmtree(target)
    os.replace(staged, target)
    fsync_path(folder_of(run))
    write_json(
        folder_of(run) / POINTER,
        {"generation": number, "contents_sha256": sha256_file(target / CONTENTS)},
    )
    fsync_path(folder_of(run))
    remove_stale(run)
    return Generation(number, target, contents)


def latest(run: Path) -> Generation | None:
    """The checkpoint the pointer names, verified file by file (None when there is none)."""
    pointer = read_pointer(run)
    if pointer is None:
        return None
    path = generation_path(run, int(pointer["generation"]))
    contents_path = path / CONTENTS
    if not contents_path.is_file():
        raise OmamaError(f"{folder_of(run) / POINTER} names {path.name}, which is missing")
    if sha256_file(contents_path) != pointer["contents_sha256"]:
        raise OmamaError(f"{contents_path} is not the contents.json the pointer names (sha256)")
    contents = json.loads(contents_path.read_text(encoding="utf-8"))
    present = sorted(p.name for p in path.iterdir() if p.name != CONTENTS)
    if present != sorted(contents["files"]):
        raise OmamaError(
            f"checkpoint {path} holds {present}, its contents.json lists "
            f"{sorted(contents['files'])}"
        )
    for name, entry in contents["files"].items():
        file = path / name
        if file.stat().st_size != entry["bytes"] or sha256_file(file) != entry["sha256"]:
            raise OmamaError(f"checkpoint file {file} differs from its contents.json (sha256)")
    return Generation(int(pointer["generation"]), path, contents)


def remove_stale(run: Path) -> list[str]:
    """Delete what a kill can leave in ``RUN/checkpoints``: temporary folders and every
    generation the pointer does not name. Returns their names."""
    folder = folder_of(run)
    if not folder.is_dir():
        return []
    pointer = read_pointer(run)
    keep = generation_path(run, int(pointer["generation"])).name if pointer else None
    removed = []
    for path in sorted(folder.iterdir()):
        if path.name in (POINTER, keep):
            continue
        stale_temp = path.name.startswith(".")  # our temp folders and atomic-write leftovers
        if path.is_dir() and (stale_temp or path.name.isdigit()):
            shutil.rmtree(path)
        elif stale_temp:
            path.unlink()
        else:
            continue
        removed.append(path.name)
    return removed
