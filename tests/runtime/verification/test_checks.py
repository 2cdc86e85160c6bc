"""The checks every export record is made of (``runtime.verification``), on the cases the
export meets: a NaN output, tied detections around FastSAM's NMS."""

from __future__ import annotations

import numpy as np

from runtime.manifest import describe_check
from runtime.verification.tolerances import TOLERANCES


def test_a_nan_output_fails_its_check():
    from runtime.manifest import VerificationRecord
    from runtime.verification.compare import compare_backbone, feats_reference

    feats = np.random.default_rng(0).standard_normal((1, 768, 2, 2)).astype(np.float32)
    broken = np.full_like(feats, np.nan)
    (check,) = compare_backbone(
        [(feats_reference(feats), broken)], "fp32", TOLERANCES["fp32"], "a NaN output"
    )
    assert np.isnan(check.value) and not check.passed
    record = VerificationRecord("b.onnx", "backbone_ego", "test", "cpu", (), "fp32", "test", {},
                                (check,))  # fmt: skip
    assert "max abs err nan" in describe_check(record, check) and not record.passed


def test_kept_comparison_tolerates_ties_but_not_disagreements():
    from runtime.verification.nms_agreement import compare_kept

    # 14 boxes in a row, none overlapping, except 12 and 13 (IoU 0.95).
    boxes = np.array([[20 * i, 0, 20 * i + 10, 10] for i in range(14)], np.float32)
    boxes[13] = boxes[12] + np.array([0, 0, 0, 0.5], np.float32)
    scores = np.array([0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5, 0.5, 0.5, 0.3, 0.7, 0.7])
    ref = [0, 1, 2, 3, 4, 12, 5, 6, 7, 8, 9]  # max_det 11: cut inside the 0.5 tie (8, 9, 10)
    tie = dict(conf=0.2, iou=0.9, max_det=11, score_tie=1e-6, iou_tie=1e-5)
    # 10 for 9 at the cut, and 13 for 12 (same score, IoU > 0.9): either may be kept.
    other = [0, 1, 2, 3, 4, 13, 5, 6, 7, 8, 10]
    result = compare_kept(ref, other, boxes, scores, **tie)
    assert result.agreement == 1.0 and result.both == 9 and not result.unexplained
    assert result.reasons == {"threshold": 0, "cut": 2, "suppression": 2}
    # A real disagreement: anchor 11 (0.3) kept instead of 9 (0.5), which beats the cut.
    wrong = [0, 1, 2, 3, 4, 12, 5, 6, 7, 8, 11]
    result = compare_kept(ref, wrong, boxes, scores, **tie)
    assert result.agreement == 11 / 12 and result.unexplained == [
        "anchor 9 (score 0.5) kept by reference only"
    ]
    # Without the cap, the same tie at 9/10 is no longer explained by the cut.
    result = compare_kept(ref, other, boxes, scores, **(tie | {"max_det": None}))
    assert result.agreement < 1.0 and result.reasons["cut"] == 0
    # A tie with the score threshold: an anchor at conf itself may be in or out.
    result = compare_kept([0], [0, 11], boxes, scores, **(tie | {"conf": 0.3}))
    assert result.agreement == 1.0 and result.reasons["threshold"] == 1
    # Detections that map to no anchor always count against.
    result = compare_kept([0], [0], boxes, scores, **tie, unmapped=["graph row 1"])
    assert result.agreement == 0.5 and result.unexplained == ["graph row 1"]
