"""Peak memory of a full ``omama-run video`` run on a long synthetic pair.

``bench_video_io`` measured video I/O alone; this runs the REAL command end to end, as a
subprocess: ``omama-run video SRC DST --query TRACK --candidates CANDS --overlay --backend
onnxruntime`` on small random-init artifacts (``omama export --random-init
--no-fastsam-export``: ViT-S/14 backbones, exo 140x252 / ego 168x168 px), or with
``--fastsam-imgsz N`` on artifacts that include the YOLOv8n-seg FastSAM stand-in at N px and
no ``--candidates``.

Inputs (generated once and kept in ``--work``, default ``/tmp/omama_bench_video_rss``):

- a source (exo, 252x140) and a destination (ego, 168x168) H.264 video of ``--minutes`` at
  ``--fps`` (frames from :func:`benchmarks.common.moving_frame`, cropped to the view);
- a query track at 1 fps like the Ego-Exo4D annotations (every ``--query-every``-th frame),
  ``--objects`` objects (moving boxes), as a JSON ``{object: {frame: RLE}}``;
- candidates for those destination frames, ``--candidates-per-frame`` boxes and ellipses,
  as a JSON ``{frame: [RLE, ...]}`` (the ``--candidates`` form for users' own segmenters).

A sampler reads the child's resident set size (psutil, else ``/proc/PID/status`` VmRSS)
every ``--sample-s`` seconds. Reports the peak RSS, the RSS at 10 / 50 / 90 % of the run's
wall time (flat memory keeps these level), the growth per minute over the last 80 % of the
run (a least-squares slope), frames read and inferred (from the run's summary.json), wall
time, and the machine with its load average.

Run: ``python -m benchmarks.bench_video_rss [--minutes 10] [--threads 1]``
(``--minutes 1`` for a smoke run). Writes ``benchmarks/results/bench_video_rss.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.common import (
    RESULTS_DIR,
    ellipse_mask,
    load_average,
    machine_record,
    moving_frame,
    rss_reader,
    write_result,
)
from benchmarks.common import log as _log

os.environ.setdefault("YOLO_OFFLINE", "1")

RESULTS = RESULTS_DIR / "bench_video_rss.json"
SRC_HW, DST_HW = (140, 252), (168, 168)  # the random-init export's exo / ego model sizes
RECIPE_VERSION = 1


# ----------------------------------------------------------------------------- inputs


def _view_frame(i: int, size_hw: tuple[int, int], shift: int) -> np.ndarray:
    """The moving test pattern, cropped from its square to an (H, W) view."""
    h, w = size_hw
    return np.ascontiguousarray(moving_frame(i, max(h, w), shift)[:h, :w])


def _write_video(path: Path, n: int, size_hw: tuple[int, int], fps: int, shift: int) -> None:
    from runtime.video import VideoWriter

    with VideoWriter(path, fps=fps, preset="ultrafast") as writer:  # renamed into place at close
        for i in range(n):
            writer.write(_view_frame(i, size_hw, shift))


def _box(size_hw: tuple[int, int], y: int, x: int, h: int, w: int) -> np.ndarray:
    mask = np.zeros(size_hw, np.uint8)
    mask[max(y, 0) : y + h, max(x, 0) : x + w] = 1
    return mask


def query_track(frames: list[int], objects: int) -> dict:
    """``{object: {frame: RLE}}`` on the source view: boxes drifting across the frame."""
    from runtime import rle

    h, w = SRC_HW
    track: dict[str, dict[str, dict]] = {}
    for k in range(objects):
        per_frame = {}
        for frame in frames:
            x = (frame // 7 + 60 * k) % (w - 40)
            y = 20 + (35 * k) % (h - 60)
            per_frame[str(frame)] = rle.encode(_box(SRC_HW, y, x, 30, 36))
        track[f"object_{k}"] = per_frame
    return track


def candidate_masks(frames: list[int], per_frame: int, seed: int = 0) -> dict:
    """``{frame: [RLE, ...]}`` on the destination view: ``per_frame`` boxes and ellipses."""
    from runtime import rle

    rng = np.random.default_rng(seed)
    h, w = DST_HW
    out = {}
    for frame in frames:
        masks = []
        for j in range(per_frame):
            cy, cx = rng.uniform(10, h - 10), rng.uniform(10, w - 10)
            ry, rx = rng.uniform(6, 40), rng.uniform(6, 40)
            if j % 2:
                mask = ellipse_mask(DST_HW, cy, cx, ry, rx)
            else:
                mask = _box(DST_HW, int(cy - ry), int(cx - rx), int(2 * ry), int(2 * rx))
            masks.append(rle.encode(mask))
        out[str(frame)] = masks
    return out


def prepare_inputs(work: Path, args: argparse.Namespace) -> dict[str, Path]:
    """Videos, track and candidates in ``work`` (kept when the recipe is unchanged)."""
    n = round(args.minutes * 60 * args.fps)
    recipe = {"version": RECIPE_VERSION, "frames": n, "fps": args.fps, "src_hw": SRC_HW,
              "dst_hw": DST_HW, "query_every": args.query_every, "objects": args.objects,
              "candidates_per_frame": args.candidates_per_frame}  # fmt: skip
    folder = work / f"inputs_{n}f_{args.fps}fps"
    paths = {"src": folder / "cam01.mp4", "dst": folder / "aria01.mp4",
             "track": folder / "track.json", "candidates": folder / "candidates.json"}  # fmt: skip
    recipe_path = folder / "recipe.json"
    if (
        recipe_path.is_file()
        and json.loads(recipe_path.read_text()) == json.loads(json.dumps(recipe))
        and all(p.is_file() for p in paths.values())
    ):
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    _log(f"bench_video_rss: generating 2 x {n} frames ({args.minutes:g} min at {args.fps} fps)")
    start = time.perf_counter()
    _write_video(paths["src"], n, SRC_HW, args.fps, 0)
    _write_video(paths["dst"], n, DST_HW, args.fps, 60)
    frames = list(range(0, n, args.query_every))
    paths["track"].write_text(json.dumps(query_track(frames, args.objects)))
    paths["candidates"].write_text(json.dumps(candidate_masks(frames, args.candidates_per_frame)))
    recipe_path.write_text(json.dumps(recipe))
    _log(f"bench_video_rss: inputs ready in {time.perf_counter() - start:.0f} s")
    return paths


def export_artifacts(work: Path, fastsam_imgsz: int) -> Path:
    """Random-init artifacts (``omama export``), without FastSAM or with it at
    ``fastsam_imgsz`` px; kept in ``work`` once written."""
    name = "artifacts_no_fastsam" if not fastsam_imgsz else f"artifacts_fastsam{fastsam_imgsz}"
    art = work / name
    if (art / "manifest.json").is_file():
        return art
    cmd = [str(Path(sys.executable).parent / "omama"), "export", "--random-init", "--no-verify",
           "--out", str(art)]  # fmt: skip
    cmd += ["--fastsam-imgsz", str(fastsam_imgsz)] if fastsam_imgsz else ["--no-fastsam-export"]
    _log(f"bench_video_rss: {' '.join(cmd[1:])}")
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return art


# ----------------------------------------------------------------------------- measurement


def run_measured(cmd: list[str], sample_s: float, log_path: Path) -> dict:
    """Run ``cmd``, sampling its RSS every ``sample_s``; (t_s, rss_mb) samples and timing."""
    samples: list[tuple[float, float]] = []
    with open(log_path, "w") as log:
        start = time.perf_counter()
        child = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        read, how = rss_reader(child.pid)
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                rss = read()
                if rss is not None:
                    samples.append((time.perf_counter() - start, rss))
                stop.wait(sample_s)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        code = child.wait()
        wall_s = time.perf_counter() - start
        stop.set()
        sampler.join()
    if code != 0:
        tail = log_path.read_text()[-2000:]
        raise SystemExit(f"omama-run video failed with exit status {code}:\n{tail}")
    return {"samples": samples, "wall_s": wall_s, "sampler": how}


def rss_profile(samples: list[tuple[float, float]], wall_s: float) -> dict:
    """Peak, RSS at 10/50/90 % of the wall time, growth per minute over the last 80 %."""
    times = np.array([t for t, _ in samples])
    rss = np.array([r for _, r in samples])

    def at(fraction: float) -> float:
        return float(rss[int(np.argmin(np.abs(times - fraction * wall_s)))])

    tail = times >= 0.2 * wall_s
    slope = np.polyfit(times[tail] / 60.0, rss[tail], 1)[0] if tail.sum() >= 2 else 0.0
    return {
        "samples": len(samples),
        "peak_rss_mb": round(float(rss.max()), 1),
        "rss_mb_at": {f"{int(100 * f)}%": round(at(f), 1) for f in (0.1, 0.5, 0.9)},
        "rss_growth_mb_per_min_after_20%": round(float(slope), 3),
    }


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the videos")
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--query-every", type=int, default=30, help="query frames: 1 fps at 30")
    parser.add_argument("--objects", type=int, default=2)
    parser.add_argument("--candidates-per-frame", type=int, default=12)
    parser.add_argument(
        "--fastsam-imgsz", type=int, default=0, help="0: --candidates; N: FastSAM at N px"
    )
    parser.add_argument("--threads", type=int, default=1, help="threads per model")
    parser.add_argument("--sample-s", type=float, default=0.5)
    parser.add_argument("--work", type=Path, default=Path("/tmp/omama_bench_video_rss"))
    parser.add_argument("--no-save", action="store_true", help="print only (smoke runs)")
    return parser.parse_args(argv)


def run_command(args: argparse.Namespace, inputs: dict[str, Path], art: Path) -> list[str]:
    """The measured ``omama-run video`` command line."""
    cmd = [str(Path(sys.executable).parent / "omama-run"), "video", str(inputs["src"]),
           str(inputs["dst"]), "--query", str(inputs["track"]), "--out", str(args.work / "run"),
           "--artifacts", str(art), "--overlay", "--backend", "onnxruntime", "--device", "cpu",
           "--threads", str(args.threads)]  # fmt: skip
    if not args.fastsam_imgsz:
        cmd += ["--candidates", str(inputs["candidates"])]
    return cmd


def run_record(run: dict, summary: dict, frames_in_videos: int) -> dict:
    """The result's ``run`` part: the RSS profile beside what the run's summary says."""
    return {
        **rss_profile(run["samples"], run["wall_s"]),
        "peak_rss_mb_child_ru_maxrss": summary["peak_rss_mb"],
        "frames_in_videos": frames_in_videos,
        "frames_read": summary["frames"],
        "frames_inferred": summary["frames_inferred_this_run"],
        "predictions": summary["predictions"],
        "candidate_frames": {k: v for k, v in summary["candidates"].items() if k != "source"},
        "skipped_frames": summary["skipped_frames"]["count"],
        "wall_s": round(run["wall_s"], 1),
        "run_wall_s": summary["wall_s"],
        "fps_end_to_end": summary["fps_end_to_end"],
        "fps_inferred": summary["fps_inferred"],
        "latency_total_p50_ms": summary["latency_ms"]["total"]["p50_ms"],
        "overlay_mb": round(Path(summary["overlay"]).stat().st_size / 2**20, 1),
    }


def print_result(result: dict) -> None:
    r, settings, machine = result["run"], result["settings"], result["machine"]
    loads = (machine["load_average_at_start"][0], machine["load_average_at_end"][0])
    rows = [
        ("frames read / inferred", f"{r['frames_read']} / {r['frames_inferred']}"),
        ("predictions", str(r["predictions"])),
        ("wall time", f"{r['wall_s']:.1f} s ({r['fps_end_to_end']} frames/s end to end)"),
        ("peak RSS (sampled)", f"{r['peak_rss_mb']:.1f} MB"),
        ("peak RSS (child ru_maxrss)", f"{r['peak_rss_mb_child_ru_maxrss']:.1f} MB"),
        *((f"RSS at {k} of the run", f"{v:.1f} MB") for k, v in r["rss_mb_at"].items()),
        ("RSS growth after 20%", f"{r['rss_growth_mb_per_min_after_20%']:+.2f} MB/min"),
        ("load average start / end", f"{loads[0]:.2f} / {loads[1]:.2f}"),
    ]
    width = max(len(k) for k, _ in rows)
    print(f"omama-run video, {settings['minutes']:g} min at {settings['fps']} fps "
          f"({settings['candidates']}):")  # fmt: skip
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    inputs = prepare_inputs(args.work, args)
    art = export_artifacts(args.work, args.fastsam_imgsz)
    cmd = run_command(args, inputs, art)
    load_start = load_average()
    _log(f"bench_video_rss: {' '.join(Path(c).name if '/' in c else c for c in cmd)}")
    run = run_measured(cmd, args.sample_s, args.work / "run.log")
    summary = json.loads((args.work / "run" / "summary.json").read_text())
    result = {
        "benchmark": "bench_video_rss",
        "command": "omama-run " + " ".join(cmd[1:]).replace(str(args.work), "WORK"),
        "settings": {
            "minutes": args.minutes,
            "fps": args.fps,
            "src_hw": SRC_HW,
            "dst_hw": DST_HW,
            "query_every": args.query_every,
            "objects": args.objects,
            "candidates": (
                f"--candidates JSON, {args.candidates_per_frame} per query frame"
                if not args.fastsam_imgsz
                else f"FastSAM stand-in (YOLOv8n-seg, random weights) at {args.fastsam_imgsz} px"
            ),
            "threads_per_model": args.threads,
            "sample_s": args.sample_s,
            "rss_sampler": run["sampler"],
        },
        "run": run_record(run, summary, round(args.minutes * 60 * args.fps)),
        "machine": machine_record(
            load_start,
            ("numpy", "onnxruntime", "av"),
            torch_threads=None,  # the runtime is torch-free
            threads_per_model=args.threads,
        ),
    }
    print_result(result)
    if not args.no_save:
        print(f"wrote {write_result(RESULTS, result)}")


if __name__ == "__main__":
    main()
