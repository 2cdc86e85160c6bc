"""Checkpoints of a run folder, and resuming from them.

Resuming (``--resume``) restores the matcher (and backbones), the AdamW moments, the step
counter that drives the schedule, the GradScaler, every rank's RNG and the position in the
epoch (``--checkpoint-every-steps N`` also checkpoints mid-epoch): an interrupted run ends
with the weights an uninterrupted one would have (tested bit for bit on CPU).

RUN_DIR (``--out``)::

    last.safetensors / last.json        matcher after the latest epoch (+ sidecar: args,
                                        metrics, data hash, step)
    best.safetensors / best.json        matcher of the best validation IoU
    {last,best}_backbone_{ego,exo}.safetensors   with --finetune-backbone
    resume.safetensors / resume.json    optimizer moments and RNG states (tensors), schedule,
                                        scaler, counters (JSON): ``--resume`` continues here
    metrics.csv                         one row per epoch (:mod:`omama_train.train.runlog`)
    tensorboard/                        events (loss and lr per step, metrics per epoch)
    val/epoch_NNN.json                  official report of each epoch (000: --validate-first)
    val/results_{last,best,start}.json  validation predictions (Ego-Exo4D results format)
    summary.json                        the run's history, best epoch and IoU

No pickles are written: tensors go to safetensors, everything else to JSON.
"""

from __future__ import annotations

import logging
import math
import random
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from omama_train.train.distributed import all_gather, barrier
from runtime.atomic import atomic_path, write_json
from runtime.errors import OmamaError
from runtime.info import package_versions
from runtime.jsonrecords import read_json_object

if TYPE_CHECKING:
    import torch

    from omama_train.train.config import TrainConfig

log = logging.getLogger(__name__)
VERSIONED_PACKAGES = ("omama", "torch", "timm", "numpy")


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


def _check_resume_args(saved: dict, config: TrainConfig) -> None:
    fixed = ("direction", "finetune_backbone", "num_candidates", "backbone", "cache", "batch_size")
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


def save_resume(config, ctx, model, optimizer, scaler, state, epoch, data, epoch_info) -> None:
    """Checkpoint: matcher (+ backbones) as last (and best when improved), the resume state.

    Called on every rank (RNG states are gathered); rank 0 alone writes.
    """
    from omama_train.models.matcher import save_matcher

    rng_tensors, rng_meta = rng_state()
    gathered = all_gather(ctx, (rng_tensors, rng_meta))
    if not ctx.main:
        barrier(ctx)
        return
    out = config.out
    metrics = jsonable(epoch_info["row"]) if epoch_info else None
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
        "geometry": jsonable(asdict(data.geometry)),
        "world_size": ctx.world,
        "param_checksums": epoch_info["checksums"] if epoch_info else None,
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": package_versions(VERSIONED_PACKAGES),
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
        "state": jsonable(state),
        "optimizer": opt_meta,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": [m for _, m in gathered],
        "world_size": ctx.world,
        "args": config.to_json(),
    }
    save_tensors(out / "resume.safetensors", tensors, {"global_step": state["global_step"]})
    write_json(out / "resume.json", jsonable(resume))  # written last: marks a full checkpoint
    barrier(ctx)


def resume_run(config, ctx, model, optimizer, scaler, state) -> dict:
    """Load the last checkpoint of ``config.out`` into the model and optimizer; returns the
    saved counters."""
    out = config.out
    resume = read_json_object(out / "resume.json", "resume state")
    last = read_json_object(out / "last.json", "last checkpoint sidecar")
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
