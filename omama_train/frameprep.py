"""Precomputation cache, next to the candidates. Everything a sample needs that does not change
between epochs is computed once per destination frame (:func:`ensure_frame_preps`) and
stored as ``Masks_<SPLIT>_<DIR>/<take>/<cam>/<frame>_prep_<dst>_<src>_r<k>.npz``:

- the candidates at the pooling grid (bit-packed), their boxes in model-image pixels and
  their order-2 Delaunay adjacency (CSR);
- the ground-truth masks of the objects visible in that frame (pooling grid, box, the anchor
  candidate of the sampler), and the query masks of every object in every source camera at
  that frame (so any pairs file over these frames finds its queries).

The file records what it was made from (sizes and the size and mtime of the candidate files
and the take's annotation.json); a changed input makes :func:`ensure_frame_preps` rebuild it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from omama_train.geometry import Geometry, gt_mask_at, masks_to_grid, pack_masks
from omama_train.imagekey import dst_frames
from omama_train.sampling import (
    Adjacency,
    best_overlap,
    candidate_adjacency,
    centroids,
)
from omama_train.shards import select_shard
from runtime.atomic import atomic_path
from runtime.candidates import load_frame_candidates, scale_boxes
from runtime.egoexo import (
    Pair,
    ProcessedRoot,
    annotation_path,
    candidate_paths,
    is_ego_cam,
    view_kinds,
)
from runtime.errors import OmamaError

PREP_VERSION = 1


def prep_path(
    root: Path, split: str, direction: str, take: str, cam: str, frame: int, geometry: Geometry
) -> Path:
    """``<frame>_prep_<dst HxW>_<src HxW>_r<k>.npz`` beside the frame's candidate files."""
    masks_path, _ = candidate_paths(root, split, direction, take, cam, frame)
    d, s = geometry.dst_image, geometry.src_image
    name = f"{int(frame)}_prep_{d[0]}x{d[1]}_{s[0]}x{s[1]}_r{geometry.reduction}.npz"
    return masks_path.with_name(name)


def _stat(path: Path) -> list[int]:
    st = path.stat()
    return [int(st.st_size), int(st.st_mtime_ns)]


def prep_signature(
    root: Path, split: str, direction: str, take: str, cam: str, frame: int, geometry: Geometry
) -> dict:
    """What a prep file is made from: format, sizes, and the inputs' size and mtime."""
    masks_path, boxes_path = candidate_paths(root, split, direction, take, cam, frame)
    try:
        inputs = {
            "masks": _stat(masks_path),
            "boxes": _stat(boxes_path),
            "annotation": _stat(annotation_path(root, take)),
        }
    except FileNotFoundError as exc:
        raise OmamaError(
            f"{exc.filename} not found: training needs the candidates of every destination "
            f"frame (run `omama data masks --split {split} --direction {direction}`)"
        ) from exc
    return {
        "version": PREP_VERSION,
        "direction": direction,
        "src_image": list(geometry.src_image),
        "dst_image": list(geometry.dst_image),
        "reduction": geometry.reduction,
        "inputs": inputs,
    }


@dataclass
class FramePrep:
    """The precomputed data of one destination frame (see the module docstring).

    Attributes:
        cand_bits: (N, nbytes) uint8 packed candidate masks at the destination pooling grid.
        cand_boxes: (N, 4) float32 ``x1, y1, w, h`` in destination model-image pixels.
        adjacency: order-2 Delaunay adjacency of the candidates.
        gt: object -> (packed mask (nbytes,), box (4,), anchor candidate or -1), for the
            objects visible in this frame.
        queries: (source cam, object) -> (packed mask (nbytes_src,), box (4,)).
    """

    cand_bits: np.ndarray
    cand_boxes: np.ndarray
    adjacency: Adjacency
    gt: dict[str, tuple[np.ndarray, np.ndarray, int]]
    queries: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]

    @property
    def n_candidates(self) -> int:
        return int(self.cand_bits.shape[0])


