"""FastSAM pre- and post-processing in numpy: letterbox, NMS, masks from prototypes.

The FastSAM network (YOLOv8-seg with one class) returns two raw tensors:

- ``output0`` (1, 4 + 1 + 32, A): per anchor a box ``cx, cy, w, h`` in input pixels, the
  object score and 32 mask coefficients (A = 21504 anchors at 1024x1024); an export with
  NMS in the graph returns (1, K, 6 + 32) rows ``x1, y1, x2, y2, score, class, coeffs``;
- ``output1`` (1, 32, mh, mw): mask prototypes at a quarter of the input size.

With NMS in the graph (``omama export --fastsam-nms graph``, manifest ``nms_in_graph``),
``conf``, ``iou`` and ``max_det`` were fixed at export: the rows are already the kept
detections, so only a higher ``conf`` can still filter them (:func:`nms_thresholds` says
what a run may ask for).

This module turns them into O-MaMa's candidates with the semantics of ultralytics'
FastSAM predictor in "everything" mode with retina masks (``conf``, ``iou``, ``max_det``
as given): score filter (``> conf``), class-agnostic greedy NMS (suppress ``IoU > iou``),
boxes mapped back through the letterbox and clipped, masks ``sigmoid(coeffs . protos) >
0.5`` resampled bilinearly (align_corners=False) to the image and cut to their box,
detections whose mask is empty dropped, then FastSAM's box adjustments (sides within
20 px of the border snap to it; a box overlapping the whole image by IoU > 0.9 becomes the
whole image; the masks keep the unadjusted crop).

Differences from ultralytics that do not change the answer:

- The resampling from prototype to image is linear and separable, so each mask is
  ``Wy @ L @ Wx^T`` with 1-D interpolation matrices ``Wy`` (H x mh) and ``Wx`` (W x mw)
  that fold ultralytics' two steps (an optional x2/x4 upsample when the letterbox padding
  is not a whole prototype pixel, then crop-and-resize to the image) into one. Each mask is
  evaluated only inside its box, on the prototype rows and columns that box needs, never
  as a full-resolution float map per mask: the cost is proportional to the box area.
- NMS stops once ``max_det`` boxes are kept (ultralytics cuts the list there anyway).

The result (:class:`FastSAMResult`) keeps each mask as its box crop; ``masks()`` gives the
dense (N, H, W) uint8 stack and ``sample(rows, cols)`` a nearest resize without it. Boxes
are ``x1, y1, w, h`` float32 image pixels, the candidate file format
(:mod:`runtime.candidates`). :func:`segment_everything` runs the whole thing on a session.
The masks from prototypes are computed in :mod:`runtime.fastsam_masks`.
Matches ultralytics 8.4 (its ``process_mask_native`` retina path) mask for mask; see
``tests/runtime/test_fastsam_post.py`` and ``benchmarks/bench_fastsam_post.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from runtime.errors import OmamaError
from runtime.fastsam_masks import box_masks, box_pixel_ranges, paste_masks

IMGSZ_PX = 1024
CONF = 0.4
IOU = 0.9
MAX_DET = 300
# A random-weight FastSAM scores every anchor with its class bias: about 1.2e-2 on the
# coarsest level, 3e-3 and 8e-4 on the finer ones. Random-init exports use this threshold
# so that the coarsest level's boxes (up to max_det after NMS) reach the matcher.
RANDOM_WEIGHTS_CONF = 0.01
MAX_NMS = 30000  # candidates entering NMS, as ultralytics
PAD_VALUE = 114  # letterbox grey
BORDER_SNAP_PX = 20
FULL_BOX_IOU = 0.9
_NMS_CHUNK = 256


# ----------------------------------------------------------------------------- letterbox


@dataclass(frozen=True)
class Letterbox:
    """Where an image sits inside the network input.

    Attributes:
        image_hw: (H, W) of the original image, pixels.
        input_hw: (H_in, W_in) of the network input, pixels.
        resized_hw: (h, w) of the resized image inside the input.
        top, left: padding above / left of the resized image, pixels.
    """

    image_hw: tuple[int, int]
    input_hw: tuple[int, int]
    resized_hw: tuple[int, int]
    top: int
    left: int


def letterbox_geometry(
    image_hw: tuple[int, int],
    input_hw: tuple[int, int] | int = IMGSZ_PX,
    stride: int | None = None,
) -> Letterbox:
    """Letterbox of an (H, W) image into an input of ``input_hw`` (ultralytics' rounding).

    The image is scaled by ``min(H_in / H, W_in / W)`` (each side rounded, at least 1 px)
    and centred; the padding is split with ``round(pad / 2 - 0.1)`` on the top / left.
    With ``stride`` (dynamic-shape models), the input shrinks to the smallest multiple of
    ``stride`` holding the resized image, as ultralytics' ``auto`` letterbox does.
    """
    h, w = (int(v) for v in image_hw)
    if h < 1 or w < 1:
        raise OmamaError(f"image size must be positive, got {h}x{w}")
    in_h, in_w = (input_hw, input_hw) if isinstance(input_hw, int) else map(int, input_hw)
    gain = min(in_h / h, in_w / w)
    new_h, new_w = max(round(h * gain), 1), max(round(w * gain), 1)
    pad_h, pad_w = in_h - new_h, in_w - new_w
    if stride:
        pad_h, pad_w = pad_h % stride, pad_w % stride
    top, bottom = round(pad_h / 2 - 0.1), round(pad_h / 2 + 0.1)
    left, right = round(pad_w / 2 - 0.1), round(pad_w / 2 + 0.1)
    return Letterbox(
        image_hw=(h, w),
        input_hw=(new_h + top + bottom, new_w + left + right),
        resized_hw=(new_h, new_w),
        top=top,
        left=left,
    )


def letterbox(
    image_rgb: np.ndarray,
    input_hw: tuple[int, int] | int = IMGSZ_PX,
    stride: int | None = None,
) -> tuple[np.ndarray, Letterbox]:
    """FastSAM's input: (H, W, 3) uint8 RGB -> (1, 3, H_in, W_in) float32 in [0, 1], RGB.

    Bilinear resize (OpenCV) and grey (114) padding as ultralytics' ``LetterBox``.
    """
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or image_rgb.dtype != np.uint8:
        raise OmamaError(
            f"FastSAM expects an (H, W, 3) uint8 RGB image, got {image_rgb.shape} {image_rgb.dtype}"
        )
    geom = letterbox_geometry(image_rgb.shape[:2], input_hw, stride)
    new_h, new_w = geom.resized_hw
    image = image_rgb
    if (new_h, new_w) != image.shape[:2]:
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    in_h, in_w = geom.input_hw
    padded = cv2.copyMakeBorder(
        image,
        geom.top,
        in_h - new_h - geom.top,
        geom.left,
        in_w - new_w - geom.left,
        cv2.BORDER_CONSTANT,
        value=(PAD_VALUE,) * 3,
    )
    tensor = padded.transpose(2, 0, 1)[None].astype(np.float32)
    tensor /= np.float32(255.0)
    return tensor, geom


# ----------------------------------------------------------------------------- boxes


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """(N, 4) centre ``cx, cy, w, h`` -> corners ``x1, y1, x2, y2`` (float32)."""
    boxes = np.asarray(boxes, dtype=np.float32)
    half = boxes[:, 2:] / np.float32(2.0)
    return np.concatenate([boxes[:, :2] - half, boxes[:, :2] + half], axis=1)


def box_iou(a: np.ndarray, b: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    """IoU matrix (N, M) of corner boxes (N, 4) and (M, 4), float32; ``eps`` guards 0/0."""
    a = np.asarray(a, dtype=np.float32)[:, None, :]
    b = np.asarray(b, dtype=np.float32)[None, :, :]
    wh = np.clip(np.minimum(a[..., 2:], b[..., 2:]) - np.maximum(a[..., :2], b[..., :2]), 0, None)
    inter = wh[..., 0] * wh[..., 1]
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return inter / (area_a + area_b - inter + np.float32(eps))


def nms(
    boxes_xyxy: np.ndarray, scores: np.ndarray, iou_threshold: float, max_keep: int | None = None
) -> np.ndarray:
    """Greedy class-agnostic NMS: indices (K,) int64 of kept boxes, by decreasing score.

    A box is suppressed when its IoU with a kept, higher-scoring box is ``> iou_threshold``
    (torchvision's rule and float32 arithmetic). Candidates are processed in score order
    in chunks: one vectorised IoU block against the boxes kept so far, one within the
    chunk, and a short loop that only visits survivors. With ``max_keep`` it stops as soon
    as that many boxes are kept.
    """
    boxes = np.asarray(boxes_xyxy, dtype=np.float32)
    scores = np.asarray(scores, dtype=np.float32)
    n = len(scores)
    max_keep = n if max_keep is None else int(max_keep)
    if n == 0 or max_keep <= 0:
        return np.zeros(0, np.int64)
    order = np.argsort(-scores, kind="stable")
    thr = np.float64(iou_threshold)  # torchvision compares the float32 IoU with a double
    x1, y1, x2, y2 = (np.ascontiguousarray(boxes[:, k]) for k in range(4))
    areas = (x2 - x1) * (y2 - y1)
    kept: list[int] = []
    for start in range(0, n, _NMS_CHUNK):
        chunk = order[start : start + _NMS_CHUNK]
        alive = np.ones(len(chunk), bool)
        if kept:
            alive &= ~(_iou_rows(np.asarray(kept), chunk, x1, y1, x2, y2, areas) > thr).any(0)
        inner = _iou_rows(chunk, chunk, x1, y1, x2, y2, areas) > thr
        for i in np.flatnonzero(alive):
            if not alive[i]:
                continue
            kept.append(int(chunk[i]))
            if len(kept) == max_keep:
                return np.asarray(kept, np.int64)
            alive[i + 1 :] &= ~inner[i, i + 1 :]
    return np.asarray(kept, np.int64)


def _iou_rows(rows, cols, x1, y1, x2, y2, areas) -> np.ndarray:
    """IoU (len(rows), len(cols)) in torchvision's float32 operation order."""
    w = np.minimum(x2[rows][:, None], x2[cols]) - np.maximum(x1[rows][:, None], x1[cols])
    h = np.minimum(y2[rows][:, None], y2[cols]) - np.maximum(y1[rows][:, None], y1[cols])
    inter = np.maximum(w, 0) * np.maximum(h, 0)
    # Two empty boxes give 0 / 0: NaN compares False, so neither suppresses (as torchvision).
    with np.errstate(divide="ignore", invalid="ignore"):
        return inter / (areas[rows][:, None] + areas[cols] - inter)


def scale_boxes_to_image(boxes_xyxy: np.ndarray, geom: Letterbox) -> np.ndarray:
    """Corner boxes in input pixels -> image pixels (undo pad and gain, clip), float32."""
    (h, w), (in_h, in_w) = geom.image_hw, geom.input_hw
    gain = min(in_h / h, in_w / w)
    new_h, new_w = max(round(h * gain), 1), max(round(w * gain), 1)
    pad_x, pad_y = round((in_w - new_w) / 2 - 0.1), round((in_h - new_h) / 2 - 0.1)
    out = np.array(boxes_xyxy, dtype=np.float32, copy=True).reshape(-1, 4)
    out[:, [0, 2]] -= np.float32(pad_x)
    out[:, [1, 3]] -= np.float32(pad_y)
    out[:, [0, 2]] /= np.float32(new_w / w)
    out[:, [1, 3]] /= np.float32(new_h / h)
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, w)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, h)
    return out


