"""``omama serve`` throughput and latency over HTTP, with and without batching.

One replica (1 CPU declared, 1 thread per model) on a local Ray, the small ``--random-init``
export (ViT-S/14 with one block, exo 140x252 / ego 168x168 px, the YOLOv8n-seg FastSAM
stand-in at 128 px) and the frames of a synthetic take (``omama data synth --small``: exo
896x504 source, ego 448x448 destination, sent as JPEG). Clients ask about frames the way
several programs watching one camera do: each destination frame gets
``--requests-per-frame`` requests in a row, one query object each, so requests in flight
together mostly share their destination frame.

For ``--max-batch 8`` and ``--max-batch 1`` (no batching), at each concurrency (client
threads, each sending its next request when the last one is answered): requests/s, p50 /
p90 latency as the client sees it, the mean batch size and the destination encodes per
request (from ``/v1/info``'s counters). Request bodies are encoded before the clock starts.

Usage: ``python -m benchmarks.bench_serve [--concurrency 1 4 8] [--requests 48]``.
Writes ``benchmarks/results/bench_serve.json``; the export and the synthetic take are kept
in ``--work`` (default ``/tmp/omama_bench_serve``) and reused.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.common import RESULTS_DIR, load_average, log, machine_record, write_result

os.environ.setdefault("YOLO_OFFLINE", "1")

RESULTS = RESULTS_DIR / "bench_serve.json"
EXO, EGO = "cam01", "aria01_214-1"
BATCH_WAIT_MS = 10.0


def build_inputs(work: Path, frames: int) -> tuple[Path, list[dict]]:
    """(artifacts folder, one entry per frame: encoded src / dst JPEGs and query RLEs)."""
    import cv2

    from omama_train.data.prepare import prepare
    from omama_train.data.synth import synthesize
    from runtime.egoexo import ProcessedRoot
    from runtime.video import VideoReader

    artifacts = work / "artifacts"
    if not (artifacts / "manifest.json").is_file():
        log(f"exporting the small random-init artifacts to {artifacts}")
        subprocess.run([sys.executable, "-c", "from omama_train.cli import main; main()",
                        "export", "--random-init", "--out", str(artifacts)],
                       check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    synth, root = work / "synth", work / "root"
    synthesize(synth, 1, small=True, seed=0, frames=frames, annotate_every=1)
    if not (root / "processed").is_dir():
        prepare(synth / "annotations" / "relations_test.json", synth / "takes", root,
                progress=False)  # fmt: skip
    index = ProcessedRoot(root)
    take = index.takes()[0]
    videos = synth / "takes" / "synth_tabletop_000" / "frame_aligned_videos"
    entries = []
    with VideoReader(videos / f"{EXO}.mp4") as src, VideoReader(videos / f"{EGO}.mp4") as dst:
        for frame in range(frames):
            rles = [r for obj in index.objects(take)
                    if (r := index.mask_rle(take, obj, EXO, frame)) is not None]  # fmt: skip
            if not rles:
                continue
            jpeg = [cv2.imencode(".jpg", view.read(frame)[:, :, ::-1],
                                 [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
                    for view in (src, dst)]  # fmt: skip
            entries.append({"src": jpeg[0], "dst": jpeg[1], "queries": rles})
    return artifacts, entries


def request_bodies(entries: list[dict], count: int, per_frame: int) -> list[bytes]:
    """``count`` JSON bodies: ``per_frame`` in a row for each frame, one query each."""
    from runtime.serve.client import match_body

    bodies = []
    for i in range(count):
        entry = entries[(i // per_frame) % len(entries)]
        query = entry["queries"][i % len(entry["queries"])]
        bodies.append(json.dumps(match_body(entry["src"], entry["dst"], [query])).encode())
    return bodies


def measure(url: str, bodies: list[bytes], concurrency: int) -> dict:
    """Send ``bodies`` from ``concurrency`` client threads; requests/s, p50 / p90 ms."""
    import numpy as np

    from runtime.serve.client import info, request_json

    def send(body: bytes) -> tuple[float, dict]:
        t0 = time.perf_counter()
        status, answer = request_json(url + "/v1/match", body)
        if status != 200:
            raise RuntimeError(f"request failed with {status}: {answer}")
        return 1e3 * (time.perf_counter() - t0), answer

    before = info(url)["counters"]
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(send, bodies))
    seconds = time.perf_counter() - start
    after = info(url)["counters"]
    latency = np.array([ms for ms, _ in results])
    done = {k: after[k] - before[k] for k in after}
    return {
        "concurrency": concurrency,
        "requests": len(bodies),
        "seconds": round(seconds, 3),
        "requests_per_s": round(len(bodies) / seconds, 2),
        "p50_ms": round(float(np.percentile(latency, 50)), 1),
        "p90_ms": round(float(np.percentile(latency, 90)), 1),
        "mean_batch": round(done["requests"] / max(done["batches"], 1), 2),
        "dst_encodes_per_request": round(done["dst_encodes"] / max(done["requests"], 1), 3),
    }


def run_mode(artifacts: Path, bodies: list[bytes], max_batch: int, port: int, args) -> list[dict]:
    """Start the service with ``max_batch``, warm it up, measure every concurrency, stop."""
    from runtime.serve.app import Resources, start_service
    from runtime.serve.service import ServeConfig

    config = ServeConfig(str(artifacts), backend="onnxruntime", device="cpu", threads=1,
                         max_batch=max_batch, batch_wait_ms=BATCH_WAIT_MS)  # fmt: skip
    running = start_service(config, Resources(1, 1.0, 0.0), port=port)
    try:
        measure(running.url, bodies[: max(args.concurrency)], max(args.concurrency))  # warm-up
        rows = []
        for concurrency in args.concurrency:
            row = {"max_batch": max_batch, **measure(running.url, bodies, concurrency)}
            log(json.dumps(row))
            rows.append(row)
        return rows
    finally:
        running.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--requests", type=int, default=48, help="Requests per measurement.")
    parser.add_argument("--requests-per-frame", type=int, default=4)
    parser.add_argument("--frames", type=int, default=6, help="Synthetic frames to cycle.")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--work", type=Path, default=Path("/tmp/omama_bench_serve"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    load_at_start = load_average()
    artifacts, entries = build_inputs(args.work, args.frames)
    bodies = request_bodies(entries, args.requests, args.requests_per_frame)
    rows = []
    for mode, max_batch in enumerate((8, 1)):  # a port per mode: the last proxy may linger
        rows += run_mode(artifacts, bodies, max_batch, args.port + mode, args)
    result = {
        "benchmark": "omama serve over HTTP (1 replica, 1 CPU, 1 thread per model, ORT CPU)",
        "artifacts": "omama export --random-init (small shapes)",
        "batch_wait_ms": BATCH_WAIT_MS,
        "requests_per_frame": args.requests_per_frame,
        "mean_body_kb": round(sum(map(len, bodies)) / len(bodies) / 1024, 1),
        "rows": rows,
        "machine": machine_record(load_at_start, ["ray", "onnxruntime", "numpy"]),
    }
    log(f"wrote {write_result(args.out, result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
