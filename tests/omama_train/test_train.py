"""``omama train``: it learns, resumes exactly, runs under DDP (gloo, 2 processes), fine-tunes.

Data: synthetic takes (``omama data synth``) -> prepare -> pairs -> candidates -> features.
The candidates are the ground-truth masks of every object annotated in the destination
frame, standing in for FastSAM's (no weights needed); the features come from a one-block
ViT-S/14 with seeded random weights (``omama features --random-init``), which keeps the
colour and texture of the synthetic objects, so the matcher can learn on top of it.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from omama_train.features.build import build_cache
from omama_train.models.backbones import get_spec
from omama_train.models.matcher import OMaMaMatcher, load_matcher, matcher_loss, save_matcher
from omama_train.train import generations
from omama_train.train.cli import register
from omama_train.train.config import TrainConfig
from omama_train.train.model import build_train_model, load_init, masked_loss, tie_backbones
from omama_train.train.trainer import cosine_lr, train
from runtime import rle
from runtime.candidates import load_frame_candidates
from runtime.clikit import new_app, run_app
from runtime.egoexo import ProcessedRoot, read_pairs, write_pairs
from runtime.errors import OmamaError
from runtime.metrics import iou, resize_nearest
from tests.omama_train.test_dataset import build_root

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[2]
TINY_VIT = dataclasses.replace(get_spec("dinov2_vits14_reg"), timm_overrides={"depth": 1})


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    return build_data(tmp_path_factory.mktemp("train"))


def build_data(base: Path) -> dict:
    """10 synthetic takes (6 train, 2 val, 2 test), their candidates and a feature cache."""
    root = build_root(base, 10, 9, 3)
    index = ProcessedRoot(root)
    files = [index.pairs_path(s, "exo2ego") for s in ("train", "val", "test")]
    cache = base / "cache"
    build_cache(root, cache, files, TINY_VIT, random_init=True, device="cpu", progress=False)
    # Small pairs files for the runs that test mechanics rather than learning.
    train_pairs = read_pairs(files[0])
    small = {}
    for name, pairs in (("train_small", train_pairs[::5][:24]), ("val_small", train_pairs[1::9])):
        small[name] = base / f"{name}.json"
        write_pairs(small[name], pairs, root)
    return {"root": root, "cache": cache, **small}


def small_config(data: dict, out: Path, **kw) -> TrainConfig:
    options = dict(
        root=data["root"],
        out=out,
        cache=data["cache"],
        train_pairs=data["train_small"],
        val_pairs=data["val_small"],
        val_split="train",
        epochs=2,
        batch_size=8,
        num_candidates=8,
        workers=0,
        gap_pairs=6,
        eval_workers=1,
        progress=False,
    )
    options.update(kw)
    return TrainConfig(**options)


def chance_iou(root: Path, split: str, direction: str, size_hw: tuple[int, int]) -> float:
    """Expected IoU of picking a uniformly random candidate, over the visible observations
    (the official metric's population), with the GT resized to the prediction size."""
    index = ProcessedRoot(root)
    values = []
    for pair in read_pairs(index.pairs_path(split, direction)):
        dst = pair.dst_cam(direction)
        gt_rle = index.mask_rle(pair.take, pair.obj, dst, pair.frame)
        if gt_rle is None:
            continue
        gt = resize_nearest(rle.decode(gt_rle), size_hw)
        cands = load_frame_candidates(root, split, direction, pair.take, dst, pair.frame, size_hw)
        values.append(np.mean([iou(m, gt) for m in cands.masks]) if len(cands) else 0.0)
    return float(np.mean(values))


def test_cosine_schedule_and_masked_loss():
    assert cosine_lr(8e-5, 1e-6, 0, 100) == pytest.approx(8e-5)
    assert cosine_lr(8e-5, 1e-6, 99, 100) == pytest.approx(1e-6)
    assert cosine_lr(8e-5, 1e-6, 500, 100) == pytest.approx(1e-6)
    lrs = [cosine_lr(1.0, 0.0, s, 50) for s in range(50)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))
    assert lrs[24] == pytest.approx(0.5, abs=0.04)

    sim = torch.tensor([[0.3, 0.9, -0.2, 0.5], [0.1, 0.2, 0.0, 0.0]])
    valid = torch.tensor([[True, True, True, False], [True, False, False, False]])
    positive, visible = torch.tensor([1, 0]), torch.tensor([1.0, 0.0])
    loss = masked_loss(sim, valid, positive, visible, 0.07)
    expected = matcher_loss(sim[:1, :3], positive[:1], visible[:1]) / 2  # batch mean of 2
    torch.testing.assert_close(loss, expected)
    nothing_valid = torch.zeros(1, 3, dtype=torch.bool)
    empty = masked_loss(
        torch.zeros(1, 3), nothing_valid, torch.tensor([0]), torch.tensor([0.0]), 0.07
    )
    assert torch.isfinite(empty) and float(empty) == 0.0


