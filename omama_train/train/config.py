"""The options of one ``omama train`` run and their checks."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

from runtime.egoexo import check_direction
from runtime.errors import OmamaError

if TYPE_CHECKING:
    from omama_train.models.backbones import BackboneSpec

DEFAULT_LR = 8e-5
DEFAULT_FINETUNE_LR = 8e-6
MIN_LR = 1e-6


@dataclass
class TrainConfig:
    """Every option of ``omama train`` (see its ``--help``)."""

    root: Path
    out: Path
    direction: str = "exo2ego"
    cache: Path | None = None
    train_split: str = "train"
    val_split: str = "val"
    train_pairs: Path | None = None
    val_pairs: Path | None = None
    epochs: int = 3
    batch_size: int = 24
    lr: float | None = None
    backbone_lr: float | None = None
    min_lr: float = MIN_LR
    weight_decay: float = 0.01
    dropout: float = 0.0
    num_candidates: int = 32
    temperature: float = 0.07
    seed: int = 42
    early_stop_patience: int = 0
    grad_clip: float = 0.0
    deterministic: bool = False
    amp: bool = True
    device: str | None = None
    workers: int = 2
    init: Path | None = None
    resume: bool = False
    finetune_backbone: bool = False
    backbone: str | BackboneSpec | None = None
    backbone_weights: Path | None = None
    random_init: bool = False
    gap_pairs: int = 256
    validate_first: bool = False
    checkpoint_every_steps: int = 0
    log_every: int = 10
    eval_workers: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        self.root, self.out = Path(self.root), Path(self.out)
        for name in ("cache", "train_pairs", "val_pairs", "init", "backbone_weights"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, Path(value))

    @property
    def base_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        return DEFAULT_FINETUNE_LR if self.finetune_backbone else DEFAULT_LR

    def to_json(self) -> dict:
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Path):
                value = str(value)
            elif f.name == "backbone" and value is not None and not isinstance(value, str):
                value = {"name": value.name, "timm_overrides": dict(value.timm_overrides)}
            out[f.name] = value
        out["base_lr"] = self.base_lr
        return out

    def check(self) -> None:
        check_direction(self.direction)
        positive = {
            "--epochs": self.epochs,
            "--batch-size": self.batch_size,
            "--num-candidates": self.num_candidates,
        }
        for name, value in positive.items():
            if value < 1:
                raise OmamaError(f"{name} must be at least 1, got {value}")
        if self.temperature <= 0:
            raise OmamaError(f"--temperature must be positive, got {self.temperature}")
        if self.base_lr <= 0 or self.min_lr < 0:
            raise OmamaError("--lr must be positive and --min-lr not negative")
        if not 0.0 <= self.dropout < 1.0:
            raise OmamaError(f"--dropout must be in [0, 1), got {self.dropout}")
        if self.workers < 0 or self.early_stop_patience < 0 or self.gap_pairs < 0:
            raise OmamaError("--workers, --early-stop-patience and --gap-pairs must be >= 0")
        if self.finetune_backbone:
            if self.backbone_weights is None and not self.random_init:
                raise OmamaError(
                    "--finetune-backbone needs --backbone-weights (or --random-init for tests)"
                )
            if self.backbone_weights is not None and self.random_init:
                raise OmamaError("give --backbone-weights or --random-init, not both")
        else:
            if self.cache is None:
                raise OmamaError(
                    "matcher training reads features from --cache (build it with omama "
                    "features), or pass --finetune-backbone to train on images"
                )
            if self.backbone_weights is not None or self.random_init:
                raise OmamaError(
                    "--backbone-weights / --random-init only apply with --finetune-backbone"
                )
