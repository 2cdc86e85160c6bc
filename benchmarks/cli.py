"""``omama bench``: the top-level command of the benchmarks layer (entry point ``bench``).

Flags only: the options are declared once below, :func:`bench_command` checks them and
calls the library (:mod:`benchmarks.harness`). Nothing heavy is imported at module level
(the harness and torch load inside the command; torch only in the worker processes of the
torch rows), so ``omama --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from runtime.errors import OmamaError

Artifacts = Annotated[
    Path | None,
    typer.Option("--artifacts", "-a", help="Artifacts folder written by `omama export`."),
]
Backends = Annotated[
    str,
    typer.Option(
        "--backends",
        help="Comma-separated backends to measure: torch, onnxruntime, tensorrt, openvino (CPU).",
    ),
]
Precisions = Annotated[
    str,
    typer.Option(
        "--precisions",
        help="Comma-separated run precisions: fp32, fp16, bf16 (openvino, on CPUs with "
        "bfloat16 units), int8 (the files of `omama export --int8`). Rows a backend cannot "
        "run are reported with the reason.",
    ),
]
Device = Annotated[
    str, typer.Option("--device", help="cpu, cuda or auto (cuda when an NVIDIA GPU is visible).")
]
NumPairs = Annotated[int, typer.Option("--num-pairs", help="Synthetic frame pairs per pass.")]
ObjectsPerFrame = Annotated[
    int, typer.Option("--objects-per-frame", "-k", help="Query objects per frame pair (K).")
]
Repeats = Annotated[int, typer.Option("--repeats", help="Timed passes over the pairs.")]
ReferenceRepeats = Annotated[
    int, typer.Option("--reference-repeats", help="Timed passes of the (slow) reference row.")
]
Warmup = Annotated[int, typer.Option("--warmup", help="Untimed calls before timing, per row.")]
Threads = Annotated[
    int | None,
    typer.Option("--threads", help="Intra-op threads per row (default: each backend's own)."),
]
Out = Annotated[
    Path, typer.Option("--out", "-o", help="Folder for report.md, report.json, latency.png.")
]
Reference = Annotated[
    bool,
    typer.Option(
        "--reference/--no-reference",
        help="Also time the O-MaMa reference shape (per-object loop, torch).",
    ),
]
CandidateSource = Annotated[
    str,
    typer.Option(
        "--candidate-source",
        help="Destination candidates of the timed runs: fastsam (the exported FastSAM), "
        "synthetic (fixed masks), or auto (FastSAM when the artifacts hold it).",
    ),
]
FastsamConf = Annotated[
    float | None,
    typer.Option(
        "--fastsam-conf",
        help="FastSAM confidence threshold (default: the manifest's; random-init "
        "artifacts: 0.01, since random weights score below 0.013).",
    ),
]
ScoreRoot = Annotated[
    Path | None,
    typer.Option(
        "--score-root",
        help="Processed root with annotations (omama data prepare, e.g. of synthetic takes): "
        "adds the official IoU per backend.",
    ),
]
ScoreSplit = Annotated[
    str | None,
    typer.Option(
        "--score-split", help="Split of --score-root to run (default: test if present, else all)."
    ),
]
ScoreFrames = Annotated[
    int, typer.Option("--score-frames", help="Frames per take with --score-root.")
]
WeightsDirs = Annotated[
    list[Path],
    typer.Option(
        "--weights-dir",
        metavar="<dir>",
        help="Folder with the original weights (torch rows); repeatable.",
    ),
]
Seed = Annotated[int, typer.Option("--seed", help="Seed of the synthetic inputs.")]
TimeoutS = Annotated[
    float, typer.Option("--timeout-s", help="Give up on a row after this many seconds.")
]
Compare = Annotated[
    tuple[Path, Path] | None,
    typer.Option(
        "--compare",
        metavar="<a.json> <b.json>",
        help="Print the ratios between two report.json files (A then B) and exit.",
    ),
]


def bench_command(
    artifacts: Artifacts = None,
    backends: Backends = "torch,onnxruntime,tensorrt",
    precisions: Precisions = "fp32,fp16",
    device: Device = "auto",
    num_pairs: NumPairs = 10,
    objects_per_frame: ObjectsPerFrame = 4,
    repeats: Repeats = 3,
    reference_repeats: ReferenceRepeats = 1,
    warmup: Warmup = 2,
    threads: Threads = None,
    out: Out = Path("bench"),
    reference: Reference = True,
    candidate_source: CandidateSource = "auto",
    fastsam_conf: FastsamConf = None,
    score_root: ScoreRoot = None,
    score_split: ScoreSplit = None,
    score_frames: ScoreFrames = 10,
    weights_dirs: WeightsDirs = [],  # noqa: B006 - typer copies its defaults
    seed: Seed = 0,
    timeout_s: TimeoutS = 3600.0,
    compare: Compare = None,
) -> None:
    """Benchmark PyTorch vs ONNX Runtime vs TensorRT vs OpenVINO on an artifacts folder.

    For every backend x precision (unavailable ones get a row with the reason), after
    warm-up: latency per stage (preprocess, FastSAM, backbone src/dst, descriptors,
    pooling + matcher, postprocess) and end to end (mean, p50, p90, p99), pairs/s and
    object-matches/s, peak host and device memory, fidelity vs the torch fp32 reference
    on the same inputs, and with --score-root the official IoU. Includes the O-MaMa
    reference shape as a baseline row. Each row runs in its own process. Writes report.md,
    report.json and latency.png to --out and prints the summary table.

    Example: omama bench --artifacts artifacts --backends torch,onnxruntime --device cpu
    --num-pairs 10 --out bench_cpu

    Example: omama bench --artifacts artifacts --backends torch,onnxruntime,openvino
    --precisions fp32,bf16,int8 --device cpu --out bench_cpu_precisions

    Example: omama bench --compare bench_cpu/report.json bench_gpu/report.json
    """
    if compare is not None:
        if artifacts is not None:
            raise OmamaError("--compare reads two reports; it takes no --artifacts")
        from benchmarks.harness.report.compare import compare_files

        typer.echo(compare_files(*compare))
        return
    if artifacts is None:
        raise OmamaError(
            "give --artifacts DIR (an `omama export` folder) to benchmark, or --compare "
            "A/report.json B/report.json"
        )
    from benchmarks.harness.plan import BACKEND_CHOICES, PRECISION_CHOICES, BenchConfig, parse_list
    from benchmarks.harness.run import bench_and_report

    config = BenchConfig(
        artifacts=artifacts,
        out_dir=out,
        backends=parse_list(backends, BACKEND_CHOICES, "--backends"),
        precisions=parse_list(precisions, PRECISION_CHOICES, "--precisions"),
        device=device,
        num_pairs=num_pairs,
        objects_per_frame=objects_per_frame,
        repeats=repeats,
        reference_repeats=reference_repeats,
        warmup=warmup,
        threads=threads,
        seed=seed,
        candidate_source=candidate_source,
        fastsam_conf=fastsam_conf,
        reference=reference,
        score_root=score_root,
        score_split=score_split,
        score_frames=score_frames,
        weights_dirs=list(weights_dirs),
        timeout_s=timeout_s,
    )
    bench_and_report(config, typer.echo)


def register(app: typer.Typer) -> None:
    """Add the top-level ``omama bench`` command to ``app``."""
    app.command("bench")(bench_command)
