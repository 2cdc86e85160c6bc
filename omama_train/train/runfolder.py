"""The run folder (``--out``): one ``omama train`` at a time, and what a kill leaves behind.

Rank 0 holds the folder's lock (:func:`runtime.locks.folder_lock`) for the whole run; the
other ranks of a torchrun never take it (they would wait on rank 0 forever) but learn from
rank 0 whether it could, so a refusal stops every rank with the same line. Under the lock,
rank 0 checks ``--resume`` against what the folder holds and removes what a killed run
left: temporary checkpoint folders, a generation the pointer does not name, half-written
temporary files, and validation reports of epochs after the checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from pathlib import Path

from omama_train.train import generations
from omama_train.train.config import TrainConfig
from omama_train.train.distributed import Distributed, broadcast
from runtime.errors import OmamaError
from runtime.locks import folder_lock

log = logging.getLogger(__name__)
COMMAND = "omama train"
# runtime.atomic's temporary files: ".<name>.<8 random characters><suffix>"
TEMP_FILE = re.compile(r"^\..+\.[a-z0-9_]{8}\.[A-Za-z0-9]+$")
VAL_REPORT = re.compile(r"^epoch_(\d{3,})\.json$")


@contextlib.contextmanager
def run_folder(config: TrainConfig, ctx: Distributed) -> Iterator[None]:
    """Hold ``config.out`` for this run (rank 0), checked and tidied; raises OmamaError on
    every rank when another command holds it or ``--resume`` does not fit."""
    with contextlib.ExitStack() as stack:
        error = None
        if ctx.main:
            try:
                if config.resume and not config.out.is_dir():  # a mistyped --out
                    raise OmamaError(f"--resume: {config.out} does not exist; leave out --resume")
                stack.enter_context(folder_lock(config.out, COMMAND))
                prepare(config)
            except (OmamaError, OSError) as exc:
                error = str(exc)
        error = broadcast(ctx, error)
        if error is not None:
            raise OmamaError(error)
        yield


def prepare(config: TrainConfig) -> None:
    """Refuse a folder that does not fit ``--resume``; remove a killed run's leftovers."""
    out = config.out
    started = generations.folder_of(out).is_dir()
    older = [n for n in ("resume.json", "last.safetensors") if (out / n).exists()]
    if not started and older:
        if config.resume:
            raise OmamaError(
                f"--resume: {out} holds a run of an older omama train ({older[0]}, no "
                f"{generations.FOLDER}/), which cannot be resumed; choose another --out"
            )
        raise OmamaError(
            f"{out} already holds a run ({older[0]}): pass --resume to continue it or choose "
            "another --out"
        )
    if config.resume and not started and not _holds_anything(out):
        log.info("--resume: %s holds nothing of an earlier run; starting from the beginning", out)
    elif config.resume and not started:
        raise OmamaError(
            f"--resume: {out} holds no run to continue (no {generations.FOLDER}/); leave out "
            "--resume to start one"
        )
    if not config.resume and started:
        raise OmamaError(
            f"{out} already holds a run ({generations.FOLDER}/): pass --resume to continue it "
            "or choose another --out"
        )
    removed = [f"{generations.FOLDER}/{n}" for n in generations.remove_stale(out)]
    for folder in (out, out / "val"):
        if folder.is_dir():
            for path in sorted(folder.iterdir()):
                if path.is_file() and TEMP_FILE.match(path.name):
                    path.unlink()
                    removed.append(str(path.relative_to(out)))
    if removed:
        log.info(
            "%s: removed %d leftover(s) of an interrupted run: %s",
            out,
            len(removed),
            ", ".join(removed),
        )
    generations.folder_of(out).mkdir(parents=True, exist_ok=True)


def _holds_anything(out: Path) -> bool:
    """Whether ``out`` holds more than lock files (what a kill while starting leaves)."""
    return out.is_dir() and any(not p.name.endswith(".lock") for p in out.iterdir())


def trim_val_reports(out: Path, epoch: int) -> list[str]:
    """Delete ``val/epoch_NNN.json`` of the epochs after ``epoch`` (written by a run killed
    before their checkpoint; the resumed run writes them again). Returns their names."""
    folder = Path(out) / "val"
    if not folder.is_dir():
        return []
    removed = []
    for path in sorted(folder.iterdir()):
        match = VAL_REPORT.match(path.name)
        if match and int(match.group(1)) > epoch:
            path.unlink()
            removed.append(path.name)
    return removed
