"""The official Ego-Exo4D correspondence metrics of ``omama eval``, in parallel, with breakdowns.

The evaluation reproduces the reference evaluators (docs/reference.md, section 7) to the
bit: per-take work runs in a process pool (:func:`evaluate`), the aggregation
(:func:`build_report`) averages the per-observation lists in the reference order. On top of
the four official figures the report holds counts, IoU broken down by GT object size (area
terciles) and by camera, an IoU histogram, and a temporal-consistency figure (IoU between
the masks of consecutive frames of one object, prediction vs. GT).

This module stays light at import (numpy, runtime): the metrics (OpenCV,
pycocotools) load when a command runs.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import as_completed
from typing import TYPE_CHECKING

import numpy as np

from runtime.egoexo import check_direction
from runtime.errors import OmamaError
from runtime.workers import process_pool

if TYPE_CHECKING:
    from runtime.metrics import Observation, TakeEvaluation

log = logging.getLogger(__name__)

SIZE_BINS: tuple[str, ...] = ("small", "medium", "large")
IOU_HISTOGRAM_BINS = 10


def default_workers() -> int:
    """min(2, usable CPUs): two processes already hide RLE decoding on small machines."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(2, cpus))


# ----------------------------------------------------------------------------- evaluation


def _evaluate_take_job(
    take: str, gt_take: dict, pred_take: dict, direction: str, protocol: str
) -> TakeEvaluation:
    from runtime.metrics import evaluate_take

    return evaluate_take(gt_take, pred_take, direction, protocol, take)


def evaluate(
    gt_annotations: dict,
    pred_takes: dict,
    direction: str,
    protocol: str = "omama",
    workers: int | None = None,
    progress: bool = False,
) -> list[TakeEvaluation]:
    """Evaluate every GT take; returns one :class:`TakeEvaluation` per take, in GT order.

    ``gt_annotations``: ``{take: {"masks", "annotated_frames"}}`` (:func:`runtime.results.load_gt`);
    ``pred_takes``: ``{take: {"masks", ...}}`` (:func:`runtime.results.load_results`). The
    predictions are validated first, so a missing take/object/frame fails before any work.
    ``workers`` processes (default :func:`default_workers`) each evaluate whole takes.
    """
    from tqdm import tqdm

    from runtime.metrics import PROTOCOLS
    from runtime.results import validate_results

    check_direction(direction)
    if protocol not in PROTOCOLS:
        raise OmamaError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    n_obs = validate_results(gt_annotations, pred_takes, direction)
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise OmamaError(f"--workers must be at least 1, got {workers}")
    takes = list(gt_annotations)
    results: dict[str, TakeEvaluation] = {}
    bar = tqdm(total=n_obs, unit="obs", desc="eval", file=sys.stderr, disable=not progress)
    with bar:
        if workers == 1 or len(takes) <= 1:
            for take in takes:
                results[take] = _evaluate_take_job(
                    take, gt_annotations[take], pred_takes[take], direction, protocol
                )
                bar.update(len(results[take].observations))
        else:
            # Largest takes first, so no worker is left with a big one at the end.
            sizes = {t: _n_frames(gt_annotations[t]) for t in takes}
            with process_pool(min(workers, len(takes)), start_method=None) as pool:
                futures = {
                    pool.submit(
                        _evaluate_take_job,
                        take,
                        gt_annotations[take],
                        pred_takes[take],
                        direction,
                        protocol,
                    ): take
                    for take in sorted(takes, key=lambda t: -sizes[t])
                }
                for future in as_completed(futures):
                    take = futures[future]
                    results[take] = future.result()
                    bar.update(len(results[take].observations))
    return [results[t] for t in takes]


def _n_frames(gt_take: dict) -> int:
    return sum(len(frames) for cams in gt_take["masks"].values() for frames in cams.values())


# ----------------------------------------------------------------------------- aggregation


