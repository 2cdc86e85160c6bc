"""Agreement of the detections two NMS runs kept, tolerant of decisions made on ties.

FastSAM's NMS runs in ONNX Runtime's or TensorRT's ``NonMaxSuppression`` (NMS in the
graph), or in ``runtime.fastsam_post`` (raw outputs, and the torch reference). With scores
that tie (random weights score every anchor near its class bias) or IoUs at the threshold,
two correct implementations may keep different anchors. :func:`compare_kept` counts a
difference as agreement only when a tie explains it, and :func:`map_rows` maps the rows of
a graph with NMS back to the reference's anchors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class KeptComparison:
    """Agreement of two NMS results over the same candidate anchors.

    ``reference`` / ``other``: anchors each kept (``other`` includes detections that map to
    no candidate); ``both``: kept by both; ``explained``: kept by one side only where a tie
    decided it (counts by rule in ``reasons``); ``unexplained``: the rest, described.
    """

    reference: int
    other: int
    both: int
    explained: int
    reasons: dict[str, int]
    unexplained: list[str]

    @property
    def agreement(self) -> float:
        """Kept-set Jaccard in which tie-decided differences count as agreeing: 1.0 exactly
        when every difference is explained by a tie."""
        union = self.reference + self.other - self.both
        return 1.0 if union == 0 else (self.both + self.explained) / union


def compare_kept(
    reference_keep,
    other_keep,
    boxes_xyxy: np.ndarray,
    scores: np.ndarray,
    conf: float,
    iou: float,
    max_det: int | None,
    score_tie: float,
    iou_tie: float,
    unmapped: Sequence[str] = (),
) -> KeptComparison:
    """Compare the anchors two NMS runs kept, tolerating decisions made on ties.

    Arguments:
        reference_keep, other_keep: kept anchor indices (into ``boxes_xyxy`` / ``scores``).
        boxes_xyxy: (A, 4) and scores (A,): the reference's values of every anchor; all
            rules below use them, so both sides are judged on the same numbers.
        conf, iou, max_det: the NMS settings both runs used (``max_det`` None: no cap).
        score_tie, iou_tie: values this close are ties.
        unmapped: descriptions of the other side's detections that match no anchor (always
            unexplained: a box the reference never proposed).

    An anchor kept by one side only is explained when a tie could have decided it:
    ``threshold`` (its score is within ``score_tie`` of conf), ``cut`` (the other side is
    full at max_det and the anchor's score is not above its lowest kept score by more than
    ``score_tie``), or ``suppression`` (the other side kept an overlapping anchor that may
    suppress it: score at least as high up to ``score_tie``, IoU above ``iou - iou_tie``,
    and either the scores or the IoU-vs-threshold comparison tied). Anything else, and
    every unmapped detection, is a real disagreement.
    """
    ref = [int(a) for a in reference_keep]
    other = [int(a) for a in other_keep]
    ref_set, other_set = set(ref), set(other)
    boxes = np.asarray(boxes_xyxy, dtype=np.float32)
    scores = np.asarray(scores, dtype=np.float64)
    reasons = {"threshold": 0, "cut": 0, "suppression": 0}
    unexplained = list(unmapped)

    def reason(anchor: int, kept_by_other: list[int]) -> str | None:
        score = scores[anchor]
        if abs(score - conf) <= score_tie:
            return "threshold"
        full = bool(kept_by_other) and max_det is not None and len(kept_by_other) >= max_det
        if full and score <= scores[kept_by_other].min() + score_tie:
            return "cut"
        rivals = np.asarray([b for b in kept_by_other if b != anchor], np.int64)
        if len(rivals):
            overlap = pair_iou(boxes[anchor], boxes[rivals])
            delta = scores[rivals] - score
            may_suppress = (delta >= -score_tie) & (overlap > iou - iou_tie)
            tied = (np.abs(delta) <= score_tie) | (overlap <= iou + iou_tie)
            if (may_suppress & tied).any():
                return "suppression"
        return None

    explained = 0
    for anchors, kept_by_other, side in (
        ([a for a in ref if a not in other_set], other, "reference"),
        ([a for a in other if a not in ref_set], ref, "other"),
    ):
        for anchor in anchors:
            why = reason(anchor, kept_by_other)
            if why is None:
                unexplained.append(
                    f"anchor {anchor} (score {scores[anchor]:.6g}) kept by {side} only"
                )
            else:
                reasons[why] += 1
                explained += 1
    return KeptComparison(
        reference=len(ref_set),
        other=len(other_set) + len(unmapped),
        both=len(ref_set & other_set),
        explained=explained,
        reasons=reasons,
        unexplained=unexplained,
    )


def pair_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU (M,) of one corner box (4,) with (M, 4) boxes, float64."""
    box = box.astype(np.float64)
    boxes = boxes.astype(np.float64)
    wh = np.clip(np.minimum(box[2:], boxes[:, 2:]) - np.maximum(box[:2], boxes[:, :2]), 0, None)
    inter = wh[:, 0] * wh[:, 1]
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-12)


