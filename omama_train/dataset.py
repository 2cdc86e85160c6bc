"""Training and validation data: pairs + candidate masks + features (cached) or images.

Per training pair (:class:`TrainingPairs`) a sample holds the source view's query mask, the
``n`` destination masks chosen by :mod:`omama_train.sampling` (ground truth at a random
position, hard negatives around it, padding when the frame has fewer candidates), the
visibility flag, and either the two feature maps (from the feature cache, the default) or
the two images (``--finetune-backbone``). Descriptors are not computed here: the masks travel
bit-packed at the pooling grid (``image size // 4``, e.g. 175 x 175 for 700 x 700) and the
training loop pools them batched on its device (:func:`batch_descriptors`).

Precomputation cache, next to the candidates. Everything a sample needs that does not change
between epochs is computed once per destination frame (:func:`ensure_frame_preps`) and
stored as ``Masks_<SPLIT>_<DIR>/<take>/<cam>/<frame>_prep_<dst>_<src>_r<k>.npz``:

- the candidates at the pooling grid (bit-packed), their boxes in model-image pixels and
  their order-2 Delaunay adjacency (CSR);
- the ground-truth masks of the objects visible in that frame (pooling grid, box, the anchor
  candidate of the sampler), and the query masks of every object in every source camera at
  that frame (so any pairs file over these frames finds its queries).

The file records what it was made from (sizes and the size and mtime of the candidate files
and the take's annotation.json); a changed input makes :func:`ensure_frame_preps` rebuild it.

Resizing follows the reference: model images and ground-truth masks are resized with the
OpenCV nearest rule, candidate masks with the PyTorch one, and masks reach the pooling grid
with the PyTorch rule of the descriptor code; the two resizes are composed into one index, so
the packed masks are exactly what ``object_descriptors`` would have seen.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from omama_train.sampling import (
    GT_SLOT,
    NUM_CANDIDATES,
    Adjacency,
    best_overlap,
    candidate_adjacency,
    centroids,
    sample_rng,
    sample_slots,
)
from runtime import rle
from runtime.atomic import atomic_path
from runtime.candidates import load_frame_candidates, scale_boxes
from runtime.egoexo import (
    Pair,
    ProcessedRoot,
    annotation_path,
    candidate_paths,
    check_direction,
    is_ego_cam,
)
from runtime.errors import OmamaError
from runtime.pooling import REDUCTION, mask_boxes, pooling_grid
from runtime.preprocess import nearest_indices, resize_nearest_hw

PREP_VERSION = 1


# ----------------------------------------------------------------------------- geometry


def src_kind(direction: str) -> str:
    """Camera kind of the source view: ``"exo"`` for exo2ego, ``"ego"`` for ego2exo."""
    return "exo" if check_direction(direction) == "exo2ego" else "ego"


def dst_kind(direction: str) -> str:
    """Camera kind of the destination view: ``"ego"`` for exo2ego, ``"exo"`` for ego2exo."""
    return "ego" if check_direction(direction) == "exo2ego" else "exo"


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
        src, dst = src_kind(direction), dst_kind(direction)

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


# ----------------------------------------------------------------------------- prep cache


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

    src_is_ego = src_kind(direction) == "ego"
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


def destination_frames(pairs: Iterable[Pair], direction: str) -> list[tuple[str, str, int]]:
    """Sorted unique (take, destination cam, frame) of ``pairs``."""
    return sorted({(p.take, p.destination_cam(direction), int(p.frame)) for p in pairs})


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
    frames = destination_frames(pairs, direction)[shard[0] :: shard[1]]

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


def usable_pairs(index: ProcessedRoot, pairs: Sequence[Pair], direction: str) -> list[Pair]:
    """Pairs whose query mask exists (a pair without one cannot be asked)."""
    return [p for p in pairs if index.mask_rle(p.take, p.obj, p.source_cam(direction), p.frame)]


# ----------------------------------------------------------------------------- sources


class CachedFeatures:
    """Feature maps from an ``omama features`` cache, opened lazily in each process (so the
    object pickles into data-loader workers without carrying memory maps)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._cache = None

    def __getstate__(self) -> dict:
        return {"path": self.path, "_cache": None}

    def cache(self):
        if self._cache is None:
            from omama_train.features.reader import FeatureCache

            self._cache = FeatureCache(self.path)
        return self._cache

    def get(self, take: str, cam: str, frame: int) -> torch.Tensor:
        """(C, h, w) float16 features of one image."""
        return self.cache().get(take, cam, int(frame))


class ImageFrames:
    """Processed images as model inputs: RGB uint8 (H, W, 3) tensors at each view's model
    size (nearest, OpenCV rule; portrait frames land on the landscape size of their view)."""

    def __init__(self, root: str | os.PathLike, image_sizes: dict[str, tuple[int, int]]) -> None:
        self.index = ProcessedRoot(root)
        self.image_sizes = {k: (int(v[0]), int(v[1])) for k, v in image_sizes.items()}

    def get(self, take: str, cam: str, frame: int) -> torch.Tensor:
        import cv2

        path = self.index.image_path(take, cam, frame)
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise OmamaError(f"image {path} is missing or unreadable")
        size = self.image_sizes["ego" if is_ego_cam(cam) else "exo"]
        rgb = resize_nearest_hw(bgr[:, :, ::-1], size, axes=(0, 1), rule="opencv")
        return torch.from_numpy(np.ascontiguousarray(rgb))


