"""Image and mask preprocessing for the backbones (docs/reference.md, section 2), torch-free.

- Images are RGB uint8, scaled to [0, 1] (``ToTensor``) and normalised with the ImageNet
  mean/std, giving float32 (3, H, W).
- Their size is rounded *down* to a multiple of the patch size (14) with a nearest-neighbour
  resize, only when needed: ego 704x704 -> 700x700 (50x50 tokens), exo 540x960 -> 532x952
  (38x68 tokens).
- Masks are resized (nearest) to the image size.

Nearest-neighbour rounding differs between libraries, so it is explicit here, and this module
is the one place that defines it (:func:`nearest_indices`). The O-MaMa code resizes with two
libraries, and each caller names the rule of the reference step it reproduces:

- ``rule="opencv"`` (``cv2.resize(INTER_NEAREST)``: source index ``floor(i * (1 / (out / in)))``
  in float64): images and ground-truth / query masks;
- ``rule="torch"`` (``F.interpolate(mode="nearest")`` with an output size: ``floor(i *
  float32(in / out))`` in float32): FastSAM candidate masks of another size than the image
  (:meth:`runtime.candidates.Candidates.resized`) and masks on the descriptor pooling grid
  (:mod:`runtime.pooling`).

The two disagree on some sizes (540 -> 532 picks another row 399). The torch twin
``omama_train.models.preprocess`` uses the same index functions and gives bit-identical tensors.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

import numpy as np

from runtime.errors import OmamaError

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
PATCH_SIZE_PX = 14

NearestRule = Literal["opencv", "torch"]
NEAREST_RULES: tuple[str, ...] = ("opencv", "torch")


def patch_multiple_size(h: int, w: int, patch: int = PATCH_SIZE_PX) -> tuple[int, int]:
    """``(h, w)`` rounded down to multiples of ``patch``: (704, 704) -> (700, 700)."""
    if patch <= 0:
        raise OmamaError(f"patch size must be positive, got {patch}")
    if h < patch or w < patch:
        raise OmamaError(f"image of {h}x{w} px is smaller than one {patch}x{patch} px patch")
    return (h // patch) * patch, (w // patch) * patch


@lru_cache(maxsize=256)
def _nearest_indices(size_in: int, size_out: int, rule: str) -> np.ndarray:
    out = np.arange(size_out)
    if rule == "opencv":
        # OpenCV computes the inverse of the (double) scale, then floors.
        src = np.floor(out * (1.0 / (size_out / size_in)))
    else:
        # PyTorch's CPU/CUDA kernels work in float32 with scale = in / out (its shortcuts for
        # equal sizes and for doubling give the same indices).
        scale = np.float32(size_in) / np.float32(size_out)
        src = np.floor(out.astype(np.float32) * scale)
    index = np.minimum(src.astype(np.int64), size_in - 1)
    index.setflags(write=False)  # shared by every caller through the cache
    return index


def nearest_indices(size_in: int, size_out: int, rule: NearestRule = "opencv") -> np.ndarray:
    """Source index of every output pixel of a 1-D nearest-neighbour resize.

    Returns int64 (size_out,), read-only and cached (copy it before writing or handing it to
    ``torch.from_numpy``). ``rule="opencv"`` reproduces ``cv2.resize(INTER_NEAREST)``,
    ``rule="torch"`` reproduces ``F.interpolate(mode="nearest")`` with an output size; the
    module docstring says which reference step uses which.
    """
    size_in, size_out = int(size_in), int(size_out)
    if size_in <= 0 or size_out <= 0:
        raise OmamaError(f"resize sizes must be positive, got {size_in} -> {size_out}")
    if rule not in NEAREST_RULES:
        raise OmamaError(f"nearest rule must be one of {', '.join(NEAREST_RULES)}, got {rule!r}")
    return _nearest_indices(size_in, size_out, rule)


def resize_nearest_hw(
    array: np.ndarray, size_hw: tuple[int, int], axes: tuple[int, int], rule: NearestRule
) -> np.ndarray:
    """Nearest-neighbour resize of the two ``axes`` (rows, columns) of ``array`` to ``size_hw``.

    Returns ``array`` itself when the size already matches, else a new array. A column-major
    input (pycocotools decodes masks so) gives a column-major output: gathering in memory
    order is up to 100x faster than gathering across it (0.7 vs 50-90 ms for 2160x3840).
    """
    h_in, w_in = array.shape[axes[0]], array.shape[axes[1]]
    h_out, w_out = int(size_hw[0]), int(size_hw[1])
    if (h_in, w_in) == (h_out, w_out):
        return array
    rows = nearest_indices(h_in, h_out, rule)
    cols = nearest_indices(w_in, w_out, rule)
    if array.strides[axes[0]] < array.strides[axes[1]]:
        swapped = np.swapaxes(array, axes[0], axes[1])
        out = np.take(np.take(swapped, cols, axis=axes[0]), rows, axis=axes[1])
        return np.swapaxes(out, axes[0], axes[1])
    return np.take(np.take(array, rows, axis=axes[0]), cols, axis=axes[1])


def resize_mask_nearest(
    mask: np.ndarray, size_hw: tuple[int, int], rule: NearestRule = "opencv"
) -> np.ndarray:
    """Resize a mask (H, W) or a stack of masks (N, H, W) to ``size_hw`` = (h, w), nearest.

    The dtype is kept; N = 0 is fine. Pick the rule of the reference step being reproduced:
    ``rule="opencv"`` for ground-truth and query masks (O-MaMa resizes them with
    ``cv2.resize``), ``rule="torch"`` for FastSAM candidate masks of another size (O-MaMa
    resizes them with ``F.interpolate(mode="nearest")``). ``runtime.metrics.resize_nearest``
    is a faster OpenCV call for single uint8 masks and equals ``rule="opencv"``.
    """
    mask = np.asarray(mask)
    if mask.ndim not in (2, 3):
        raise OmamaError(f"mask must be (H, W) or (N, H, W), got shape {mask.shape}")
    return resize_nearest_hw(mask, size_hw, axes=(mask.ndim - 2, mask.ndim - 1), rule=rule)


def _normalisation_lut() -> np.ndarray:
    """float32 (3, 256): the normalised value of every uint8 level per channel.

    Computed with the same float32 operations as ``ToTensor`` + ``Normalize``
    (x / 255, then (x - mean) / std), so a table lookup is bit-identical to them.
    """
    levels = np.arange(256, dtype=np.float32) / np.float32(255)
    mean = np.asarray(IMAGENET_MEAN, dtype=np.float32)[:, None]
    std = np.asarray(IMAGENET_STD, dtype=np.float32)[:, None]
    return (levels[None, :] - mean) / std


_LUT = _normalisation_lut()


def normalize_image(rgb: np.ndarray) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> ImageNet-normalised float32 (3, H, W), no resizing."""
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise OmamaError(
            f"image must be RGB uint8 of shape (H, W, 3), got {rgb.dtype} {tuple(rgb.shape)}"
        )
    out = np.empty((3, rgb.shape[0], rgb.shape[1]), dtype=np.float32)
    for c in range(3):
        out[c] = _LUT[c][rgb[:, :, c]]
    return out