def _finite(value: float) -> float | None:
    """JSON has no NaN: undefined figures (no observation) are written as null."""
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def _group_stats(visible: Sequence[Observation], everything: Sequence[Observation] | None) -> dict:
    from runtime.metrics import balanced_accuracy, nan_mean, nan_std

    ious = [o.metrics.iou for o in visible]
    stats = {
        "gt_visible": len(visible),
        "iou": _finite(nan_mean(ious)),
        "iou_std": _finite(nan_std(ious)),
        "shape_acc": _finite(nan_mean([o.metrics.shape_acc for o in visible])),
        "location_score": _finite(nan_mean([o.metrics.location_score for o in visible])),
        "iou_zero_fraction": _finite(nan_mean([float(v == 0) for v in ious])),
    }
    if everything is not None:
        stats = {"observations": len(everything), **stats}
        stats["balanced_acc"] = _finite(
            balanced_accuracy(
                [int(o.gt_visible) for o in everything], [int(o.pred_visible) for o in everything]
            )
        )
    return stats


def size_breakdown(visible: Sequence[Observation]) -> dict:
    """Metrics per GT object size bin: small / medium / large by terciles of the GT area as a
    fraction of the working image (so ego and exo views share one scale)."""
    if not visible:
        return {"thresholds_area_fraction": None, "bins": {}}
    fractions = np.array([o.metrics.gt_area_px / (o.size_hw[0] * o.size_hw[1]) for o in visible])
    q1, q2 = (float(q) for q in np.quantile(fractions, [1 / 3, 2 / 3]))
    labels = np.where(fractions <= q1, 0, np.where(fractions <= q2, 1, 2))
    bins = {}
    for i, name in enumerate(SIZE_BINS):
        members = [o for o, label in zip(visible, labels, strict=True) if label == i]
        bins[name] = _group_stats(members, None)
    return {"thresholds_area_fraction": [q1, q2], "bins": bins}


def camera_breakdown(observations: Sequence[Observation], attr: str) -> dict:
    """Metrics per camera (``attr`` = ``dst_cam`` or ``src_cam``), cameras sorted by name."""
    cams = sorted({getattr(o, attr) for o in observations})
    out = {}
    for cam in cams:
        members = [o for o in observations if getattr(o, attr) == cam]
        out[cam] = _group_stats([o for o in members if o.gt_visible], members)
    return out


def temporal_consistency(evaluations: Sequence[TakeEvaluation]) -> dict | None:
    """Mean IoU between the masks of consecutive evaluated frames of one track (object,
    source cam, destination cam; both frames visible in the GT), for the predictions and for
    the GT. Close values mean the predictions change from frame to frame as much as the
    object does. None when no track has two consecutive visible frames."""
    pairs = [p for ev in evaluations for p in ev.temporal_pairs]
    if not pairs:
        return None
    pred_iou = float(np.mean([p.pred_iou for p in pairs]))
    gt_iou = float(np.mean([p.gt_iou for p in pairs]))
    gaps = [p.frame_b - p.frame_a for p in pairs]
    return {
        "pairs": len(pairs),
        "tracks": len({(p.take, p.obj, p.src_cam, p.dst_cam) for p in pairs}),
        "pred_iou": pred_iou,
        "gt_iou": gt_iou,
        "difference": pred_iou - gt_iou,
        "median_frame_gap": float(np.median(gaps)),
    }