def describe_kept(comparisons: list[KeptComparison], score_tie: float) -> str:
    ref = sum(c.reference for c in comparisons)
    other = sum(c.other for c in comparisons)
    both = sum(c.both for c in comparisons)
    reasons = {k: sum(c.reasons[k] for c in comparisons) for k in comparisons[0].reasons}
    tied = ", ".join(f"{k} {v}" for k, v in reasons.items() if v) or "none"
    bad = [text for c in comparisons for text in c.unexplained]
    text = (
        f"kept: reference {ref}, other {other}, both {both}; tie-decided: {tied} "
        f"(scores within {score_tie:g}); unexplained: {len(bad)}"
    )
    return text + (f" ({'; '.join(bad[:3])})" if bad else "")


def crop_iou(crop_a, range_a, crop_b, range_b) -> float:
    """IoU of two masks given as box crops and their pixel ranges ``r0, r1, c0, c1``."""
    r0, c0 = min(range_a[0], range_b[0]), min(range_a[2], range_b[2])
    r1, c1 = max(range_a[1], range_b[1]), max(range_a[3], range_b[3])
    planes = np.zeros((2, r1 - r0, c1 - c0), bool)
    for plane, crop, (a0, a1, b0, b1) in zip(
        planes, (crop_a, crop_b), (range_a, range_b), strict=True
    ):
        plane[a0 - r0 : a1 - r0, b0 - c0 : b1 - c0] = crop != 0
    union = int(np.logical_or(planes[0], planes[1]).sum())
    return 1.0 if union == 0 else int(np.logical_and(planes[0], planes[1]).sum()) / union


def map_rows(
    rows: np.ndarray,
    boxes: np.ndarray,
    eligible: np.ndarray,
    radius_px: float,
) -> tuple[list[int], list[int], list[str]]:
    """Anchor of each in-graph detection row: the eligible anchor whose box is nearest
    (max abs corner difference, input px) within ``radius_px``, each anchor used once.
    Returns (row indices, their anchors, descriptions of the rows that map to none)."""
    pool = np.flatnonzero(eligible)
    pool_boxes = boxes[pool].astype(np.float64)
    used: set[int] = set()
    row_ids, anchors, unmapped = [], [], []
    for j, row in enumerate(rows):
        dist = np.abs(pool_boxes - row[:4].astype(np.float64)).max(axis=1)
        k = int(np.argmin(dist)) if len(pool) else -1
        if k >= 0 and dist[k] <= radius_px and int(pool[k]) not in used:
            used.add(int(pool[k]))
            row_ids.append(j)
            anchors.append(int(pool[k]))
        else:
            near = f"{dist[k]:.3g} px" if k >= 0 else "no candidate"
            unmapped.append(f"graph row {j} (score {row[4]:.6g}) matches no anchor ({near})")
    return row_ids, anchors, unmapped