@pytest.mark.slow
def test_matcher_learns_beyond_chance(data, tmp_path):
    """Train on 6 synthetic takes; validate on the 2 held-out test takes (official IoU)."""
    config = TrainConfig(
        root=data["root"],
        out=tmp_path / "run",
        cache=data["cache"],
        val_split="test",
        epochs=3,
        batch_size=8,
        num_candidates=8,
        lr=1e-4,
        workers=0,
        gap_pairs=32,
        validate_first=True,
        eval_workers=1,
        progress=False,
    )
    summary = train(config)
    chance = chance_iou(data["root"], "test", "exo2ego", (224, 224))
    start, *epochs = summary["history"]
    best = summary["best_val_iou"]
    print(
        f"chance IoU {chance:.3f}; val IoU {[round(h['val_iou'], 3) for h in summary['history']]}"
        f"; train IoU {[round(h['train_iou'], 3) for h in summary['history']]}"
    )
    assert start["epoch"] == 0 and start["train_loss"] is None
    assert 0.1 < chance < 0.5
    assert best >= chance + 0.15  # held-out takes: clearly above picking at random
    assert best > start["val_iou"]  # and better than the untrained matcher
    assert epochs[-1]["train_iou"] >= start["train_iou"] + 0.2
    assert epochs[-1]["train_loss"] < 0.7 * epochs[0]["train_loss"]
    assert epochs[-1]["train_acc"] > 0.8


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def state_of(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def assert_same_weights(a: Path, b: Path) -> None:
    sa, sb = state_of(a), state_of(b)
    assert sa.keys() == sb.keys()
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=0, atol=1e-7, msg=key)


def run_cli(args: list[str]) -> int:
    app = new_app("test")
    register(app)
    return run_app(app, ["train", *args])


def test_cli_run_files_and_exact_resume(data, tmp_path, capsys, monkeypatch):
    import omama_train.train.trainer as trainer_module

    straight = small_config(data, tmp_path / "straight")
    summary = train(straight)
    assert summary["epochs_done"] == 2

    out = tmp_path / "resumed"
    common = [
        "--root", str(data["root"]), "--cache", str(data["cache"]), "--out", str(out),
        "--train-pairs", str(data["train_small"]), "--val-pairs", str(data["val_small"]),
        "--val-split", "train", "--batch-size", "8", "--num-candidates", "8", "--workers", "0",
        "--gap-pairs", "6", "--no-progress",
    ]  # fmt: skip
    original = trainer_module.save_resume

    def stop_after_first_epoch(*args):
        original(*args)
        if args[-1] is not None and args[6] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer_module, "save_resume", stop_after_first_epoch)
    assert run_cli([*common, "--epochs", "2"]) == 130  # interrupted after epoch 1
    assert "epoch 1/2" in capsys.readouterr().err
    monkeypatch.setattr(trainer_module, "save_resume", original)
    assert run_cli([*common, "--epochs", "2"]) == 1  # the folder holds a run already
    assert "--resume" in capsys.readouterr().err
    assert run_cli([*common, "--epochs", "2", "--resume"]) == 0
    captured = capsys.readouterr()
    assert "resuming" in captured.err and "best val IoU" in captured.out

    assert_same_weights(tmp_path / "straight" / "last.safetensors", out / "last.safetensors")
    rows = read_csv(out / "metrics.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"]
    for ours, theirs in zip(rows, read_csv(tmp_path / "straight" / "metrics.csv"), strict=True):
        assert ours["train_loss"] == theirs["train_loss"] and ours["val_iou"] == theirs["val_iou"]
    expected = ["last.safetensors", "best.safetensors", "checkpoints/latest.json"]
    expected += ["summary.json", "val/epoch_001.json", "val/results_best.json"]
    for name in expected:
        assert (out / name).is_file(), name
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) >= 1
    last = json.loads((out / "last.json").read_text())
    assert (
        last["epoch"] == 2 and last["args"]["num_candidates"] == 8 and len(last["data_hash"]) == 64
    )
    assert last["metrics"]["val_iou"] == pytest.approx(float(rows[-1]["val_iou"]))
    best = json.loads((out / "best.json").read_text())
    assert best["best_val_iou"] == max(float(r["val_iou"]) for r in rows)
    model = load_matcher(out / "best.safetensors", "exo2ego")
    assert (model.src_grid, model.dst_grid) == ((9, 16), (16, 16))
    assert model.backbone == "dinov2_vits14_reg"
    assert not list(out.rglob(".*.tmp")) and not list(out.rglob(".*.safetensors"))


