"""Synthetic frame pairs of ``omama bench``: the same arrays in every worker process.

Each pair holds K objects (ellipses of distinct colours on a smooth background, placed
differently in the two views); the K source masks are the queries. The destination also
gets a fixed candidate set (the K objects and random distractors, shuffled): the fidelity
pass runs on it, so every row chooses among the same masks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from benchmarks.common import ellipse_mask
from runtime.candidates import Candidates
from runtime.errors import OmamaError

FIDELITY_CANDIDATES = 32  # O-MaMa trains with 32 candidates per frame


@dataclass
class BenchPair:
    """One synthetic frame pair.

    Attributes:
        src_rgb, dst_rgb: (Hs, Ws, 3) and (Hd, Wd, 3) uint8 RGB at the model's view sizes.
        queries: K (Hs, Ws) uint8 0/1 masks of the objects in the source view.
        targets: (K, Hd, Wd) uint8 the same objects in the destination view.
        candidates: the destination's fixed candidate set (targets and distractors,
            shuffled); ``target_index[k]`` is where object k's mask sits in it.
    """

    src_rgb: np.ndarray
    dst_rgb: np.ndarray
    queries: list[np.ndarray]
    targets: np.ndarray
    candidates: Candidates
    target_index: np.ndarray


def _background(rng: np.random.Generator, size_hw: tuple[int, int]) -> np.ndarray:
    """A smooth colour gradient with mild noise: (H, W, 3) float."""
    h, w = size_hw
    ys, xs = np.mgrid[:h, :w]
    corners = rng.uniform(40, 200, size=(2, 2, 3))
    fy, fx = (ys / max(h - 1, 1))[..., None], (xs / max(w - 1, 1))[..., None]
    top = corners[0, 0] * (1 - fx) + corners[0, 1] * fx
    bottom = corners[1, 0] * (1 - fx) + corners[1, 1] * fx
    return top * (1 - fy) + bottom * fy + rng.normal(0, 6, size=(h, w, 3))


def _place_objects(
    rng: np.random.Generator, size_hw: tuple[int, int], count: int
) -> list[np.ndarray]:
    """``count`` non-overlapping ellipses, one per cell of a near-square grid of cells."""
    cols = int(np.ceil(np.sqrt(count)))
    rows = int(np.ceil(count / cols))
    cell_h, cell_w = size_hw[0] / rows, size_hw[1] / cols
    cells = rng.permutation(rows * cols)[:count]
    masks = []
    for cell in cells:
        r, c = divmod(int(cell), cols)
        ry = max(2.0, rng.uniform(0.2, 0.42) * cell_h)
        rx = max(2.0, rng.uniform(0.2, 0.42) * cell_w)
        cy = (r + 0.5) * cell_h + rng.uniform(-0.05, 0.05) * cell_h
        cx = (c + 0.5) * cell_w + rng.uniform(-0.05, 0.05) * cell_w
        masks.append(ellipse_mask(size_hw, cy, cx, ry, rx))
    return masks


def _view(
    rng: np.random.Generator, size_hw: tuple[int, int], colours: np.ndarray
) -> tuple[np.ndarray, list[np.ndarray]]:
    """(H, W, 3) uint8 image with one textured object per colour, and the objects' masks."""
    image = _background(rng, size_hw)
    masks = _place_objects(rng, size_hw, len(colours))
    for mask, colour in zip(masks, colours, strict=True):
        texture = rng.normal(0, 10, size=(*size_hw, 3))
        image = np.where(mask[..., None] != 0, colour + texture, image)
    return np.clip(image, 0, 255).astype(np.uint8), masks


def synthetic_pairs(
    src_hw: tuple[int, int],
    dst_hw: tuple[int, int],
    num_pairs: int,
    objects_per_frame: int,
    num_candidates: int = FIDELITY_CANDIDATES,
    seed: int = 0,
) -> list[BenchPair]:
    """``num_pairs`` deterministic frame pairs with ``objects_per_frame`` objects each (see
    the module docstring); the same arguments give the same arrays in every process."""
    objects = objects_per_frame
    if num_pairs < 1 or objects < 1:
        raise OmamaError(f"need at least one pair and one object, got {num_pairs} and {objects}")
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(num_pairs):
        colours = rng.uniform(0, 255, size=(objects, 3))
        src_rgb, queries = _view(rng, src_hw, colours)
        dst_rgb, targets = _view(rng, dst_hw, colours)
        distractors = []
        for _ in range(max(num_candidates, objects) - objects):
            ry, rx = rng.uniform(0.05, 0.3) * dst_hw[0], rng.uniform(0.05, 0.3) * dst_hw[1]
            cy, cx = rng.uniform(0, dst_hw[0]), rng.uniform(0, dst_hw[1])
            distractors.append(ellipse_mask(dst_hw, cy, cx, max(ry, 1.5), max(rx, 1.5)))
        stack = np.stack([*targets, *distractors]) if distractors else np.stack(targets)
        order = rng.permutation(len(stack))
        out.append(
            BenchPair(
                src_rgb=src_rgb,
                dst_rgb=dst_rgb,
                queries=queries,
                targets=np.stack(targets),
                candidates=Candidates.from_masks(stack[order]),
                target_index=np.argsort(order)[:objects],
            )
        )
    return out
