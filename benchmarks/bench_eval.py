"""Benchmark ``omama eval`` against a straightforward port of the reference evaluator.

Generates a synthetic exo->ego test split of realistic size (about 2000 observations:
ego GT masks as 1408x1408 RLEs, predictions at 700x700, a mix of hits, misses, empty
predictions and objects not visible in the destination), checks that ``runtime.evaluate``
and ``benchmarks.reference_eval`` give identical metrics, times both, and saves
``benchmarks/results/bench_eval.json``.

    python -m benchmarks.bench_eval [--observations 2000] [--workers 2] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from pathlib import Path

import cv2
import numpy as np

from benchmarks.common import RESULTS_DIR, load_average, machine_record, write_result
from benchmarks.reference_eval import ref_evaluate
from runtime import rle
from runtime.evaluate import evaluate_report
from runtime.results import add_gt_annotation, add_prediction, new_gt, new_results, results_takes

EGO_CAM = "aria01_214-1"
EXO_CAMS = ("cam01", "cam02")
EGO_GT_PX = 1408  # Aria frames as delivered
EXO_GT_HW = (2160, 3840)
PRED_PX = 700  # the model's ego working size
FRAME_STEP = 30
RESULTS = RESULTS_DIR / "bench_eval.json"


def _blob(
    rng: np.random.Generator, size_hw: tuple[int, int], center, radius_px: float
) -> np.ndarray:
    """uint8 (H, W) random star-shaped polygon around ``center`` (x, y)."""
    n = int(rng.integers(6, 14))
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radii = radius_px * rng.uniform(0.6, 1.2, n)
    pts = np.stack(
        [center[0] + radii * np.cos(angles), center[1] + radii * np.sin(angles)], axis=1
    ).astype(np.int32)
    mask = np.zeros(size_hw, np.uint8)
    cv2.fillPoly(mask, [pts], 1)
    return mask


def make_split(n_observations: int, seed: int = 0) -> tuple[dict, dict]:
    """Synthetic (GT annotations, exo2ego results dict) with about ``n_observations``."""
    rng = np.random.default_rng(seed)
    gt, results = new_gt(), new_results("exo2ego")
    frames_per_track, objects_per_take = 4, 6
    n_takes = max(1, round(n_observations / (frames_per_track * objects_per_take * len(EXO_CAMS))))
    src_rle = None
    for t in range(n_takes):
        take = f"take{t:03d}"
        for o in range(objects_per_take):
            obj = f"object_{o}"
            radius = EGO_GT_PX * float(np.exp(rng.uniform(np.log(0.02), np.log(0.2))))
            cx, cy = rng.uniform(radius, EGO_GT_PX - radius, 2)
            frames = [FRAME_STEP * k for k in range(frames_per_track)]
            for frame in frames:
                cx += rng.normal(0, 20)
                cy += rng.normal(0, 20)
                visible = rng.random() < 0.85
                gt_mask = _blob(rng, (EGO_GT_PX, EGO_GT_PX), (cx, cy), radius) if visible else None
                add_gt_annotation(gt, take, obj, EGO_CAM, frame, gt_mask)
                for cam in EXO_CAMS:
                    if src_rle is None:  # source masks are never decoded by the evaluation
                        src_rle = rle.encode(_blob(rng, EXO_GT_HW, (1900, 1000), 150))
                    add_gt_annotation(gt, take, obj, cam, frame, src_rle)
                    pred, conf = _prediction(rng, gt_mask, (cx, cy), radius)
                    add_prediction(results, take, obj, cam, EGO_CAM, frame, pred, conf)
    return gt["annotations"], results


def _prediction(rng: np.random.Generator, gt_mask: np.ndarray | None, center, radius: float):
    """A 700x700 prediction and confidence: hit, miss or empty (and not-visible cases)."""
    scale = PRED_PX / EGO_GT_PX
    roll = rng.random()
    if gt_mask is not None and roll < 0.6:  # hit: the GT, shifted and grown or shrunk
        pred = cv2.resize(gt_mask, (PRED_PX, PRED_PX), interpolation=cv2.INTER_NEAREST)
        k = int(rng.integers(1, 6))
        kernel = np.ones((k, k), np.uint8)
        pred = cv2.dilate(pred, kernel) if rng.random() < 0.5 else cv2.erode(pred, kernel)
        shift = rng.integers(-4, 5, 2)
        pred = np.roll(pred, tuple(int(s) for s in shift), axis=(0, 1))
        return pred, float(rng.uniform(0.55, 0.8))
    if gt_mask is not None and roll < 0.65:  # empty prediction
        return np.zeros((PRED_PX, PRED_PX), np.uint8), float(rng.uniform(0.2, 0.5))
    r = radius * scale * rng.uniform(0.5, 1.5)  # miss: another object elsewhere
    c = rng.uniform(r, PRED_PX - r, 2)
    conf = float(rng.uniform(0.45, 0.7) if gt_mask is not None else rng.uniform(0.3, 0.6))
    return _blob(rng, (PRED_PX, PRED_PX), c, r), conf


def _cpu_s() -> float:
    """CPU seconds used so far by this process and its reaped children (pool workers):
    unlike wall time, it does not grow when other jobs share the cores."""
    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _machine(load_at_start: list[float]) -> dict:
    return machine_record(
        load_at_start,
        ("numpy", "opencv-python-headless", "pycocotools", "omama"),
        usable_cpus=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        opencv_threads=cv2.getNumThreads(),
        torch_threads=None,  # torch is not used by the evaluation (runtime is torch-free)
    )


def _compare(ours: dict, ref: dict) -> dict:
    """Largest aggregated difference and whether every per-observation list is identical."""
    agg_diff = max(
        abs(ours["aggregated_metrics"][k] - ref["aggregated_metrics"][k])
        for k in ref["aggregated_metrics"]
    )
    identical = {
        key: ours["per_observation"][key] == values
        for key, values in ref["per_observation"].items()
    }
    return {"max_aggregated_abs_diff": agg_diff, "per_observation_identical": identical}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--observations", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    load_at_start = load_average()
    t0 = time.perf_counter()
    gt, results = make_split(args.observations, args.seed)
    takes = results_takes(results, "exo2ego")
    gen_s = time.perf_counter() - t0
    print(f"generated {len(gt)} takes in {gen_s:.1f} s")

    t0, c0 = time.perf_counter(), _cpu_s()
    ref = ref_evaluate(gt, takes, "exo2ego")
    ref_s, ref_cpu_s = time.perf_counter() - t0, _cpu_s() - c0
    print(f"reference port: {ref_s:.2f} s (CPU {ref_cpu_s:.2f} s)")

    timings, cpu = {}, {}
    ours = {}
    for workers in sorted({1, args.workers}):
        t0, c0 = time.perf_counter(), _cpu_s()
        ours = evaluate_report(gt, takes, "exo2ego", "omama", workers=workers)
        timings[workers], cpu[workers] = time.perf_counter() - t0, _cpu_s() - c0
        print(
            f"omama eval, {workers} worker(s): {timings[workers]:.2f} s (CPU {cpu[workers]:.2f} s)"
        )
    check = _compare(ours, ref)
    if check["max_aggregated_abs_diff"] > 1e-12 or not all(
        check["per_observation_identical"].values()
    ):
        raise SystemExit(f"metrics differ from the reference port: {check}")

    n_obs = ours["counts"]["observations"]
    out = {
        "benchmark": "bench_eval",
        "machine": _machine(load_at_start),
        "data": {
            "observations": n_obs,
            "gt_visible": ours["counts"]["gt_visible"],
            "takes": ours["counts"]["takes"],
            "gt_mask_px": [EGO_GT_PX, EGO_GT_PX],
            "pred_mask_px": [PRED_PX, PRED_PX],
            "seed": args.seed,
            "generation_s": gen_s,
        },
        "reference_s": ref_s,
        "reference_ms_per_obs": 1000 * ref_s / n_obs,
        "omama_s": {str(w): s for w, s in timings.items()},
        "omama_ms_per_obs": {str(w): 1000 * s / n_obs for w, s in timings.items()},
        "speedup": {str(w): ref_s / s for w, s in timings.items()},
        "reference_cpu_s": ref_cpu_s,
        "omama_cpu_s": {str(w): s for w, s in cpu.items()},
        "cpu_time_ratio": {str(w): ref_cpu_s / s for w, s in cpu.items()},
        "check": check,
        "aggregated_metrics": ours["aggregated_metrics"],
    }
    write_result(args.out, out)
    for w, s in timings.items():
        print(f"speedup with {w} worker(s): {ref_s / s:.1f}x ({1000 * s / n_obs:.2f} ms/obs)")
    print(f"identical metrics: yes; saved {args.out}")
    return out


if __name__ == "__main__":
    main()
