"""``omama-run``: the lean runtime's command line (no torch).

``pair``, ``video`` and ``take`` run :class:`runtime.pipeline.Pipeline` on an artifacts
folder written by ``omama export``; ``verify`` re-checks that folder's models on this
machine against the golden outputs the export stored; ``info`` shows what this machine can
run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from runtime.clikit import new_app, run_app
from runtime.errors import OmamaError, no_fastsam_error

app = new_app("omama-run: O-MaMa inference on ONNX Runtime or TensorRT, without torch.")

ARTIFACTS_HELP = (
    "Artifacts folder written by `omama export` (default: $OMAMA_ARTIFACTS, else ./artifacts)."
)
BACKEND_HELP = (
    "auto (TensorRT engines with a GPU, else ONNX Runtime), tensorrt, onnxruntime or torch."
)
PRECISION_HELP = (
    "auto (fp16 engines on TensorRT, fp32 ONNX otherwise), fp32 or fp16 (*_fp16 files)."
)
WEIGHTS_HELP = (
    "Folder with the original weights the manifest names (torch backend only; also searched: "
    "$OMAMA_WEIGHTS and the artifacts folder). Repeatable."
)


def _artifacts_option() -> Path:
    return typer.Option(
        Path("artifacts"), "--artifacts", envvar="OMAMA_ARTIFACTS", help=ARTIFACTS_HELP
    )


def _open_pipeline(artifacts, backend, device, precision, threads, mask_size, weights):
    from runtime.pipeline import Pipeline

    return Pipeline(
        artifacts,
        backend=backend,
        device=device,
        precision=precision,
        threads=threads,
        mask_size=mask_size,
        weights_dirs=weights or (),
    )


@app.command("info")
def info_command(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Show runtime library versions, GPUs and usable backends.

    Example: omama-run info --json
    """
    from runtime.info import format_info, runtime_info

    info = runtime_info()
    typer.echo(json.dumps(info, indent=2) if as_json else format_info(info))


# ----------------------------------------------------------------------------- pair


def _unique_names(paths: list[Path]) -> list[str]:
    names: list[str] = []
    for path in paths:
        name, k = path.stem, 2
        while name in names:
            name, k = f"{path.stem}_{k}", k + 1
        names.append(name)
    return names


def _write_mask_png(path: Path, mask) -> None:
    import cv2

    from runtime.atomic import atomic_path

    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), (mask != 0).astype("uint8") * 255):
            raise OmamaError(f"could not write {path}")


def _write_rgb_png(path: Path, image) -> None:
    import cv2

    from runtime.atomic import atomic_path

    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), image[:, :, ::-1]):
            raise OmamaError(f"could not write {path}")


