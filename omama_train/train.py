"""``omama train``: train the O-MaMa matcher on cached features (or fine-tune the backbone).

One command covers the single-process run (CPU or one GPU) and DDP: launched by ``torchrun``
(``torchrun --nproc_per_node 2 -m omama_train.train ...`` or ``torchrun ... $(which omama)
train ...``) it finds ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``, joins the process group (NCCL
on GPUs, gloo on CPUs), shards the pairs with a ``DistributedSampler`` and the validation
frames by rank, averages the training metrics over ranks, and lets rank 0 alone write
checkpoints, CSV, TensorBoard events and the console summary.

Training (OMAMA_REFERENCE.md sections 6 and 7): per pair, the source object and ``n``
destination masks chosen by hard-negative adjacent mining (:mod:`omama_train.sampling`,
:mod:`omama_train.dataset`); descriptors by separable pooling on the training device; loss =
cross-entropy of cosine / temperature against the positive, times visibility, averaged.
Padding slots (frames with fewer than ``n`` candidates) are masked out of the softmax.
AdamW, per-step cosine schedule from the learning rate to ``--min-lr``. Defaults are the
reference's: lr 8e-5 (8e-6 with ``--finetune-backbone``), 32 masks, temperature 0.07,
batch 24, 3 epochs, seed 42.

Validation after every epoch scores the matcher on the full candidate set of every
validation pair (no sampler): the best candidate becomes the predicted mask, sigmoid(best
cosine) the confidence, and the official metrics (``runtime.evaluate``, ``omama`` protocol)
give IoU, shape accuracy, location score and balanced accuracy. The same is done on a fixed
subset of training pairs, and the train/val IoU gap is printed, so overfitting shows.
``--validate-first`` scores the starting weights too (an epoch-0 row: with ``--init
official.pt`` the baseline and the fine-tuned matcher come from one command). Guard rails:
``--early-stop-patience``, ``--weight-decay``, ``--dropout``, ``--grad-clip``.

Resuming (``--resume``) restores the matcher (and backbones), the AdamW moments, the step
counter that drives the schedule, the GradScaler, every rank's RNG and the position in the
epoch (``--checkpoint-every N`` also checkpoints mid-epoch): an interrupted run ends with the
weights an uninterrupted one would have (tested bit for bit on CPU). The frozen parameters:
``mlp_visible`` (unused by the forward pass) and the attention key bias (the softmax cancels
it; its gradient is zero) keep their initial or ``--init`` values.

RUN_DIR (``--out``)::

    last.safetensors / last.json        matcher after the latest epoch (+ sidecar: args,
                                        metrics, data hash, step)
    best.safetensors / best.json        matcher of the best validation IoU
    {last,best}_backbone_{ego,exo}.safetensors   with --finetune-backbone
    resume.safetensors / resume.json    optimizer moments and RNG states (tensors), schedule,
                                        scaler, counters (JSON): ``--resume`` continues here
    metrics.csv                         one row per epoch
    tensorboard/                        events (loss and lr per step, metrics per epoch)
    val/epoch_NNN.json                  official report of each epoch (000: --validate-first)
    val/results_{last,best,start}.json  validation predictions (Ego-Exo4D results format)
    summary.json                        the run's history, best epoch and IoU

No pickles are written: tensors go to safetensors, everything else to JSON.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import typer

from runtime.atomic import atomic_path, write_json
from runtime.errors import OmamaError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from omama_train.models.backbones import BackboneSpec

log = logging.getLogger(__name__)

DEFAULT_LR = 8e-5
DEFAULT_FINETUNE_LR = 8e-6
MIN_LR = 1e-6
MASKED_SIMILARITY = -1e4  # padding slots: exp(-1e4 / T) is 0, and the loss stays finite
CSV_FIELDS = (
    "epoch",
    "global_step",
    "lr",
    "train_loss",
    "train_acc",
    "train_iou",
    "val_iou",
    "val_iou_std",
    "val_shape_acc",
    "val_location_score",
    "val_balanced_acc",
    "gap_iou",
    "epoch_s",
    "samples_per_s",
)


# ----------------------------------------------------------------------------- config


@dataclass
class TrainConfig:
    """Every option of ``omama train`` (see its ``--help``)."""

    root: Path
    out: Path
    direction: str = "exo2ego"
    cache: Path | None = None
    train_split: str = "train"
    val_split: str = "val"
    train_pairs: Path | None = None
    val_pairs: Path | None = None
    epochs: int = 3
    batch_size: int = 24
    lr: float | None = None
    backbone_lr: float | None = None
    min_lr: float = MIN_LR
    weight_decay: float = 0.01
    dropout: float = 0.0
    candidates: int = 32
    temperature: float = 0.07
    seed: int = 42
    early_stop_patience: int = 0
    grad_clip: float = 0.0
    deterministic: bool = False
    amp: bool = True
    device: str | None = None
    workers: int = 2
    init: Path | None = None
    resume: bool = False
    finetune_backbone: bool = False
    backbone: str | BackboneSpec | None = None
    backbone_weights: Path | None = None
    random_init: bool = False
    gap_pairs: int = 256
    validate_first: bool = False
    checkpoint_every: int = 0
    log_every: int = 10
    eval_workers: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        self.root, self.out = Path(self.root), Path(self.out)
        for name in ("cache", "train_pairs", "val_pairs", "init", "backbone_weights"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, Path(value))

    @property
    def base_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        return DEFAULT_FINETUNE_LR if self.finetune_backbone else DEFAULT_LR

    def to_json(self) -> dict:
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Path):
                value = str(value)
            elif f.name == "backbone" and value is not None and not isinstance(value, str):
                value = {"name": value.name, "timm_overrides": dict(value.timm_overrides)}
            out[f.name] = value
        out["base_lr"] = self.base_lr
        return out

    def check(self) -> None:
        from runtime.egoexo import check_direction

        check_direction(self.direction)
        positive = {
            "--epochs": self.epochs,
            "--batch-size": self.batch_size,
            "--candidates": self.candidates,
        }
        for name, value in positive.items():
            if value < 1:
                raise OmamaError(f"{name} must be at least 1, got {value}")
        if self.temperature <= 0:
            raise OmamaError(f"--temperature must be positive, got {self.temperature}")
        if self.base_lr <= 0 or self.min_lr < 0:
            raise OmamaError("--lr must be positive and --min-lr not negative")
        if not 0.0 <= self.dropout < 1.0:
            raise OmamaError(f"--dropout must be in [0, 1), got {self.dropout}")
        if self.workers < 0 or self.early_stop_patience < 0 or self.gap_pairs < 0:
            raise OmamaError("--workers, --early-stop-patience and --gap-pairs must be >= 0")
        if self.finetune_backbone:
            if self.backbone_weights is None and not self.random_init:
                raise OmamaError(
                    "--finetune-backbone needs --backbone-weights (or --random-init for tests)"
                )
            if self.backbone_weights is not None and self.random_init:
                raise OmamaError("give --backbone-weights or --random-init, not both")
        else:
            if self.cache is None:
                raise OmamaError(
                    "matcher training reads features from --cache (build it with omama "
                    "features), or pass --finetune-backbone to train on images"
                )
            if self.backbone_weights is not None or self.random_init:
                raise OmamaError(
                    "--backbone-weights / --random-init only apply with --finetune-backbone"
                )


def cosine_lr(base_lr: float, min_lr: float, step: int, total_steps: int) -> float:
    """Learning rate after ``step`` of ``total_steps`` optimizer steps: cosine from
    ``base_lr`` (step 0) to ``min_lr`` (last step), flat at ``min_lr`` beyond."""
    if total_steps <= 1:
        return base_lr
    t = min(max(step, 0), total_steps - 1) / (total_steps - 1)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))


# ----------------------------------------------------------------------------- distributed


@dataclass
class Distributed:
    """This process's place in the run: rank, world size, device."""

    rank: int
    world: int
    local_rank: int
    device: Any  # torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def pick_device(device: str | None, local_rank: int = 0):
    import torch

    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise OmamaError(f"--device {device} asked for, but torch sees no CUDA GPU")
        if device == "cuda":
            device = f"cuda:{local_rank}"
        torch.cuda.set_device(torch.device(device))
    return torch.device(device)


