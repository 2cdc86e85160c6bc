"""``omama-run``: the lean runtime's command line (no torch).

``pair``, ``video`` and ``take`` run :class:`runtime.pipeline.Pipeline` on an artifacts
folder written by ``omama export`` (the runs are in :mod:`runtime.runs`); ``verify``
re-checks that folder's models on this machine against the golden outputs the export
stored; ``info`` shows what this machine can run; ``dataset`` is in
:mod:`runtime.runs.dataset_cli`; ``omama eval`` is in :mod:`runtime.eval_cli`.

Commands only parse and check their flags, call the library and print.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from runtime.clikit import new_app, run_app
from runtime.errors import OmamaError, no_fastsam_error
from runtime.locks import folder_lock

app = new_app("omama-run: O-MaMa inference on ONNX Runtime, TensorRT or OpenVINO, without torch.")

# The options every command that opens artifacts takes.
Artifacts = Annotated[
    Path,
    typer.Option(
        "--artifacts",
        envvar="OMAMA_ARTIFACTS",
        help="Artifacts folder written by `omama export` (default: $OMAMA_ARTIFACTS, else "
        "./artifacts).",
    ),
]
Backend = Annotated[
    str,
    typer.Option(
        "--backend",
        help="auto (TensorRT engines with a GPU, else ONNX Runtime; on a CPU, OpenVINO when "
        "installed, else ONNX Runtime), tensorrt, onnxruntime, openvino (CPU: fp32, bf16, int8; "
        "pip install 'omama[openvino]') or torch.",
    ),
]
Device = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
Precision = Annotated[
    str,
    typer.Option(
        "--precision",
        help="auto (fp16 engines on TensorRT, else fp32: bf16 and int8 change the answers "
        "slightly, so they are never picked for you), fp32, fp16 (*_fp16 files, for GPUs), "
        "bf16 (the fp32 files in bfloat16 arithmetic: openvino, on CPUs with AVX-512 BF16 or "
        "AMX) or int8 (the files of `omama export --int8`: onnxruntime, openvino, tensorrt).",
    ),
]
Threads = Annotated[int | None, typer.Option("--threads", min=1, help="Threads per model.")]
WeightsDirs = Annotated[
    list[Path],
    typer.Option(
        "--weights-dir",
        help="Folder with the original weights the manifest names (torch backend only; also "
        "searched: $OMAMA_WEIGHTS and the artifacts folder). Repeatable.",
    ),
]
Out = Annotated[Path, typer.Option("--out", "-o", help="Output folder.")]
Trust = Annotated[
    Path | None,
    typer.Option(
        "--trust",
        envvar="OMAMA_TRUST",
        help="Public key (PEM, elliptic curve) of the `omama export --sign` key: refuse the "
        "artifacts unless their signature verifies and no file changed, was added or removed "
        "(default: $OMAMA_TRUST, else no signature check). Needs omama[signing].",
    ),
]


def _check_trust(artifacts: Path, trust: Path | None) -> None:
    """With --trust, verify the folder's signature before anything reads it."""
    if trust is not None:
        from runtime.manifest.signing import verify_signature

        verify_signature(artifacts, trust)


def _open_pipeline(artifacts, backend, device, precision, threads, mask_size, weights_dirs):
    from runtime.pipeline import Pipeline

    return Pipeline(
        artifacts,
        backend=backend,
        device=device,
        precision=precision,
        threads=threads,
        mask_size=mask_size,
        weights_dirs=weights_dirs or (),
    )


