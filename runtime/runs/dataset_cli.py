"""``omama-run dataset``: the command's flags and what it prints (the run is
:mod:`runtime.runs.dataset`).

:func:`register` adds the command to ``omama-run``'s app; it shares the options every
command that opens artifacts takes (``--backend``, ``--device``, ...) with
:mod:`runtime.cli`, which calls it once those are defined.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from runtime.cli import Backend, Device, Precision, Threads, Trust, WeightsDirs, _check_trust
from runtime.errors import OmamaError
from runtime.ray_options import CpusPerWorker, GpusPerWorker, Ray, RayAddress, Workers

Root = Annotated[Path, typer.Argument(help="Processed root (split.json, processed/<take>/).")]
Split = Annotated[str, typer.Option("--split", help="The split of ROOT/split.json to run.")]
Direction = Annotated[
    str | None,
    typer.Option("--direction", help="exo2ego, ego2exo or both (default: the --artifacts' ones)."),
]
ArtifactsList = Annotated[
    list[Path],
    typer.Option(
        "--artifacts",
        envvar="OMAMA_ARTIFACTS",
        help="Artifacts folder of `omama export`; with --direction both give it twice, one "
        "folder per direction (default: $OMAMA_ARTIFACTS, else ./artifacts).",
    ),
]
OutFolder = Annotated[
    Path | None,
    typer.Option("--out", "-o", help="Output folder (default: omama_out/dataset_<split>)."),
]
Candidates = Annotated[
    Path | None,
    typer.Option(
        "--candidates",
        help="The candidates folder `omama data masks` wrote for this split and direction: "
        "used where present, FastSAM elsewhere (default: FastSAM only).",
    ),
]
MaxFrames = Annotated[
    int | None,
    typer.Option("--max-frames", min=1, help="Only the first this many annotated frames per take."),
]
MaskSize = Annotated[
    str,
    typer.Option(
        "--mask-size",
        help="submission (the size the official Ego-Exo4D evaluator compares with: the "
        "annotated frame's, longer side 480 px, e.g. 480x480 ego, 270x480 exo), model (the "
        "model's destination size, as O-MaMa writes predictions) or image.",
    ),
]


def register(app: typer.Typer) -> None:
    """Add ``dataset`` to ``app`` (``omama-run``)."""
    app.command("dataset")(dataset_command)


def dataset_command(
    root: Root,
    split: Split = "test",
    direction: Direction = None,
    artifacts: ArtifactsList = [Path("artifacts")],  # noqa: B006, B008 - typer copies it
    out: OutFolder = None,
    candidates: Candidates = None,
    max_frames: MaxFrames = None,
    ray: Ray = False,
    ray_address: RayAddress = None,
    workers: Workers = None,
    cpus_per_worker: CpusPerWorker = None,
    gpus_per_worker: GpusPerWorker = None,
    mask_size: MaskSize = "submission",
    backend: Backend = "auto",
    device: Device = "auto",
    precision: Precision = "auto",
    threads: Threads = None,
    weights_dirs: WeightsDirs = [],  # noqa: B006 - typer copies list defaults
    trust: Trust = None,
) -> None:
    """Predict every take, object, camera pair and annotated frame of a split.

    Writes OUT/results.json (the submission format `omama eval` reads, masks at the size
    the official evaluator compares with unless --mask-size says otherwise; with --direction
    both, results_exo2ego.json and results_ego2exo.json), one part per finished take in
    OUT/takes/ (a rerun skips them), and when the split has destination masks gt.json and
    the official metrics.json. In this process by default; with --ray on a Ray Data
    pipeline of --workers actors.

    Example: omama-run dataset data --split test --artifacts artifacts --out out/test

    Example: omama-run dataset data --split test --direction both --artifacts art_exo2ego
    --artifacts art_ego2exo --ray-address HEAD:6379 --workers 32 --device cuda
    """
    from runtime.runs import dataset

    for folder in artifacts:
        _check_trust(folder, trust)
    on_ray = ray or ray_address is not None
    options = _ray_options(on_ray, ray_address, workers, cpus_per_worker, gpus_per_worker)
    config = dataset.DatasetConfig(
        root,
        split,
        dataset.artifacts_by_direction(direction, artifacts),
        out or dataset.default_out(split),
        backend,
        device,
        precision,
        threads,
        mask_size,
        tuple(weights_dirs),
        candidates,
        max_frames,
        options,
    )
    summary = dataset.run_dataset(config, echo=typer.echo)
    typer.echo(dataset.format_dataset_summary(summary))
    if failed := dataset.failed_takes(summary):
        raise OmamaError(
            f"{len(failed)} take run(s) failed and are not in the results: "
            + "; ".join(failed[:5])
            + (f"; ... {len(failed) - 5} more" if len(failed) > 5 else "")
            + f" (all in {Path(summary['out']) / 'summary.json'})"
        )


def _ray_options(
    on_ray: bool,
    address: str | None,
    workers: int | None,
    cpus_per_worker: float | None,
    gpus_per_worker: float | None,
):
    """The Ray options of a ``--ray`` run (Ray's import checked: the one line naming the
    extra comes before any work), None in this process; flags only Ray uses are refused."""
    from runtime.runs.dataset import RayOptions

    if not on_ray:
        if workers is not None:
            raise OmamaError(
                "--workers sets the Ray actors: add --ray (this process runs one take at a time)"
            )
        if cpus_per_worker is not None or gpus_per_worker is not None:
            raise OmamaError("--cpus-per-worker and --gpus-per-worker are for --ray runs")
        return None
    from runtime.runs.dataset_ray import import_ray

    import_ray()
    return RayOptions(address, workers or 1, cpus_per_worker, gpus_per_worker)