def build_report(evaluations: Sequence[TakeEvaluation], direction: str, protocol: str) -> dict:
    """The report dict that ``omama eval --out`` writes (see the module docstring of the fields).

    ``aggregated_metrics`` and the ``per_observation`` lists use the reference study's field
    names, so old and new result files compare directly; ``per_observation`` adds
    ``observation_per_obs`` (``[take, object, src_cam, dst_cam, frame]``) and
    ``confidence_per_obs``, aligned with ``iou_per_obs``.
    """
    from runtime.metrics import balanced_accuracy, nan_mean, nan_std

    observations = [o for ev in evaluations for o in ev.observations]
    visible = [o for o in observations if o.gt_visible]
    ious = [o.metrics.iou for o in visible]
    gt_flags = [int(o.gt_visible) for o in observations]
    pred_flags = [int(o.pred_visible) for o in observations]
    aggregated = {
        "iou": nan_mean(ious),
        "iou_std": nan_std(ious),
        "shape_acc": nan_mean([o.metrics.shape_acc for o in visible]),
        "location_score": nan_mean([o.metrics.location_score for o in visible]),
        "balanced_acc": balanced_accuracy(gt_flags, pred_flags),
    }
    tp = sum(g and p for g, p in zip(gt_flags, pred_flags, strict=True))
    tn = sum(not g and not p for g, p in zip(gt_flags, pred_flags, strict=True))
    counts = {
        "takes": len(evaluations),
        "objects": len({(o.take, o.obj) for o in observations}),
        "observations": len(observations),
        "gt_visible": len(visible),
        "gt_not_visible": len(observations) - len(visible),
        "pred_visible": sum(pred_flags),
        "pred_not_visible": len(observations) - sum(pred_flags),
        "visibility_true_positive": tp,
        "visibility_true_negative": tn,
        "visibility_false_positive": sum(pred_flags) - tp,
        "visibility_false_negative": len(visible) - tp,
        "empty_predictions": sum(o.metrics.pred_area_px == 0 for o in visible),
        "iou_zero": sum(v == 0 for v in ious),
        "iou_above_0_5": sum(v > 0.5 for v in ious),
    }
    hist_counts, edges = np.histogram(ious, bins=IOU_HISTOGRAM_BINS, range=(0.0, 1.0))
    per_observation = {
        "iou_per_obs": ious,
        "shape_acc_per_obs": [o.metrics.shape_acc for o in visible],
        "existence_acc_per_obs": [o.metrics.existence_acc for o in visible],
        "location_score_per_obs": [o.metrics.location_score for o in visible],
        "obj_exists_gt_per_obs": gt_flags,
        "obj_exists_pred_per_obs": pred_flags,
        "obj_size_gt_per_obs": [o.metrics.gt_area_px for o in visible],
        "obj_size_pred_per_obs": [o.metrics.pred_area_px for o in visible],
        "img_sizes_per_obs": [list(o.size_hw) for o in visible],
        "observation_per_obs": [[o.take, o.obj, o.src_cam, o.dst_cam, o.frame] for o in visible],
        "confidence_per_obs": [o.confidence for o in visible],
    }
    return {
        "direction": direction,
        "protocol": protocol,
        "aggregated_metrics": {k: _finite(v) for k, v in aggregated.items()},
        "counts": counts,
        "breakdowns": {
            "gt_size": size_breakdown(visible),
            "dst_cam": camera_breakdown(observations, "dst_cam"),
            "src_cam": camera_breakdown(observations, "src_cam"),
        },
        "temporal_consistency": temporal_consistency(evaluations),
        "iou_histogram": {"bin_edges": edges.tolist(), "counts": hist_counts.tolist()},
        "per_observation": per_observation,
    }


def evaluate_report(
    gt_annotations: dict,
    pred_takes: dict,
    direction: str,
    protocol: str = "omama",
    workers: int | None = None,
    progress: bool = False,
) -> dict:
    """:func:`evaluate` then :func:`build_report`, with the evaluation time in ``elapsed_s``."""
    start = time.perf_counter()
    evaluations = evaluate(gt_annotations, pred_takes, direction, protocol, workers, progress)
    report = build_report(evaluations, direction, protocol)
    report["elapsed_s"] = time.perf_counter() - start
    return report


def evaluate_files(
    gt_path: str | os.PathLike,
    pred_path: str | os.PathLike,
    direction: str,
    protocol: str = "omama",
    workers: int | None = None,
    progress: bool = False,
) -> dict:
    """Read a GT and a predictions file, evaluate, and return the report (:func:`build_report`)."""
    from runtime.results import load_gt, load_results

    check_direction(direction)
    report = evaluate_report(
        load_gt(gt_path), load_results(pred_path, direction), direction, protocol, workers, progress
    )
    return {"gt_file": str(gt_path), "pred_file": str(pred_path), **report}


# ----------------------------------------------------------------------------- printing


def _fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _group_row(name: str, stats: dict) -> str:
    n = stats["gt_visible"]
    extra = ""
    if "balanced_acc" in stats:
        extra = f"  bal.acc {_fmt(stats['balanced_acc'], 3)}  ({stats['observations']} obs)"
    return (
        f"  {name:<22} n={n:<5} IoU {_fmt(stats['iou'])}  shape {_fmt(stats['shape_acc'])}  "
        f"loc {_fmt(stats['location_score'])}  IoU=0 {_fmt(stats['iou_zero_fraction'], 2)}{extra}"
    )


