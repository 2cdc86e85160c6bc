"""``omama features``: flags -> :func:`omama_train.features.build.build_cache` -> summary.

Each flag is declared once below as an annotated type, so the command reads as its list of
options.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from omama_train import raywork
from omama_train.features.build import build_cache, summary_text
from omama_train.features.images import pairs_files_for
from omama_train.features.writer import DEFAULT_FLUSH_EVERY
from omama_train.shards import parse_shard
from runtime.ray_options import CpusPerWorker, GpusPerWorker, Ray, RayAddress, Workers

Opt = typer.Option
Root = Annotated[Path, Opt("--root", help="Processed root (from omama data prepare).")]
Out = Annotated[Path, Opt("--out", help="Cache folder to write (or complete).")]
Pairs = Annotated[
    list[Path], Opt("--pairs", help="Pairs JSON whose images are cached (repeatable).")
]
Split = Annotated[
    str | None,
    Opt(
        "--split",
        help="Comma-separated splits whose ROOT/dataset_jsons pairs files are used, or "
        "'all' (default when no --pairs is given).",
    ),
]
Direction = Annotated[
    str, Opt("--direction", help="Pairs files of exo2ego, ego2exo or all (with --split).")
]
Backbone = Annotated[str, Opt("--backbone", help="Registered backbone name.")]
BackboneWeights = Annotated[
    Path | None,
    Opt(
        "--backbone-weights",
        help="Backbone checkpoint (official, Hugging Face, timm, omama).",
    ),
]
RandomInit = Annotated[
    bool, Opt("--random-init", help="Seeded random weights instead of --backbone-weights (tests).")
]
Seed = Annotated[
    int, Opt("--seed", help="Seed of --random-init (and of a 1x1 projection a file lacks).")
]
WeightProfile = Annotated[
    str,
    Opt(
        "--weight-profile",
        metavar="plain|outlier",
        help="With --random-init: 'plain' random weights, or 'outlier' (planted outlier "
        "channels and a high-norm token, as trained DINOv2 ViTs have); as omama export's.",
    ),
]
PosResize = Annotated[
    str | None,
    Opt(
        "--pos-resize",
        help="DINOv2 positional interpolation: bicubic_antialias or bicubic_offset "
        "(default: the torch-hub model's).",
    ),
]
Shard = Annotated[str, Opt("--shard", help="Process shard i of n (0-based).")]
Device = Annotated[
    str | None,
    Opt(
        "--device",
        help="cpu, cuda, cuda:N or auto (default: cuda when available; with --ray, a GPU "
        "per worker when the Ray cluster has GPUs).",
    ),
]
BatchSize = Annotated[
    int | None, Opt("--batch-size", help="Images per forward (default: 16 on CUDA, 4 on CPU).")
]
FlushEvery = Annotated[
    int,
    Opt("--flush-every", help="Images per chunk file; a chunk is the most an interruption loses."),
]
IoThreads = Annotated[int, Opt("--io-threads", help="Threads decoding JPEGs.")]
Limit = Annotated[int | None, Opt("--limit", help="Stop after this many new images (a trial run).")]
Progress = Annotated[bool, Opt("--progress/--no-progress", help="Progress bar.")]


def features_command(
    root: Root,
    out: Out,
    pairs: Pairs = [],  # noqa: B006 (typer reads the default; never mutated)
    split: Split = None,
    direction: Direction = "all",
    backbone: Backbone = "dinov2_vitb14_reg",
    backbone_weights: BackboneWeights = None,
    random_init: RandomInit = False,
    seed: Seed = 0,
    weight_profile: WeightProfile = "plain",
    pos_resize: PosResize = None,
    shard: Shard = "0/1",
    device: Device = None,
    batch_size: BatchSize = None,
    flush_every: FlushEvery = DEFAULT_FLUSH_EVERY,
    io_threads: IoThreads = 4,
    limit: Limit = None,
    progress: Progress = True,
    ray: Ray = False,
    ray_address: RayAddress = None,
    workers: Workers = None,
    cpus_per_worker: CpusPerWorker = None,
    gpus_per_worker: GpusPerWorker = None,
) -> None:
    """Run the backbone once per unique image of the pairs and cache fp16 feature maps.

    Writes CACHE/meta.json (backbone, weights sha256, image sizes, dtype), chunk files
    CACHE/chunks/<kind>-<i>of<n>-<seq>.npy (float16, rows x 768 x h x w) with index parts
    beside them, and CACHE/report.json; with --random-init also the weights it used,
    CACHE/backbone.safetensors (for omama export --backbone-weights). Images already
    cached are skipped, so an interrupted run resumes; --shard i/n splits the work
    across machines writing into one folder, or --ray splits its chunks over Ray workers
    (each building the backbone once) that write the same files. A cache built with other weights, backbone
    or sizes is refused. Portrait frames are resized to their view's landscape size.

    Example: omama features --root data --split train,val,test --backbone dinov2_vitb14_reg --backbone-weights dinov2_vitb14_reg4_pretrain.pth --out data/features

    Example: omama features --root data --split test --backbone dinov2_vitb14_reg --backbone-weights dinov2_vitb14_reg4_pretrain.pth --out data/features --ray-address HEAD:6379 --workers 8 --device cuda
    """  # noqa: E501
    shard_tuple = parse_shard(shard)
    options = raywork.ray_options(
        ray, ray_address, workers, cpus_per_worker, gpus_per_worker, shard_tuple
    )
    report = build_cache(
        root,
        out,
        pairs_files_for(root, pairs, split, direction),
        backbone,
        backbone_weights=backbone_weights,
        random_init=random_init,
        seed=seed,
        weight_profile=weight_profile,
        pos_resize=pos_resize,
        device=device,
        batch_size=batch_size,
        shard=shard_tuple,
        flush_every=flush_every,
        io_threads=io_threads,
        limit=limit,
        progress=progress,
        ray=options,
    )
    typer.echo(summary_text(report))


def register(app: typer.Typer) -> None:
    """Add ``omama features`` (entry point ``features = "omama_train.features.cli:register"``)."""
    app.command("features")(features_command)