def setup_distributed(device: str | None) -> Distributed:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` > 1)."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    torch_device = pick_device(device, local_rank)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch_device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return Distributed(rank, world, local_rank, torch_device)


def _barrier(ctx: Distributed) -> None:
    if ctx.active:
        import torch.distributed as dist

        dist.barrier()


def _all_gather(ctx: Distributed, obj: Any) -> list[Any]:
    if not ctx.active:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * ctx.world
    dist.all_gather_object(out, obj)
    return out


def _broadcast(ctx: Distributed, obj: Any) -> Any:
    if not ctx.active:
        return obj
    import torch.distributed as dist

    box = [obj if ctx.main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _sum_across(ctx: Distributed, values: Sequence[float]) -> list[float]:
    if not ctx.active:
        return list(values)
    import torch
    import torch.distributed as dist

    t = torch.tensor(list(values), dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return t.tolist()


# ----------------------------------------------------------------------------- model


def tie_backbones(main: nn.Module, other: nn.Module) -> None:
    """Make ``other`` use ``main``'s parameters and buffers wherever the shapes agree (all but
    the positional table baked for each image size), so both views train one backbone."""
    for name, param in list(other.named_parameters()):
        shared = main.get_parameter(name)
        if shared.shape == param.shape:
            owner_name, _, leaf = name.rpartition(".")
            setattr(other.get_submodule(owner_name) if owner_name else other, leaf, shared)
    for name, buffer in list(other.named_buffers()):
        shared = main.get_buffer(name)
        if shared.shape == buffer.shape:
            owner_name, _, leaf = name.rpartition(".")
            owner = other.get_submodule(owner_name) if owner_name else other
            owner._buffers[leaf] = shared


def build_train_model(geometry, matcher, backbones: dict | None = None, train_backbone=False):
    """The module that training wraps (and DDP synchronises): matcher + optional backbones."""
    import torch
    from torch import nn

    from omama_train.dataset import batch_descriptors, destination_view, source_view
    from omama_train.models.preprocess import preprocess_image_torch

    class TrainModel(nn.Module):
        """Batch of :class:`omama_train.dataset.TrainingPairs` -> similarities (B, N).

        Inputs are cached features (B, C, h, w) or, with backbones, images (B, H, W, 3)
        uint8 that are normalised and encoded here (with gradients when
        ``train_backbone``)."""

        def __init__(self) -> None:
            super().__init__()
            self.geometry = geometry
            self.matcher = matcher
            self.backbones = nn.ModuleDict(backbones) if backbones else None
            self.train_backbone = train_backbone
            self.views = {"src": source_view(geometry.direction)}
            self.views["dst"] = destination_view(geometry.direction)

        def features(self, inputs: torch.Tensor, side: str) -> torch.Tensor:
            device = next(self.matcher.parameters()).device
            inputs = inputs.to(device, non_blocking=True)
            if self.backbones is None:
                return inputs.float()
            size = self.geometry.src_image if side == "src" else self.geometry.dst_image
            images = preprocess_image_torch(inputs, size_hw=size)
            backbone = self.backbones[self.views[side]]
            if self.train_backbone:
                return backbone(images)
            with torch.no_grad():
                return backbone(images)

        def descriptors(self, feats, bits, boxes, side: str) -> torch.Tensor:
            g = self.geometry
            if side == "src":
                return batch_descriptors(feats, bits, boxes, g.src_image, g.src_pool)
            return batch_descriptors(feats, bits, boxes, g.dst_image, g.dst_pool)

        def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
            src = self.features(batch["src_input"], "src")
            dst = self.features(batch["dst_input"], "dst")
            src_desc = self.descriptors(src, batch["src_bits"], batch["src_boxes"], "src")
            dst_desc = self.descriptors(dst, batch["dst_bits"], batch["dst_boxes"], "dst")
            return self.matcher(src_desc, dst_desc, src, dst)

    return TrainModel()


def masked_loss(
    similarities: torch.Tensor,
    valid: torch.Tensor,
    positive: torch.Tensor,
    visible: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """:func:`matcher_loss` with padding slots (``valid`` False) out of the softmax; fp32."""
    from omama_train.models.matcher import matcher_loss

    logits = similarities.float().masked_fill(~valid.to(similarities.device), MASKED_SIMILARITY)
    device = similarities.device
    return matcher_loss(logits, positive.to(device), visible.to(device), temperature)


def load_init(matcher, path: Path) -> None:
    """Copy the weights of an official ``.pt`` or omama ``.safetensors`` matcher."""
    from omama_train.models.matcher import load_matcher

    loaded = load_matcher(path, matcher.direction)
    if (loaded.src_grid, loaded.dst_grid, loaded.dim) != (
        matcher.src_grid,
        matcher.dst_grid,
        matcher.dim,
    ):
        raise OmamaError(
            f"--init {path} has token grids {loaded.src_grid} -> {loaded.dst_grid} (dim "
            f"{loaded.dim}); the features give {matcher.src_grid} -> {matcher.dst_grid} "
            f"(dim {matcher.dim}): use a cache at the sizes the checkpoint was trained for"
        )
    matcher.load_state_dict(loaded.state_dict(), strict=True)


# ----------------------------------------------------------------------------- checkpoints


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def optimizer_state_split(optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimizer's state as (tensors for safetensors, the rest as JSON)."""
    import torch

    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict] = {}
    for pid, entries in state["state"].items():
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": _jsonable(state["param_groups"]), "scalars": scalars}


def optimizer_state_join(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    """Inverse of :func:`optimizer_state_split`: a ``load_state_dict`` argument."""
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if not name.startswith("optimizer."):
            continue
        _, pid, key = name.split(".", 2)
        state.setdefault(int(pid), {})[key] = value
    for pid, entries in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(entries)
    groups = []
    for group in meta["param_groups"]:
        group = dict(group)
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
        groups.append(group)
    return {"state": state, "param_groups": groups}


def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    """This process's RNG states: torch (CPU, CUDA) as tensors, Python's as JSON.

    (The sampling draws from per-sample generators, :func:`omama_train.sampling.sample_rng`,
    so numpy's global state plays no part.)
    """
    import torch

    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = state
    py_state = random.getstate()
    meta = {"python": [py_state[0], list(py_state[1]), py_state[2]]}
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    import torch

    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))


def save_tensors(
    path: Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None
) -> None:
    from safetensors.torch import save_file

    clean = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(clean, str(tmp), metadata={k: str(v) for k, v in (metadata or {}).items()})


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not path.is_file():
        raise OmamaError(f"{path} not found")
    return load_file(str(path))


def read_json_file(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise OmamaError(f"{path} not found") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OmamaError(f"{path} is not readable JSON ({exc})") from exc


# ----------------------------------------------------------------------------- data


@dataclass
class RunData:
    """Pairs, geometry and sources of a run (every rank builds the same)."""

    geometry: Any
    train_pairs: list
    val_pairs: list
    gap_pairs: list
    train_source: Any
    val_source: Any
    backbone_name: str
    backbone_spec: Any  # BackboneSpec when fine-tuning
    data_hash: str
    cache_meta: dict | None


def _read_split_pairs(index, config: TrainConfig, split: str, path: Path | None) -> list:
    from omama_train.dataset import usable_pairs
    from runtime.egoexo import read_pairs

    path = path or index.pairs_path(split, config.direction)
    pairs = usable_pairs(index, read_pairs(path), config.direction)
    if not pairs:
        raise OmamaError(f"{path} holds no usable pairs (with a query mask)")
    return pairs


def load_run_data(config: TrainConfig, ctx: Distributed) -> RunData:
    """Read pairs, check the cache, fix the geometry, build the prep files (by rank)."""
    from omama_train.data.masks import SOURCE_FILE
    from omama_train.dataset import (
        CachedFeatures,
        Geometry,
        ImageFrames,
        candidate_reports,
        data_hash,
        ensure_frame_preps,
        view_image_sizes,
    )
    from runtime.egoexo import ProcessedRoot, candidates_dir

    index = ProcessedRoot(config.root)
    train_pairs = _read_split_pairs(index, config, config.train_split, config.train_pairs)
    val_pairs = _read_split_pairs(index, config, config.val_split, config.val_pairs)
    cache_meta = None
    if config.finetune_backbone:
        from omama_train.models.backbones import DEFAULT_BACKBONE, get_spec
        from runtime.preprocess import model_input_size

        spec = config.backbone or DEFAULT_BACKBONE
        spec = get_spec(spec) if isinstance(spec, str) else spec
        name = spec.name
        patch = spec.patch_size
        sizes = view_image_sizes(index, train_pairs, lambda h, w: model_input_size(h, w, patch))
        grids = {v: (s[0] // patch, s[1] // patch) for v, s in sizes.items()}
        geometry = Geometry.from_views(config.direction, sizes, grids)
        train_source = val_source = ImageFrames(config.root, sizes)
    else:
        from omama_train.features import FeatureCache

        cache = FeatureCache(config.cache)
        cache_meta = cache.meta
        spec = None
        name = cache.meta["backbone"]["name"]
        wanted = getattr(config.backbone, "name", config.backbone)
        if wanted is not None and wanted != name:
            raise OmamaError(
                f"--backbone {wanted} but the cache at {config.cache} holds {name} features"
            )
        views = ("ego", "exo")
        missing = [v for v in views if v not in cache.views]
        if missing:
            raise OmamaError(f"feature cache at {config.cache} has no {missing[0]} view")
        geometry = Geometry.from_views(
            config.direction,
            {v: cache.image_size(v) for v in views},
            {v: cache.grid(v) for v in views},
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
        train_source = val_source = CachedFeatures(config.cache)

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
    _barrier(ctx)  # every rank's prep files exist before anyone reads them

    hashed = []
    splits = ((config.train_split, config.train_pairs), (config.val_split, config.val_pairs))
    for split, path in splits:
        hashed.append(path or index.pairs_path(split, config.direction))
        hashed += candidate_reports(config.root, split, config.direction)
        source_file = candidates_dir(config.root, split, config.direction) / SOURCE_FILE
        hashed.append(source_file)
    if config.cache is not None and not config.finetune_backbone:
        hashed.append(config.cache / "meta.json")
    return RunData(
        geometry=geometry,
        train_pairs=train_pairs,
        val_pairs=val_pairs,
        gap_pairs=gap_pairs,
        train_source=train_source,
        val_source=val_source,
        backbone_name=name,
        backbone_spec=spec,
        data_hash=data_hash(hashed),
        cache_meta=cache_meta,
    )


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


# ----------------------------------------------------------------------------- validation


def predict_frames(model, dataset, indices: Sequence[int], workers: int, amp_ctx) -> list[tuple]:
    """Predictions for the validation frames ``indices``: (take, obj, src_cam, dst_cam,
    frame, RLE, confidence) per query, the best candidate of the frame's full set."""
    import torch
    from torch.utils.data import DataLoader, Subset

    from omama_train.dataset import identity_collate
    from omama_train.models.matcher import predict

    out: list[tuple] = []
    if not indices:
        return out
    loader = DataLoader(
        Subset(dataset, list(indices)),
        batch_size=None,
        num_workers=workers,
        collate_fn=identity_collate,
    )
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for item in loader:
            n = int(item.cand_bits.shape[0])
            dst_feats = dst_desc = None
            if n:
                with amp_ctx():
                    dst_feats = model.features(item.dst_input[None], "dst")
                    dst_desc = model.descriptors(
                        dst_feats, item.cand_bits[None], item.cand_boxes[None], "dst"
                    )
            for src_cam, src_input, objects, bits, boxes in item.groups:
                if not n:
                    out += [
                        (item.take, o, src_cam, item.dst_cam, item.frame, item.empty_rle, 0.0)
                        for o in objects
                    ]
                    continue
                with amp_ctx():
                    src_feats = model.features(src_input[None], "src")
                    src_desc = model.descriptors(src_feats, bits[None], boxes[None], "src")
                    sim = model.matcher(src_desc[0][:, None], dst_desc, src_feats, dst_feats)
                best, confidence, _ = predict(sim.float())
                for obj, b, c in zip(objects, best.tolist(), confidence.tolist(), strict=True):
                    out.append(
                        (item.take, obj, src_cam, item.dst_cam, item.frame, item.cand_rles[b], c)
                    )
    model.train(was_training)
    return out


def score_predictions(
    predictions: Sequence[tuple], root: Path, pairs: Sequence, direction: str, workers
) -> tuple[dict, dict]:
    """(results JSON dict, official report) of gathered predictions over ``pairs``."""
    from omama_train.data.gt import build_gt
    from runtime.egoexo import ProcessedRoot, results_key
    from runtime.evaluate import build_report, evaluate
    from runtime.results import add_prediction, new_results

    results = new_results(direction)
    for take, obj, src, dst, frame, rle_dict, confidence in sorted(
        predictions, key=lambda p: (p[0], p[1], p[2], p[4])
    ):
        add_prediction(results, take, obj, src, dst, frame, rle_dict, confidence)
    gt, _ = build_gt(ProcessedRoot(root), pairs, direction)
    evaluations = evaluate(
        gt["annotations"], results[results_key(direction)]["results"], direction, "omama", workers
    )
    return results, build_report(evaluations, direction, "omama")


def run_validation(model, dataset, pairs, config, ctx, amp_ctx) -> tuple[dict | None, dict]:
    """Validate on all ranks (frames sharded by rank); rank 0 scores. Returns (results on
    rank 0 else None, aggregated metrics on every rank)."""
    mine = list(range(ctx.rank, len(dataset), ctx.world))
    predictions = predict_frames(model, dataset, mine, config.workers, amp_ctx)
    gathered = _all_gather(ctx, predictions)
    results, metrics = None, None
    if ctx.main:
        flat = [p for part in gathered for p in part]
        results, report = score_predictions(
            flat, config.root, pairs, config.direction, config.eval_workers
        )
        metrics = {**report["aggregated_metrics"], "observations": report["counts"]["observations"]}
        metrics["report"] = report
    metrics = _broadcast(ctx, metrics)
    return results, metrics


# ----------------------------------------------------------------------------- run files


class RunLog:
    """Rank 0's CSV and TensorBoard writers (no-ops on other ranks).

    Resuming keeps the CSV rows of the epochs up to ``resume_epoch`` and purges TensorBoard
    events from ``resume_step`` on.
    """

    def __init__(self, out: Path, enabled: bool, resume_epoch: int, resume_step: int) -> None:
        self.enabled = enabled
        self.csv_path = out / "metrics.csv"
        self.writer = None
        if not enabled:
            return
        rows = []
        if self.csv_path.is_file():
            with open(self.csv_path, newline="", encoding="utf-8") as fh:
                rows = [r for r in csv.DictReader(fh) if int(r["epoch"]) <= resume_epoch]
        self._write_rows(rows)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is in the train extra; the CSV has the same numbers
            log.warning("tensorboard is not installed: per-step curves go to metrics.csv only")
        else:
            # On resume, events logged after the checkpoint by the interrupted run are dropped.
            purge = resume_step if resume_step > 0 else None
            self.writer = SummaryWriter(str(out / "tensorboard"), purge_step=purge)

    def _write_rows(self, rows: list[dict]) -> None:
        with atomic_path(self.csv_path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
            writer.writeheader()
            writer.writerows(rows)

    def step(self, global_step: int, loss: float, lr: float) -> None:
        if self.writer is not None:
            self.writer.add_scalar("train/loss", loss, global_step)
            self.writer.add_scalar("train/lr", lr, global_step)

    def epoch(self, row: dict) -> None:
        if not self.enabled:
            return
        with open(self.csv_path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        clean = {k: ("" if row.get(k) is None else row.get(k)) for k in CSV_FIELDS}
        self._write_rows(rows + [clean])
        if self.writer is not None:
            for key, value in row.items():
                if key not in ("epoch", "global_step") and isinstance(value, (int, float)):
                    group = "val" if key.startswith("val_") else "epoch"
                    self.writer.add_scalar(f"{group}/{key}", value, row["epoch"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def param_checksum(model) -> float:
    """Sum of all parameters in float64: equal on every rank when DDP keeps them in sync."""
    import torch

    with torch.no_grad():
        return float(sum(p.detach().double().sum().item() for p in model.parameters()))


# ----------------------------------------------------------------------------- train


def _amp_context(device, enabled: bool):
    import contextlib

    import torch

    if not enabled or device.type != "cuda":
        return contextlib.nullcontext, None
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    def ctx():
        return torch.autocast("cuda", dtype=dtype)

    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    return ctx, scaler


def _set_deterministic(enabled: bool, seed: int) -> None:
    import torch

    random.seed(seed)
    torch.manual_seed(seed)
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def _check_resume_args(saved: dict, config: TrainConfig) -> None:
    fixed = ("direction", "finetune_backbone", "candidates", "backbone", "cache", "batch_size")
    now = config.to_json()
    changed = [k for k in fixed if saved.get(k) != now.get(k)]
    if changed:
        detail = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in changed)
        raise OmamaError(f"--resume with other settings than the run in {config.out}: {detail}")


def _save_backbones(out: Path, prefix: str, backbones: dict | None) -> list[str]:
    if not backbones:
        return []
    written = []
    for view, model in backbones.items():
        path = out / f"{prefix}_backbone_{view}.safetensors"
        metadata = {"format": "omama.backbone", "view": view, "backbone": model.name}
        save_tensors(path, model.state_dict(), metadata)
        written.append(path.name)
    return written


def build_models(config: TrainConfig, data: RunData, device) -> tuple[nn.Module, list[dict]]:
    """The training module (matcher, plus backbones when fine-tuning) on ``device`` and the
    AdamW parameter groups (matcher; backbone)."""
    import torch

    from omama_train.models.matcher import OMaMaMatcher

    g = data.geometry
    torch.manual_seed(config.seed)
    matcher = OMaMaMatcher(
        config.direction,
        src_grid=g.src_grid,
        dst_grid=g.dst_grid,
        dropout=config.dropout,
        backbone=data.backbone_name,
    )
    if config.init is not None and not config.resume:
        load_init(matcher, config.init)
    # Frozen, so DDP sees no trainable parameter without a gradient: mlp_visible is not
    # part of the forward pass, and the key bias adds the same q.b to every attention logit
    # of a query, which the softmax cancels (its gradient is exactly zero; the folded
    # attention order does not even read it).
    matcher.mlp_visible.requires_grad_(False)
    matcher.CROSS_context_attn.key.bias.requires_grad_(False)
    backbones = None
    if config.finetune_backbone:
        from omama_train.models.backbones import build_backbone

        weights = config.backbone_weights
        ego_size = g.dst_image if g.direction == "exo2ego" else g.src_image
        exo_size = g.src_image if g.direction == "exo2ego" else g.dst_image
        ego = build_backbone(data.backbone_spec, ego_size, weights)
        if exo_size == ego.image_size:
            exo = ego
        else:
            exo = build_backbone(data.backbone_spec, exo_size, weights)
            tie_backbones(ego, exo)
        backbones = {"ego": ego.train(), "exo": exo.train()}
    model = build_train_model(g, matcher, backbones, config.finetune_backbone).to(device)

    matcher_params = [p for p in model.matcher.parameters() if p.requires_grad]
    groups = [{"params": matcher_params, "lr": config.base_lr, "name": "matcher"}]
    if backbones:
        backbone_lr = config.backbone_lr or config.base_lr
        params = list(model.backbones.parameters())  # shared tensors appear once
        groups.append({"params": params, "lr": backbone_lr, "name": "backbone"})
    for group in groups:
        group["base_lr"] = group["lr"]
    return model, groups


class Trainer:
    """One training run: model, optimizer, data, counters (the resumable ``state``)."""

    def __init__(self, config: TrainConfig, ctx: Distributed) -> None:
        import torch
        from torch.nn.parallel import DistributedDataParallel

        from omama_train.dataset import TrainingPairs, ValidationFrames

        self.config, self.ctx, self.out = config, ctx, config.out
        if config.resume and not (self.out / "resume.json").is_file():
            raise OmamaError(
                f"--resume: {self.out} holds no resume.json (no finished epoch or step)"
            )
        if not config.resume and (self.out / "last.safetensors").exists():
            raise OmamaError(
                f"{self.out} already holds a run (last.safetensors): pass --resume to continue "
                "it or choose another --out"
            )
        if ctx.main:
            self.out.mkdir(parents=True, exist_ok=True)
        self.data = data = load_run_data(config, ctx)
        g = data.geometry
        self.model, self.groups = build_models(config, data, ctx.device)
        self.optimizer = torch.optim.AdamW(self.groups, weight_decay=config.weight_decay)
        self.amp_ctx, self.scaler = _amp_context(ctx.device, config.amp)

        self.train_set = TrainingPairs(
            config.root,
            config.train_split,
            config.direction,
            data.train_pairs,
            g,
            data.train_source,
            n=config.candidates,
            seed=config.seed,
        )
        self.val_set = ValidationFrames(
            config.root, config.val_split, config.direction, data.val_pairs, g, data.val_source
        )
        self.gap_set = ValidationFrames(
            config.root,
            config.train_split,
            config.direction,
            data.gap_pairs,
            g,
            data.train_source,
        )
        self.sampler = make_sampler(self.train_set, ctx, config.seed)
        self.steps_per_epoch = math.ceil(self.sampler.num_samples / config.batch_size)
        self.total_steps = self.steps_per_epoch * config.epochs
        self.state = {
            "epoch": 0,
            "step_in_epoch": 0,
            "global_step": 0,
            "best_iou": None,
            "best_epoch": None,
            "bad_epochs": 0,
            "loss_sum": 0.0,
            "acc_sum": 0.0,
            "count": 0.0,
            "visible_count": 0.0,
        }
        if config.resume:
            self.state = resume_run(
                config, ctx, self.model, self.optimizer, self.scaler, self.state
            )
        self.ddp = self.model
        if ctx.active:
            ids = [ctx.device.index] if ctx.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.model, device_ids=ids)
        self.run_log = RunLog(
            self.out, ctx.main, self.state["epoch"], self.state["global_step"] + 1
        )
        self.history: list[dict] = []

    # -- steps -------------------------------------------------------------------------
    def step(self, batch: dict) -> tuple[float, int, int, int]:
        """One optimizer step -> (loss, pairs, visible pairs, visible pairs ranked first)."""
        import torch

        config, state = self.config, self.state
        for group in self.optimizer.param_groups:
            group["lr"] = cosine_lr(
                group["base_lr"], config.min_lr, state["global_step"], self.total_steps
            )
        with self.amp_ctx():
            sim = self.ddp(batch)
        loss = masked_loss(
            sim, batch["valid"], batch["positive"], batch["visible"], config.temperature
        )
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        if config.grad_clip > 0:
            params = [p for group in self.groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        with torch.no_grad():
            device = sim.device
            visible = batch["visible"].to(device) > 0
            ranked = sim.detach().float().masked_fill(~batch["valid"].to(device), MASKED_SIMILARITY)
            hits = (ranked.argmax(1) == batch["positive"].to(device)) & visible
        return float(loss.detach()), len(visible), int(visible.sum()), int(hits.sum())

    def train_epoch(self, epoch: int) -> float:
        """The remaining steps of ``epoch``; returns its wall time (s)."""
        from torch.utils.data import DataLoader

        from omama_train.dataset import collate

        config, state, ctx = self.config, self.state, self.ctx
        self.train_set.set_epoch(epoch)
        self.sampler.set_epoch(epoch)
        self.sampler.skip = state["step_in_epoch"] * config.batch_size
        loader = DataLoader(
            self.train_set,
            batch_size=config.batch_size,
            sampler=self.sampler,
            num_workers=config.workers,
            collate_fn=collate,
            pin_memory=ctx.device.type == "cuda",
        )
        started = time.perf_counter()
        seen = 0
        self.model.train()
        bar = _progress(config, ctx, epoch, self.steps_per_epoch, state["step_in_epoch"])
        for batch in loader:
            loss, pairs, visible, hits = self.step(batch)
            state["loss_sum"] += loss * pairs
            state["acc_sum"] += hits
            state["count"] += pairs
            state["visible_count"] += visible
            state["global_step"] += 1
            state["step_in_epoch"] += 1
            seen += pairs
            if ctx.main and state["global_step"] % max(1, config.log_every) == 0:
                self.run_log.step(state["global_step"], loss, self.optimizer.param_groups[0]["lr"])
            if bar is not None:
                rate = seen * ctx.world / max(time.perf_counter() - started, 1e-9)
                bar.set_postfix(loss=f"{loss:.3f}", samples_s=f"{rate:.1f}")
                bar.update(1)
            if (
                config.checkpoint_every
                and state["step_in_epoch"] % config.checkpoint_every == 0
                and state["step_in_epoch"] < self.steps_per_epoch
            ):
                self.checkpoint(epoch, None)
        if bar is not None:
            bar.close()
        return time.perf_counter() - started

    # -- epochs ------------------------------------------------------------------------
    def score(self) -> tuple[dict | None, dict, float | None]:
        sets = (self.val_set, self.gap_set)
        return score_epoch(self.model, *sets, self.data, self.config, self.ctx, self.amp_ctx)

    def validate_start(self) -> None:
        """The epoch-0 row: the starting weights scored before any step."""
        results, val, train_iou = self.score()
        row = metrics_row(0, 0, self.optimizer.param_groups[0]["lr"], val, train_iou)
        self.history.append(row)
        if self.ctx.main:
            write_json(self.out / "val" / "epoch_000.json", val["report"], indent=1)
            write_json(self.out / "val" / "results_start.json", results)
            self.run_log.epoch(row)
            print(self._line(row, False), file=sys.stderr)

    def finish_epoch(self, epoch: int, epoch_s: float) -> None:
        """Reduce the epoch's metrics over ranks, validate, log and checkpoint."""
        state, ctx = self.state, self.ctx
        totals = [state[k] for k in ("loss_sum", "acc_sum", "count", "visible_count")]
        loss_sum, acc_sum, count, visible = _sum_across(ctx, totals)
        results, val, train_iou = self.score()
        val_iou = val.get("iou")
        improved = val_iou is not None and (
            state["best_iou"] is None or val_iou > state["best_iou"]
        )
        if improved:
            state.update(best_iou=val_iou, best_epoch=epoch + 1, bad_epochs=0)
        else:
            state["bad_epochs"] += 1
        checksums = _all_gather(ctx, param_checksum(self.model))
        if ctx.active and len({round(c, 6) for c in checksums}) != 1:
            raise OmamaError(f"DDP ranks disagree on the parameters: checksums {checksums}")
        row = metrics_row(
            epoch + 1, state["global_step"], self.optimizer.param_groups[0]["lr"], val, train_iou
        )
        row.update(
            train_loss=loss_sum / max(count, 1.0),
            train_acc=acc_sum / visible if visible else None,
            epoch_s=epoch_s,
            samples_per_s=count / max(epoch_s, 1e-9),
        )
        self.history.append(row)
        state.update(epoch=epoch + 1, step_in_epoch=0)
        state.update(loss_sum=0.0, acc_sum=0.0, count=0.0, visible_count=0.0)
        if ctx.main:
            val_dir = self.out / "val"
            write_json(val_dir / f"epoch_{epoch + 1:03d}.json", val["report"], indent=1)
            write_json(val_dir / "results_last.json", results)
            if improved:
                write_json(val_dir / "results_best.json", results)
            self.run_log.epoch(row)
            print(self._line(row, improved), file=sys.stderr)
        self.checkpoint(epoch + 1, {"row": row, "improved": improved, "checksums": checksums})

    def checkpoint(self, epoch: int, epoch_info: dict | None) -> None:
        parts = (self.model, self.optimizer, self.scaler, self.state)
        save_resume(self.config, self.ctx, *parts, epoch, self.data, epoch_info)

    def _line(self, row: dict, improved: bool) -> str:
        return _epoch_line(row, self.config.epochs, improved, len(self.data.gap_pairs))

    def run(self) -> dict:
        """Train the remaining epochs (with early stopping); returns the summary."""
        config, state, ctx = self.config, self.state, self.ctx
        if ctx.main:
            n_params = sum(p.numel() for group in self.groups for p in group["params"])
            mode = "fine-tuning on images" if config.finetune_backbone else "cached features"
            print(
                f"omama train: {len(self.data.train_pairs)} train / {len(self.data.val_pairs)} "
                f"val pairs, {config.direction}, {self.data.backbone_name}, {mode}, "
                f"{n_params / 1e6:.1f} M trainable parameters, {ctx.world} process(es) on "
                f"{ctx.device.type}, {self.steps_per_epoch} steps/epoch",
                file=sys.stderr,
            )
        if config.validate_first and state["global_step"] == 0:
            self.validate_start()
        stopped_early = False
        for epoch in range(state["epoch"], config.epochs):
            self.finish_epoch(epoch, self.train_epoch(epoch))
            if config.early_stop_patience and state["bad_epochs"] >= config.early_stop_patience:
                stopped_early = True
                if ctx.main:
                    print(
                        f"early stop: no better validation IoU for {state['bad_epochs']} "
                        f"epoch(s); best {state['best_iou']:.4f} at epoch {state['best_epoch']}",
                        file=sys.stderr,
                    )
                break
        self.run_log.close()
        summary = {
            "out": str(self.out),
            "epochs_run": len([h for h in self.history if h["epoch"] > 0]),
            "epochs_done": state["epoch"],
            "best_epoch": state["best_epoch"],
            "best_val_iou": state["best_iou"],
            "stopped_early": stopped_early,
            "history": self.history,
            "world_size": ctx.world,
            "data_hash": self.data.data_hash,
        }
        if ctx.main:
            write_json(self.out / "summary.json", _jsonable(summary), indent=1)
        return summary


def train(config: TrainConfig) -> dict:
    """Run training as configured (see the module docstring); returns a summary (rank 0's
    view, on every rank)."""
    config.check()
    ctx = setup_distributed(config.device)
    try:
        _set_deterministic(config.deterministic, config.seed)
        return Trainer(config, ctx).run()
    finally:
        if ctx.active:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def score_epoch(model, val_set, gap_set, data, config, ctx, amp_ctx) -> tuple:
    """Validation (results on rank 0, metrics) and the IoU on the fixed training subset."""
    val_results, val = run_validation(model, val_set, data.val_pairs, config, ctx, amp_ctx)
    train_iou = None
    if len(gap_set):
        _, gap = run_validation(model, gap_set, data.gap_pairs, config, ctx, amp_ctx)
        train_iou = gap.get("iou")
    return val_results, val, train_iou


def metrics_row(epoch: int, step: int, lr: float, val: dict, train_iou: float | None) -> dict:
    """One metrics.csv row (training columns empty until the caller fills them)."""
    val_iou = val.get("iou")
    gap = train_iou - val_iou if train_iou is not None and val_iou is not None else None
    return {
        "epoch": epoch,
        "global_step": step,
        "lr": lr,
        "train_loss": None,
        "train_acc": None,
        "train_iou": train_iou,
        "val_iou": val_iou,
        "val_iou_std": val.get("iou_std"),
        "val_shape_acc": val.get("shape_acc"),
        "val_location_score": val.get("location_score"),
        "val_balanced_acc": val.get("balanced_acc"),
        "gap_iou": gap,
        "epoch_s": None,
        "samples_per_s": None,
    }


def _progress(config: TrainConfig, ctx: Distributed, epoch: int, total: int, done: int):
    if not (config.progress and ctx.main):
        return None
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=done,
        desc=f"epoch {epoch + 1}/{config.epochs}",
        unit="step",
        file=sys.stderr,
        leave=False,
    )


def _fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _epoch_line(row: dict, epochs: int, improved: bool, gap_pairs: int) -> str:
    timing = (
        f", {row['epoch_s']:.1f} s ({row['samples_per_s']:.1f} samples/s)"
        if row["epoch_s"] is not None
        else " (before training)"
    )
    return (
        f"epoch {row['epoch']}/{epochs}: train loss {_fmt(row['train_loss'])}, "
        f"val IoU {_fmt(row['val_iou'])}{' (best)' if improved else ''}, "
        f"train IoU ({gap_pairs} pairs) {_fmt(row['train_iou'])}, "
        f"gap {_fmt(row['gap_iou'])}, balanced acc {_fmt(row['val_balanced_acc'])}" + timing
    )


def save_resume(config, ctx, model, optimizer, scaler, state, epoch, data, epoch_info) -> None:
    """Checkpoint: matcher (+ backbones) as last (and best when improved), the resume state.

    Called on every rank (RNG states are gathered); rank 0 alone writes.
    """
    from omama_train.models.matcher import save_matcher

    rng_tensors, rng_meta = rng_state()
    gathered = _all_gather(ctx, (rng_tensors, rng_meta))
    if not ctx.main:
        _barrier(ctx)
        return
    out = config.out
    metrics = _jsonable(epoch_info["row"]) if epoch_info else None
    sidecar = {
        "args": config.to_json(),
        "epoch": state["epoch"],
        "step_in_epoch": state["step_in_epoch"],
        "global_step": state["global_step"],
        "metrics": metrics,
        "best_val_iou": state["best_iou"],
        "best_epoch": state["best_epoch"],
        "data_hash": data.data_hash,
        "backbone": data.backbone_name,
        "geometry": _jsonable(asdict(data.geometry)),
        "world_size": ctx.world,
        "param_checksums": epoch_info["checksums"] if epoch_info else None,
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": _versions(),
    }
    extra = {
        "epoch": state["epoch"],
        "global_step": state["global_step"],
        "data_hash": data.data_hash,
    }
    backbones = dict(model.backbones.items()) if model.backbones is not None else None
    save_matcher(model.matcher, out / "last.safetensors", extra_metadata=extra)
    sidecar["backbone_files"] = _save_backbones(out, "last", backbones)
    write_json(out / "last.json", sidecar, indent=1)
    if epoch_info and epoch_info["improved"]:
        save_matcher(model.matcher, out / "best.safetensors", extra_metadata=extra)
        _save_backbones(out, "best", backbones)
        best_files = [n.replace("last_", "best_", 1) for n in sidecar["backbone_files"]]
        write_json(out / "best.json", {**sidecar, "backbone_files": best_files}, indent=1)

    tensors, opt_meta = optimizer_state_split(optimizer)
    for rank, (rt, _) in enumerate(gathered):
        tensors.update({f"rng.{rank}.{k}": v for k, v in rt.items()})
    resume = {
        "global_step": state["global_step"],
        "state": _jsonable(state),
        "optimizer": opt_meta,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": [m for _, m in gathered],
        "world_size": ctx.world,
        "args": config.to_json(),
    }
    save_tensors(out / "resume.safetensors", tensors, {"global_step": state["global_step"]})
    write_json(out / "resume.json", _jsonable(resume))  # written last: marks a full checkpoint
    _barrier(ctx)


def resume_run(config, ctx, model, optimizer, scaler, state) -> dict:
    """Load the last checkpoint of ``config.out`` into the model and optimizer; returns the
    saved counters."""
    out = config.out
    resume = read_json_file(out / "resume.json")
    last = read_json_file(out / "last.json")
    _check_resume_args(resume["args"], config)
    if last.get("global_step") != resume["global_step"]:
        raise OmamaError(
            f"{out}: last.json (step {last.get('global_step')}) and resume.json (step "
            f"{resume['global_step']}) disagree: the last checkpoint was interrupted"
        )
    from omama_train.models.matcher import load_matcher

    loaded = load_matcher(out / "last.safetensors", config.direction)
    model.matcher.load_state_dict(loaded.state_dict(), strict=True)
    if model.backbones is not None:
        for view, backbone in model.backbones.items():
            backbone.load_state_dict(load_tensors(out / f"last_backbone_{view}.safetensors"))
    tensors = load_tensors(out / "resume.safetensors")
    optimizer.load_state_dict(optimizer_state_join(tensors, resume["optimizer"]))
    if scaler is not None and resume.get("scaler"):
        scaler.load_state_dict(resume["scaler"])
    if resume.get("world_size") == ctx.world:
        prefix = f"rng.{ctx.rank}."
        set_rng_state(
            {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)},
            resume["rng"][ctx.rank],
        )
    elif ctx.main:
        saved_world = resume.get("world_size")
        log.warning(
            "resuming on %d processes (saved on %s): RNG states not restored",
            ctx.world,
            saved_world,
        )
    restored = dict(state)
    restored.update(resume["state"])
    if ctx.main:
        print(
            f"resuming {out} at epoch {restored['epoch'] + 1}, step {restored['global_step']}",
            file=sys.stderr,
        )
    return restored


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("omama", "torch", "timm", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


# ----------------------------------------------------------------------------- CLI


def register(app: typer.Typer) -> None:
    """Add ``omama train`` (entry point ``train = "omama_train.train:register"``)."""

    @app.command("train")
    def train_command(
        root: Path = typer.Option(..., "--root", help="Processed root (omama data prepare)."),
        out: Path = typer.Option(..., "--out", help="Run folder (checkpoints, logs)."),
        direction: str = typer.Option("exo2ego", "--direction", help="exo2ego or ego2exo."),
        cache: Path | None = typer.Option(
            None, "--cache", help="Feature cache (omama features); the default training mode."
        ),
        train_split: str = typer.Option("train", "--train-split", help="Split to train on."),
        val_split: str = typer.Option("val", "--val-split", help="Split to validate on."),
        train_pairs: Path | None = typer.Option(
            None, "--train-pairs", help="Pairs file (default: the split's in ROOT)."
        ),
        val_pairs: Path | None = typer.Option(
            None, "--val-pairs", help="Validation pairs file (default: the split's in ROOT)."
        ),
        epochs: int = typer.Option(3, "--epochs", help="Epochs."),
        batch_size: int = typer.Option(24, "--batch-size", help="Pairs per step per process."),
        lr: float | None = typer.Option(
            None, "--lr", help="AdamW learning rate (default 8e-5; 8e-6 with fine-tuning)."
        ),
        backbone_lr: float | None = typer.Option(
            None, "--backbone-lr", help="Backbone learning rate when fine-tuning (default --lr)."
        ),
        min_lr: float = typer.Option(MIN_LR, "--min-lr", help="End of the cosine schedule."),
        weight_decay: float = typer.Option(0.01, "--weight-decay", help="AdamW weight decay."),
        dropout: float = typer.Option(0.0, "--dropout", help="Dropout in the matcher."),
        candidates: int = typer.Option(32, "--candidates", help="Destination masks per pair."),
        temperature: float = typer.Option(0.07, "--temperature", help="Softmax temperature."),
        seed: int = typer.Option(42, "--seed", help="Seed (init, sampling, order)."),
        early_stop_patience: int = typer.Option(
            0,
            "--early-stop-patience",
            help="Stop after this many epochs without a better validation IoU (0: never).",
        ),
        grad_clip: float = typer.Option(0.0, "--grad-clip", help="Max grad norm (0: off)."),
        deterministic: bool = typer.Option(
            False, "--deterministic", help="Deterministic kernels (slower)."
        ),
        amp: bool = typer.Option(True, "--amp/--no-amp", help="Mixed precision (GPU only)."),
        device: str | None = typer.Option(None, "--device", help="cpu, cuda (default: auto)."),
        workers: int = typer.Option(2, "--workers", help="Data-loader workers per process."),
        init: Path | None = typer.Option(
            None, "--init", help="Start from a matcher: official .pt or omama .safetensors."
        ),
        resume: bool = typer.Option(False, "--resume", help="Continue the run in --out."),
        finetune_backbone: bool = typer.Option(
            False, "--finetune-backbone", help="Train the backbone too, on images."
        ),
        backbone: str | None = typer.Option(
            None, "--backbone", help="Backbone name (default: the cache's, or dinov2_vitb14_reg)."
        ),
        backbone_weights: Path | None = typer.Option(
            None, "--backbone-weights", help="Backbone checkpoint for --finetune-backbone."
        ),
        random_init: bool = typer.Option(
            False, "--random-init", help="Random backbone weights (tests) with fine-tuning."
        ),
        gap_pairs: int = typer.Option(
            256, "--gap-pairs", help="Training pairs scored each epoch for the train/val gap."
        ),
        validate_first: bool = typer.Option(
            False, "--validate-first", help="Score the starting weights first (epoch 0 row)."
        ),
        checkpoint_every: int = typer.Option(
            0, "--checkpoint-every", help="Also checkpoint every N steps (0: per epoch)."
        ),
        log_every: int = typer.Option(10, "--log-every", help="TensorBoard loss every N steps."),
        eval_workers: int | None = typer.Option(
            None, "--eval-workers", help="Processes for the official metrics (default: 2)."
        ),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bars."),
    ) -> None:
        """Train the O-MaMa matcher on cached features (or fine-tune with the backbone).

        Runs on one device, or on several under torchrun (same command). Checkpoints,
        metrics.csv and TensorBoard events go to --out.

        Example: omama train --root data --cache features --out runs/exo2ego --epochs 3
        """
        config = TrainConfig(
            root=root,
            out=out,
            direction=direction,
            cache=cache,
            train_split=train_split,
            val_split=val_split,
            train_pairs=train_pairs,
            val_pairs=val_pairs,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            backbone_lr=backbone_lr,
            min_lr=min_lr,
            weight_decay=weight_decay,
            dropout=dropout,
            candidates=candidates,
            temperature=temperature,
            seed=seed,
            early_stop_patience=early_stop_patience,
            grad_clip=grad_clip,
            deterministic=deterministic,
            amp=amp,
            device=device,
            workers=workers,
            init=init,
            resume=resume,
            finetune_backbone=finetune_backbone,
            backbone=backbone,
            backbone_weights=backbone_weights,
            random_init=random_init,
            gap_pairs=gap_pairs,
            validate_first=validate_first,
            checkpoint_every=checkpoint_every,
            log_every=log_every,
            eval_workers=eval_workers,
            progress=progress,
        )
        summary = train(config)
        if int(os.environ.get("RANK", "0")) == 0:
            best = summary["best_val_iou"]
            typer.echo(
                f"trained {summary['epochs_run']} epoch(s) -> {summary['out']}: best val IoU "
                f"{_fmt(best)} at epoch {summary['best_epoch']}"
                + (" (stopped early)" if summary["stopped_early"] else "")
            )


def main(argv: list[str] | None = None) -> None:
    """``python -m omama_train.train ARGS`` (e.g. under torchrun): ``omama train ARGS``."""
    from runtime.clikit import new_app, run_app

    app = new_app("omama train")
    register(app)
    args = list(sys.argv[1:] if argv is None else argv)
    sys.exit(run_app(app, ["train", *args], prog_name="omama"))


if __name__ == "__main__":
    main()