@app.command("pair")
def pair_command(
    src_image: Path = typer.Argument(..., help="Source image (the view the query is drawn on)."),
    dst_image: Path = typer.Argument(..., help="Destination image."),
    query: list[Path] = typer.Option(
        ..., "--query", "-q", help="Query mask PNG on the source image; repeat for more objects."
    ),
    candidates: Path | None = typer.Option(
        None,
        "--candidates",
        help="Precomputed candidates of the destination image (<frame>_masks.npz with its "
        "<frame>_boxes.npy beside it); default: FastSAM from the artifacts.",
    ),
    out: Path = typer.Option(Path("omama_out"), "--out", "-o", help="Output folder."),
    mask_size: str = typer.Option(
        "image",
        "--mask-size",
        help="image (the destination image's size) or model (the model's destination size, "
        "e.g. 700x700 ego, as O-MaMa writes predictions).",
    ),
    artifacts: Path = _artifacts_option(),
    backend: str = typer.Option("auto", "--backend", help=BACKEND_HELP),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    precision: str = typer.Option("auto", "--precision", help=PRECISION_HELP),
    threads: int | None = typer.Option(None, "--threads", min=1, help="Threads per model."),
    weights: list[Path] = typer.Option([], "--weights", help=WEIGHTS_HELP),
) -> None:
    """Find the query object(s) of the source image in the destination image.

    Writes <query>_mask.png (the predicted mask, 0/255), overlay.png (query on the source,
    prediction on the destination, confidence in the corner) and result.json (RLE,
    confidence, visibility, chosen candidate, top-5, per-stage latency) to --out.

    Example: omama-run pair exo.jpg ego.jpg --query cup.png --artifacts artifacts --out out
    """
    from runtime import rle
    from runtime.atomic import write_json
    from runtime.candidates import read_candidates
    from runtime.images import read_rgb
    from runtime.pipeline import render_overlay
    from runtime.tracks import read_mask_png

    src_rgb, dst_rgb = read_rgb(src_image), read_rgb(dst_image)
    queries = [read_mask_png(path) for path in query]
    cands = None
    if candidates is not None:
        name = candidates.name
        if not name.endswith("_masks.npz"):
            raise OmamaError(f"--candidates must name a <frame>_masks.npz file, got {candidates}")
        boxes = candidates.with_name(name.removesuffix("_masks.npz") + "_boxes.npy")
        cands = read_candidates(candidates, boxes)
    with _open_pipeline(artifacts, backend, device, precision, threads, mask_size, weights) as pipe:
        pipe.check_image(src_rgb.shape[:2], "src", f"source image {src_image}")
        pipe.check_image(dst_rgb.shape[:2], "dst", f"destination image {dst_image}")
        for path, mask in zip(query, queries, strict=True):
            problem = pipe.query_problem(mask, src_rgb.shape[:2])
            if problem:
                raise OmamaError(f"{path}: {problem}")
        matches = pipe.match_frame(src_rgb, dst_rgb, queries, candidates=cands)
        latency = pipe.last_latency_ms
        described = pipe.describe()
    out.mkdir(parents=True, exist_ok=True)
    names = _unique_names(query)
    objects = []
    for path, name, match in zip(query, names, matches, strict=True):
        mask_path = out / f"{name}_mask.png"
        _write_mask_png(mask_path, match.mask)
        objects.append({"name": name, "query": str(path), "mask_png": str(mask_path),
                        "rle": rle.encode(match.mask), **match.to_json()})  # fmt: skip
    overlay_path = out / "overlay.png"
    _write_rgb_png(overlay_path, render_overlay(src_rgb, dst_rgb, names, queries, matches))
    result = {
        "src_image": str(src_image),
        "dst_image": str(dst_image),
        "candidates": str(candidates) if candidates else "fastsam",
        **described,
        "objects": objects,
        "latency_ms": {k: round(v, 3) for k, v in latency.items()},
        "overlay_png": str(overlay_path),
    }
    write_json(out / "result.json", result, indent=2)
    for obj in objects:
        seen = "visible" if obj["visible"] else "not visible"
        chosen = (
            f"candidate {obj['candidate']} of {obj['candidates']}"
            if obj["candidate"] >= 0
            else "no candidates"
        )
        typer.echo(f"{obj['name']}: {seen}, confidence {obj['confidence']:.3f}, {chosen} -> "
                   f"{obj['mask_png']}")  # fmt: skip
    stages = ", ".join(f"{k} {v:.0f}" for k, v in latency.items() if k != "total")
    typer.echo(f"latency {latency['total']:.0f} ms on {described['backend']} "
               f"({described['device']}): {stages}")  # fmt: skip
    typer.echo(f"wrote {overlay_path} and {out / 'result.json'}")


# ----------------------------------------------------------------------------- video


