"""What a checkpoint of a run holds, writing it, and resuming from it.

Resuming (``--resume``) restores the matcher (and backbones), the AdamW moments, the step
counter that drives the schedule, the GradScaler, every rank's RNG (torch, CUDA, Python,
numpy), the position in the epoch (``--checkpoint-every-steps N`` also checkpoints
mid-epoch) and the metrics history: a run killed at any instant and resumed ends with the
bytes of weights and the metrics an uninterrupted one would have (tested on CPU).

A checkpoint is one generation folder that becomes visible all at once
(:mod:`omama_train.train.generations`); the files other commands read are then published
beside it, each replaced atomically (hard links to the generation's files, or copies).
RUN (``--out``)::

    last.safetensors / last.json        matcher after the latest checkpoint (+ sidecar: args,
                                        metrics, data hash, step)
    best.safetensors / best.json        matcher of the best validation IoU
    {last,best}_backbone_{ego,exo}.safetensors   with --finetune-backbone
    checkpoints/latest.json             the pointer: which generation ``--resume`` continues
    checkpoints/NNNNNN/                 that generation: the files above, resume.safetensors
                                        (optimizer moments, RNG states), resume.json
                                        (counters, schedule, scaler, history) and contents.json
    metrics.csv                         one row per epoch (:mod:`omama_train.train.runlog`)
    tensorboard/                        events (loss and lr per step, metrics per epoch)
    val/epoch_NNN.json                  official report of each epoch (000: --validate-first)
    val/results_{last,best,start}.json  validation predictions (Ego-Exo4D results format)
    summary.json                        the run's history, best epoch and IoU

No pickles are written: tensors go to safetensors, everything else to JSON. Safetensors
headers are written with sorted keys, so equal weights give equal bytes.
"""

from __future__ import annotations

import json
import logging
import math
import random
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from omama_train.train import generations
from omama_train.train.distributed import all_gather, barrier
from runtime.atomic import write_bytes, write_json
from runtime.errors import OmamaError
from runtime.info import package_versions

if TYPE_CHECKING:
    import torch

    from omama_train.train.config import TrainConfig

log = logging.getLogger(__name__)
VERSIONED_PACKAGES = ("omama", "torch", "timm", "numpy")
RESUME_FILES = ("resume.safetensors", "resume.json")  # in the generation only, not published


def jsonable(value: Any) -> Any:
    """``value`` with numpy scalars as Python numbers and non-finite floats as None."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
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
    return tensors, {"param_groups": jsonable(state["param_groups"]), "scalars": scalars}


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
    """This process's RNG states: torch (CPU, CUDA) as tensors, Python's and numpy's as JSON.

    (The sampling draws from per-sample generators, :func:`omama_train.sampling.sample_rng`,
    and the data loaders from their own seeded generators; the global states are saved so
    that nothing else drawing from them can make a resumed run drift.)
    """
    import torch

    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = state
    py_state = random.getstate()
    kind, keys, pos, has_gauss, gauss = np.random.get_state()  # noqa: NPY002 (the global state)
    meta = {
        "python": [py_state[0], list(py_state[1]), py_state[2]],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
    }
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    import torch

    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = meta["numpy"]
    numpy_state = (kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached)
    np.random.set_state(numpy_state)  # noqa: NPY002 (the global state)


def canonical_safetensors(data: bytes) -> bytes:
    """``data`` (a safetensors file) with its JSON header's keys sorted.

    The safetensors writer orders metadata as a hash map does, differently in each process;
    sorted, equal tensors and metadata give equal bytes. Offsets are relative to the data,
    so only the header and its length change (padded with spaces to 8 bytes, as written).
    """
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data[8 + size :]


def save_tensors(
    path: Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None
) -> None:
    """``tensors`` as a safetensors file at ``path`` (atomically, sorted header)."""
    from safetensors.torch import save

    clean = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    data = save(clean, metadata={k: str(v) for k, v in (metadata or {}).items()})
    write_bytes(path, canonical_safetensors(data))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not path.is_file():
        raise OmamaError(f"{path} not found")
    return load_file(str(path))


# The settings that decide a run's weights and metrics: a resume with other values would
# continue one run under another's name (paths such as --root may move, so they may change).
RESUME_FIXED = (
    "direction", "finetune_backbone", "num_candidates", "backbone", "cache", "batch_size",
    "train_split", "val_split", "epochs", "base_lr", "backbone_lr", "min_lr", "weight_decay",
    "dropout", "temperature", "seed", "grad_clip", "early_stop_patience", "amp", "random_init",
    "gap_pairs", "validate_first",
)  # fmt: skip


def _check_resume_args(saved: dict, config: TrainConfig) -> None:
    now = config.to_json()
    changed = [k for k in RESUME_FIXED if k in saved and saved[k] != now.get(k)]
    if changed:
        detail = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in changed)
        raise OmamaError(
            f"--resume with other settings than the run in {config.out}: {detail} (resume with "
            f"the run's settings, or start a new run with --init {config.out}/last.safetensors)"
        )


def _write_weights(folder: Path, model, extra: dict) -> list[str]:
    """``last.safetensors`` (+ ``last_backbone_<view>.safetensors``) in ``folder``; returns
    the backbone files' names."""
    from omama_train.models.matcher import save_matcher

    matcher = folder / "last.safetensors"
    save_matcher(model.matcher, matcher, extra_metadata=extra)
    write_bytes(matcher, canonical_safetensors(matcher.read_bytes()))
    written = []
    for view, backbone in (model.backbones or {}).items():
        name = f"last_backbone_{view}.safetensors"
        metadata = {"format": "omama.backbone", "view": view, "backbone": backbone.name}
        save_tensors(folder / name, backbone.state_dict(), metadata)
        written.append(name)
    return written


