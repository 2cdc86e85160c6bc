"""``omama train``: flags -> :class:`TrainConfig` -> :func:`omama_train.train.trainer.train`.

One command covers the single-process run (CPU or one GPU) and DDP under ``torchrun``
(``python -m omama_train.train`` runs :func:`main`, the same command without ``omama``).
Each flag is declared once below as an annotated type, so the command reads as its list of
options.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from omama_train.train.config import MIN_LR, TrainConfig
from omama_train.train.runlog import fmt
from omama_train.train.trainer import train

Opt = typer.Option
Root = Annotated[Path, Opt("--root", help="Processed root (omama data prepare).")]
Out = Annotated[Path, Opt("--out", help="Run folder (checkpoints, logs).")]
Direction = Annotated[str, Opt("--direction", help="exo2ego or ego2exo.")]
Cache = Annotated[
    Path | None, Opt("--cache", help="Feature cache (omama features); the default training mode.")
]
TrainSplit = Annotated[str, Opt("--train-split", help="Split to train on.")]
ValSplit = Annotated[str, Opt("--val-split", help="Split to validate on.")]
TrainPairs = Annotated[
    Path | None, Opt("--train-pairs", help="Pairs file (default: the split's in ROOT).")
]
ValPairs = Annotated[
    Path | None, Opt("--val-pairs", help="Validation pairs file (default: the split's in ROOT).")
]
Epochs = Annotated[int, Opt("--epochs", help="Epochs.")]
BatchSize = Annotated[int, Opt("--batch-size", help="Pairs per step per process.")]
Lr = Annotated[
    float | None, Opt("--lr", help="AdamW learning rate (default 8e-5; 8e-6 with fine-tuning).")
]
BackboneLr = Annotated[
    float | None,
    Opt("--backbone-lr", help="Backbone learning rate when fine-tuning (default --lr)."),
]
MinLr = Annotated[float, Opt("--min-lr", help="End of the cosine schedule.")]
WeightDecay = Annotated[float, Opt("--weight-decay", help="AdamW weight decay.")]
Dropout = Annotated[float, Opt("--dropout", help="Dropout in the matcher.")]
NumCandidates = Annotated[int, Opt("--num-candidates", help="Destination masks per pair.")]
Temperature = Annotated[float, Opt("--temperature", help="Softmax temperature.")]
Seed = Annotated[int, Opt("--seed", help="Seed (init, sampling, order).")]
EarlyStopPatience = Annotated[
    int,
    Opt(
        "--early-stop-patience",
        help="Stop after this many epochs without a better validation IoU (0: never).",
    ),
]
GradClip = Annotated[float, Opt("--grad-clip", help="Max grad norm (0: off).")]
Deterministic = Annotated[bool, Opt("--deterministic", help="Deterministic kernels (slower).")]
Amp = Annotated[bool, Opt("--amp/--no-amp", help="Mixed precision (GPU only).")]
Device = Annotated[str | None, Opt("--device", help="cpu, cuda (default: auto).")]
Workers = Annotated[int, Opt("--workers", help="Data-loader workers per process.")]
Init = Annotated[
    Path | None,
    Opt(
        "--init",
        help="Start from a matcher: official .pt or omama .safetensors; an exo2ego one also "
        "starts an ego2exo run (its view tables swapped).",
    ),
]
Resume = Annotated[bool, Opt("--resume", help="Continue the run in --out.")]
FinetuneBackbone = Annotated[
    bool, Opt("--finetune-backbone", help="Train the backbone too, on images.")
]
Backbone = Annotated[
    str | None,
    Opt("--backbone", help="Backbone name (default: the cache's, or dinov2_vitb14_reg)."),
]
BackboneWeights = Annotated[
    Path | None, Opt("--backbone-weights", help="Backbone checkpoint for --finetune-backbone.")
]
RandomInit = Annotated[
    bool, Opt("--random-init", help="Random backbone weights (tests) with fine-tuning.")
]
GapPairs = Annotated[
    int, Opt("--gap-pairs", help="Training pairs scored each epoch for the train/val gap.")
]
ValidateFirst = Annotated[
    bool, Opt("--validate-first", help="Score the starting weights first (epoch 0 row).")
]
CheckpointEverySteps = Annotated[
    int,
    Opt("--checkpoint-every-steps", help="Also checkpoint every N steps (0: per epoch)."),
]
LogEvery = Annotated[int, Opt("--log-every", help="TensorBoard loss every N steps.")]
EvalWorkers = Annotated[
    int | None, Opt("--eval-workers", help="Processes for the official metrics (default: 2).")
]
Progress = Annotated[bool, Opt("--progress/--no-progress", help="Progress bars.")]


def train_command(
    root: Root,
    out: Out,
    direction: Direction = "exo2ego",
    cache: Cache = None,
    train_split: TrainSplit = "train",
    val_split: ValSplit = "val",
    train_pairs: TrainPairs = None,
    val_pairs: ValPairs = None,
    epochs: Epochs = 3,
    batch_size: BatchSize = 24,
    lr: Lr = None,
    backbone_lr: BackboneLr = None,
    min_lr: MinLr = MIN_LR,
    weight_decay: WeightDecay = 0.01,
    dropout: Dropout = 0.0,
    num_candidates: NumCandidates = 32,
    temperature: Temperature = 0.07,
    seed: Seed = 42,
    early_stop_patience: EarlyStopPatience = 0,
    grad_clip: GradClip = 0.0,
    deterministic: Deterministic = False,
    amp: Amp = True,
    device: Device = None,
    workers: Workers = 2,
    init: Init = None,
    resume: Resume = False,
    finetune_backbone: FinetuneBackbone = False,
    backbone: Backbone = None,
    backbone_weights: BackboneWeights = None,
    random_init: RandomInit = False,
    gap_pairs: GapPairs = 256,
    validate_first: ValidateFirst = False,
    checkpoint_every_steps: CheckpointEverySteps = 0,
    log_every: LogEvery = 10,
    eval_workers: EvalWorkers = None,
    progress: Progress = True,
) -> None:
    """Train the O-MaMa matcher on cached features (or fine-tune with the backbone).

    Runs on one device, or on several under torchrun (same command). Checkpoints,
    metrics.csv and TensorBoard events go to --out.

    Example: omama train --root data --cache features --out runs/exo2ego --epochs 3
    """
    summary = train(TrainConfig(**locals()))  # the parameters are TrainConfig's fields
    if int(os.environ.get("RANK", "0")) == 0:
        typer.echo(
            f"trained {summary['epochs_run']} epoch(s) -> {summary['out']}: best val IoU "
            f"{fmt(summary['best_val_iou'])} at epoch {summary['best_epoch']}"
            + (" (stopped early)" if summary["stopped_early"] else "")
        )


def register(app: typer.Typer) -> None:
    """Add ``omama train`` (entry point ``train = "omama_train.train.cli:register"``)."""
    app.command("train")(train_command)


def main(argv: list[str] | None = None) -> None:
    """``python -m omama_train.train ARGS`` (e.g. under torchrun): ``omama train ARGS``."""
    from runtime.clikit import new_app, run_app

    app = new_app("omama train")
    register(app)
    args = list(sys.argv[1:] if argv is None else argv)
    sys.exit(run_app(app, ["train", *args], prog_name="omama"))
