"""Torch twin of ``runtime.preprocess``: the same resize indices and float32 operations, so
the tensors are bit-identical to the numpy ones, on CPU or GPU and for batches.
"""

from __future__ import annotations

import torch

from runtime.errors import OmamaError
from runtime.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PATCH_SIZE_PX,
    NearestRule,
    nearest_indices,
    patch_multiple_size,
)


def resize_nearest_hw_torch(
    tensor: torch.Tensor, size_hw: tuple[int, int], dims: tuple[int, int], rule: NearestRule
) -> torch.Tensor:
    """Nearest-neighbour resize of the dimensions ``dims`` (rows, columns) to ``size_hw``."""
    h_in, w_in = tensor.shape[dims[0]], tensor.shape[dims[1]]
    h_out, w_out = int(size_hw[0]), int(size_hw[1])
    if (h_in, w_in) == (h_out, w_out):
        return tensor
    rows = torch.tensor(nearest_indices(h_in, h_out, rule), device=tensor.device)
    cols = torch.tensor(nearest_indices(w_in, w_out, rule), device=tensor.device)
    return tensor.index_select(dims[0], rows).index_select(dims[1], cols)


def resize_mask_nearest_torch(
    mask: torch.Tensor, size_hw: tuple[int, int], rule: NearestRule = "opencv"
) -> torch.Tensor:
    """Resize a mask (H, W) or masks (N, H, W) to ``size_hw``; see ``runtime.preprocess``."""
    if mask.dim() not in (2, 3):
        raise OmamaError(f"mask must be (H, W) or (N, H, W), got shape {tuple(mask.shape)}")
    return resize_nearest_hw_torch(mask, size_hw, (mask.dim() - 2, mask.dim() - 1), rule)


def preprocess_image_torch(
    rgb: torch.Tensor, size_hw: tuple[int, int] | None = None, patch: int = PATCH_SIZE_PX
) -> torch.Tensor:
    """RGB uint8 (H, W, 3) or (B, H, W, 3) -> normalised float32 (3, h, w) or (B, 3, h, w).

    Same rule as ``runtime.preprocess.preprocess_image``: nearest resize (OpenCV rule) to
    ``size_hw`` or to the patch-multiple size, then ``ToTensor`` + ImageNet ``Normalize``.
    """
    if rgb.dtype != torch.uint8 or rgb.dim() not in (3, 4) or rgb.shape[-1] != 3:
        raise OmamaError(
            f"image must be RGB uint8 of shape (H, W, 3) or (B, H, W, 3), "
            f"got {rgb.dtype} {tuple(rgb.shape)}"
        )
    h_dim = rgb.dim() - 3
    h, w = rgb.shape[h_dim], rgb.shape[h_dim + 1]
    target = patch_multiple_size(h, w, patch) if size_hw is None else size_hw
    rgb = resize_nearest_hw_torch(rgb, target, (h_dim, h_dim + 1), "opencv")
    x = rgb.movedim(-1, -3).to(torch.float32).div(255)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=x.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=x.device).view(3, 1, 1)
    return x.sub(mean).div(std).contiguous()