def _sidecar(config, ctx, state, data, epoch_info) -> dict:
    return {
        "args": config.to_json(),
        "epoch": state["epoch"],
        "step_in_epoch": state["step_in_epoch"],
        "global_step": state["global_step"],
        "metrics": jsonable(epoch_info["row"]) if epoch_info else None,
        "best_val_iou": state["best_iou"],
        "best_epoch": state["best_epoch"],
        "data_hash": data.data_hash,
        "backbone": data.backbone_name,
        "geometry": jsonable(asdict(data.geometry)),
        "world_size": ctx.world,
        "param_checksums": epoch_info["checksums"] if epoch_info else None,
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": package_versions(VERSIONED_PACKAGES),
    }


def _add_best(out: Path, staged: Path, improved: bool, sidecar: dict) -> None:
    """The best files of the new checkpoint: this one's weights when it improved, else the
    previous checkpoint's best (linked, not rewritten)."""
    if improved:
        for name in ["last.safetensors", *sidecar["backbone_files"]]:
            generations.link_or_copy(staged / name, staged / name.replace("last", "best", 1))
        best_files = [n.replace("last_", "best_", 1) for n in sidecar["backbone_files"]]
        write_json(staged / "best.json", {**sidecar, "backbone_files": best_files}, indent=1)
        return
    previous = generations.current_path(out)
    if previous is not None:
        for path in sorted(previous.glob("best*")):
            generations.link_or_copy(path, staged / path.name)


def save_resume(config, ctx, model, optimizer, scaler, state, epoch, data, epoch_info) -> None:
    """Checkpoint: matcher (+ backbones) as last (and best when improved), the resume state,
    as one generation; then publish its weights and sidecars in the run folder.

    Called on every rank (RNG states are gathered); rank 0 alone writes.
    """
    rng_tensors, rng_meta = rng_state()
    gathered = all_gather(ctx, (rng_tensors, rng_meta))
    if not ctx.main:
        barrier(ctx)
        return
    out = config.out
    staged = generations.stage(out)
    extra = {
        "epoch": state["epoch"],
        "global_step": state["global_step"],
        "data_hash": data.data_hash,
    }
    sidecar = _sidecar(config, ctx, state, data, epoch_info)
    sidecar["backbone_files"] = _write_weights(staged, model, extra)
    write_json(staged / "last.json", sidecar, indent=1)
    _add_best(out, staged, bool(epoch_info and epoch_info["improved"]), sidecar)

    tensors, opt_meta = optimizer_state_split(optimizer)
    for rank, (rt, _) in enumerate(gathered):
        tensors.update({f"rng.{rank}.{k}": v for k, v in rt.items()})
    resume = {
        "global_step": state["global_step"],
        "state": jsonable(state),
        "optimizer": opt_meta,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": [m for _, m in gathered],
        "world_size": ctx.world,
        "args": config.to_json(),
    }
    save_tensors(staged / "resume.safetensors", tensors, {"global_step": state["global_step"]})
    write_json(staged / "resume.json", jsonable(resume))
    info = {"epoch": state["epoch"], "global_step": state["global_step"]}
    generation = generations.commit(out, staged, info)
    generations.publish(generation, out, exclude=RESUME_FILES)
    barrier(ctx)


def resume_run(config, ctx, model, optimizer, scaler, state) -> dict:
    """Load the checkpoint ``config.out``'s pointer names (verified against its contents.json)
    into the model and optimizer; returns the saved counters. With no checkpoint yet (a
    run killed before its first), the run starts from the beginning."""
    out = config.out
    generation = generations.latest(out)
    if generation is None:
        if ctx.main:
            print(
                f"resuming {out}: no checkpoint yet, starting from the beginning", file=sys.stderr
            )
        return dict(state)
    resume = json.loads(generation.file("resume.json").read_text(encoding="utf-8"))
    _check_resume_args(resume["args"], config)
    from omama_train.models.matcher import load_matcher

    loaded = load_matcher(generation.file("last.safetensors"), config.direction)
    model.matcher.load_state_dict(loaded.state_dict(), strict=True)
    for view, backbone in (model.backbones or {}).items():
        name = f"last_backbone_{view}.safetensors"
        backbone.load_state_dict(load_tensors(generation.file(name)))
    tensors = load_tensors(generation.file("resume.safetensors"))
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
        generations.publish(generation, out, exclude=RESUME_FILES)  # a kill may have cut it
        print(
            f"resuming {out} at epoch {restored['epoch'] + 1}, step {restored['global_step']}"
            f" (checkpoint {generation.path.name})",
            file=sys.stderr,
        )
    return restored
