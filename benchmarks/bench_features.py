"""Feature cache at the real image sizes: backbone throughput, cache size, read latency.

A throw-away processed root holds one take with ``--images`` frames of an ego camera
(704 x 704 jpg -> 700 x 700 model input, 50 x 50 tokens) and an exo camera (540 x 960 ->
532 x 952, 38 x 68 tokens); one pair per frame. ``omama_train.features.build.build_cache`` runs
each backbone (seeded random weights: speed and size do not depend on the values) on this
CPU, then the reader is timed: one map (``get``, a copy of one (768, h, w) fp16 map out of
the memory map) and a batch of maps (``get_many``).

Reported per backbone: images/s per view (model compute incl. preprocessing and the fp16
write), MB per 1000 images per view as stored (fp16 maps + .npy headers), read latency.

Usage: ``python -m benchmarks.bench_features [--backbones dinov2_vits14_reg dinov2_vitb14_reg]
[--images 2] [--batch-size 2] [--threads 2]``. Writes ``benchmarks/results/bench_features.json``.
Timings on a shared CPU depend on its load: the JSON records the load average and an fp32
matmul GFLOPS yardstick at start and end.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import RESULTS_DIR, load_average, machine_record, write_result

RESULTS = RESULTS_DIR / "bench_features.json"
EGO, EXO = "aria01_214-1", "cam01"
SOURCE_SIZES = {EGO: (704, 704), EXO: (540, 960)}  # processed jpgs: ego / 2, exo / 4
TAKE = "bench-take"


def write_root(root: Path, frames: int) -> Path:
    """Processed root with ``frames`` textured jpgs per camera and the pairs file; returns it."""
    import cv2
    import numpy as np

    from runtime.egoexo import Pair, write_pairs

    rng = np.random.default_rng(0)
    for cam, (h, w) in SOURCE_SIZES.items():
        folder = root / "processed" / TAKE / cam
        folder.mkdir(parents=True)
        for frame in range(frames):
            # Smooth colour blobs plus grain: JPEG sizes and decode times like real frames.
            coarse = rng.integers(0, 256, (h // 32 + 1, w // 32 + 1, 3), dtype=np.uint8)
            image = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
            noise = rng.integers(-12, 13, (h, w, 3))
            image = np.clip(image.astype(np.int16) + noise, 0, 255).astype(np.uint8)
            cv2.imwrite(str(folder / f"{frame}.jpg"), image)
    pairs_file = root / "dataset_jsons" / "bench_exoego_pairs.json"
    write_pairs(pairs_file, [Pair(TAKE, "obj", EGO, EXO, f) for f in range(frames)], root)
    return pairs_file


def time_reads(cache_dir: Path, repeats: int) -> dict:
    """Median ms of ``get`` (one map) and ``get_many`` (all maps of the exo view)."""
    from omama_train.features.reader import FeatureCache

    cache = FeatureCache(cache_dir)
    keys = list(cache)
    exo_keys = [k for k in keys if EXO in k]
    get_ms, many_ms = [], []
    for i in range(repeats):
        take, cam, frame = keys[i % len(keys)].split("/")
        start = time.perf_counter()
        cache.get(take, cam, int(frame))
        get_ms.append((time.perf_counter() - start) * 1e3)
        start = time.perf_counter()
        cache.get_many(exo_keys)
        many_ms.append((time.perf_counter() - start) * 1e3)
    return {
        "get_one_map_ms": round(statistics.median(get_ms), 3),
        "get_many_maps": len(exo_keys),
        "get_many_ms": round(statistics.median(many_ms), 3),
    }


def matmul_gflops(threads: int, size: int = 2048, repeats: int = 5) -> float:
    """fp32 matmul speed now: a yardstick for the timings on a shared, busy CPU."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return round(2 * size**3 * repeats / (time.perf_counter() - start) / 1e9, 1)


def measure_backbone(root: Path, pairs_file: Path, cache_dir: Path, name: str, args) -> dict:
    """Build one backbone's cache of ``root``: throughput per view, size, read latency."""
    import numpy as np

    from omama_train.features.build import build_cache

    start = time.perf_counter()
    report = build_cache(
        root,
        cache_dir,
        [pairs_file],
        name,
        random_init=True,
        device="cpu",
        batch_size=args.batch_size,
        progress=False,
    )
    rates = report["timing"]["images_per_s_per_view"]
    return {
        "backbone": name,
        "images_per_view": args.images,
        "batch_size": args.batch_size,
        "seconds_total_incl_model_build": round(time.perf_counter() - start, 2),
        "images_per_s": rates,
        "s_per_image": {view: round(1 / rate, 3) for view, rate in rates.items()},
        "mb_per_1000_images": {
            view: usage["mb_per_1000_images"] for view, usage in report["disk"].items()
        },
        "fp16_map_mb": {
            view: round(768 * int(np.prod(grid)) * 2 / 1e6, 3)
            for view, grid in (("ego", (50, 50)), ("exo", (38, 68)))
        },
        "reads": time_reads(cache_dir, repeats=20),
    }


def _print_runs(runs: list[dict]) -> None:
    print(
        f"{'backbone':<20} {'ego img/s':>10} {'exo img/s':>10} {'ego MB/1k':>10} "
        f"{'exo MB/1k':>10} {'get ms':>8} {'get_many ms':>12}"
    )
    for row in runs:
        print(
            f"{row['backbone']:<20} {row['images_per_s'].get('ego', 0):>10.3f} "
            f"{row['images_per_s'].get('exo', 0):>10.3f} "
            f"{row['mb_per_1000_images'].get('ego', 0):>10.1f} "
            f"{row['mb_per_1000_images'].get('exo', 0):>10.1f} "
            f"{row['reads']['get_one_map_ms']:>8.2f} {row['reads']['get_many_ms']:>12.2f}"
        )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--backbones", nargs="+", default=["dinov2_vits14_reg", "dinov2_vitb14_reg"]
    )
    parser.add_argument("--images", type=int, default=2, help="Frames per view.")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    import torch

    load_start = load_average()
    gflops_start = matmul_gflops(args.threads)
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-features-") as tmp:
        root = Path(tmp) / "root"
        pairs_file = write_root(root, args.images)
        for name in args.backbones:
            cache_dir = Path(tmp) / f"cache-{name}"
            runs.append(measure_backbone(root, pairs_file, cache_dir, name, args))
            print(json.dumps(runs[-1]), file=sys.stderr)
    result = {
        "benchmark": "bench_features",
        "device": "cpu",
        "source_sizes_hw": {"ego": SOURCE_SIZES[EGO], "exo": SOURCE_SIZES[EXO]},
        "model_input_sizes_hw": {"ego": [700, 700], "exo": [532, 952]},
        "machine": machine_record(
            load_start,
            ("torch", "timm", "numpy"),
            torch_threads=torch.get_num_threads(),
            matmul_fp32_gflops_at_start=gflops_start,
            matmul_fp32_gflops_at_end=matmul_gflops(args.threads),
        ),
        "runs": runs,
    }
    write_result(args.out, result)
    _print_runs(runs)
    print(f"saved {args.out}")
    return result


if __name__ == "__main__":
    main()
