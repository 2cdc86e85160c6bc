"""Statistics of a bench row: latency summaries, throughput, fidelity vs the reference row."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from runtime.errors import OmamaError
from runtime.verification.compare import mask_iou

END_TO_END = "end_to_end"  # the clock around a whole pair, beside the pipeline's stages
LATENCY_KEYS = ("mean_ms", "std_ms", "min_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms")


def latency_stats(samples_ms: Sequence[float]) -> dict[str, float | int | None]:
    """Summary of latency samples (ms): n, mean, std, min, p50, p90, p99, max.

    Percentiles interpolate linearly between samples (numpy's default), so p99 of a few
    samples lies between the two largest. No samples: every value None, n 0.
    """
    values = np.asarray(samples_ms, np.float64)
    if values.size == 0:
        return {k: None for k in LATENCY_KEYS} | {"n": 0}
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {
        "n": int(values.size),
        "mean_ms": float(values.mean()),
        "std_ms": float(values.std(ddof=1)) if values.size > 1 else 0.0,
        "min_ms": float(values.min()),
        "p50_ms": float(p50),
        "p90_ms": float(p90),
        "p99_ms": float(p99),
        "max_ms": float(values.max()),
    }


def throughput(mean_pair_ms: float | None, objects_per_frame: int) -> dict[str, float | None]:
    """Pairs per second and object matches per second from the mean end-to-end latency."""
    if not mean_pair_ms:
        return {"pairs_per_s": None, "object_matches_per_s": None}
    pairs_per_s = 1000.0 / mean_pair_ms
    return {"pairs_per_s": pairs_per_s, "object_matches_per_s": pairs_per_s * objects_per_frame}


def fidelity(
    choice: np.ndarray,
    ref_choice: np.ndarray,
    sims: np.ndarray,
    ref_sims: np.ndarray,
    masks: np.ndarray,
    ref_masks: np.ndarray,
) -> dict[str, float | int]:
    """Agreement of one row with the reference on the same inputs.

    Arguments:
        choice, ref_choice: (P, K) chosen candidate per pair and object on the fixed
            candidate sets.
        sims, ref_sims: (P, K, N) similarities on those candidate sets.
        masks, ref_masks: (P, K, H, W) final masks of the end-to-end runs.

    Returns ``argmax_agreement_pct``, ``max_abs_similarity_error``, ``mean_mask_iou`` and
    ``min_mask_iou`` (the exact IoU export verification uses,
    :func:`runtime.verification.compare.mask_iou`: two empty masks count as 1) and the
    number of ``objects`` compared.
    """
    choice, ref_choice = np.asarray(choice), np.asarray(ref_choice)
    sims, ref_sims = np.asarray(sims, np.float64), np.asarray(ref_sims, np.float64)
    if choice.shape != ref_choice.shape or sims.shape != ref_sims.shape:
        raise OmamaError(
            f"fidelity inputs differ in shape: choices {choice.shape} vs {ref_choice.shape}, "
            f"similarities {sims.shape} vs {ref_sims.shape} (were both rows run with the same "
            "--num-pairs, --objects-per-frame and --seed?)"
        )
    if masks.shape != ref_masks.shape:
        raise OmamaError(f"final masks differ in shape: {masks.shape} vs {ref_masks.shape}")
    flat, ref_flat = masks.reshape(-1, *masks.shape[-2:]), ref_masks.reshape(-1, *masks.shape[-2:])
    ious = [mask_iou(m, r) for m, r in zip(flat, ref_flat, strict=True)]
    return {
        "objects": int(choice.size),
        "argmax_agreement_pct": float(100.0 * np.mean(choice == ref_choice))
        if choice.size
        else 0.0,
        "max_abs_similarity_error": float(np.abs(sims - ref_sims).max()) if sims.size else 0.0,
        "mean_mask_iou": float(np.mean(ious)) if ious else 0.0,
        "min_mask_iou": float(np.min(ious)) if ious else 0.0,
    }
