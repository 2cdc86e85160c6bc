"""O-MaMa object descriptors by separable pooling (torch; twin of ``runtime.pooling``).

Each mask and its context box becomes a weight map at token resolution, and all
descriptors of a batch come from one batched matmul with the features; the bilinearly
upsampled (B, C, H', W') map of the reference implementation is never built, and there is
no Python loop over masks. The math and the index conventions (PyTorch bilinear with
align_corners=False, PyTorch "nearest" for the masks) are documented in
``runtime.pooling``; both implementations give the same numbers (within 1e-5), and the
descriptors stay differentiable with respect to the features.
"""

from __future__ import annotations

import numpy as np
import torch

from runtime.errors import OmamaError
from runtime.pooling import (
    CONTEXT_PX,
    REDUCTION,
    bilinear_matrix,
    bilinear_prefix,
    index_slice,
    pooling_grid,
)
from runtime.preprocess import nearest_indices

__all__ = [
    "CONTEXT_PX",
    "REDUCTION",
    "context_boxes",
    "descriptor_weights",
    "mask_boxes",
    "object_descriptors",
    "pool_descriptors",
]


def _pick(index: np.ndarray, device: torch.device) -> slice | torch.Tensor:
    """Nearest-resize indices as a slice (strided view) when possible, else a tensor."""
    picked = index_slice(index)
    return picked if isinstance(picked, slice) else torch.tensor(picked, device=device)


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Boxes of binary masks (..., H, W) -> (..., 4) float32 x1, y1, w, h (no +1).

    Same rule as ``runtime.pooling.mask_boxes``; empty masks give (0, 0, 0, 0).
    """
    rows = (masks != 0).any(dim=-1)  # (..., H)
    cols = (masks != 0).any(dim=-2)  # (..., W)
    present = rows.any(dim=-1)
    y_range = torch.arange(rows.shape[-1], device=masks.device)
    x_range = torch.arange(cols.shape[-1], device=masks.device)
    big = max(rows.shape[-1], cols.shape[-1])
    y_min = torch.where(rows, y_range, big).amin(dim=-1)
    y_max = torch.where(rows, y_range, -1).amax(dim=-1)
    x_min = torch.where(cols, x_range, big).amin(dim=-1)
    x_max = torch.where(cols, x_range, -1).amax(dim=-1)
    boxes = torch.stack([x_min, y_min, x_max - x_min, y_max - y_min], dim=-1).float()
    return torch.where(present[..., None], boxes, torch.zeros_like(boxes))


def context_boxes(
    boxes: torch.Tensor,
    image_size: tuple[int, int],
    grid: tuple[int, int],
    context_px: int = CONTEXT_PX,
    reduction: int = REDUCTION,
) -> torch.Tensor:
    """Context rectangles on the pooling grid: (..., 4) x1,y1,w,h px -> (..., 4) int64
    x1, y1, x2, y2 (end exclusive, never empty); see ``runtime.pooling.context_boxes``.
    """
    height, width = int(image_size[0]), int(image_size[1])
    grid_h, grid_w = int(grid[0]), int(grid[1])
    box = torch.trunc(boxes.to(torch.float64)).to(torch.int64)
    x1, y1, w, h = box.unbind(-1)
    x2, y2 = x1 + w, y1 + h
    x1 = torch.div((x1 - context_px).clamp(0, width), reduction, rounding_mode="floor")
    y1 = torch.div((y1 - context_px).clamp(0, height), reduction, rounding_mode="floor")
    x2 = torch.div((x2 + context_px).clamp(0, width), reduction, rounding_mode="floor")
    y2 = torch.div((y2 + context_px).clamp(0, height), reduction, rounding_mode="floor")
    x2 = torch.maximum(x2, x1 + 1)
    y2 = torch.maximum(y2, y1 + 1)
    return torch.stack(
        [
            x1.clamp(0, grid_w - 1),
            y1.clamp(0, grid_h - 1),
            x2.clamp(0, grid_w),
            y2.clamp(0, grid_h),
        ],
        dim=-1,
    )


def descriptor_weights(
    masks: torch.Tensor,
    boxes: torch.Tensor,
    image_size: tuple[int, int],
    feat_grid: tuple[int, int],
    context_px: int = CONTEXT_PX,
    reduction: int = REDUCTION,
) -> torch.Tensor:
    """Pooling weights at token resolution: (B, N, 2, h*w) float32.

    Args:
        masks: (B, N, H, W) binary masks (non-zero = foreground), any size; resized
            (nearest, PyTorch rule) to the pooling grid ``image_size // reduction``.
        boxes: (B, N, 4) x1, y1, w, h in pixels of the ``image_size`` image.
        image_size: (H, W) of the image the features come from.
        feat_grid: (h, w) token grid of the features.

    Returns:
        ``[..., 0, :]`` mask weights (sum 1, or all zero for a mask empty on the grid),
        ``[..., 1, :]`` context weights (sum 1).
    """
    if masks.dim() != 4 or boxes.shape != (*masks.shape[:2], 4):
        raise OmamaError(
            f"masks must be (B, N, H, W) and boxes (B, N, 4), got {tuple(masks.shape)} "
            f"and {tuple(boxes.shape)}"
        )
    batch, count = masks.shape[:2]
    device = masks.device
    grid_h, grid_w = pooling_grid(image_size, reduction)
    feat_h, feat_w = int(feat_grid[0]), int(feat_grid[1])
    # 1-D upsampling matrices: (H', h) and (W', w).
    uy = torch.tensor(bilinear_matrix(feat_h, grid_h), dtype=torch.float32, device=device)
    ux = torch.tensor(bilinear_matrix(feat_w, grid_w), dtype=torch.float32, device=device)

    flat = masks.reshape(batch * count, *masks.shape[2:])
    rows = _pick(nearest_indices(masks.shape[2], grid_h, "torch"), device)
    cols = _pick(nearest_indices(masks.shape[3], grid_w, "torch"), device)
    small = flat[:, rows][:, :, cols]  # (BN, H', W'); a strided view for integer ratios
    small = (small if small.dtype == torch.bool else small != 0).to(torch.float32)
    area = small.sum(dim=(1, 2))  # exact: integers below 2**24
    half = (small.reshape(batch * count * grid_h, grid_w) @ ux).reshape(
        batch * count, grid_h, feat_w
    )
    mask_w = torch.matmul(uy.T, half) / area.clamp(min=1.0)[:, None, None]  # (BN, h, w)

    rect = context_boxes(
        boxes.reshape(-1, 4).to(device), image_size, (grid_h, grid_w), context_px, reduction
    )
    prefix_y = torch.tensor(bilinear_prefix(feat_h, grid_h), device=device)  # float64
    prefix_x = torch.tensor(bilinear_prefix(feat_w, grid_w), device=device)
    col_y = prefix_y[rect[:, 3]] - prefix_y[rect[:, 1]]  # (BN, h)
    col_x = prefix_x[rect[:, 2]] - prefix_x[rect[:, 0]]  # (BN, w)
    cells = ((rect[:, 3] - rect[:, 1]) * (rect[:, 2] - rect[:, 0])).to(torch.float64)
    ctx_w = ((col_y / cells[:, None])[:, :, None] * col_x[:, None, :]).to(torch.float32)

    weights = torch.stack([mask_w, ctx_w], dim=1)  # (BN, 2, h, w)
    return weights.reshape(batch, count, 2, feat_h * feat_w)


def pool_descriptors(feats: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Apply weights (B, N, 2, h*w) to features (B, C, h, w) -> (B, N, 2C).

    Each descriptor is ``[mask mean (C) | context mean (C)]``; one batched matmul.
    """
    batch, channels = feats.shape[:2]
    count = weights.shape[1]
    tokens = feats.reshape(batch, channels, -1)  # (B, C, h*w)
    if weights.shape[-1] != tokens.shape[-1]:
        raise OmamaError(
            f"weights cover {weights.shape[-1]} tokens but the features have {tokens.shape[-1]}"
        )
    flat_weights = weights.reshape(batch, 2 * count, tokens.shape[-1]).to(tokens.dtype)
    pooled = torch.matmul(flat_weights, tokens.mT)
    return pooled.reshape(batch, count, 2 * channels)


def object_descriptors(
    feats: torch.Tensor,
    masks: torch.Tensor,
    boxes: torch.Tensor,
    image_size: tuple[int, int],
    context_px: int = CONTEXT_PX,
    reduction: int = REDUCTION,
) -> torch.Tensor:
    """O-MaMa object descriptors (docs/reference.md, section 4).

    Args:
        feats: (B, C, h, w) features at token resolution.
        masks: (B, N, H, W) binary masks at image resolution.
        boxes: (B, N, 4) x1, y1, w, h in pixels.
        image_size: (H, W) of the image; the pooling grid is ``(H // reduction,
            W // reduction)``, e.g. 175 x 175 for 700 x 700.

    Returns:
        (B, N, 2C) ``[mask mean | context-box mean]`` of the bilinearly upsampled features.
    """
    if feats.dim() != 4:
        raise OmamaError(f"features must have shape (B, C, h, w), got {tuple(feats.shape)}")
    weights = descriptor_weights(
        masks, boxes, image_size, feats.shape[2:], context_px=context_px, reduction=reduction
    )
    return pool_descriptors(feats, weights)
