"""``benchmarks.bench_pair``: the K=1 ceiling it prints."""

from __future__ import annotations

import pytest

from benchmarks.bench_pair import k1_ceiling


def test_bench_pair_k1_ceiling_is_the_reference_over_the_two_backbone_passes():
    stages = {"backbone_src": 9_000.0, "backbone_dst": 11_000.0, "fastsam": 2_000.0}
    ours = {"onnxruntime": {1: {"stages_ms": stages}, 8: {"stages_ms": {}}}}
    row = k1_ceiling(ours, 28_000.0)["onnxruntime"]
    assert row["backbones_ms"] == 20_000.0
    assert row["max_speedup"] == pytest.approx(1.4)
    assert row["backbone_share_of_reference"] == pytest.approx(20 / 28)
