"""The training loop: one run's model, optimizer, data and resumable counters.

AdamW, per-step cosine schedule from the learning rate to ``--min-lr``. Defaults are the
reference's: lr 8e-5 (8e-6 with ``--finetune-backbone``), 32 masks, temperature 0.07,
batch 24, 3 epochs, seed 42. Under torchrun the pairs are sharded by a
``DistributedSampler``, the training metrics averaged over ranks, and rank 0 alone writes
checkpoints, CSV, TensorBoard events and the console summary. Validation after every epoch
(:mod:`omama_train.train.validate`); ``--validate-first`` scores the starting weights too
(an epoch-0 row: with ``--init official.pt`` the baseline and the fine-tuned matcher come
from one command). Guard rails: ``--early-stop-patience``, ``--weight-decay``,
``--dropout``, ``--grad-clip``.
"""

from __future__ import annotations

import logging
import math
import os
import random
import sys
import time

from omama_train.train.checkpoint import jsonable, resume_run, save_resume
from omama_train.train.config import TrainConfig
from omama_train.train.data import load_run_data, make_sampler
from omama_train.train.distributed import Distributed, all_gather, setup_distributed, sum_across
from omama_train.train.model import MASKED_SIMILARITY, build_models, masked_loss
from omama_train.train.runfolder import run_folder, trim_val_reports
from omama_train.train.runlog import RunLog, epoch_line, metrics_row, progress_bar
from omama_train.train.validate import score_epoch
from runtime.atomic import write_json
from runtime.errors import OmamaError

log = logging.getLogger(__name__)


def cosine_lr(base_lr: float, min_lr: float, step: int, total_steps: int) -> float:
    """Learning rate after ``step`` of ``total_steps`` optimizer steps: cosine from
    ``base_lr`` (step 0) to ``min_lr`` (last step), flat at ``min_lr`` beyond."""
    if total_steps <= 1:
        return base_lr
    t = min(max(step, 0), total_steps - 1) / (total_steps - 1)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))


def param_checksum(model) -> float:
    """Sum of all parameters in float64: equal on every rank when DDP keeps them in sync."""
    import torch

    with torch.no_grad():
        return float(sum(p.detach().double().sum().item() for p in model.parameters()))


def loader_generator(seed: int, epoch: int):
    """The data loader's own generator: it seeds the workers without drawing from the global
    torch RNG (which a new loader iterator would otherwise advance, so a run resumed
    mid-epoch would draw other dropout masks than an uninterrupted one)."""
    import torch

    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


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


class Trainer:
    """One training run: model, optimizer, data, counters (the resumable ``state``)."""

    def __init__(self, config: TrainConfig, ctx: Distributed) -> None:
        import torch
        from torch.nn.parallel import DistributedDataParallel

        from omama_train.dataset import TrainingPairs, ValidationFrames

        self.config, self.ctx, self.out = config, ctx, config.out
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
            data.source,
            n=config.num_candidates,
            seed=config.seed,
        )
        self.val_set = ValidationFrames(
            config.root, config.val_split, config.direction, data.val_pairs, g, data.source
        )
        self.gap_set = ValidationFrames(
            config.root,
            config.train_split,
            config.direction,
            data.gap_pairs,
            g,
            data.source,
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
            "history": [],  # metrics rows of the epochs done (metrics.csv, summary.json)
        }
        if config.resume:
            self.state = resume_run(
                config, ctx, self.model, self.optimizer, self.scaler, self.state
            )
            trimmed = trim_val_reports(self.out, self.state["epoch"]) if ctx.main else []
            if trimmed:
                log.info(
                    "%s: removed reports of epochs after the checkpoint: %s",
                    self.out,
                    ", ".join(trimmed),
                )
        self.ddp = self.model
        if ctx.active:
            ids = [ctx.device.index] if ctx.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.model, device_ids=ids)
        done = self.state["global_step"]
        self.run_log = RunLog(self.out, ctx.main, self.history, done + 1 if done else 0)

    @property
    def history(self) -> list[dict]:
        return self.state["history"]

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
            generator=loader_generator(config.seed, epoch),
        )
        started = time.perf_counter()
        seen = 0
        self.model.train()
        bar = progress_bar(config, ctx, epoch, self.steps_per_epoch, state["step_in_epoch"])
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
                config.checkpoint_every_steps
                and state["step_in_epoch"] % config.checkpoint_every_steps == 0
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
        loss_sum, acc_sum, count, visible = sum_across(ctx, totals)
        results, val, train_iou = self.score()
        val_iou = val.get("iou")
        improved = val_iou is not None and (
            state["best_iou"] is None or val_iou > state["best_iou"]
        )
        if improved:
            state.update(best_iou=val_iou, best_epoch=epoch + 1, bad_epochs=0)
        else:
            state["bad_epochs"] += 1
        checksums = all_gather(ctx, param_checksum(self.model))
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
        return epoch_line(row, self.config.epochs, improved, len(self.data.gap_pairs))

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
            write_json(self.out / "summary.json", jsonable(summary), indent=1)
        return summary


def train(config: TrainConfig) -> dict:
    """Run training as configured (see the module docstring); returns a summary (rank 0's
    view, on every rank)."""
    config.check()
    ctx = setup_distributed(config.device)
    try:
        with run_folder(config, ctx):
            _set_deterministic(config.deterministic, config.seed)
            return Trainer(config, ctx).run()
    finally:
        if ctx.active:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
