"""Deterministic inputs of the verification: images, scenes, masks, boxes, features.

Everything comes from a ``numpy.random.Generator`` the caller seeds, so the export's parity
inputs are reproducible; the golden files store the inputs themselves (so numpy's streams
may change between versions without changing a verification).
"""

from __future__ import annotations

import numpy as np

from runtime.pooling import mask_boxes
from runtime.preprocess import normalize_image


def random_images(rng: np.random.Generator, count: int, size_hw: tuple[int, int]) -> np.ndarray:
    """Normalised images (count, 3, H, W) float32 from random RGB bytes (reference scaling)."""
    h, w = size_hw
    rgb = rng.integers(0, 256, size=(count, h, w, 3), dtype=np.uint8)
    return np.stack([normalize_image(image) for image in rgb])


def random_masks(
    rng: np.random.Generator, count: int, size_hw: tuple[int, int], empty: tuple[int, ...] = ()
) -> np.ndarray:
    """(count, H, W) uint8 masks: random ellipses and rectangles of 1-60% of each side;
    indices in ``empty`` stay all zero (the empty-candidate case)."""
    h, w = size_hw
    masks = np.zeros((count, h, w), np.uint8)
    yy = np.arange(h, dtype=np.float32)[:, None]
    xx = np.arange(w, dtype=np.float32)[None, :]
    for i in range(count):
        if i in empty:
            continue
        mh = max(1, int(h * rng.uniform(0.01, 0.6)))
        mw = max(1, int(w * rng.uniform(0.01, 0.6)))
        y0 = int(rng.integers(0, h - mh + 1))
        x0 = int(rng.integers(0, w - mw + 1))
        if rng.random() < 0.5:
            masks[i, y0 : y0 + mh, x0 : x0 + mw] = 1
        else:
            cy, cx, ry, rx = y0 + mh / 2, x0 + mw / 2, max(mh / 2, 0.5), max(mw / 2, 0.5)
            inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
            masks[i][inside] = 1
            if not masks[i].any():
                masks[i, int(min(cy, h - 1)), int(min(cx, w - 1))] = 1
    return masks


def candidate_boxes(rng: np.random.Generator, masks: np.ndarray) -> np.ndarray:
    """Detector-like float boxes x1, y1, w, h: the masks' boxes moved by up to 2 px (FastSAM
    boxes are not the masks' tight boxes), never negative; empty masks give zeros."""
    boxes = mask_boxes(masks).astype(np.float32)
    present = masks.reshape(len(masks), -1).any(axis=1)
    jitter = rng.uniform(-2.0, 2.0, size=boxes.shape).astype(np.float32)
    boxes = np.maximum(boxes + jitter, 0.0)
    boxes[~present] = 0.0
    return boxes


# ------------------------------------------------------------------------------ backbone


def synthetic_scene(
    rng: np.random.Generator, size_hw: tuple[int, int], noise: float = 4.0
) -> np.ndarray:
    """(H, W, 3) uint8 RGB: a smooth two-colour gradient with 6-12 flat-coloured rectangles
    and ellipses (:func:`random_masks`) and Gaussian noise of std ``noise`` (grey levels):
    objects for a segmenter to find. Without noise it compresses to a few kB."""
    h, w = size_hw
    ramp = np.linspace(0.0, 1.0, w, dtype=np.float32)[None, :, None]
    ramp = ramp * np.linspace(0.5, 1.0, h, dtype=np.float32)[:, None, None]
    c0, c1 = rng.uniform(0, 255, (2, 3)).astype(np.float32)
    image = c0 + (c1 - c0) * ramp
    for mask in random_masks(rng, int(rng.integers(6, 13)), (h, w)):
        image[mask.astype(bool)] = rng.uniform(0, 255, 3)
    if noise:
        image += rng.normal(0.0, noise, image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


LOWRANK_RANK = 16
LOWRANK_LEVELS = 8  # factors in [-8, 8]
LOWRANK_SCALE_EXP = -9  # products of up to 16 * 64 = 1024 -> values within [-2, 2]


def lowrank_factors(
    rng: np.random.Generator, channels: int, tokens: int, rank: int = LOWRANK_RANK
) -> tuple[np.ndarray, np.ndarray]:
    """Integer factors (channels, rank) and (rank, tokens) int8 of :func:`lowrank_features`."""
    u = rng.integers(-LOWRANK_LEVELS, LOWRANK_LEVELS + 1, (channels, rank), dtype=np.int8)
    v = rng.integers(-LOWRANK_LEVELS, LOWRANK_LEVELS + 1, (rank, tokens), dtype=np.int8)
    return u, v


def lowrank_features(u: np.ndarray, v: np.ndarray, grid_hw: tuple[int, int]) -> np.ndarray:
    """Backbone-like features (1, C, h, w) float32 from integer factors: ``(u @ v) * 2^-9``.

    The product is computed in integers and every value is a small integer times a power of
    two, so it is exact in float32 and float16 on every machine: the matcher's golden input
    is stored in a few kB (the factors) instead of megabytes, and is bit-identical wherever
    it is rebuilt.
    """
    product = u.astype(np.int32) @ v.astype(np.int32)
    feats = np.ldexp(product.astype(np.float32), LOWRANK_SCALE_EXP)
    return feats.reshape(1, u.shape[0], *grid_hw)
