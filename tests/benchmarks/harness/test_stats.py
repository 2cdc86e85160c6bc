"""Latency summaries, throughput and fidelity of a bench row."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.harness.stats import fidelity, latency_stats, throughput
from runtime.errors import OmamaError


def test_latency_stats_and_throughput():
    samples = [4.0, 1.0, 3.0, 2.0]
    stats = latency_stats(samples)
    assert stats["n"] == 4 and stats["mean_ms"] == 2.5 and stats["p50_ms"] == 2.5
    assert stats["p90_ms"] == pytest.approx(np.percentile(samples, 90))
    assert stats["p99_ms"] == pytest.approx(3.97) and stats["max_ms"] == 4.0
    assert stats["std_ms"] == pytest.approx(np.std(samples, ddof=1))
    assert latency_stats([])["mean_ms"] is None and latency_stats([])["n"] == 0
    assert latency_stats([5.0])["std_ms"] == 0.0
    assert throughput(250.0, 3) == {"pairs_per_s": 4.0, "object_matches_per_s": 12.0}
    assert throughput(None, 3)["pairs_per_s"] is None


def test_fidelity():
    a = np.zeros((4, 4), np.uint8)
    b = a.copy()
    a[:2, :2], b[:2, :] = 1, 1  # IoU 4 / 8
    choice = np.array([[0, 1], [2, 2]])
    sims = np.linspace(-1, 1, 2 * 2 * 3).reshape(2, 2, 3)
    masks = np.stack([np.stack([a, b])] * 2)
    same = fidelity(choice, choice, sims, sims, masks, masks)
    assert same == {
        "objects": 4,
        "argmax_agreement_pct": 100.0,
        "max_abs_similarity_error": 0.0,
        "mean_mask_iou": 1.0,
        "min_mask_iou": 1.0,
    }
    other = choice.copy()
    other[1, 0] = 0
    moved = masks.copy()
    moved[0, 0] = b
    result = fidelity(other, choice, sims + 0.25, sims, moved, masks)
    assert result["argmax_agreement_pct"] == 75.0
    assert result["max_abs_similarity_error"] == pytest.approx(0.25)
    assert result["mean_mask_iou"] == pytest.approx((0.5 + 3) / 4)
    assert result["min_mask_iou"] == pytest.approx(0.5)
    empty = np.zeros_like(masks)
    assert fidelity(choice, choice, sims, sims, empty, empty)["min_mask_iou"] == 1.0
    with pytest.raises(OmamaError, match="differ in shape"):
        fidelity(choice, choice[:1], sims, sims, masks, masks)
    with pytest.raises(OmamaError, match="final masks differ"):
        fidelity(choice, choice, sims, sims, masks, masks[:1])