@app.command("info")
def info_command(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Show runtime library versions, GPUs and usable backends.

    Example: omama-run info --json
    """
    from runtime.info import format_info, runtime_info

    info = runtime_info()
    typer.echo(json.dumps(info, indent=2) if as_json else format_info(info))


@app.command("pair")
def pair_command(
    src_image: Path = typer.Argument(..., help="Source image (the view the query is drawn on)."),
    dst_image: Path = typer.Argument(..., help="Destination image."),
    query: list[Path] = typer.Option(
        ...,
        "--query",
        "-q",
        help="Query mask PNG on the source image (every non-zero pixel is the object); repeat "
        "for more objects.",
    ),
    candidates: Path | None = typer.Option(
        None,
        "--candidates",
        help="Precomputed candidates of the destination image (<frame>_masks.npz with its "
        "<frame>_boxes.npy beside it); default: FastSAM from the artifacts.",
    ),
    out: Out = Path("omama_out"),
    mask_size: str = typer.Option(
        "image",
        "--mask-size",
        help="image (the destination image's size) or model (the model's destination size, "
        "e.g. 700x700 ego, as O-MaMa writes predictions).",
    ),
    artifacts: Artifacts = Path("artifacts"),
    backend: Backend = "auto",
    device: Device = "auto",
    precision: Precision = "auto",
    threads: Threads = None,
    weights_dirs: WeightsDirs = [],  # noqa: B006 - typer copies list defaults
    trust: Trust = None,
) -> None:
    """Find the query object(s) of the source image in the destination image.

    Writes <query>_mask.png (the predicted mask, 0/255), overlay.png (query on the source,
    prediction on the destination, confidence in the corner) and result.json (RLE,
    confidence, visibility, chosen candidate, top-5, per-stage latency) to --out.

    Example: omama-run pair exo.jpg ego.jpg --query cup.png --artifacts artifacts --out out
    """
    from runtime.runs.pair import format_pair_result, read_pair_inputs, run_pair

    if mask_size == "submission":
        raise OmamaError(
            "--mask-size submission needs the annotated frame's size: use it with omama-run "
            "take, video (an annotation.json query) or dataset"
        )
    _check_trust(artifacts, trust)
    inputs = read_pair_inputs(src_image, dst_image, query, candidates)
    with (
        folder_lock(out, "omama-run pair"),
        _open_pipeline(
            artifacts, backend, device, precision, threads, mask_size, weights_dirs
        ) as pipe,
    ):
        result = run_pair(pipe, inputs, out)
    typer.echo(format_pair_result(result, out))


# The long options of `video`, named here so that the command reads as a list of flags.
VideoQuery = Annotated[
    list[str],
    typer.Option(
        "--query",
        "-q",
        help="TRACK: a folder of <frame>.png masks (every non-zero pixel is the object; or one "
        "such folder per object), a JSON "
        "{frame: RLE} or {object: {frame: RLE}}, or an Ego-Exo4D annotation.json (with "
        "--src-cam when several cameras hold masks). Repeatable.",
    ),
]
VideoSrcCam = Annotated[
    str | None,
    typer.Option(
        "--src-cam",
        help="Source camera: the camera of an annotation.json track (e.g. cam01), and its name "
        "in the results (default: the track's camera, else the video's name).",
    ),
]
VideoCandidatesOption = Annotated[
    Path | None,
    typer.Option(
        "--candidates",
        help="Precomputed candidates of the destination video, by its frame index: a folder of "
        "<frame>_masks.npz + <frame>_boxes.npy (as `omama data masks` writes per camera) or a "
        "JSON {frame: [RLE, ...]} at the destination video's size. Frames without an entry "
        "use FastSAM, or get no candidates when the artifacts hold none.",
    ),
]


@app.command("video")
def video_command(
    src_video: Annotated[Path, typer.Argument(help="Source video (where the query masks are).")],
    dst_video: Annotated[Path, typer.Argument(help="Destination video (frames paired by index).")],
    query: VideoQuery,
    objects: list[str] = typer.Option([], "--object", help="Only these objects (repeatable)."),
    src_cam: VideoSrcCam = None,
    dst_cam: str | None = typer.Option(
        None, "--dst-cam", help="Destination camera name in the results."
    ),
    candidates: VideoCandidatesOption = None,
    direction: str | None = typer.Option(
        None, "--direction", help="exo2ego or ego2exo; must be the artifacts' (default: theirs)."
    ),
    out: Out = Path("omama_out"),
    max_frames: int | None = typer.Option(
        None, "--max-frames", min=0, help="Read at most this many frames (a quick look)."
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue an interrupted run from --out's partial results."
    ),
    overlay: bool = typer.Option(False, "--overlay", help="Also write an overlay MP4."),
    gt: Path | None = typer.Option(
        None, "--gt", help="GT JSON (e.g. from `omama data gt`): print the official metrics."
    ),
    take: str | None = typer.Option(
        None, "--take", help="Take name in the results (default: the annotation's take uid)."
    ),
    checkpoint_every_frames: int = typer.Option(
        50, "--checkpoint-every-frames", min=1, help="Write partial results every N frames."
    ),
    mask_size: str = typer.Option(
        "image",
        "--mask-size",
        help="image (the destination video's size), model, or submission (the size the "
        "official Ego-Exo4D evaluator compares with: the annotated frame's, longer side 480 px, "
        "read from the annotation.json query).",
    ),
    artifacts: Artifacts = Path("artifacts"),
    backend: Backend = "auto",
    device: Device = "auto",
    precision: Precision = "auto",
    threads: Threads = None,
    weights_dirs: WeightsDirs = [],  # noqa: B006 - typer copies list defaults
    trust: Trust = None,
) -> None:
    """Track query objects from a source video into a destination video.

    Writes results.json (Ego-Exo4D results format, scored by `omama eval`), summary.json
    (frames, objects, fps, per-stage p50/p90 latency, skips), and with --overlay an overlay
    MP4. Frames that fail to decode are reported and skipped; partial results are written
    every --checkpoint-every-frames frames, so an interrupted run continues with --resume.
    Candidate masks come from FastSAM in the artifacts or, with --candidates, from your own
    segmenter (needed for artifacts exported with --no-fastsam-export).

    Example: omama-run video cam01.mp4 aria01.mp4 --query annotation.json --src-cam cam01
    --overlay

    Example: omama-run video cam01.mp4 aria01.mp4 --query cup_masks/ --candidates
    ego_candidates.json --artifacts artifacts_no_fastsam
    """
    from runtime.runs.video import build_video_run, format_video_summary, run_video

    _check_trust(artifacts, trust)
    artifacts_direction = _check_video_flags(artifacts, direction, candidates, src_video, dst_video)
    run = build_video_run(
        artifacts_direction, src_video, dst_video, query, out, objects=objects, src_cam=src_cam,
        dst_cam=dst_cam, take=take, candidates=candidates, max_frames=max_frames, resume=resume,
        overlay=overlay, checkpoint_every_frames=checkpoint_every_frames,
    )  # fmt: skip
    if resume and not out.is_dir():  # a mistyped --out is not a run killed while starting
        raise OmamaError(f"--resume: {out} does not exist; run without --resume to start")
    with folder_lock(out, "omama-run video"):  # metrics.json (--gt) is written under it too
        with _open_pipeline(
            artifacts, backend, device, precision, threads, mask_size, weights_dirs
        ) as pipe:
            summary = run_video(pipe, run)
        typer.echo(format_video_summary(summary))
        if gt is not None:
            _print_metrics(gt, Path(summary["results"]), artifacts_direction, out)


def _check_video_flags(artifacts: Path, direction: str | None, candidates: Path | None,
                       src_video: Path, dst_video: Path) -> str:  # fmt: skip
    """The artifacts' direction, once ``--direction``, ``--candidates`` and the videos fit."""
    from runtime.manifest import load_manifest

    manifest = load_manifest(artifacts)
    if direction is not None and direction != manifest.direction:
        raise OmamaError(
            f"--direction {direction} but the artifacts in {artifacts} are {manifest.direction}: "
            "export for that direction, or drop --direction"
        )
    if candidates is None and not manifest.fastsam.included:
        raise no_fastsam_error(artifacts)
    for path, what in ((src_video, "source"), (dst_video, "destination")):
        if not path.is_file():
            raise OmamaError(f"{what} video not found: {path}")
    return manifest.direction


def _print_metrics(gt: Path, results: Path, direction: str, out: Path) -> None:
    from runtime.atomic import write_json
    from runtime.evaluate import evaluate_files, format_summary

    report = evaluate_files(gt, results, direction, workers=1)
    typer.echo("")
    typer.echo(format_summary(report))
    write_json(out / "metrics.json", report, indent=2)
    typer.echo(f"metrics written to {out / 'metrics.json'}")


@app.command("take")
def take_command(
    take_dir: Path = typer.Argument(
        ..., help="A processed take, ROOT/processed/<take> (from `omama data prepare`)."
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Output folder (default: omama_out/<take>)."
    ),
    max_frames: int | None = typer.Option(
        None, "--max-frames", min=0, help="Only the first this many annotated frames."
    ),
    score: bool = typer.Option(
        False, "--score", help="Score against the take's annotation and print the official metrics."
    ),
    candidates: Path | None = typer.Option(
        None,
        "--candidates",
        help="The candidates folder `omama data masks` wrote (e.g. ROOT/Masks_<SPLIT>_<DIRECTION>"
        "): its candidates are used where present, FastSAM elsewhere (default: FastSAM only).",
    ),
    mask_size: str = typer.Option(
        "model",
        "--mask-size",
        help="model (the model's destination size, e.g. 700x700 ego, as O-MaMa writes "
        "predictions), image (the processed frame's size) or submission (the size the official "
        "Ego-Exo4D evaluator compares with: the annotated frame's, longer side 480 px, e.g. "
        "480x480 ego, 270x480 exo).",
    ),
    artifacts: Artifacts = Path("artifacts"),
    backend: Backend = "auto",
    device: Device = "auto",
    precision: Precision = "auto",
    threads: Threads = None,
    weights_dirs: WeightsDirs = [],  # noqa: B006 - typer copies list defaults
    trust: Trust = None,
) -> None:
    """Predict every object and exo camera of a processed take (one results JSON).

    Uses the --candidates folder's candidates where present, else FastSAM; each frame's
    shared view is encoded once for all cameras and objects. With --score, also writes
    gt.json and metrics.json and prints the official Ego-Exo4D metrics.

    Example: omama-run take data/processed/<take_uid> --artifacts artifacts --score
    --candidates data/Masks_TEST_EXO2EGO
    """
    from runtime.evaluate import format_summary
    from runtime.runs.take import format_take_summary, run_take

    _check_trust(artifacts, trust)
    if candidates is not None and not candidates.is_dir():
        raise OmamaError(f"--candidates {candidates} is not a folder")
    out = out or Path("omama_out") / take_dir.name
    with (
        folder_lock(out, "omama-run take"),
        _open_pipeline(
            artifacts, backend, device, precision, threads, mask_size, weights_dirs
        ) as pipe,
    ):
        summary = run_take(pipe, take_dir, out, max_frames, candidates, score)
    typer.echo(format_take_summary(summary))
    if score and "report" in summary:
        typer.echo("")
        typer.echo(format_summary(summary["report"]))
        typer.echo(f"GT written to {summary['gt']}, metrics to {out / 'metrics.json'}")
    elif score:
        typer.echo("no observation was predicted: nothing to score")


# After the options above, which it shares (a module of its own: the command is big).
from runtime.runs.dataset_cli import register as register_dataset  # noqa: E402

register_dataset(app)


@app.command("verify")
def verify_command(
    artifacts: Path = typer.Argument(
        ..., help="Artifacts folder written by `omama export` (with its golden/ files)."
    ),
    backend: Backend = "auto",
    device: Device = "auto",
    precision: Precision = "auto",
    threads: Threads = None,
    weights_dirs: WeightsDirs = [],  # noqa: B006 - typer copies list defaults
    trust: Trust = None,
) -> None:
    """Re-verify the artifacts on this machine, without torch.

    Runs the golden inputs the export stored (golden/<model>.npz) through the same sessions
    `omama-run pair | video | take` use, compares with the stored torch fp32 outputs under
    the manifest's tolerances (features, similarities, argmax agreement, FastSAM detections
    and masks), prints one table and writes ARTIFACTS/verify_<backend>_<precision>.json.
    Exits 1 naming the first output that failed.

    Example: omama-run verify artifacts --backend onnxruntime --device cpu --precision fp16

    Example: omama-run verify artifacts --backend openvino --precision bf16

    Example: omama-run verify artifacts --trust omama_signing.pub
    """
    from runtime.verification.replay import verify_folder
    from runtime.verification.tolerances import format_table

    _check_trust(artifacts, trust)
    report = verify_folder(
        artifacts, backend, device, precision, threads, weights_dirs or (), echo=typer.echo
    )
    typer.echo(format_table(report.records))
    checks = sum(len(r.checks) for r in report.records)
    if not report.passed:
        raise OmamaError(f"verification failed: {report.failures()[0]} (all results in "
                         f"{report.path})")  # fmt: skip
    typer.echo(
        f"verified: {len(report.records)} files, {checks} checks on {report.plan.backend} "
        f"{report.plan.device} {report.plan.precision}; written to {report.path}"
    )


def main() -> None:
    sys.exit(run_app(app, prog_name="omama-run"))