def adjust_boxes_to_border(
    boxes_xyxy: np.ndarray, image_hw: tuple[int, int], border_px: int = BORDER_SNAP_PX
) -> np.ndarray:
    """FastSAM's box clean-up (returns a copy): sides within ``border_px`` of the image
    border snap to it, and a box with IoU > 0.9 with the whole image becomes the image."""
    h, w = image_hw
    out = np.array(boxes_xyxy, dtype=np.float32, copy=True).reshape(-1, 4)
    out[out[:, 0] < border_px, 0] = 0
    out[out[:, 1] < border_px, 1] = 0
    out[out[:, 2] > w - border_px, 2] = w
    out[out[:, 3] > h - border_px, 3] = h
    full = np.array([[0, 0, w, h]], np.float32)
    if len(out):
        out[box_iou(full, out)[0] > FULL_BOX_IOU] = full
    return out


# ----------------------------------------------------------------------------- everything


@dataclass(frozen=True)
class FastSAMResult:
    """Candidates of one image, by decreasing score, stored as box crops.

    Mask i is zero outside its box, so only ``crops[i]`` is kept: the part of the mask on
    pixel rows ``ranges[i, 0]:ranges[i, 1]`` and columns ``ranges[i, 2]:ranges[i, 3]``.
    :meth:`masks` builds the dense (N, H, W) stack of the candidate file format,
    :meth:`sample` resizes without it.

    Attributes:
        crops: N arrays (r1 - r0, c1 - c0) uint8 0/1.
        ranges: (N, 4) int64 ``r0, r1, c0, c1`` in image pixels (ends exclusive).
        boxes: (N, 4) float32 ``x1, y1, w, h`` in image pixels (after FastSAM's border
            adjustment), the candidate file format.
        scores: (N,) float32 object scores.
        image_hw: (H, W) of the image.
    """

    crops: list[np.ndarray]
    ranges: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    image_hw: tuple[int, int]

    def __len__(self) -> int:
        return len(self.crops)

    def mask(self, i: int) -> np.ndarray:
        """Candidate ``i`` as an (H, W) uint8 0/1 mask."""
        out = np.zeros(self.image_hw, np.uint8)
        r0, r1, c0, c1 = (int(v) for v in self.ranges[i])
        out[r0:r1, c0:c1] = self.crops[i]
        return out

    def masks(self) -> np.ndarray:
        """All candidates as (N, H, W) uint8 0/1 (allocated here; N*H*W bytes)."""
        return paste_masks(self.crops, self.ranges, self.image_hw)

    def sample(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """``masks()[:, rows][:, :, cols]`` without the dense stack: (N, len(rows), len(cols)).

        With the source indices of a nearest resize (e.g.
        :func:`runtime.preprocess.nearest_indices`) this is the resized candidates.
        """
        rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
        out = np.zeros((len(self), len(rows), len(cols)), np.uint8)
        for k, (crop, (r0, r1, c0, c1)) in enumerate(zip(self.crops, self.ranges, strict=True)):
            r_in = np.flatnonzero((rows >= r0) & (rows < r1))
            c_in = np.flatnonzero((cols >= c0) & (cols < c1))
            if len(r_in) and len(c_in):
                picked = crop[rows[r_in] - r0][:, cols[c_in] - c0]
                out[k, r_in[0] : r_in[-1] + 1, c_in[0] : c_in[-1] + 1] = picked
        return out


def nms_thresholds(
    fastsam: Any, conf: float | None = None, iou: float | None = None
) -> tuple[float, float, int]:
    """(conf, iou, max_det) to post-process an artifacts folder's FastSAM with.

    ``fastsam`` is the manifest's :class:`runtime.manifest.FastSAMSpec`; ``conf`` / ``iou``
    None keep its values. With NMS in the graph (``nms_in_graph``) its conf, iou and max_det
    are baked into the file: a run may raise conf (the kept rows are filtered again) but a
    lower conf or another iou would need detections the graph has already dropped, so either
    is an :class:`OmamaError` naming the baked values and the way out.
    """
    baked_conf, baked_iou, max_det = float(fastsam.conf), float(fastsam.iou), int(fastsam.max_det)
    conf = baked_conf if conf is None else float(conf)
    iou = baked_iou if iou is None else float(iou)
    if not 0.0 <= conf < 1.0 or not 0.0 <= iou <= 1.0:
        raise OmamaError(f"FastSAM conf must lie in [0, 1) and iou in [0, 1], got {conf}, {iou}")
    if fastsam.nms_in_graph:
        # Compared in float32, as the graph and the post-processing compare scores.
        lower = np.float32(conf) < np.float32(baked_conf)
        if lower or np.float32(iou) != np.float32(baked_iou):
            asked = f"conf {conf:g}" if lower else f"iou {iou:g}"
            raise OmamaError(
                f"FastSAM {asked} cannot be applied: fastsam.onnx runs NMS in its graph with "
                f"conf {baked_conf:g} and iou {baked_iou:g} baked in (a run may only raise "
                "conf); re-export with --fastsam-nms runtime to choose thresholds at run time"
            )
    return conf, iou, max_det


def kept_anchors(
    pred: np.ndarray,
    n_coeffs: int,
    conf: float,
    iou: float,
    max_det: int | None = MAX_DET,
    max_nms: int = MAX_NMS,
) -> np.ndarray:
    """Anchors (K,) int64 of raw ``output0[0]`` (4 + classes + C, A) kept by the score
    filter (``> conf``) and class-agnostic NMS, by decreasing score (ties: lower index first,
    as ONNX Runtime's NonMaxSuppression orders them)."""
    n_classes = pred.shape[0] - 4 - n_coeffs
    scores = pred[4 : 4 + n_classes].max(axis=0)
    idx = np.flatnonzero(scores > np.float32(conf))
    if len(idx) > max_nms:
        idx = idx[np.argsort(-scores[idx], kind="stable")[:max_nms]]
    boxes = xywh_to_xyxy(pred[:4, idx].T)
    return idx[nms(boxes, scores[idx], iou, max_det)]


def detections(
    pred: np.ndarray, n_coeffs: int, conf: float, iou: float, max_det: int, max_nms: int = MAX_NMS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(boxes_xyxy (K, 4) input px, scores (K,), coeffs (K, C)) after score filter + NMS.

    ``pred`` is ``output0[0]``: raw (4 + classes + C, A), or (K, 6 + C) when the graph
    already ran NMS (then only the score filter and ``max_det`` apply). A (5 + C, 6 + C)
    array is read as raw (real exports have thousands of anchors, so the two forms never
    collide in practice).
    """
    raw = pred.shape[0] >= 5 + n_coeffs and (
        pred.shape[1] != 6 + n_coeffs or pred.shape[0] == 5 + n_coeffs
    )
    if not raw and pred.shape[1] != 6 + n_coeffs:
        raise OmamaError(
            f"FastSAM output0 has shape {pred.shape} (batch dropped), expected "
            f"({5 + n_coeffs}, anchors) or (detections, {6 + n_coeffs}) for "
            f"{n_coeffs} prototypes"
        )
    if not raw:  # rows x1, y1, x2, y2, score, class, coeffs; zero rows pad to max_det
        det = pred[np.flatnonzero(pred[:, 4] > np.float32(conf))[:max_det]]
        return det[:, :4].copy(), det[:, 4].copy(), np.ascontiguousarray(det[:, 6:])
    n_classes = pred.shape[0] - 4 - n_coeffs
    keep = kept_anchors(pred, n_coeffs, conf, iou, max_det, max_nms)
    boxes = xywh_to_xyxy(pred[:4, keep].T)
    scores = pred[4 : 4 + n_classes, keep].max(axis=0)
    return boxes, scores, np.ascontiguousarray(pred[4 + n_classes :, keep].T)


def postprocess(
    output0: np.ndarray,
    output1: np.ndarray,
    geom: Letterbox,
    conf: float = CONF,
    iou: float = IOU,
    max_det: int = MAX_DET,
    max_nms: int = MAX_NMS,
) -> FastSAMResult:
    """Raw FastSAM outputs -> candidate masks and boxes at the image size.

    Arguments:
        output0: (1, 4 + 1 + C, A) raw predictions, or (1, K, 6 + C) with NMS in the graph.
        output1: (1, C, mh, mw) mask prototypes (C = 32).
        geom: the letterbox the input was made with (:func:`letterbox`).
        conf: keep detections with score ``> conf``; iou: NMS threshold.
        max_det: at most this many detections (ultralytics' default 300).
        max_nms: at most this many best-scoring boxes enter NMS.
    Returns:
        :class:`FastSAMResult` with N <= max_det candidates (box crops; ``.masks()`` for
        the dense (N, H, W) stack).
    """
    pred = np.asarray(output0)
    protos = np.asarray(output1)
    if pred.ndim != 3 or pred.shape[0] != 1 or protos.ndim != 4 or protos.shape[0] != 1:
        raise OmamaError(
            f"FastSAM outputs must be one image each: output0 (1, ., .) and output1 "
            f"(1, C, mh, mw), got {pred.shape} and {protos.shape}"
        )
    pred = pred[0].astype(np.float32, copy=False)
    protos = protos[0].astype(np.float32, copy=False)
    image_hw = geom.image_hw
    boxes_in, scores, coeffs = detections(pred, protos.shape[0], conf, iou, max_det, max_nms)
    boxes = scale_boxes_to_image(boxes_in, geom)
    crops = box_masks(protos, coeffs, boxes, image_hw)
    # Ultralytics drops detections whose mask is empty; only box regions can be non-empty.
    keep = np.array([bool(crop.any()) for crop in crops], bool)
    crops = [crop for crop, k in zip(crops, keep, strict=True) if k]
    boxes, scores = boxes[keep], scores[keep]
    ranges = box_pixel_ranges(boxes, image_hw)  # the crop, before the border adjustment
    boxes = adjust_boxes_to_border(boxes, image_hw)
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    return FastSAMResult(crops, ranges, xywh.astype(np.float32), scores, image_hw)


def segment_everything(
    session,
    image_rgb: np.ndarray,
    input_hw: tuple[int, int] | int = IMGSZ_PX,
    conf: float = CONF,
    iou: float = IOU,
    max_det: int = MAX_DET,
) -> FastSAMResult:
    """FastSAM "everything" mode on one (H, W, 3) uint8 RGB image with an inference session.

    ``session`` is a :class:`runtime.sessions.Session` of the FastSAM model (one input, the
    two outputs ``output0`` / ``output1`` in that order); its input must be ``input_hw``.
    """
    tensor, geom = letterbox(image_rgb, input_hw)
    name = session.inputs[0].name
    want = np.dtype(session.inputs[0].dtype)
    outputs = session.infer({name: tensor.astype(want, copy=False)})
    names = [info.name for info in session.outputs]
    # ultralytics' exports name them output0 / output1; otherwise take them in order.
    names = ["output0", "output1"] if {"output0", "output1"} <= set(names) else names[:2]
    return postprocess(
        outputs[names[0]], outputs[names[1]], geom, conf=conf, iou=iou, max_det=max_det
    )
