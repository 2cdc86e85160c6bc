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


def _engine_rows(backbone_ms: float, other_ms: float, chosen: list[int]) -> dict:
    stages = {"preprocess": 20.0, "fastsam": other_ms, "backbone_src": backbone_ms,
              "backbone_dst": backbone_ms, "descriptors": 10.0, "matcher": 100.0,
              "postprocess": 0.5}  # fmt: skip
    total = sum(stages.values())
    return {k: {"stages_ms": stages, "total_ms": total, "chosen": chosen[:k]} for k in (1, 8)}


OURS = {
    "torch fp32": _engine_rows(10_000.0, 1_500.0, [3, 1, 4, 1, 5, 9, 2, 6]),
    "openvino bf16": _engine_rows(2_000.0, 500.0, [3, 1, 4, 1, 5, 9, 2, 7]),
}
REFERENCE = {"fastsam_ultralytics_ms": 2_000.0, "descriptors_loop_ms": 2_700.0,
             "matcher_b1_ms": 80.0}  # fmt: skip


def test_bench_pair_composes_the_reference_from_torch_fp32_and_ranks_every_engine():
    from benchmarks.bench_pair import compose, targets_met

    composed = compose(OURS, REFERENCE, [1, 8])
    per_object = 2_000.0 + 2 * 10_000.0 + 2_700.0 + 80.0 + 20.0
    assert composed["reference_per_object_ms"] == pytest.approx(per_object)
    row8 = composed["rows"][8]
    assert row8["reference_shape_ms"] == pytest.approx(8 * per_object)
    bf16_total = 20.0 + 500.0 + 4_000.0 + 10.0 + 100.0 + 0.5
    assert row8["ms"]["openvino bf16"] == pytest.approx(bf16_total)
    assert row8["speedup"]["openvino bf16"] == pytest.approx(8 * per_object / bf16_total)
    assert row8["best"] == "openvino bf16"
    met = targets_met(composed, {1: 2.0, 8: 16.0})
    # K=1: 24,800 / 4,630.5 = 5.36x; K=8: 42.8x (bf16); torch fp32 1.15x and 9.2x.
    assert met["1"]["best"]["engine"] == "openvino bf16" and met["1"]["best"]["met"] is True
    assert met["1"]["engines"] == {"torch fp32": False, "openvino bf16": True}
    assert met["8"]["engines"] == {"torch fp32": False, "openvino bf16": True}
    assert met["8"]["best"]["speedup"] == pytest.approx(8 * per_object / bf16_total)


def test_bench_pair_stages_name_the_fastest_engine_and_picks_are_counted_against_torch():
    from benchmarks.bench_pair import same_picks, stage_winners

    winners = stage_winners(OURS, 8)
    assert winners["backbone_dst"] == {"ms": {"torch fp32": 10_000.0, "openvino bf16": 2_000.0},
                                       "winner": "openvino bf16"}  # fmt: skip
    assert winners["postprocess"]["winner"] == "tie (< 1 ms)"
    assert same_picks(OURS, 8) == {"torch fp32": 8, "openvino bf16": 7}


def test_bench_pair_engines_put_the_torch_reference_first_and_refuse_what_omama_run_cannot():
    from benchmarks.bench_pair import parse_engines
    from runtime.errors import OmamaError

    engines = parse_engines(["openvino:bf16", "torch:fp32", "openvino:bf16", "onnxruntime:int8"])
    assert [e.spec for e in engines] == ["torch:fp32", "openvino:bf16", "onnxruntime:int8"]
    with pytest.raises(OmamaError, match=r"drop '\+bf16'"):
        parse_engines(["openvino:int8+bf16"])


def test_bench_pair_compares_picks_by_mask_not_by_candidate_number():
    import numpy as np

    from benchmarks.bench_pair import pick_agreement

    a, b, c = (np.zeros((4, 4), bool) for _ in range(3))
    a[:2], b[:2], c[:1] = True, True, True  # a == b; c is half of a
    got = pick_agreement({"torch fp32": [a, a], "openvino bf16": [b, c]}, "torch fp32")
    assert got["torch fp32"] == {"of": 2, "same_mask": 2, "mean_iou": 1.0}
    assert got["openvino bf16"] == {"of": 2, "same_mask": 1, "mean_iou": 0.75}