def build_frame_prep(
    index: ProcessedRoot,
    split: str,
    direction: str,
    take: str,
    dst_cam: str,
    frame: int,
    geometry: Geometry,
) -> dict[str, np.ndarray]:
    """Compute the arrays of one destination frame's prep file (see :class:`FramePrep`)."""
    root = index.root
    cands = load_frame_candidates(root, split, direction, take, dst_cam, frame)
    raw_hw = cands.size_hw
    dst_bits = pack_masks(
        masks_to_grid(cands.masks, geometry.dst_image, geometry.dst_pool, "torch")
    )
    cand_boxes = scale_boxes(cands.boxes, raw_hw, geometry.dst_image)
    points = centroids(cands.masks, cands.boxes)
    points *= np.array([geometry.dst_image[1] / raw_hw[1], geometry.dst_image[0] / raw_hw[0]])
    adjacency = candidate_adjacency(points)

    gt_names, gt_bits, gt_boxes, gt_anchor = [], [], [], []
    for obj in index.objects(take):
        gt_rle = index.mask_rle(take, obj, dst_cam, frame)
        if gt_rle is None:
            continue
        grid_mask, box = gt_mask_at(gt_rle, geometry.dst_image, geometry.dst_pool)
        gt_names.append(obj)
        gt_bits.append(pack_masks(grid_mask[None])[0])
        gt_boxes.append(box)
        gt_anchor.append(best_overlap(box, cand_boxes))

    src_is_ego = view_kinds(direction)[0] == "ego"
    src_cams = [c for c in index.cams(take) if is_ego_cam(c) == src_is_ego]
    q_keys, q_bits, q_boxes = [], [], []
    for cam in src_cams:
        for obj in index.objects(take):
            q_rle = index.mask_rle(take, obj, cam, frame)
            if q_rle is None:
                continue
            grid_mask, box = gt_mask_at(q_rle, geometry.src_image, geometry.src_pool)
            q_keys.append(f"{cam}\t{obj}")
            q_bits.append(pack_masks(grid_mask[None])[0])
            q_boxes.append(box)

    dst_bytes = dst_bits.shape[1]
    src_bytes = (geometry.src_pool[0] * geometry.src_pool[1] + 7) // 8
    return {
        "cand_bits": dst_bits,
        "cand_boxes": cand_boxes.astype(np.float32),
        "adj_indptr": adjacency.indptr,
        "adj_indices": adjacency.indices,
        "gt_names": np.array(gt_names, dtype=np.str_),
        "gt_bits": np.array(gt_bits, dtype=np.uint8).reshape(-1, dst_bytes),
        "gt_boxes": np.array(gt_boxes, dtype=np.float32).reshape(-1, 4),
        "gt_anchor": np.array(gt_anchor, dtype=np.int64),
        "query_keys": np.array(q_keys, dtype=np.str_),
        "query_bits": np.array(q_bits, dtype=np.uint8).reshape(-1, src_bytes),
        "query_boxes": np.array(q_boxes, dtype=np.float32).reshape(-1, 4),
    }


def write_frame_prep(path: Path, arrays: dict[str, np.ndarray], signature: dict) -> None:
    """Write a prep file atomically (compressed npz; the signature as a JSON string)."""
    meta = np.array(json.dumps(signature, sort_keys=True), dtype=np.str_)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, signature=meta, **arrays)


def read_prep_signature(path: Path) -> dict | None:
    """The signature stored in a prep file, or None when it is missing or unreadable."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            return json.loads(str(npz["signature"]))
    except (OSError, ValueError, KeyError, EOFError, json.JSONDecodeError):
        return None
    except Exception:  # zipfile/zlib errors of a truncated file: rebuild it
        return None


def load_frame_prep(path: Path) -> FramePrep:
    """Read a prep file written by :func:`write_frame_prep`."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {k: npz[k] for k in npz.files}
    except FileNotFoundError as exc:
        raise OmamaError(f"prep file {path} is missing: run the training data preparation") from exc
    except Exception as exc:  # a damaged archive
        raise OmamaError(f"prep file {path} is unreadable ({exc}); delete it to rebuild") from exc
    gt = {
        str(name): (data["gt_bits"][i], data["gt_boxes"][i], int(data["gt_anchor"][i]))
        for i, name in enumerate(data["gt_names"])
    }
    queries = {}
    for i, key in enumerate(data["query_keys"]):
        cam, obj = str(key).split("\t", 1)
        queries[(cam, obj)] = (data["query_bits"][i], data["query_boxes"][i])
    return FramePrep(
        cand_bits=data["cand_bits"],
        cand_boxes=data["cand_boxes"],
        adjacency=Adjacency(data["adj_indptr"], data["adj_indices"]),
        gt=gt,
        queries=queries,
    )


def ensure_frame_preps(
    root: Path,
    split: str,
    direction: str,
    pairs: Sequence[Pair],
    geometry: Geometry,
    workers: int = 1,
    progress: bool = True,
    shard: tuple[int, int] = (0, 1),
) -> dict[str, int]:
    """Build the prep file of every destination frame of ``pairs`` that lacks an up-to-date
    one; with ``shard=(i, n)`` only the frames ``[i::n]`` of the sorted list (DDP ranks split
    the work so). Returns ``{"frames", "built", "up_to_date"}``."""
    from tqdm import tqdm

    index = ProcessedRoot(root)
    frames = select_shard(dst_frames(pairs, direction), *shard)

    def one(frame: tuple[str, str, int]) -> bool:
        take, cam, number = frame
        path = prep_path(index.root, split, direction, take, cam, number, geometry)
        signature = prep_signature(index.root, split, direction, take, cam, number, geometry)
        if path.is_file() and read_prep_signature(path) == signature:
            return False
        arrays = build_frame_prep(index, split, direction, take, cam, number, geometry)
        write_frame_prep(path, arrays, signature)
        return True

    # Parse every annotation once up front: the worker threads then only read the cache.
    for take in sorted({f[0] for f in frames}):
        index.annotation(take)
    built = 0
    with (
        ThreadPoolExecutor(max(1, workers)) as pool,
        tqdm(
            total=len(frames),
            desc=f"prep {split}",
            unit="frame",
            file=sys.stderr,
            disable=not progress,
        ) as bar,
    ):
        for was_built in pool.map(one, frames):
            built += int(was_built)
            bar.update(1)
    return {"frames": len(frames), "built": built, "up_to_date": len(frames) - built}