def test_mid_epoch_checkpoint_resumes_exactly(data, tmp_path, monkeypatch):
    import omama_train.train.trainer as trainer_module

    straight = tmp_path / "straight"
    train(small_config(data, straight))
    original = trainer_module.save_resume
    calls = {"mid": 0}

    def interrupt_after_mid_epoch_save(*args):
        original(*args)
        if args[-1] is None:  # a mid-epoch checkpoint
            calls["mid"] += 1
            if args[6] == 1:  # in the second epoch
                raise KeyboardInterrupt

    monkeypatch.setattr(trainer_module, "save_resume", interrupt_after_mid_epoch_save)
    out = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        train(small_config(data, out, checkpoint_every_steps=1))
    monkeypatch.setattr(trainer_module, "save_resume", original)
    resume = json.loads((generations.latest(out).file("resume.json")).read_text())
    assert resume["state"]["epoch"] == 1 and resume["state"]["step_in_epoch"] == 1
    train(small_config(data, out, checkpoint_every_steps=1, resume=True))
    assert_same_weights(straight / "last.safetensors", out / "last.safetensors")
    assert [r["epoch"] for r in read_csv(out / "metrics.csv")] == ["1", "2"]


def test_resume_refuses_other_settings_and_missing_state(data, tmp_path):
    with pytest.raises(OmamaError, match="does not exist"):  # a mistyped --out
        train(small_config(data, tmp_path / "typo", resume=True))
    assert not (tmp_path / "typo").exists()
    (tmp_path / "none").mkdir()
    (tmp_path / "none" / "notes.txt").write_text("not a run")
    with pytest.raises(OmamaError, match="no run to continue"):
        train(small_config(data, tmp_path / "none", resume=True))
    out = tmp_path / "run"
    train(small_config(data, out, epochs=1))
    with pytest.raises(OmamaError, match="candidates"):
        train(small_config(data, out, resume=True, num_candidates=4))
    # What decides the weights: a resume with other values would silently give another run
    # (a longer cosine schedule, another learning rate or seed) under the old run's name.
    for change in ({"epochs": 2}, {"lr": 5e-3}, {"seed": 7}, {"dropout": 0.3}):
        name = next(iter(change))
        with pytest.raises(OmamaError, match=f"{name}: "):
            train(small_config(data, out, resume=True, **change))
    with pytest.raises(OmamaError, match="--cache"):
        train(small_config(data, out, cache=None))


def test_resume_of_a_run_killed_while_starting_starts_it(data, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".omama.lock").write_text("")  # all a kill before the first write leaves
    summary = train(small_config(data, out, epochs=1, resume=True))
    assert summary["epochs_done"] == 1


def test_early_stopping_on_validation_iou(data, tmp_path):
    # A learning rate this small leaves the weights (and the validation IoU) unchanged.
    summary = train(small_config(data, tmp_path / "run", epochs=4, lr=1e-12, early_stop_patience=2))
    assert summary["stopped_early"] and summary["epochs_done"] == 3
    assert summary["best_epoch"] == 1 and len(read_csv(tmp_path / "run" / "metrics.csv")) == 3


def test_init_loads_a_matcher_and_refuses_other_grids(tmp_path):
    torch.manual_seed(0)
    trained = OMaMaMatcher("exo2ego", src_grid=(9, 16), dst_grid=(16, 16))
    save_matcher(trained, tmp_path / "m.safetensors")
    fresh = OMaMaMatcher("exo2ego", src_grid=(9, 16), dst_grid=(16, 16))
    load_init(fresh, tmp_path / "m.safetensors")
    for key, value in trained.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value)
    official_size = OMaMaMatcher("exo2ego")
    with pytest.raises(OmamaError, match="token grids"):
        load_init(official_size, tmp_path / "m.safetensors")


