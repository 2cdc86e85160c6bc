"""Benchmark ``omama data prepare``: mask decoding, frame extraction, whole takes.

1. Mask decoding: the 64 real masks of ``tests/fixtures/eval_casa_gio`` (3024 px RLEs) are
   compressed to ``encodedMask`` strings, then decoded and checked as prepare does
   (LZString, then the RLE run check); skipped when the fixture is absent.
2. Frame extraction at Ego-Exo4D resolution: an ego (1408x1408) and an exo (3840x2160)
   H.264 video are generated, then ``extract_frames`` decodes each once and writes every
   ``--stride``-th frame (downscaled by 2 / 4, JPEG q95).
3. Whole takes: small synthetic takes (``omama data synth --small``) prepared with 1 and
   with 2 workers.

    python -m benchmarks.bench_prepare [--frames 60] [--stride 10] [--num-takes 4]

Prints the numbers and saves ``benchmarks/results/bench_prepare.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import RESULTS_DIR, load_average, machine_record, write_result
from omama_train.data.encoded_masks import decode_encoded_mask
from omama_train.data.frames import extract_frames
from omama_train.data.lzstring import compress_to_encoded_uri_component
from omama_train.data.prepare import prepare
from omama_train.data.synth import synthesize, write_video
from runtime.rle import rle_runs

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "eval_casa_gio" / "exo2egoGT.json"
RESULTS = RESULTS_DIR / "bench_prepare.json"


def bench_masks(repeats: int = 5) -> dict | None:
    if not FIXTURE.is_file():
        print(f"mask decoding: skipped ({FIXTURE} not present)")
        return None
    gt = json.loads(FIXTURE.read_text())["annotations"]
    rles = [
        r
        for take in gt.values()
        for per_cam in take["masks"].values()
        for per_frame in per_cam.values()
        for r in per_frame.values()
    ]
    entries = [
        {
            "width": r["size"][1],
            "height": r["size"][0],
            "encodedMask": compress_to_encoded_uri_component(r["counts"]),
        }
        for r in rles
    ]
    decode_ms, check_ms = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        for entry in entries:
            decode_encoded_mask(entry)
        decode_ms.append((time.perf_counter() - start) * 1e3 / len(entries))
        start = time.perf_counter()
        for r in rles:
            rle_runs(r["counts"])
        check_ms.append((time.perf_counter() - start) * 1e3 / len(rles))
    result = {
        "masks": len(entries),
        "mean_counts_chars": round(statistics.mean(len(r["counts"]) for r in rles)),
        "mean_encoded_chars": round(statistics.mean(len(e["encodedMask"]) for e in entries)),
        "decode_and_check_ms_per_mask": round(min(decode_ms), 3),
        "rle_check_ms_per_mask": round(min(check_ms), 3),
    }
    print(
        f"mask decoding: {result['decode_and_check_ms_per_mask']} ms/mask "
        f"(of which RLE check {result['rle_check_ms_per_mask']} ms), "
        f"{result['masks']} real masks, {result['mean_counts_chars']} RLE chars"
    )
    return result


def _frames(width: int, height: int, n: int):
    rng = np.random.default_rng(0)
    base = (rng.random((height // 8, width // 8, 3)) * 255).astype(np.uint8)
    tile = np.kron(base, np.ones((8, 8, 1), np.uint8))
    for i in range(n):
        yield np.roll(tile, 4 * i, axis=1)


def bench_extract(tmp: Path, n_frames: int, stride: int) -> dict:
    results = {}
    for view, (width, height), scale in (
        ("ego", (1408, 1408), 2),
        ("exo", (3840, 2160), 4),
    ):
        video = tmp / f"{view}.mp4"
        start = time.perf_counter()
        write_video(video, _frames(width, height, n_frames), (width, height))
        encode_s = time.perf_counter() - start
        wanted = list(range(0, n_frames, stride))
        out = tmp / view
        out.mkdir()

        def write_frame(index: int, jpeg: bytes, out: Path = out) -> None:
            (out / f"{index}.jpg").write_bytes(jpeg)

        start = time.perf_counter()
        got = extract_frames(video, wanted, write_frame, scale, 95)
        seconds = time.perf_counter() - start
        assert got.written == wanted and got.error is None
        results[view] = {
            "video_px": [width, height],
            "frames_decoded": got.frames_decoded,
            "frames_written": len(got.written),
            "extract_s": round(seconds, 3),
            "ms_per_decoded_frame": round(seconds * 1e3 / got.frames_decoded, 2),
            "video_encode_s": round(encode_s, 2),
        }
        print(
            f"extract {view} {width}x{height}: {seconds:.2f} s for {got.frames_decoded} frames "
            f"decoded, {len(got.written)} written ({results[view]['ms_per_decoded_frame']} ms "
            "per decoded frame)"
        )
    return results


def bench_takes(tmp: Path, num_takes: int) -> dict:
    data = tmp / "synth"
    summary = synthesize(data, num_takes, small=True, seed=0)
    relations = {}
    for path in sorted((data / "annotations").glob("relations_*.json")):
        relations.update(json.loads(path.read_text())["annotations"])
    merged = data / "annotations" / "relations_all.json"
    merged.write_text(json.dumps({"annotations": relations}))
    results = {"takes": num_takes, "frames_per_video": summary["frames_per_video"]}
    for workers in (1, 2):
        out = tmp / f"root{workers}"
        start = time.perf_counter()
        report = prepare(merged, data / "takes", out, workers=workers, progress=False)
        seconds = time.perf_counter() - start
        results[f"workers_{workers}"] = {
            "seconds": round(seconds, 2),
            "frames_written": report.frames_written,
            "masks_kept": report.summary()["masks_kept"],
        }
        print(
            f"prepare {num_takes} small takes, {workers} worker(s): {seconds:.2f} s, "
            f"{report.frames_written} frames, {report.summary()['masks_kept']} masks"
        )
        shutil.rmtree(out)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=60, help="frames per full-size video")
    parser.add_argument("--stride", type=int, default=10, help="write every N-th frame")
    parser.add_argument("--num-takes", type=int, default=4, help="small synthetic takes")
    args = parser.parse_args()
    load_at_start = load_average()
    result = {"masks": bench_masks()}
    with tempfile.TemporaryDirectory() as tmp:
        result["extract"] = bench_extract(Path(tmp), args.frames, args.stride)
        result["takes"] = bench_takes(Path(tmp), args.num_takes)
    packages = ("av", "opencv-python-headless", "numpy", "pycocotools")
    result["machine"] = machine_record(load_at_start, packages)
    write_result(RESULTS, result)
    print(f"saved {RESULTS}")


if __name__ == "__main__":
    main()