@app.command("video")
def video_command(
    src_video: Path = typer.Argument(..., help="Source video (where the query masks are)."),
    dst_video: Path = typer.Argument(..., help="Destination video (frames paired by index)."),
    query: list[str] = typer.Option(
        ...,
        "--query",
        "-q",
        help="TRACK: a folder of <frame>.png masks (or of one such folder per object), a JSON "
        "{frame: RLE} or {object: {frame: RLE}}, or an Ego-Exo4D annotation.json (with --cam). "
        "Repeatable.",
    ),
    objects: list[str] = typer.Option([], "--object", help="Only these objects (repeatable)."),
    cam: str | None = typer.Option(
        None, "--cam", help="Source camera of an annotation.json track (e.g. cam01)."
    ),
    candidates: Path | None = typer.Option(
        None,
        "--candidates",
        help="Precomputed candidates of the destination video, by its frame index: a folder of "
        "<frame>_masks.npz + <frame>_boxes.npy (as `omama data masks` writes per camera) or a "
        "JSON {frame: [RLE, ...]} at the destination video's size. Frames without an entry "
        "use FastSAM, or get no candidates when the artifacts hold none.",
    ),
    direction: str | None = typer.Option(
        None, "--direction", help="exo2ego or ego2exo; must be the artifacts' (default: theirs)."
    ),
    out: Path = typer.Option(Path("omama_out"), "--out", "-o", help="Output folder."),
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
    src_cam: str | None = typer.Option(None, "--src-cam", help="Source camera name in results."),
    dst_cam: str | None = typer.Option(
        None, "--dst-cam", help="Destination camera name in results."
    ),
    checkpoint_every: int = typer.Option(
        50, "--checkpoint-every", min=1, help="Write partial results every this many frames."
    ),
    mask_size: str = typer.Option(
        "image", "--mask-size", help="image (the destination video's size) or model."
    ),
    artifacts: Path = _artifacts_option(),
    backend: str = typer.Option("auto", "--backend", help=BACKEND_HELP),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    precision: str = typer.Option("auto", "--precision", help=PRECISION_HELP),
    threads: int | None = typer.Option(None, "--threads", min=1, help="Threads per model."),
    weights: list[Path] = typer.Option([], "--weights", help=WEIGHTS_HELP),
) -> None:
    """Track query objects from a source video into a destination video.

    Writes results.json (Ego-Exo4D results format, scored by `omama eval`), summary.json
    (frames, objects, fps, per-stage p50/p90 latency, skips), and with --overlay an overlay
    MP4. Frames that fail to decode are reported and skipped; partial results are written
    every --checkpoint-every frames, so an interrupted run continues with --resume.
    Candidate masks come from FastSAM in the artifacts or, with --candidates, from your own
    segmenter (needed for artifacts exported with --no-fastsam-export).

    Example: omama-run video cam01.mp4 aria01.mp4 --query annotation.json --cam cam01 --overlay

    Example: omama-run video cam01.mp4 aria01.mp4 --query cup_masks/ --candidates
    ego_candidates.json --artifacts artifacts_no_fastsam
    """
    from runtime.candidates import open_video_candidates
    from runtime.manifest import load_manifest
    from runtime.pipeline import VideoRun, default_cams, format_video_summary, run_video
    from runtime.tracks import load_tracks

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
    tracks = load_tracks(query, objects, cam)
    video_candidates = open_video_candidates(candidates) if candidates is not None else None
    default_src, default_dst = default_cams(manifest.direction, src_video, dst_video)
    track_cams = tracks.cams()
    if len(track_cams) == 1 and src_cam is None:
        src_cam = track_cams[0]
    takes = tracks.takes()
    run = VideoRun(
        src_video=src_video,
        dst_video=dst_video,
        tracks=tracks,
        out_dir=out,
        take=take or (takes[0] if len(takes) == 1 else "video"),
        src_cam=src_cam or default_src,
        dst_cam=dst_cam or default_dst,
        max_frames=max_frames,
        resume=resume,
        overlay=overlay,
        checkpoint_every=checkpoint_every,
        candidates=video_candidates,
    )
    with _open_pipeline(artifacts, backend, device, precision, threads, mask_size, weights) as pipe:
        summary = run_video(pipe, run)
    typer.echo(format_video_summary(summary))
    if gt is not None:
        _print_metrics(gt, Path(summary["results"]), manifest.direction, out)