def test_backbones_share_weights_and_train_only_when_fine_tuning(data):
    from omama_train.geometry import Geometry
    from omama_train.models.backbones import build_backbone

    torch.manual_seed(0)
    ego = build_backbone(TINY_VIT, (28, 28)).train()
    exo = build_backbone(TINY_VIT, (14, 28)).train()
    tie_backbones(ego, exo)
    qkv = "trunk.blocks.0.attn.qkv.weight"
    assert exo.get_parameter(qkv) is ego.get_parameter(qkv)
    assert exo.trunk.pos_embed.shape != ego.trunk.pos_embed.shape
    sizes, grids = {"ego": (28, 28), "exo": (14, 28)}, {"ego": (2, 2), "exo": (1, 2)}
    g = Geometry.from_views("exo2ego", sizes, grids)
    batch = {
        "src_input": torch.randint(0, 255, (2, 14, 28, 3), dtype=torch.uint8),
        "dst_input": torch.randint(0, 255, (2, 28, 28, 3), dtype=torch.uint8),
        "src_bits": torch.full((2, 1, 4), 255, dtype=torch.uint8),
        "src_boxes": torch.tensor([[[0.0, 0.0, 27.0, 13.0]]]).repeat(2, 1, 1),
        "dst_bits": torch.randint(0, 255, (2, 3, 7), dtype=torch.uint8),
        "dst_boxes": torch.tensor([[[0.0, 0.0, 27.0, 27.0]] * 3] * 2),
    }
    for fine_tune in (True, False):
        matcher = OMaMaMatcher("exo2ego", src_grid=(1, 2), dst_grid=(2, 2))
        model = build_train_model(g, matcher, {"ego": ego, "exo": exo}, fine_tune)
        ego.zero_grad(set_to_none=True)
        sim = model(batch)
        assert sim.shape == (2, 3)
        sim.sum().backward()
        grad = ego.get_parameter(qkv).grad
        assert (grad is not None and grad.abs().sum() > 0) == fine_tune
        assert matcher.mlp.mlp[0].weight.grad is not None


def test_finetune_run_writes_backbones(data, tmp_path):
    out = tmp_path / "ft"
    config = small_config(data, out, epochs=1, batch_size=4, cache=None)
    config.finetune_backbone, config.random_init, config.backbone = True, True, TINY_VIT
    config.train_pairs = data["val_small"]
    summary = train(config)
    assert summary["epochs_done"] == 1
    ego = state_of(out / "last_backbone_ego.safetensors")
    exo = state_of(out / "last_backbone_exo.safetensors")
    assert torch.equal(ego["trunk.blocks.0.mlp.fc1.weight"], exo["trunk.blocks.0.mlp.fc1.weight"])
    assert ego["trunk.pos_embed"].shape[1] == 16 * 16 and exo["trunk.pos_embed"].shape[1] == 9 * 16
    last = json.loads((out / "last.json").read_text())
    assert last["args"]["base_lr"] == pytest.approx(8e-6)
    files = sorted(last["backbone_files"])
    assert files == ["last_backbone_ego.safetensors", "last_backbone_exo.safetensors"]
    with pytest.raises(OmamaError, match="--backbone-weights"):
        small_config(data, tmp_path / "x", finetune_backbone=True, cache=None).check()


@pytest.mark.slow
def test_ddp_gloo_two_processes(data, tmp_path):
    """torchrun, 2 CPU processes: ranks agree on the parameters; rank 0 alone writes."""
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "YOLO_OFFLINE": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "omama_train.train", "--root", str(data["root"]), "--cache", str(data["cache"]),
        "--out", str(out), "--train-pairs", str(data["train_small"]),
        "--val-pairs", str(data["val_small"]), "--val-split", "train", "--epochs", "1",
        "--batch-size", "4", "--num-candidates", "8", "--workers", "0", "--gap-pairs", "6",
        "--device", "cpu", "--no-progress",
    ]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("best val IoU") == 1  # one summary line: rank 0's
    last = json.loads((out / "last.json").read_text())
    assert last["world_size"] == 2
    checksums = last["param_checksums"]
    assert len(checksums) == 2 and checksums[0] == pytest.approx(checksums[1], abs=1e-9)
    # 24 pairs on 2 ranks of batch 4: 3 steps of 8 pairs.
    assert last["global_step"] == 3
    assert len(read_csv(out / "metrics.csv")) == 1
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 1
    report = json.loads((out / "val" / "epoch_001.json").read_text())
    assert report["counts"]["observations"] == len(read_pairs(data["val_small"]))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["epochs_done"] == 1