def format_summary(report: dict) -> str:
    """A readable multi-line summary of a report."""
    agg, counts = report["aggregated_metrics"], report["counts"]
    lines = [
        f"omama eval: {report['direction']}, protocol {report['protocol']}: "
        f"{counts['observations']} observations ({counts['gt_visible']} visible in GT) of "
        f"{counts['objects']} objects in {counts['takes']} takes",
        "",
        f"  {'metric':<16} value",
        f"  {'IoU':<16} {_fmt(agg['iou'])}  (std {_fmt(agg['iou_std'])})",
        f"  {'shape_acc':<16} {_fmt(agg['shape_acc'])}",
        f"  {'location_score':<16} {_fmt(agg['location_score'])}  (lower is better)",
        f"  {'balanced_acc':<16} {_fmt(agg['balanced_acc'])}",
        "",
        f"  visibility: predicted visible {counts['pred_visible']}/{counts['observations']}, "
        f"TP {counts['visibility_true_positive']} TN {counts['visibility_true_negative']} "
        f"FP {counts['visibility_false_positive']} FN {counts['visibility_false_negative']}",
        f"  IoU = 0: {counts['iou_zero']}  IoU > 0.5: {counts['iou_above_0_5']}  "
        f"empty predicted masks: {counts['empty_predictions']}",
    ]
    sizes = report["breakdowns"]["gt_size"]
    if sizes["bins"]:
        q1, q2 = sizes["thresholds_area_fraction"]
        bounds = {
            "small": f"<= {100 * q1:.2f}%",
            "medium": f"<= {100 * q2:.2f}%",
            "large": f"> {100 * q2:.2f}%",
        }
        lines += ["", "By GT object size (terciles of area / image area):"]
        lines += [_group_row(f"{n} ({bounds[n]})", s) for n, s in sizes["bins"].items()]
    for key, title in (("dst_cam", "destination"), ("src_cam", "source")):
        lines += ["", f"By {title} camera:"]
        lines += [_group_row(cam, s) for cam, s in report["breakdowns"][key].items()]
    temporal = report["temporal_consistency"]
    lines.append("")
    if temporal is None:
        lines.append("Temporal consistency: n/a (no track with two consecutive visible frames)")
    else:
        lines.append(
            f"Temporal consistency (IoU of consecutive frames, {temporal['pairs']} pairs in "
            f"{temporal['tracks']} tracks, median gap {temporal['median_frame_gap']:g} frames): "
            f"prediction {_fmt(temporal['pred_iou'])} vs GT {_fmt(temporal['gt_iou'])}"
        )
    hist = report["iou_histogram"]
    lines += ["", "IoU histogram:"]
    top = max(hist["counts"], default=0) or 1
    edges = hist["bin_edges"]
    for i, count in enumerate(hist["counts"]):
        bar = "#" * round(30 * count / top)
        close = "]" if i == len(edges) - 2 else ")"  # numpy's last bin includes 1.0
        lines.append(f"  [{edges[i]:.1f}, {edges[i + 1]:.1f}{close} {count:>5} {bar}")
    if "elapsed_s" in report:
        lines += ["", f"evaluated in {report['elapsed_s']:.2f} s"]
    return "\n".join(lines)


def format_observations(report: dict) -> str:
    """One line per GT-visible observation (reference order)."""
    po = report["per_observation"]
    lines = [
        f"{'take':<14} {'object':<28} {'src':<14} {'dst':<14} {'frame':>6} {'conf':>6} "
        f"{'IoU':>7} {'shape':>7} {'loc':>7}"
    ]
    for (take, obj, src, dst, frame), conf, iou_v, shape, loc in zip(
        po["observation_per_obs"],
        po["confidence_per_obs"],
        po["iou_per_obs"],
        po["shape_acc_per_obs"],
        po["location_score_per_obs"],
        strict=True,
    ):
        lines.append(
            f"{take[:14]:<14} {obj[:28]:<28} {src[:14]:<14} {dst[:14]:<14} {frame:>6} "
            f"{conf:6.3f} {iou_v:7.4f} {shape:7.4f} {loc:7.4f}"
        )
    return "\n".join(lines)
