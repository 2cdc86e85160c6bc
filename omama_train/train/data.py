"""What a run trains and validates on: pairs, geometry, feature source, prep files, data hash.

Two sources of features: the feature cache (``--cache``, the default; the backbone ran once
per image in ``omama features``) or the images themselves (``--finetune-backbone``, the
backbone runs in the training step). Every rank builds the same :class:`RunData`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from omama_train.train.config import TrainConfig
from omama_train.train.distributed import Distributed, barrier
from runtime.egoexo import ProcessedRoot, candidates_dir, read_pairs
from runtime.errors import OmamaError


@dataclass
class RunData:
    """Pairs, geometry and feature source of a run (every rank builds the same)."""

    geometry: Any  # omama_train.geometry.Geometry
    train_pairs: list
    val_pairs: list
    gap_pairs: list  # the fixed subset of train_pairs scored for the train/val gap
    source: Any  # omama_train.dataset.FeatureSource
    backbone_name: str
    backbone_spec: Any  # BackboneSpec when fine-tuning, else None
    data_hash: str


def load_run_data(config: TrainConfig, ctx: Distributed) -> RunData:
    """Read pairs, check the cache, fix the geometry, build the prep files (by rank)."""
    from omama_train.frameprep import ensure_frame_preps

    index = ProcessedRoot(config.root)
    train_pairs = _read_split_pairs(index, config, config.train_split, config.train_pairs)
    val_pairs = _read_split_pairs(index, config, config.val_split, config.val_pairs)
    if config.finetune_backbone:
        spec, geometry, source = _image_source(config, index, train_pairs)
        name = spec.name
    else:
        spec = None
        name, geometry, source = _cache_source(config, train_pairs, val_pairs)

    rng = np.random.default_rng(config.seed)
    count = min(config.gap_pairs, len(train_pairs))
    gap_pairs = [train_pairs[i] for i in sorted(rng.choice(len(train_pairs), count, False))]

    for split, pairs in ((config.train_split, train_pairs), (config.val_split, val_pairs)):
        ensure_frame_preps(
            config.root,
            split,
            config.direction,
            pairs,
            geometry,
            workers=max(1, min(4, config.workers)),
            progress=config.progress and ctx.main,
            shard=(ctx.rank, ctx.world),
        )
    barrier(ctx)  # every rank's prep files exist before anyone reads them
    return RunData(
        geometry=geometry,
        train_pairs=train_pairs,
        val_pairs=val_pairs,
        gap_pairs=gap_pairs,
        source=source,
        backbone_name=name,
        backbone_spec=spec,
        data_hash=_data_hash(config, index),
    )


def _read_split_pairs(index, config: TrainConfig, split: str, path: Path | None) -> list:
    from omama_train.dataset import usable_pairs

    path = path or index.pairs_path(split, config.direction)
    pairs = usable_pairs(index, read_pairs(path), config.direction)
    if not pairs:
        raise OmamaError(f"{path} holds no usable pairs (with a query mask)")
    return pairs


def _image_source(config: TrainConfig, index: ProcessedRoot, train_pairs: list) -> tuple:
    """(backbone spec, geometry, images) for fine-tuning: sizes from the training images."""
    from omama_train.dataset import ImageFrames, view_image_sizes
    from omama_train.geometry import Geometry
    from omama_train.models.backbones import DEFAULT_BACKBONE, get_spec
    from runtime.preprocess import model_input_size

    spec = config.backbone or DEFAULT_BACKBONE
    spec = get_spec(spec) if isinstance(spec, str) else spec
    patch = spec.patch_size
    sizes = view_image_sizes(index, train_pairs, lambda h, w: model_input_size(h, w, patch))
    grids = {v: (s[0] // patch, s[1] // patch) for v, s in sizes.items()}
    geometry = Geometry.from_views(config.direction, sizes, grids)
    return spec, geometry, ImageFrames(config.root, sizes)


def _cache_source(config: TrainConfig, train_pairs: list, val_pairs: list) -> tuple:
    """(backbone name, geometry, cached features) of ``--cache``, which must hold every
    image of the pairs, with the backbone ``--backbone`` names (if given)."""
    from omama_train.dataset import CachedFeatures
    from omama_train.features.reader import FeatureCache
    from omama_train.geometry import Geometry

    cache = FeatureCache(config.cache)
    name = cache.meta["backbone"]["name"]
    wanted = getattr(config.backbone, "name", config.backbone)
    if wanted is not None and wanted != name:
        raise OmamaError(
            f"--backbone {wanted} but the cache at {config.cache} holds {name} features"
        )
    kinds = ("ego", "exo")
    missing = [k for k in kinds if k not in cache.kinds]
    if missing:
        raise OmamaError(f"feature cache at {config.cache} has no {missing[0]} view")
    geometry = Geometry.from_views(
        config.direction,
        {k: cache.image_size(k) for k in kinds},
        {k: cache.grid(k) for k in kinds},
    )
    for pairs, what in ((train_pairs, "training"), (val_pairs, "validation")):
        absent = [
            (p.take, cam, p.frame)
            for p in pairs
            for cam in (p.ego_cam, p.exo_cam)
            if (p.take, cam, p.frame) not in cache
        ]
        if absent:
            raise OmamaError(
                f"{len(absent)} {what} images are not in the feature cache at "
                f"{config.cache} (first: {'/'.join(map(str, absent[0]))}); run omama "
                "features with these pairs files"
            )
    return name, geometry, CachedFeatures(config.cache)


def _data_hash(config: TrainConfig, index: ProcessedRoot) -> str:
    """Hash of the files the run's data comes from: pairs, candidate reports and source,
    and the feature cache's meta.json."""
    from omama_train.data.masks import SOURCE_FILE
    from omama_train.dataset import candidate_reports, data_hash

    hashed = []
    splits = ((config.train_split, config.train_pairs), (config.val_split, config.val_pairs))
    for split, path in splits:
        hashed.append(path or index.pairs_path(split, config.direction))
        hashed += candidate_reports(config.root, split, config.direction)
        hashed.append(candidates_dir(config.root, split, config.direction) / SOURCE_FILE)
    if config.cache is not None and not config.finetune_backbone:
        hashed.append(config.cache / "meta.json")
    return data_hash(hashed)


def make_sampler(dataset, ctx: Distributed, seed: int):
    """A ``DistributedSampler`` (also for one process) that can skip the batches a resumed
    run already did in the current epoch."""
    from torch.utils.data import DistributedSampler

    class ResumableSampler(DistributedSampler):
        skip = 0

        def __iter__(self):
            return iter(list(super().__iter__())[self.skip :])

        def __len__(self) -> int:
            return self.num_samples - self.skip

    return ResumableSampler(dataset, num_replicas=ctx.world, rank=ctx.rank, shuffle=True, seed=seed)
