"""The run's log: rank 0's metrics.csv, TensorBoard events, console lines and progress bar."""

from __future__ import annotations

import csv
import logging
import math
import sys
from pathlib import Path

from omama_train.train.config import TrainConfig
from omama_train.train.distributed import Distributed
from runtime.atomic import atomic_path

log = logging.getLogger(__name__)
CSV_FIELDS = (
    "epoch",
    "global_step",
    "lr",
    "train_loss",
    "train_acc",
    "train_iou",
    "val_iou",
    "val_iou_std",
    "val_shape_acc",
    "val_location_score",
    "val_balanced_acc",
    "gap_iou",
    "epoch_s",
    "samples_per_s",
)


class RunLog:
    """Rank 0's CSV and TensorBoard writers (no-ops on other ranks).

    The CSV starts from ``rows``, the history the run resumes with (none for a new run), so
    rows a killed run wrote after its checkpoint are dropped; TensorBoard events from
    ``purge_step`` on are purged for the same reason. Epoch metrics are logged at the global
    step of their epoch's end, so that purging by step drops them too.
    """

    def __init__(self, out: Path, enabled: bool, rows: list[dict], purge_step: int) -> None:
        self.enabled = enabled
        self.csv_path = out / "metrics.csv"
        self.writer = None
        if not enabled:
            return
        self._write_rows([csv_row(r) for r in rows])
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is in the train extra; the CSV has the same numbers
            log.warning("tensorboard is not installed: per-step curves go to metrics.csv only")
        else:
            self.writer = SummaryWriter(str(out / "tensorboard"), purge_step=purge_step)

    def _write_rows(self, rows: list[dict]) -> None:
        with atomic_path(self.csv_path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
            writer.writeheader()
            writer.writerows(rows)

    def step(self, global_step: int, loss: float, lr: float) -> None:
        if self.writer is not None:
            self.writer.add_scalar("train/loss", loss, global_step)
            self.writer.add_scalar("train/lr", lr, global_step)

    def epoch(self, row: dict) -> None:
        if not self.enabled:
            return
        with open(self.csv_path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        self._write_rows(rows + [csv_row(row)])
        if self.writer is not None:
            for key, value in row.items():
                if key not in ("epoch", "global_step") and isinstance(value, (int, float)):
                    group = "val" if key.startswith("val_") else "epoch"
                    self.writer.add_scalar(f"{group}/{key}", value, row["global_step"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def csv_row(row: dict) -> dict:
    """``row`` as metrics.csv writes it: the same text whether it comes from this process
    or from a checkpoint's JSON (None and non-finite values empty)."""
    clean = {}
    for key in CSV_FIELDS:
        value = row.get(key)
        if isinstance(value, float) and not math.isfinite(value):
            value = None
        clean[key] = "" if value is None else value
    return clean


def metrics_row(epoch: int, step: int, lr: float, val: dict, train_iou: float | None) -> dict:
    """One metrics.csv row (training columns empty until the caller fills them)."""
    val_iou = val.get("iou")
    gap = train_iou - val_iou if train_iou is not None and val_iou is not None else None
    return {
        "epoch": epoch,
        "global_step": step,
        "lr": lr,
        "train_loss": None,
        "train_acc": None,
        "train_iou": train_iou,
        "val_iou": val_iou,
        "val_iou_std": val.get("iou_std"),
        "val_shape_acc": val.get("shape_acc"),
        "val_location_score": val.get("location_score"),
        "val_balanced_acc": val.get("balanced_acc"),
        "gap_iou": gap,
        "epoch_s": None,
        "samples_per_s": None,
    }


def progress_bar(config: TrainConfig, ctx: Distributed, epoch: int, total: int, done: int):
    if not (config.progress and ctx.main):
        return None
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=done,
        desc=f"epoch {epoch + 1}/{config.epochs}",
        unit="step",
        file=sys.stderr,
        leave=False,
    )


def fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def epoch_line(row: dict, epochs: int, improved: bool, gap_pairs: int) -> str:
    timing = (
        f", {row['epoch_s']:.1f} s ({row['samples_per_s']:.1f} samples/s)"
        if row["epoch_s"] is not None
        else " (before training)"
    )
    return (
        f"epoch {row['epoch']}/{epochs}: train loss {fmt(row['train_loss'])}, "
        f"val IoU {fmt(row['val_iou'])}{' (best)' if improved else ''}, "
        f"train IoU ({gap_pairs} pairs) {fmt(row['train_iou'])}, "
        f"gap {fmt(row['gap_iou'])}, balanced acc {fmt(row['val_balanced_acc'])}" + timing
    )
