"""Descriptor pooling and matcher speed on CPU: loop reference vs separable torch vs numpy.

For an ego image (700 x 700, 768 x 50 x 50 features) and N candidate masks, times

* ``loop``: the O-MaMa way: upsample the map once to 175 x 175, then per mask a nearest
  resize, a masked sum over the whole map and a box mean (Python loop over masks);
* ``torch``: ``omama_train.models.descriptors.object_descriptors`` (separable weights and
  one batched matmul);
* ``numpy``: the torch-free twin ``runtime.pooling.object_descriptors``;

and the matcher forward (official exo2ego config, random weights) for B objects sharing
one source and one destination frame, in the automatically chosen attention order and in
the standard one (keys/values of every token). Each thread count runs in its own process, with the
BLAS/OpenMP thread variables set before numpy and torch load.

Usage: ``python -m benchmarks.bench_descriptors [--threads 1 2] [--counts 32 64 128]``.
Writes ``benchmarks/results/bench_descriptors.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from benchmarks.common import RESULTS_DIR, blob_masks, load_average, machine_record, write_result
from benchmarks.reference import loop_reference
from runtime.timing import median_ms

RESULTS = RESULTS_DIR / "bench_descriptors.json"
IMAGE_SIZE = (700, 700)
FEAT_GRID = (50, 50)
CHANNELS = 768
# O-MaMa's descriptor loop on this kind of CPU (2 threads), measured when the project began.
PUBLISHED_REFERENCE_S = {32: 1.08, 64: 2.10, 128: 4.08}
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _descriptor_rows(threads: int, counts: list[int], repeats: int, loop_repeats: int) -> list:
    """Per candidate count: loop, torch and numpy descriptor times and their agreement."""
    import numpy as np
    import torch

    from omama_train.models.descriptors import object_descriptors
    from runtime import pooling

    rng = np.random.default_rng(0)
    feats_np = rng.standard_normal((CHANNELS, *FEAT_GRID)).astype(np.float32)
    all_masks = blob_masks(rng, max(counts), IMAGE_SIZE)
    all_boxes = pooling.mask_boxes(all_masks)
    feats = torch.from_numpy(feats_np)[None]
    rows = []
    for count in counts:
        masks_np, boxes_np = all_masks[:count], all_boxes[:count]
        masks, boxes = torch.from_numpy(masks_np), torch.from_numpy(boxes_np)
        with torch.no_grad():
            ref = loop_reference(feats, masks, boxes, IMAGE_SIZE)
            fast = object_descriptors(feats, masks[None], boxes[None], IMAGE_SIZE)[0]
            twin = pooling.object_descriptors(feats_np, masks_np, boxes_np, IMAGE_SIZE)
            loop_ms = median_ms(
                lambda m=masks, b=boxes: loop_reference(feats, m, b, IMAGE_SIZE),
                loop_repeats,
                warmup=0,
            )
            torch_ms = median_ms(
                lambda m=masks, b=boxes: object_descriptors(feats, m[None], b[None], IMAGE_SIZE),
                repeats,
            )
        numpy_ms = median_ms(
            lambda m=masks_np, b=boxes_np: pooling.object_descriptors(feats_np, m, b, IMAGE_SIZE),
            repeats,
        )
        published_s = PUBLISHED_REFERENCE_S.get(count)
        rows.append(
            {
                "candidates": count,
                "loop_ms": loop_ms,
                "torch_ms": torch_ms,
                "numpy_ms": numpy_ms,
                "torch_speedup_vs_loop": loop_ms / torch_ms,
                "numpy_speedup_vs_loop": loop_ms / numpy_ms,
                "numpy_over_torch": numpy_ms / torch_ms,
                "torch_speedup_vs_published_reference": 1e3 * published_s / torch_ms
                if published_s
                else None,
                "max_abs_diff_torch_vs_loop": float((fast - ref).abs().max()),
                "max_abs_diff_numpy_vs_torch": float(np.abs(twin - fast.numpy()).max()),
            }
        )
        print(f"  [{threads} thr] N={count}: {rows[-1]}", file=sys.stderr)
    return rows


def _matcher_rows(threads: int, counts: list[int], repeats: int) -> list:
    """Matcher forward for B = 1 and 8 objects, automatic and standard attention order."""
    import torch

    from omama_train.models.matcher import OMaMaMatcher

    models = {}
    for attention in ("auto", "standard"):
        torch.manual_seed(0)
        models[attention] = OMaMaMatcher("exo2ego", attention=attention).eval()
    src_feats = torch.randn(1, CHANNELS, *models["auto"].src_grid)
    dst_feats = torch.randn(1, CHANNELS, *models["auto"].dst_grid)
    rows = []
    for count in counts:
        for objects in (1, 8):
            src_desc = torch.randn(objects, 1, 2 * CHANNELS)
            dst_desc = torch.randn(1, count, 2 * CHANNELS)
            times_ms = {}
            with torch.no_grad():
                for attention, model in models.items():
                    times_ms[attention] = median_ms(
                        lambda m=model, s=src_desc, d=dst_desc: m(s, d, src_feats, dst_feats),
                        max(3, repeats // 2),
                    )
            rows.append(
                {
                    "candidates": count,
                    "objects": objects,
                    "forward_ms": times_ms["auto"],
                    "per_object_ms": times_ms["auto"] / objects,
                    "standard_order_forward_ms": times_ms["standard"],
                }
            )
            print(f"  [{threads} thr] matcher {rows[-1]}", file=sys.stderr)
    return rows


def worker(threads: int, counts: list[int], repeats: int, loop_repeats: int, matcher: bool):
    """The measurements at one thread count (run in a process of its own)."""
    import torch

    torch.set_num_threads(threads)
    return {
        "threads": threads,
        "descriptors": _descriptor_rows(threads, counts, repeats, loop_repeats),
        "matcher": _matcher_rows(threads, counts, repeats) if matcher else [],
    }


def _print_runs(runs: list[dict]) -> None:
    print(
        f"{'thr':>3} {'N':>4} {'loop ms':>9} {'torch ms':>9} {'numpy ms':>9} "
        f"{'torch x':>8} {'numpy x':>8} {'np/torch':>8} {'vs publ.':>8}"
    )
    for run in runs:
        for row in run["descriptors"]:
            published = row["torch_speedup_vs_published_reference"]
            print(
                f"{run['threads']:>3} {row['candidates']:>4} {row['loop_ms']:>9.1f} "
                f"{row['torch_ms']:>9.2f} {row['numpy_ms']:>9.2f} "
                f"{row['torch_speedup_vs_loop']:>7.0f}x {row['numpy_speedup_vs_loop']:>7.0f}x "
                f"{row['numpy_over_torch']:>8.2f} "
                + (f"{published:>7.0f}x" if published else f"{'-':>8}")
            )
    if any(run["matcher"] for run in runs):
        print(
            f"\n{'thr':>3} {'N':>4} {'B':>3} {'forward ms':>11} {'per object ms':>14} "
            f"{'standard order ms':>18}"
        )
        for run in runs:
            for row in run["matcher"]:
                print(
                    f"{run['threads']:>3} {row['candidates']:>4} {row['objects']:>3} "
                    f"{row['forward_ms']:>11.1f} {row['per_object_ms']:>14.1f} "
                    f"{row['standard_order_forward_ms']:>18.1f}"
                )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--counts", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--loop-repeats", type=int, default=2)
    parser.add_argument("--no-matcher", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker is not None:
        result = worker(
            args.worker, args.counts, args.repeats, args.loop_repeats, not args.no_matcher
        )
        print(json.dumps(result))
        return 0

    load_at_start = load_average()
    runs = []
    for threads in args.threads:
        env = dict(os.environ, **{name: str(threads) for name in THREAD_VARS})
        command = [sys.executable, "-m", "benchmarks.bench_descriptors", "--worker", str(threads)]
        command += ["--counts", *map(str, args.counts), "--repeats", str(args.repeats)]
        command += ["--loop-repeats", str(args.loop_repeats)]
        command += ["--no-matcher"] if args.no_matcher else []
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if done.returncode:
            sys.stderr.write(done.stderr)
            return done.returncode
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))

    report = {
        "benchmark": "bench_descriptors",
        "image_size": list(IMAGE_SIZE),
        "feat_grid": list(FEAT_GRID),
        "channels": CHANNELS,
        "machine": machine_record(load_at_start, ("torch", "numpy")),
        "published_reference_s": PUBLISHED_REFERENCE_S,
        "runs": runs,
    }
    write_result(args.out, report)
    _print_runs(runs)
    print(f"\nsaved {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