FeatureSource = CachedFeatures | ImageFrames


# ----------------------------------------------------------------------------- training set


class TrainingPairs(torch.utils.data.Dataset):
    """One sample per pair: query mask, ``n`` destination masks, visibility, features/images.

    Each sample (a dict of tensors):
        ``src_input`` / ``dst_input``: features (C, h, w) float16 from the cache, or images
            (H, W, 3) uint8 (``--finetune-backbone``);
        ``src_bits`` (1, nbytes_src) uint8 and ``src_boxes`` (1, 4) float32: the query;
        ``dst_bits`` (n, nbytes_dst) uint8 and ``dst_boxes`` (n, 4) float32: the slots;
        ``valid`` (n,) bool; ``positive`` () int64; ``visible`` () float32; ``index`` () int64.

    The sampling of item ``i`` in epoch ``e`` depends only on (seed, e, i)
    (:func:`omama_train.sampling.sample_rng`); call :meth:`set_epoch` before each epoch.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        direction: str,
        pairs: Sequence[Pair],
        geometry: Geometry,
        source: FeatureSource,
        n: int = NUM_CANDIDATES,
        seed: int = 42,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.direction = check_direction(direction)
        self.pairs = list(pairs)
        self.geometry = geometry
        self.source = source
        self.n = int(n)
        self.seed = int(seed)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.pairs)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def prep(self, pair: Pair) -> FramePrep:
        dst = pair.destination_cam(self.direction)
        path = prep_path(
            self.root, self.split, self.direction, pair.take, dst, pair.frame, self.geometry
        )
        return load_frame_prep(path)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        pair = self.pairs[i]
        src_cam, dst_cam = pair.source_cam(self.direction), pair.destination_cam(self.direction)
        prep = self.prep(pair)
        if (src_cam, pair.obj) not in prep.queries:
            raise OmamaError(
                f"no query mask of {pair.obj} in {pair.take}/{src_cam} frame {pair.frame}"
            )
        q_bits, q_box = prep.queries[(src_cam, pair.obj)]
        gt = prep.gt.get(pair.obj)
        rng = sample_rng(self.seed, self.epoch, i)
        plan = sample_slots(
            rng,
            prep.n_candidates,
            prep.adjacency,
            gt[2] if gt is not None else -1,
            gt is not None,
            self.n,
        )
        dst_bits = np.zeros((self.n, prep.cand_bits.shape[1]), dtype=np.uint8)
        dst_boxes = np.zeros((self.n, 4), dtype=np.float32)
        cand = plan.source >= 0
        dst_bits[cand] = prep.cand_bits[plan.source[cand]]
        dst_boxes[cand] = prep.cand_boxes[plan.source[cand]]
        if gt is not None:
            is_gt = plan.source == GT_SLOT
            dst_bits[is_gt] = gt[0]
            dst_boxes[is_gt] = gt[1]
        return {
            "src_input": self.source.get(pair.take, src_cam, pair.frame),
            "dst_input": self.source.get(pair.take, dst_cam, pair.frame),
            "src_bits": torch.from_numpy(np.ascontiguousarray(q_bits[None])),
            "src_boxes": torch.from_numpy(np.ascontiguousarray(q_box[None], dtype=np.float32)),
            "dst_bits": torch.from_numpy(dst_bits),
            "dst_boxes": torch.from_numpy(dst_boxes),
            "valid": torch.from_numpy(plan.valid),
            "positive": torch.tensor(plan.positive, dtype=torch.int64),
            "visible": torch.tensor(float(plan.visible), dtype=torch.float32),
            "index": torch.tensor(i, dtype=torch.int64),
        }


def collate(samples: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack samples of :class:`TrainingPairs` into a batch (every field gains a leading B)."""
    if not samples:
        raise OmamaError("cannot collate an empty batch")
    return {key: torch.stack([s[key] for s in samples]) for key in samples[0]}


def batch_descriptors(
    feats: torch.Tensor,
    bits: torch.Tensor,
    boxes: torch.Tensor,
    image_size: tuple[int, int],
    pool: tuple[int, int],
) -> torch.Tensor:
    """Descriptors (B, N, 2C) of packed pooling-grid masks (B, N, nbytes) with boxes
    (B, N, 4) px on features (B, C, h, w), by separable pooling on the features' device."""
    from omama_train.models.descriptors import object_descriptors

    masks = unpack_masks(bits.to(feats.device, non_blocking=True), pool)
    return object_descriptors(feats, masks, boxes.to(feats.device, non_blocking=True), image_size)


# ----------------------------------------------------------------------------- validation


