"""Video I/O memory and speed: a 10-minute synthetic pair through read -> draw -> write.

Generates a source and a destination video (default 10 min at 30 fps, 224x224, H.264) with
:class:`runtime.video.VideoWriter`, then runs, in a fresh process so that generation does
not count, the runtime's video loop: :class:`runtime.video.PrefetchReader` decoding both
videos ahead into a bounded queue, an overlay panel per pair
(:func:`runtime.overlay.render_pair`, standing in for inference), and a
:class:`runtime.video.VideoWriter` encoding the panels from its own bounded queue.
A sampling thread records the resident set size (RSS) along the way.

Reports the peak RSS, the RSS at 10 / 25 / 50 / 75 / 100 % of the frames (flat memory
means these stay level), the growth per 1000 frames after the first quarter, frames per
second, the largest queue fill seen, and for scale the memory that holding every decoded
frame would take.

Run: ``python -m benchmarks.bench_video_io [--minutes 10] [--fps 30] [--size 224]``.
Writes ``benchmarks/results/bench_video_io.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.common import (
    RESULTS_DIR,
    load_average,
    machine_record,
    moving_frame,
    rss_reader,
    write_result,
)
from runtime.info import peak_rss_mb

RESULTS = RESULTS_DIR / "bench_video_io.json"
QUEUE_SIZE = 8


def generate(path: Path, n: int, size: int, fps: int, shift: int) -> float:
    from runtime.video import VideoWriter

    start = time.perf_counter()
    with VideoWriter(path, fps=fps, preset="ultrafast") as writer:
        for i in range(n):
            writer.write(moving_frame(i, size, shift))
    return time.perf_counter() - start


def run_pipeline(src: Path, dst: Path, out: Path) -> dict:
    """The measured loop (runs in its own process)."""
    import numpy as np

    from runtime.overlay import render_pair
    from runtime.video import PrefetchReader, VideoWriter

    rss_mb, _ = rss_reader(os.getpid())
    baseline_mb = rss_mb()
    samples: list[tuple[int, float]] = []
    done = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append((done[0], rss_mb()))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    with PrefetchReader(src, dst, queue_size=QUEUE_SIZE) as reader:
        total = len(reader)
        h, w = reader.src.info.height, reader.src.info.width
        query = np.zeros((h, w), np.uint8)
        query[60:100, 60:100] = 1
        with VideoWriter(out, fps=reader.src.info.fps, queue_size=QUEUE_SIZE) as writer:
            for pair in reader:
                pred = (pair.dst[:, :, 0] > 200).astype(np.uint8)
                writer.write(render_pair(pair.src, query, pair.dst, pred, confidence=0.9))
                done[0] += 1
        stats = reader.stats
    wall_s = time.perf_counter() - start
    stop.set()
    sampler.join()
    samples.append((done[0], rss_mb()))
    peak_mb = peak_rss_mb()

    def rss_at(fraction: float) -> float:
        target = fraction * total
        return min(samples, key=lambda s: abs(s[0] - target))[1]

    quarter = [s for s in samples if s[0] >= total / 4]
    slope = np.polyfit([s[0] for s in quarter], [s[1] for s in quarter], 1)[0] * 1000
    return {
        "frames": total,
        "pairs": stats.pairs,
        "skipped": len(stats.skipped),
        "frame_hw": [h, w],
        "wall_s": round(wall_s, 2),
        "pairs_per_s": round(stats.pairs / wall_s, 1),
        "baseline_rss_mb": round(baseline_mb, 1),
        "peak_rss_mb": round(peak_mb, 1),
        "rss_mb_at": {f"{int(100 * f)}%": round(rss_at(f), 1) for f in (0.1, 0.25, 0.5, 0.75, 1)},
        "rss_growth_mb_per_1000_frames_after_25%": round(float(slope), 3),
        "max_prefetch_queue": stats.max_queued,
        "max_writer_queue": writer.max_queued,
        "queue_bound": QUEUE_SIZE,
        "frames_written": writer.frames_written,
        "all_frames_in_memory_mb": round(2 * total * h * w * 3 / 2**20, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument(
        "--pipeline", nargs=3, metavar=("SRC", "DST", "OUT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.pipeline:  # the child process
        print(json.dumps(run_pipeline(*map(Path, args.pipeline))))
        return

    import av

    n = round(args.minutes * 60 * args.fps)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src, dst, out = tmp / "src.mp4", tmp / "dst.mp4", tmp / "overlay.mp4"
        print(f"generating 2 x {n} frames ({args.minutes:g} min at {args.fps} fps, {args.size}px)")
        gen_s = generate(src, n, args.size, args.fps, 0) + generate(dst, n, args.size, args.fps, 60)
        sizes_mb = [p.stat().st_size / 2**20 for p in (src, dst)]
        print(f"generated in {gen_s:.0f} s ({sizes_mb[0]:.1f} + {sizes_mb[1]:.1f} MB)")
        load_start = load_average()
        child = subprocess.run(
            [
                sys.executable,
                "-m",
                "benchmarks.bench_video_io",
                "--pipeline",
                str(src),
                str(dst),
                str(out),
            ],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parents[1],
        )
        run = json.loads(child.stdout.strip().splitlines()[-1])
        run["overlay_video_mb"] = round(out.stat().st_size / 2**20, 1) if out.exists() else None
    result = {
        "benchmark": "bench_video_io",
        "settings": {
            "minutes": args.minutes,
            "fps": args.fps,
            "size_px": args.size,
            "codec": "libx264 yuv420p",
            "queue_size": QUEUE_SIZE,
        },
        "generation_s": round(gen_s, 1),
        "input_videos_mb": [round(s, 1) for s in sizes_mb],
        "run": run,
        "machine": machine_record(
            load_start,
            ("numpy", "av"),
            torch_threads=None,  # torch is not involved: the runtime is torch-free
            ffmpeg={k: ".".join(map(str, v)) for k, v in av.library_versions.items()},
        ),
    }
    write_result(RESULTS, result)
    print(
        f"{run['pairs']} pairs in {run['wall_s']} s ({run['pairs_per_s']} pairs/s); peak RSS "
        f"{run['peak_rss_mb']} MB (baseline {run['baseline_rss_mb']} MB); RSS at "
        + ", ".join(f"{k} {v}" for k, v in run["rss_mb_at"].items())
        + f" MB; growth {run['rss_growth_mb_per_1000_frames_after_25%']} MB / 1000 frames; "
        f"holding all frames would take {run['all_frames_in_memory_mb']} MB"
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
