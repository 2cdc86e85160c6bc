"""Tolerances per precision and the error measures every comparison uses.

Default tolerances (docs/export.md, "How an export checks itself"): fp32 1e-4 abs on
backbone features, 1e-5 on similarities, argmax agreement 100%; fp16 similarities within
5e-3 and argmax agreement >= 99%; bf16 (the fp32 files run with bfloat16 arithmetic) and
int8 (quantized files) are judged like fp16 on looser feature and similarity errors, and
by argmax agreement >= 99%. The other choices are explained next to their numbers.
"""

from __future__ import annotations

import math

import numpy as np

from runtime.manifest import CheckRecord, VerificationRecord, format_value

TOLERANCES: dict[str, dict[str, float]] = {
    "fp32": {
        "feats_max_abs": 1e-4,
        "similarities_max_abs": 1e-5,
        "argmax_agreement": 1.0,
        # FastSAM's output0 holds box coordinates in pixels (up to imgsz): its error is
        # measured relative to the output's peak magnitude.
        "fastsam_rel": 1e-4,
        "detection_agreement": 1.0,
        # In-graph NMS vs the runtime's: boxes within 1 px, mask IoU > 0.99.
        "fastsam_box_px": 1.0,
        "fastsam_mask_iou_min": 0.99,
        # Decisions on tied values may go either way (see nms_agreement): scores within 1e-6
        # are interchangeable; an IoU within 1e-5 of the threshold is a tie too (the graph
        # computes IoU on boxes divided by imgsz, the runtime on pixels).
        "score_tie": 1e-6,
        "iou_tie": 1e-5,
    },
    "fp16": {
        # Features: 2% of the peak magnitude, and the matcher
        # checks are what decide the answer.
        "feats_rel": 2e-2,
        "similarities_max_abs": 5e-3,
        "argmax_agreement": 0.99,
        "fastsam_rel": 2e-2,
        # NMS on slightly different scores may keep a different box now and then.
        "detection_agreement": 0.95,
        # fp16 boxes at 1024 px carry ~0.5 px of rounding per
        # coordinate; scores tie within ~2 fp16 steps at 0.5. Masks: the mean IoU is gated,
        # as a few tiny masks of a random-weight network lose a third of their pixels in fp16
        # (min 0.90 / 0.65, mean 0.992 / 0.987 on a BatchNorm-calibrated random YOLOv8n-seg
        # at 256 / 1024 px; box errors 3.7 / 0.5 px there, unclipped).
        "fastsam_box_px": 4.0,
        "fastsam_mask_iou_mean": 0.95,
        "score_tie": 1e-3,
        "iou_tie": 2e-3,
    },
    "bf16": {
        # bfloat16 keeps 8 bits of mantissa (fp16: 11): about 8x fp16's rounding per op.
        "feats_rel": 5e-2,
        "similarities_max_abs": 2e-2,
        "argmax_agreement": 0.99,
        "fastsam_rel": 5e-2,
        "detection_agreement": 0.95,
        "fastsam_box_px": 8.0,
        "fastsam_mask_iou_mean": 0.95,
        "score_tie": 4e-3,
        "iou_tie": 4e-3,
    },
    "int8": {
        # int8 activations carry ~1/255 of each tensor's calibrated range: features drift
        # further than in fp16, and what decides the answer is the argmax agreement of the
        # whole pipeline with fp32 (the export gates it at --min-argmax).
        "feats_rel": 1.5e-1,
        "similarities_max_abs": 5e-2,
        "argmax_agreement": 0.99,
        # The mean IoU of the int8 pipeline's picked masks with fp32's (the pipeline gate),
        # and the only similarity gap under which its picks count as tied (float32 rounding).
        "final_mask_iou_mean": 0.99,
        "argmax_tie_band": 1e-6,
        "fastsam_rel": 5e-2,
        "detection_agreement": 0.9,
        "fastsam_box_px": 8.0,
        "fastsam_mask_iou_mean": 0.9,
        "score_tie": 1e-2,
        "iou_tie": 5e-3,
    },
}


def worst_error(*errors: float) -> float:
    """The largest error; NaN (a broken output) wins over any number."""
    return math.nan if any(math.isnan(e) for e in errors) else max(errors)


def max_abs_error(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| in float64 (0 for empty arrays; NaN when either holds a NaN)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    diff = np.abs(a - b)
    if np.isnan(diff).any():
        return math.nan
    return float(np.max(diff, initial=0.0))


def check(
    output: str,
    metric: str,
    value: float,
    tolerance: float,
    higher_is_better: bool = False,
    gated: bool = True,
    detail: str = "",
) -> CheckRecord:
    """A :class:`CheckRecord` (NaN values kept as NaN: they fail)."""
    return CheckRecord(
        output=output,
        metric=metric,
        value=float(value),
        tolerance=float(tolerance),
        higher_is_better=higher_is_better,
        gated=gated,
        detail=detail,
    )


def format_table(records: list[VerificationRecord]) -> str:
    """One row per check: file, backend, device, inputs, output, metric, value, tolerance."""
    header = ("file", "backend", "device", "inputs", "output", "metric", "value", "tolerance",
              "status")  # fmt: skip
    rows = [
        (
            r.file,
            r.backend,
            r.device,
            r.inputs,
            c.output,
            c.metric,
            format_value(c.value, c.higher_is_better),
            (
                (">= " if c.higher_is_better else "<= ")
                + format_value(c.tolerance, c.higher_is_better)
            )
            if c.gated
            else "-",
            "info" if not c.gated else ("ok" if c.passed else "FAIL"),
        )
        for r in records
        for c in r.checks
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += [
        "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    return "\n".join(lines)