@dataclass
class ValidationFrame:
    """Every query of one destination frame, with all of its candidates (no sampling).

    Attributes:
        take, dst_cam, frame: the destination frame.
        dst_input: destination features (C, h, w) or image (H, W, 3).
        cand_bits: (N, nbytes) uint8; cand_boxes: (N, 4) float32 px.
        cand_rles: N RLEs of the candidate masks at the destination model-image size (what
            a prediction writes), plus ``empty_rle`` for "no candidate".
        groups: per source cam: (src_cam, src_input, objects, query bits (K, nbytes),
            query boxes (K, 4)).
    """

    take: str
    dst_cam: str
    frame: int
    dst_input: torch.Tensor
    cand_bits: torch.Tensor
    cand_boxes: torch.Tensor
    cand_rles: list[dict]
    empty_rle: dict
    groups: list[tuple[str, torch.Tensor, list[str], torch.Tensor, torch.Tensor]]


class ValidationFrames(torch.utils.data.Dataset):
    """The validation pairs grouped by destination frame (one item per frame), with the full
    candidate sets; used with ``batch_size=None`` and :func:`identity_collate`."""

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        direction: str,
        pairs: Sequence[Pair],
        geometry: Geometry,
        source: FeatureSource,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.direction = check_direction(direction)
        self.geometry = geometry
        self.source = source
        grouped: dict[tuple[str, str, int], dict[str, list[str]]] = {}
        for p in pairs:
            key = (p.take, p.destination_cam(direction), int(p.frame))
            grouped.setdefault(key, {}).setdefault(p.source_cam(direction), []).append(p.obj)
        self.frames = sorted(grouped)
        self.queries = grouped
        self.n_pairs = len(pairs)

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i: int) -> ValidationFrame:
        take, dst_cam, frame = self.frames[i]
        path = prep_path(self.root, self.split, self.direction, take, dst_cam, frame, self.geometry)
        prep = load_frame_prep(path)
        raw = load_frame_candidates(self.root, self.split, self.direction, take, dst_cam, frame)
        image_masks = resize_nearest_hw(raw.masks, self.geometry.dst_image, (1, 2), "torch")
        groups = []
        for src_cam, objects in sorted(self.queries[(take, dst_cam, frame)].items()):
            missing = [o for o in objects if (src_cam, o) not in prep.queries]
            if missing:
                raise OmamaError(f"no query mask of {missing[0]} in {take}/{src_cam} frame {frame}")
            bits = np.stack([prep.queries[(src_cam, o)][0] for o in objects])
            boxes = np.stack([prep.queries[(src_cam, o)][1] for o in objects])
            groups.append(
                (
                    src_cam,
                    self.source.get(take, src_cam, frame),
                    list(objects),
                    torch.from_numpy(bits),
                    torch.from_numpy(boxes.astype(np.float32)),
                )
            )
        return ValidationFrame(
            take=take,
            dst_cam=dst_cam,
            frame=frame,
            dst_input=self.source.get(take, dst_cam, frame),
            cand_bits=torch.from_numpy(prep.cand_bits),
            cand_boxes=torch.from_numpy(prep.cand_boxes),
            cand_rles=[rle.encode(m) for m in image_masks],
            empty_rle=rle.encode(np.zeros(self.geometry.dst_image, dtype=np.uint8)),
            groups=groups,
        )


def identity_collate(item: ValidationFrame) -> ValidationFrame:
    """Collate of :class:`ValidationFrames` loaders: items are whole frames already."""
    return item


# ----------------------------------------------------------------------------- data hash


def candidate_reports(root: Path, split: str, direction: str) -> list[Path]:
    """``masks_report_<split>_<direction>*.json`` of a root (one per shard), sorted."""
    return sorted(Path(root).glob(f"masks_report_{split}_{check_direction(direction)}*.json"))


def data_hash(paths: Iterable[Path]) -> str:
    """sha256 over the names and contents of ``paths`` (missing files hash as missing)."""
    digest = hashlib.sha256()
    for path in sorted({Path(p) for p in paths}):
        digest.update(path.name.encode())
        digest.update(path.read_bytes() if path.is_file() else b"<missing>")
    return digest.hexdigest()


def image_size_of(index: ProcessedRoot, take: str, cam: str, frame: int) -> tuple[int, int]:
    """(H, W) px of a processed jpg."""
    import cv2

    path = index.image_path(take, cam, frame)
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise OmamaError(f"image {path} is missing or unreadable")
    return int(image.shape[0]), int(image.shape[1])


def view_image_sizes(
    index: ProcessedRoot, pairs: Sequence[Pair], size_fn: Callable[[int, int], tuple[int, int]]
) -> dict[str, tuple[int, int]]:
    """Model input size of each view, from the first pair's processed images: the landscape
    size of the jpg mapped through ``size_fn(H, W)`` (e.g. ``model_input_size``)."""
    from omama_train.sampling import landscape_size

    if not pairs:
        raise OmamaError("no pairs to read image sizes from")
    first = pairs[0]
    sizes = {}
    for view, cam in (("ego", first.ego_cam), ("exo", first.exo_cam)):
        h, w = landscape_size(image_size_of(index, first.take, cam, first.frame))
        sizes[view] = size_fn(h, w)
    return sizes
