"""Object descriptors by separable pooling (numpy twin of ``omama_train.models.descriptors``).

O-MaMa describes an object by two averages of the feature map after bilinear upsampling
(align_corners=False) to the grid ``(H // reduction, W // reduction)`` of an H x W image
(175 x 175 for the 700 x 700 ego image, 133 x 238 for the 532 x 952 exo image):

* mask descriptor: mean over the cells of the mask resized (nearest) to that grid; an
  empty resized mask gives a zero vector;
* context descriptor: mean over the mask's box grown by ``context_px`` on every side.

Upsampling is linear and separable: with the 1-D interpolation matrices ``Uy`` (H' x h)
and ``Ux`` (W' x w) the upsampled channel is ``Uy F Ux^T``, so the mean over a cell set
``M'`` is ``sum(F * (Uy^T M' Ux)) / |M'|``. Every mask and box therefore becomes a weight
map at token resolution (h x w) and all descriptors come from one matmul with the
(h*w, C) features; the upsampled (C, H', W') map is never built.

Index conventions follow PyTorch, which the reference code uses:

* bilinear, align_corners=False: ``src = max((dst + 0.5) * in / out - 0.5, 0)`` in float32
  (with PyTorch's fused multiply-add, so the weights are PyTorch's to the bit);
* nearest (``F.interpolate(mode="nearest")``): the ``rule="torch"`` indices of
  :func:`runtime.preprocess.nearest_indices` (OpenCV's INTER_NEAREST differs slightly).

Masks are binary: any non-zero value is foreground.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from runtime import preprocess
from runtime.errors import OmamaError

CONTEXT_PX = 100
REDUCTION = 4


def pooling_grid(image_size: tuple[int, int], reduction: int = REDUCTION) -> tuple[int, int]:
    """Size (H', W') of the upsampled grid the descriptors average over.

    ``image_size`` is (H, W) in pixels; (700, 700) -> (175, 175), (532, 952) -> (133, 238),
    i.e. the token grid times patch / reduction (14 / 4 for DINOv2).
    """
    height, width = int(image_size[0]), int(image_size[1])
    grid = (height // reduction, width // reduction)
    if grid[0] < 1 or grid[1] < 1:
        raise OmamaError(f"image size {height}x{width} is smaller than the reduction {reduction}")
    return grid


@lru_cache(maxsize=64)
def _bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
    # PyTorch computes source positions in float32 with one fused multiply-add; doing the
    # same (exact product in float64, one rounding) reproduces its weights bit for bit.
    scale = np.float32(in_size) / np.float32(out_size)
    dst = np.arange(out_size, dtype=np.float64)
    src = (np.float64(scale) * (dst + 0.5) - 0.5).astype(np.float32)
    src = np.maximum(src, np.float32(0.0))
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    lam1 = np.clip(src - i0.astype(np.float32), np.float32(0.0), np.float32(1.0))
    lam0 = np.float32(1.0) - lam1
    matrix = np.zeros((out_size, in_size), dtype=np.float64)
    rows = np.arange(out_size)
    np.add.at(matrix, (rows, i0), lam0.astype(np.float64))
    np.add.at(matrix, (rows, i1), lam1.astype(np.float64))
    matrix.setflags(write=False)
    return matrix


def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
    """1-D bilinear upsampling matrix (out_size, in_size), float64, read-only.

    ``bilinear_matrix(h, H') @ x`` equals ``F.interpolate(..., size=H', mode="bilinear",
    align_corners=False)`` along one axis; every row sums to 1.
    """
    return _bilinear_matrix(int(in_size), int(out_size))


def index_slice(index: np.ndarray) -> slice | np.ndarray:
    """``index`` as a slice when it is an increasing arithmetic progression, so that picking
    rows or columns with it is a strided view instead of a gather; else ``index`` itself."""
    if len(index) < 2:
        return slice(int(index[0]), int(index[0]) + 1) if len(index) else index
    step = int(index[1] - index[0])
    if step > 0 and np.array_equal(index, index[0] + step * np.arange(len(index))):
        return slice(int(index[0]), int(index[-1]) + 1, step)
    return index


def mask_boxes(masks: np.ndarray) -> np.ndarray:
    """Boxes of binary masks as O-MaMa takes the query box: (..., H, W) -> (..., 4) float32.

    ``x1, y1`` = smallest column/row with a foreground pixel (any non-zero value),
    ``w = xmax - xmin``, ``h = ymax - ymin`` (pixel indices, no +1: a one-pixel mask has
    w = h = 0). Empty masks give (0, 0, 0, 0). This is the project's one tight-box function
    (candidate boxes of :meth:`runtime.candidates.Candidates.from_masks` too); the evaluator's
    inclusive ``(y0, y1, x0, x1)`` box is :func:`runtime.metrics.bbox`. Found from row and
    column projections, without listing pixels.
    """
    masks = np.asarray(masks)
    if masks.ndim < 2:
        raise OmamaError(f"masks must have shape (..., H, W), got {masks.shape}")
    rows = np.any(masks, axis=-1)  # (..., H)
    cols = np.any(masks, axis=-2)  # (..., W)
    present = rows.any(axis=-1)
    y_min = np.argmax(rows, axis=-1)
    y_max = rows.shape[-1] - 1 - np.argmax(rows[..., ::-1], axis=-1)
    x_min = np.argmax(cols, axis=-1)
    x_max = cols.shape[-1] - 1 - np.argmax(cols[..., ::-1], axis=-1)
    boxes = np.stack([x_min, y_min, x_max - x_min, y_max - y_min], axis=-1).astype(np.float32)
    boxes[~present] = 0.0
    return boxes


def context_boxes(
    boxes: np.ndarray,
    image_size: tuple[int, int],
    grid: tuple[int, int],
    context_px: int = CONTEXT_PX,
    reduction: int = REDUCTION,
) -> np.ndarray:
    """Context rectangles on the pooling grid: boxes (..., 4) x1,y1,w,h px -> (..., 4) int64.

    Returns ``x1, y1, x2, y2`` (end exclusive) in grid cells, never empty: truncate the box
    to int, convert to corners, grow by ``context_px``, clamp to the image, divide by
    ``reduction`` (floor), force x2 >= x1 + 1 and y2 >= y1 + 1, clamp x1, y1 to
    [0, grid - 1] and x2, y2 to [0, grid].
    """
    height, width = int(image_size[0]), int(image_size[1])
    grid_h, grid_w = int(grid[0]), int(grid[1])
    box = np.trunc(np.asarray(boxes, dtype=np.float64)).astype(np.int64)
    x1, y1, w, h = box[..., 0], box[..., 1], box[..., 2], box[..., 3]
    x2, y2 = x1 + w, y1 + h
    x1 = np.clip(x1 - context_px, 0, width) // reduction
    y1 = np.clip(y1 - context_px, 0, height) // reduction
    x2 = np.clip(x2 + context_px, 0, width) // reduction
    y2 = np.clip(y2 + context_px, 0, height) // reduction
    x2 = np.maximum(x2, x1 + 1)
    y2 = np.maximum(y2, y1 + 1)
    return np.stack(
        [
            np.clip(x1, 0, grid_w - 1),
            np.clip(y1, 0, grid_h - 1),
            np.clip(x2, 0, grid_w),
            np.clip(y2, 0, grid_h),
        ],
        axis=-1,
    )


@lru_cache(maxsize=64)
def _bilinear_prefix(in_size: int, out_size: int) -> np.ndarray:
    matrix = _bilinear_matrix(in_size, out_size)
    prefix = np.zeros((out_size + 1, in_size), dtype=np.float64)
    np.cumsum(matrix, axis=0, out=prefix[1:])
    prefix.setflags(write=False)
    return prefix


def bilinear_prefix(in_size: int, out_size: int) -> np.ndarray:
    """Prefix sums of the bilinear matrix rows: (out_size + 1, in_size) float64, read-only.

    Row k holds the sum of the first k rows of ``bilinear_matrix(in_size, out_size)``, so the
    weights of the output range [a, b) at input resolution are ``prefix[b] - prefix[a]``.
    """
    return _bilinear_prefix(int(in_size), int(out_size))


def _check_inputs(masks: np.ndarray, boxes: np.ndarray) -> None:
    if masks.ndim != 3:
        raise OmamaError(f"masks must have shape (N, H, W), got {masks.shape}")
    if boxes.shape != (masks.shape[0], 4):
        raise OmamaError(f"boxes must have shape ({masks.shape[0]}, 4), got {boxes.shape}")


def descriptor_weights(
    masks: np.ndarray,
    boxes: np.ndarray,
    image_size: tuple[int, int],
    feat_grid: tuple[int, int],
    context_px: int = CONTEXT_PX,
    reduction: int = REDUCTION,
) -> np.ndarray:
    """Pooling weights at token resolution: (N, 2, h*w) float32.

    Args:
        masks: (N, H, W) binary masks (any dtype, non-zero = foreground) of any size; they
            are resized (nearest, torch rule) to the pooling grid.
        boxes: (N, 4) x1, y1, w, h in pixels of the ``image_size`` image.
        image_size: (H, W) of the image the features come from (sets the pooling grid and
            the box clamping).
        feat_grid: (h, w) token grid of the features.

    Returns:
        Row 0 of each pair holds the mask weights (summing to 1, or all zero for a mask that
        is empty on the grid), row 1 the context weights (summing to 1); the descriptor of
        features (h*w, C) is ``weights @ features``.
    """
    masks = np.asarray(masks)
    boxes = np.asarray(boxes)
    _check_inputs(masks, boxes)
    grid_h, grid_w = pooling_grid(image_size, reduction)
    feat_h, feat_w = int(feat_grid[0]), int(feat_grid[1])
    count = masks.shape[0]
    uy = bilinear_matrix(feat_h, grid_h).astype(np.float32)  # (H', h)
    ux = bilinear_matrix(feat_w, grid_w).astype(np.float32)  # (W', w)

    rows = index_slice(preprocess.nearest_indices(masks.shape[1], grid_h, "torch"))
    cols = index_slice(preprocess.nearest_indices(masks.shape[2], grid_w, "torch"))
    picked = masks[:, rows][:, :, cols]  # (N, H', W'): a strided view for integer ratios
    small = np.empty(picked.shape, dtype=np.float32)
    np.not_equal(picked, 0, out=small, casting="unsafe")  # one pass: test and convert
    area = small.sum(axis=(1, 2))  # exact: integers below 2**24
    half = (small.reshape(count * grid_h, grid_w) @ ux).reshape(count, grid_h, feat_w)
    mask_w = np.matmul(uy.T, half)  # (N, h, w)
    mask_w /= np.maximum(area, 1.0)[:, None, None]

    rect = context_boxes(boxes, image_size, (grid_h, grid_w), context_px, reduction)
    prefix_y = bilinear_prefix(feat_h, grid_h)
    prefix_x = bilinear_prefix(feat_w, grid_w)
    col_y = prefix_y[rect[:, 3]] - prefix_y[rect[:, 1]]  # (N, h)
    col_x = prefix_x[rect[:, 2]] - prefix_x[rect[:, 0]]  # (N, w)
    cells = ((rect[:, 3] - rect[:, 1]) * (rect[:, 2] - rect[:, 0])).astype(np.float64)
    ctx_w = (col_y / cells[:, None])[:, :, None] * col_x[:, None, :]

    weights = np.empty((count, 2, feat_h * feat_w), dtype=np.float32)
    weights[:, 0] = mask_w.reshape(count, feat_h * feat_w)
    weights[:, 1] = ctx_w.reshape(count, feat_h * feat_w)
    return weights


def pool_descriptors(feats: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Apply weights (N, 2, h*w) to features (C, h, w) -> descriptors (N, 2C) float32.

    Each descriptor is ``[mask mean (C) | context mean (C)]``.
    """
    channels = feats.shape[0]
    flat = np.asarray(feats, dtype=np.float32).reshape(channels, -1)  # (C, h*w)
    if weights.shape[-1] != flat.shape[1]:
        raise OmamaError(
            f"weights cover {weights.shape[-1]} tokens but the features have {flat.shape[1]}"
        )
    count = weights.shape[0]
    pooled = weights.reshape(2 * count, flat.shape[1]) @ flat.T  # (2N, C)
    return pooled.reshape(count, 2 * channels)


def object_descriptors(
    feats: np.ndarray,
    masks: np.ndarray,
    boxes: np.ndarray,
    image_size: tuple[int, int],
    context_px: int = CONTEXT_PX,
    reduction: int = REDUCTION,
) -> np.ndarray:
    """O-MaMa object descriptors of one image: feats (C, h, w), masks (N, H, W), boxes (N, 4)
    x1, y1, w, h px -> (N, 2C) float32 ``[mask mean | context mean]``.
    """
    if feats.ndim != 3:
        raise OmamaError(f"features must have shape (C, h, w), got {feats.shape}")
    weights = descriptor_weights(masks, boxes, image_size, feats.shape[1:], context_px, reduction)
    return pool_descriptors(feats, weights)
