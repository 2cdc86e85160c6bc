"""Sizes of the two views of a direction, and masks at the pooling grid (packed to bits).

Resizing follows the reference: model images and ground-truth masks are resized with the
OpenCV nearest rule, candidate masks with the PyTorch one, and masks reach the pooling grid
with the PyTorch rule of the descriptor code; the two resizes are composed into one index, so
the packed masks are exactly what ``object_descriptors`` would have seen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from runtime import rle
from runtime.egoexo import (
    view_kinds,
)
from runtime.pooling import REDUCTION, mask_boxes, pooling_grid
from runtime.preprocess import nearest_indices, resize_nearest_hw


@dataclass(frozen=True)
class Geometry:
    """Model input sizes (H, W) px and token grids (h, w) of the source and destination
    views of one direction; ``reduction`` sets the pooling grid (``image // reduction``)."""

    direction: str
    src_image: tuple[int, int]
    dst_image: tuple[int, int]
    src_grid: tuple[int, int]
    dst_grid: tuple[int, int]
    reduction: int = REDUCTION

    @classmethod
    def from_views(
        cls,
        direction: str,
        image_sizes: dict[str, Sequence[int]],
        grids: dict[str, Sequence[int]],
        reduction: int = REDUCTION,
    ) -> Geometry:
        """From per-view sizes ``{"ego": (H, W), "exo": (H, W)}`` and grids alike."""
        src, dst = view_kinds(direction)

        def hw(value: Sequence[int]) -> tuple[int, int]:
            return int(value[0]), int(value[1])

        return cls(
            direction,
            hw(image_sizes[src]),
            hw(image_sizes[dst]),
            hw(grids[src]),
            hw(grids[dst]),
            reduction,
        )

    @property
    def src_pool(self) -> tuple[int, int]:
        return pooling_grid(self.src_image, self.reduction)

    @property
    def dst_pool(self) -> tuple[int, int]:
        return pooling_grid(self.dst_image, self.reduction)


def grid_index(size_in: int, size_image: int, size_pool: int, rule: str) -> np.ndarray:
    """Source row (or column) of every pooling-grid cell: a mask of ``size_in`` px resized
    (nearest, ``rule``) to the model image, then (nearest, PyTorch rule) to the grid."""
    to_image = nearest_indices(size_in, size_image, rule)  # type: ignore[arg-type]
    return to_image[nearest_indices(size_image, size_pool, "torch")]


def masks_to_grid(
    masks: np.ndarray, image_size: tuple[int, int], pool: tuple[int, int], rule: str
) -> np.ndarray:
    """(N, H, W) masks at any size -> (N, H', W') bool at the pooling grid."""
    rows = grid_index(masks.shape[1], image_size[0], pool[0], rule)
    cols = grid_index(masks.shape[2], image_size[1], pool[1], rule)
    return masks[:, rows][:, :, cols] != 0


def pack_masks(masks: np.ndarray) -> np.ndarray:
    """(N, H, W) binary -> (N, ceil(H*W/8)) uint8, row-major, most significant bit first.

    N may be 0 (a frame where the segmenter found nothing): (0, ceil(H*W/8))."""
    cells = int(np.prod(masks.shape[1:]))
    return np.packbits(masks.reshape(len(masks), cells) != 0, axis=1)


def unpack_masks(bits: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Packed masks (..., nbytes) uint8 (as :func:`pack_masks`) -> bool (..., H', W').

    Runs on the tensor's device (bit shifts), so only the packed bytes cross the bus.
    """
    bit_values = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8, device=bits.device)
    flat = (bits.unsqueeze(-1) & bit_values).ne(0).flatten(-2)  # one AND, one compare
    cells = grid[0] * grid[1]
    return flat[..., :cells].unflatten(-1, (grid[0], grid[1]))


def gt_mask_at(
    rle_dict: dict, image_size: tuple[int, int], pool: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """A ground-truth RLE (video resolution) -> (pooling-grid mask (H', W') bool, box (4,)
    float32 ``x1, y1, w, h`` of the mask resized to the model image, OpenCV rule)."""
    mask = rle.decode(rle_dict)
    image_mask = resize_nearest_hw(mask, image_size, axes=(0, 1), rule="opencv")
    box = mask_boxes(image_mask)
    return masks_to_grid(mask[None], image_size, pool, "opencv")[0], box