def _print_metrics(gt: Path, results: Path, direction: str, out: Path) -> None:
    from runtime.atomic import write_json
    from runtime.evaluate import evaluate_files, format_summary

    report = evaluate_files(gt, results, direction, workers=1)
    typer.echo("")
    typer.echo(format_summary(report))
    write_json(out / "metrics.json", report, indent=2)
    typer.echo(f"metrics written to {out / 'metrics.json'}")


# ----------------------------------------------------------------------------- take


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
    gt: bool = typer.Option(
        False, "--gt", help="Score against the take's annotation and print the official metrics."
    ),
    use_candidates: bool = typer.Option(
        True,
        "--candidates/--no-candidates",
        help="Use precomputed candidates (ROOT/Masks_<SPLIT>_<DIRECTION>) where present.",
    ),
    mask_size: str = typer.Option(
        "model",
        "--mask-size",
        help="model (the model's destination size, e.g. 700x700 ego, as O-MaMa writes "
        "predictions) or image (the processed frame's size).",
    ),
    artifacts: Path = _artifacts_option(),
    backend: str = typer.Option("auto", "--backend", help=BACKEND_HELP),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    precision: str = typer.Option("auto", "--precision", help=PRECISION_HELP),
    threads: int | None = typer.Option(None, "--threads", min=1, help="Threads per model."),
    weights: list[Path] = typer.Option([], "--weights", help=WEIGHTS_HELP),
) -> None:
    """Predict every object and exo camera of a processed take (one results JSON).

    Uses precomputed candidates where present, else FastSAM; each frame's shared view is
    encoded once for all cameras and objects. With --gt, also writes gt.json and
    metrics.json and prints the official Ego-Exo4D metrics.

    Example: omama-run take data/processed/<take_uid> --artifacts artifacts --gt
    """
    from runtime.evaluate import format_summary
    from runtime.pipeline import format_take_summary, run_take

    out = out or Path("omama_out") / take_dir.name
    with _open_pipeline(artifacts, backend, device, precision, threads, mask_size, weights) as pipe:
        summary = run_take(pipe, take_dir, out, max_frames, use_candidates, gt)
    typer.echo(format_take_summary(summary))
    if gt and "report" in summary:
        typer.echo("")
        typer.echo(format_summary(summary["report"]))
        typer.echo(f"GT written to {summary['gt']}, metrics to {out / 'metrics.json'}")
    elif gt:
        typer.echo("no observation was predicted: nothing to score")


# ----------------------------------------------------------------------------- verify


@app.command("verify")
def verify_command(
    artifacts: Path = typer.Argument(
        ..., help="Artifacts folder written by `omama export` (with its golden/ files)."
    ),
    backend: str = typer.Option("auto", "--backend", help=BACKEND_HELP),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    precision: str = typer.Option("auto", "--precision", help=PRECISION_HELP),
    threads: int | None = typer.Option(None, "--threads", min=1, help="Threads per model."),
    weights: list[Path] = typer.Option([], "--weights", help=WEIGHTS_HELP),
) -> None:
    """Re-verify the artifacts on this machine, without torch.

    Runs the golden inputs the export stored (golden/<model>.npz) through the same sessions
    `omama-run pair | video | take` use, compares with the stored torch fp32 outputs under
    the manifest's tolerances (features, similarities, argmax agreement, FastSAM detections
    and masks), prints one table and writes ARTIFACTS/verify_<backend>_<precision>.json.
    Exits 1 naming the first output that failed.

    Example: omama-run verify artifacts --backend onnxruntime --device cpu --precision fp16
    """
    from runtime.verification.replay import verify_folder
    from runtime.verification.tolerances import format_table

    report = verify_folder(
        artifacts, backend, device, precision, threads, weights or (), echo=typer.echo
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
