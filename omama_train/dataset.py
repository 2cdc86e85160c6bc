"""Training and validation data: pairs + candidate masks + features (cached) or images.

Per training pair (:class:`TrainingPairs`) a sample holds the source view's query mask, the
``n`` destination masks chosen by :mod:`omama_train.sampling` (ground truth at a random
position, hard negatives around it, padding when the frame has fewer candidates), the
visibility flag, and either the two feature maps (from the feature cache, the default) or
the two images (``--finetune-backbone``). Descriptors are not computed here: the masks travel
bit-packed at the pooling grid (``image size // 4``, e.g. 175 x 175 for 700 x 700) and the
training loop pools them batched on its device (:func:`batch_descriptors`).

The per-frame precomputation the samples read is :mod:`omama_train.frameprep`; sizes and
mask grids are :mod:`omama_train.geometry`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from omama_train.frameprep import FramePrep, load_frame_prep, prep_path
from omama_train.geometry import Geometry, unpack_masks
from omama_train.sampling import (
    GT_SLOT,
    NUM_CANDIDATES,
    sample_rng,
    sample_slots,
)
from runtime import rle
from runtime.candidates import load_frame_candidates
from runtime.egoexo import (
    Pair,
    ProcessedRoot,
    check_direction,
    is_ego_cam,
)
from runtime.errors import OmamaError
from runtime.preprocess import resize_nearest_hw


def usable_pairs(index: ProcessedRoot, pairs: Sequence[Pair], direction: str) -> list[Pair]:
    """Pairs whose query mask exists (a pair without one cannot be asked)."""
    return [p for p in pairs if index.mask_rle(p.take, p.obj, p.src_cam(direction), p.frame)]


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
        dst = pair.dst_cam(self.direction)
        path = prep_path(
            self.root, self.split, self.direction, pair.take, dst, pair.frame, self.geometry
        )
        return load_frame_prep(path)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        pair = self.pairs[i]
        src_cam, dst_cam = pair.src_cam(self.direction), pair.dst_cam(self.direction)
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
            key = (p.take, p.dst_cam(direction), int(p.frame))
            grouped.setdefault(key, {}).setdefault(p.src_cam(direction), []).append(p.obj)
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
