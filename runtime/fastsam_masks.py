"""FastSAM masks from prototypes, in numpy: ``sigmoid(coeffs . protos) > 0.5`` resampled to
the image and cut to each box, evaluated only inside the box.

The resampling from prototype to image is linear and separable, so each mask is
``Wy @ L @ Wx^T`` with 1-D interpolation matrices ``Wy`` (H x mh) and ``Wx`` (W x mw) that
fold ultralytics' two steps (an optional x2/x4 upsample when the letterbox padding is not a
whole prototype pixel, then crop-and-resize to the image) into one; the cost is
proportional to the box area. :mod:`runtime.fastsam_post` uses these for the candidates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from runtime.errors import OmamaError
from runtime.pooling import bilinear_matrix

PROTO_STRIDE = 4  # prototypes are at 1/4 of the network input
_BLOCK = 128  # output rows / columns resampled per matmul (keeps the band of weights dense)


@dataclass(frozen=True)
class _AxisResampler:
    """Prototype -> image resampling along one axis.

    ``matrix_t`` (m, n) float32 is the transposed interpolation matrix (n image pixels
    from m prototype cells); ``lo[i]..hi[i]`` are the prototype cells that image pixel i
    reads (its band).
    """

    matrix: np.ndarray  # (n, m) float32
    matrix_t: np.ndarray  # (m, n) float32
    lo: np.ndarray  # (n,) int64
    hi: np.ndarray  # (n,) int64, inclusive


@lru_cache(maxsize=32)
def _axis_resampler(
    proto_len: int, factor: int, top: int, content_len: int, out_len: int
) -> _AxisResampler:
    # Ultralytics: optional bilinear upsample by `factor`, crop [top, top + content_len),
    # bilinear resize to out_len. Both are linear maps, so they compose into one matrix.
    up = bilinear_matrix(proto_len, factor * proto_len)[top : top + content_len]
    matrix = bilinear_matrix(content_len, out_len) @ up  # (out_len, proto_len), float64
    nonzero = matrix != 0
    lo = np.argmax(nonzero, axis=1).astype(np.int64)
    hi = (proto_len - 1 - np.argmax(nonzero[:, ::-1], axis=1)).astype(np.int64)
    m32 = matrix.astype(np.float32)
    for arr in (m32, lo, hi):
        arr.setflags(write=False)
    mt = np.ascontiguousarray(m32.T)
    mt.setflags(write=False)
    return _AxisResampler(m32, mt, lo, hi)


def _resamplers(
    proto_hw: tuple[int, int], image_hw: tuple[int, int]
) -> tuple[_AxisResampler, _AxisResampler]:
    """Row and column resamplers from (mh, mw) prototypes to an (H, W) image.

    Same geometry as ultralytics' retina-mask path: the input is taken as 4x the
    prototype grid, and the prototypes are first upsampled by 2 or 4 when the letterbox
    padding would otherwise fall inside a prototype cell.
    """
    mh, mw = proto_hw
    h, w = image_hw
    in_h, in_w = PROTO_STRIDE * mh, PROTO_STRIDE * mw
    gain = min(in_h / h, in_w / w)
    pad = (in_h - max(round(h * gain), 1)) | (in_w - max(round(w * gain), 1))
    factor = PROTO_STRIDE // math.gcd(PROTO_STRIDE, pad | pad // 2)
    up_h, up_w = factor * mh, factor * mw
    if (up_h, up_w) == (h, w):
        return (_axis_resampler(mh, factor, 0, up_h, h), _axis_resampler(mw, factor, 0, up_w, w))
    gain = min(up_h / h, up_w / w)
    content_h, content_w = max(round(h * gain), 1), max(round(w * gain), 1)
    top = round((up_h - content_h) / 2 - 0.1)
    left = round((up_w - content_w) / 2 - 0.1)
    return (
        _axis_resampler(mh, factor, top, content_h, h),
        _axis_resampler(mw, factor, left, content_w, w),
    )


def box_pixel_ranges(boxes_xyxy: np.ndarray, image_hw: tuple[int, int]) -> np.ndarray:
    """Pixel rows/columns inside each box: (N, 4) int64 ``r0, r1, c0, c1`` (ends exclusive).

    A pixel (row r, column c) is inside when ``x1 <= c < x2`` and ``y1 <= r < y2`` (pixel
    indices compared with the float box, as ultralytics' ``crop_mask``).
    """
    h, w = image_hw
    boxes = np.asarray(boxes_xyxy, dtype=np.float32).reshape(-1, 4)
    c0 = np.clip(np.ceil(boxes[:, 0]), 0, w)
    r0 = np.clip(np.ceil(boxes[:, 1]), 0, h)
    c1 = np.clip(np.ceil(boxes[:, 2]), 0, w)
    r1 = np.clip(np.ceil(boxes[:, 3]), 0, h)
    return np.stack([r0, np.maximum(r1, r0), c0, np.maximum(c1, c0)], axis=1).astype(np.int64)


def box_masks(
    protos: np.ndarray,
    coeffs: np.ndarray,
    boxes_xyxy: np.ndarray,
    image_hw: tuple[int, int],
) -> list[np.ndarray]:
    """The part of each binary mask inside its box, with the pixel ranges of
    :func:`box_pixel_ranges`.

    Arguments:
        protos: (C, mh, mw) prototypes (the network's ``output1[0]``, C = 32).
        coeffs: (N, C) mask coefficients of the kept detections.
        boxes_xyxy: (N, 4) corner boxes in image pixels (after ``scale_boxes_to_image``).
        image_hw: (H, W) of the image.
    Returns:
        N arrays (r1 - r0, c1 - c0) uint8 0/1: ``coeffs . protos`` resampled bilinearly to
        the image, ``> 0`` (i.e. sigmoid > 0.5); :func:`paste_masks` makes them (N, H, W).
    """
    protos = np.asarray(protos, dtype=np.float32)
    coeffs = np.asarray(coeffs, dtype=np.float32)
    if protos.ndim != 3 or coeffs.ndim != 2 or coeffs.shape[1] != protos.shape[0]:
        raise OmamaError(
            f"mask prototypes (C, mh, mw) and coefficients (N, C) do not fit: "
            f"{protos.shape} and {coeffs.shape}"
        )
    ranges = box_pixel_ranges(boxes_xyxy, image_hw)
    if len(ranges) != len(coeffs):
        raise OmamaError(f"{len(coeffs)} mask coefficients but {len(ranges)} boxes")
    rows, cols = _resamplers(protos.shape[1:], image_hw)
    # (mh, C, mw): a window of prototype rows and columns is a stack of BLAS-ready matrices.
    protos_rcw = np.ascontiguousarray(protos.transpose(1, 0, 2))
    return [
        _box_mask(protos_rcw, coeff, rows, cols, *(int(v) for v in box))
        for coeff, box in zip(coeffs, ranges, strict=True)
    ]


def paste_masks(
    crops: list[np.ndarray], ranges: np.ndarray, image_hw: tuple[int, int]
) -> np.ndarray:
    """(N, H, W) uint8 masks with each crop placed at its ``r0, r1, c0, c1`` range.

    The array is allocated zeroed and only the box regions are written, so pages outside
    the boxes are never touched (an (N, H, W) stack costs memory only where masks are).
    """
    h, w = image_hw
    masks = np.zeros((len(crops), h, w), np.uint8)
    for mask, crop, (r0, r1, c0, c1) in zip(masks, crops, ranges, strict=True):
        mask[r0:r1, c0:c1] = crop
    return masks


def _box_mask(protos_rcw, coeff, rows, cols, r0, r1, c0, c1) -> np.ndarray:
    """``resampled logits > 0`` of one mask on its box region: (r1-r0, c1-c0) uint8."""
    out = np.zeros((r1 - r0, c1 - c0), np.uint8)
    if r1 <= r0 or c1 <= c0:
        return out
    p0, p1 = int(rows.lo[r0]), int(rows.hi[r1 - 1]) + 1
    q0, q1 = int(cols.lo[c0]), int(cols.hi[c1 - 1]) + 1
    logits = np.matmul(coeff[None, None, :], protos_rcw[p0:p1, :, q0:q1])[:, 0]  # (ph, pw)
    # Row pass (box rows x prototype columns), in blocks so each block only multiplies the
    # band of prototype rows its pixels read.
    tmp = np.empty((r1 - r0, q1 - q0), np.float32)
    out_bool = out.view(bool)  # same bytes: the comparison writes 0/1 without a cast loop
    for a in range(r0, r1, _BLOCK):
        b = min(a + _BLOCK, r1)
        lo, hi = int(rows.lo[a]), int(rows.hi[b - 1]) + 1
        np.matmul(rows.matrix[a:b, lo:hi], logits[lo - p0 : hi - p0], out=tmp[a - r0 : b - r0])
    # Column pass, thresholded block by block straight into the uint8 mask.
    for a in range(c0, c1, _BLOCK):
        b = min(a + _BLOCK, c1)
        lo, hi = int(cols.lo[a]), int(cols.hi[b - 1]) + 1
        block = tmp[:, lo - q0 : hi - q0] @ cols.matrix_t[lo:hi, a:b]
        np.greater(block, 0, out=out_bool[:, a - c0 : b - c0])
    return out
