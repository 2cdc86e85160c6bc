"""A straightforward port of the reference correspondence evaluator (``omama`` protocol).

Written from the specification (docs/reference.md, section 7, and the DAVIS metric
definitions) to do the work the way the reference scripts do it: one observation at a
time, whole-image boundary maps and disk dilations, and a mask box found with ``np.where``
over a copy padded by the image height on every side. It is the baseline that
``benchmarks.bench_eval`` times ``runtime.evaluate`` against, and the tests use it as an
independent check of ``runtime.metrics``. Not used by the project itself.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from pycocotools import mask as mask_utils


def ref_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Jaccard with the DAVIS epsilon; two empty masks give 1."""
    a, b = a.astype(bool), b.astype(bool)
    inter = np.sum(a & b)
    union = np.sum(a | b)
    if np.isclose(union, 0):
        return 1
    return inter / (union + 1e-7)


def ref_seg2bmap(seg: np.ndarray) -> np.ndarray:
    """1-pixel boundary map: a pixel differs from its right, lower or lower-right neighbour;
    last row compares right only, last column lower only, corner never."""
    seg = seg.astype(bool)
    right = np.zeros_like(seg)
    down = np.zeros_like(seg)
    diag = np.zeros_like(seg)
    right[:, :-1] = seg[:, 1:]
    down[:-1, :] = seg[1:, :]
    diag[:-1, :-1] = seg[1:, 1:]
    bmap = (seg ^ right) | (seg ^ down) | (seg ^ diag)
    bmap[-1, :] = seg[-1, :] ^ right[-1, :]
    bmap[:, -1] = seg[:, -1] ^ down[:, -1]
    bmap[-1, -1] = False
    return bmap


def ref_disk(radius: float) -> np.ndarray:
    grid = np.arange(-radius, radius + 1)
    xx, yy = np.meshgrid(grid, grid)
    return (xx**2 + yy**2 <= radius**2).astype(np.uint8)


def ref_boundary_f(pred: np.ndarray, gt: np.ndarray, bound_th: float = 0.008) -> float:
    """DAVIS boundary F on the whole image."""
    radius = bound_th if bound_th >= 1 else np.ceil(bound_th * np.linalg.norm(pred.shape))
    pred_b = ref_seg2bmap(pred)
    gt_b = ref_seg2bmap(gt)
    kernel = ref_disk(radius)
    pred_dil = cv2.dilate(pred_b.astype(np.uint8), kernel)
    gt_dil = cv2.dilate(gt_b.astype(np.uint8), kernel)
    gt_match = gt_b * pred_dil
    pred_match = pred_b * gt_dil
    n_pred = np.sum(pred_b)
    n_gt = np.sum(gt_b)
    if n_pred == 0 and n_gt > 0:
        precision, recall = 1, 0
    elif n_pred > 0 and n_gt == 0:
        precision, recall = 0, 1
    elif n_pred == 0 and n_gt == 0:
        precision, recall = 1, 1
    else:
        precision = np.sum(pred_match) / float(n_pred)
        recall = np.sum(gt_match) / float(n_gt)
    if precision + recall == 0:
        return 0
    return 2 * precision * recall / (precision + recall)


def _padded_center(mask: np.ndarray) -> tuple[int, int]:
    """Box centre (x, y) of ``mask`` after padding it by its height on every side; an empty
    mask gives (padded_H // 2, padded_W // 2), as the reference does."""
    pad = mask.shape[0]
    padded = np.pad(mask, ((pad, pad), (pad, pad)), mode="constant", constant_values=False)
    if not np.any(padded):
        return padded.shape[0] // 2, padded.shape[1] // 2
    ys, xs = np.where(padded == True)  # noqa: E712 - the reference compares with True
    return int(np.min(xs) + np.max(xs)) // 2, int(np.min(ys) + np.max(ys)) // 2


def ref_location_score(gt: np.ndarray, pred: np.ndarray) -> float:
    h, w = gt.shape
    gx, gy = _padded_center(gt)
    px, py = _padded_center(pred)
    distance = np.sqrt((gx - px) ** 2 + (gy - py) ** 2)
    return distance / np.sqrt(h**2 + w**2)


def ref_balanced_accuracy(gt_flags: list[int], pred_flags: list[int]) -> float:
    """Mean recall over the classes present in the GT flags."""
    gt_arr, pred_arr = np.asarray(gt_flags), np.asarray(pred_flags)
    recalls = []
    for cls in np.unique(gt_arr):
        members = gt_arr == cls
        recalls.append(np.sum(pred_arr[members] == cls) / np.sum(members))
    return float(np.mean(recalls)) if recalls else math.nan


def ref_confidence(value) -> float:
    return float(value[0]) if isinstance(value, list) else float(value)


def ref_evaluate(gt_annotations: dict, pred_takes: dict, direction: str) -> dict:
    """Evaluate like the O-MaMa copy of the reference: sorted objects and frames, GT
    resized (nearest) to the prediction's size. Returns aggregated and per-observation lists."""
    ious, shapes, locations, sizes_gt, sizes_pred = [], [], [], [], []
    exists_gt, exists_pred = [], []
    for take, gt in gt_annotations.items():
        pred = pred_takes[take]
        for obj in sorted(gt["masks"]):
            cams = gt["masks"][obj]
            ego_cams = [c for c in cams if "aria" in c]
            if not ego_cams:
                continue
            ego = ego_cams[0]
            for exo in [c for c in cams if "aria" not in c]:
                src, dst = (exo, ego) if direction == "exo2ego" else (ego, exo)
                dst_masks = cams.get(dst, {})
                entries = pred["masks"][obj][f"{src}_{dst}"]
                for frame in sorted(cams.get(src, {})):
                    if int(frame) not in gt["annotated_frames"][obj][dst]:
                        continue
                    entry = entries[frame]
                    pred_mask = mask_utils.decode(entry["pred_mask"])
                    visible = frame in dst_masks
                    exists_gt.append(int(visible))
                    exists_pred.append(int(ref_confidence(entry["confidence"]) > 0.5))
                    if not visible:
                        continue
                    gt_mask = mask_utils.decode(dst_masks[frame])
                    if gt_mask.shape != pred_mask.shape:
                        gt_mask = cv2.resize(
                            gt_mask,
                            (pred_mask.shape[1], pred_mask.shape[0]),
                            interpolation=cv2.INTER_NEAREST,
                        )
                    ious.append(ref_iou(pred_mask, gt_mask))
                    shapes.append(ref_boundary_f(gt_mask, pred_mask))
                    locations.append(ref_location_score(gt_mask, pred_mask))
                    sizes_gt.append(np.sum(gt_mask).item())
                    sizes_pred.append(np.sum(pred_mask).item())
    return {
        "aggregated_metrics": {
            "iou": float(np.mean(ious)),
            "shape_acc": float(np.mean(shapes)),
            "location_score": float(np.mean(locations)),
            "balanced_acc": ref_balanced_accuracy(exists_gt, exists_pred),
        },
        "per_observation": {
            "iou_per_obs": [float(v) for v in ious],
            "shape_acc_per_obs": [float(v) for v in shapes],
            "location_score_per_obs": [float(v) for v in locations],
            "obj_size_gt_per_obs": sizes_gt,
            "obj_size_pred_per_obs": sizes_pred,
            "obj_exists_gt_per_obs": exists_gt,
            "obj_exists_pred_per_obs": exists_pred,
        },
    }