def preprocess_image(
    rgb: np.ndarray, size_hw: tuple[int, int] | None = None, patch: int = PATCH_SIZE_PX
) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> normalised float32 (3, h, w) ready for the backbone.

    Without ``size_hw`` the image is resized (nearest, OpenCV rule) to
    ``patch_multiple_size(H, W, patch)`` when it is not already that size. With ``size_hw``
    it is resized (nearest) to exactly that size, e.g. (800, 800) for a patch-16 backbone
    keeping the 50x50 token grid.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise OmamaError(f"image must be RGB of shape (H, W, 3), got {tuple(rgb.shape)}")
    target = patch_multiple_size(rgb.shape[0], rgb.shape[1], patch) if size_hw is None else size_hw
    return normalize_image(resize_nearest_hw(rgb, target, axes=(0, 1), rule="opencv"))


def model_input_size(h: int, w: int, patch: int = PATCH_SIZE_PX) -> tuple[int, int]:
    """Input size that keeps the patch-14 token grid of an ``h`` x ``w`` px image.

    The matcher's positional tables fix the token grids (50x50 ego, 38x68 exo), so backbones
    with another patch size (DINOv3: 16, ResNet-50: stride 32) see the same grid times their
    patch: (704, 704) -> (700, 700) at 14, (800, 800) at 16, (1600, 1600) at 32.
    """
    ph, pw = patch_multiple_size(h, w, PATCH_SIZE_PX)
    return ph // PATCH_SIZE_PX * patch, pw // PATCH_SIZE_PX * patch
