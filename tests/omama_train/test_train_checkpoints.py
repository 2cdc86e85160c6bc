"""Nothing lost: ``omama train`` killed at any instant resumes to the very bytes and metrics of
an uninterrupted run, and a second ``omama train`` on the same folder is refused at once.

Each kill is a subprocess that dies with ``os._exit(137)`` at a named instant
(:mod:`tests.omama_train.faults`), or a real SIGKILL; the resume runs here, and its run folder
is compared with a straight run of the same command: weights byte for byte, metrics.csv,
summary.json and the validation reports value for value (durations excepted).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from omama_train.train.trainer import train
from runtime.errors import OmamaError
from tests.kill_instants import sigkill_after
from tests.omama_train.test_train import REPO, build_data, run_cli, small_config

POINTER = "latest.json"
TIMING = ("epoch_s", "samples_per_s")  # durations: the only values allowed to differ
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "YOLO_OFFLINE": "1"}


def train_args(data: dict, out: Path) -> list[str]:
    """24 pairs, batch 8: 3 steps per epoch, 2 epochs; a checkpoint every 2 steps and at
    each epoch's end (steps 2, 3, 5, 6); dropout so that the RNG states matter."""
    return [
        "--root", str(data["root"]), "--cache", str(data["cache"]), "--out", str(out),
        "--train-pairs", str(data["train_small"]), "--val-pairs", str(data["val_small"]),
        "--val-split", "train", "--epochs", "2", "--batch-size", "8", "--num-candidates", "8",
        "--workers", "0", "--gap-pairs", "6", "--eval-workers", "1", "--dropout", "0.1",
        "--lr", "1e-3", "--checkpoint-every-steps", "2", "--validate-first", "--no-progress",
    ]  # fmt: skip


def start_killable(data: dict, out: Path, *specs: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "tests.omama_train.faults", *specs, "--", *train_args(data, out)]
    return subprocess.Popen(cmd, cwd=REPO, env=ENV, stderr=subprocess.PIPE, text=True)


def run_killed(data: dict, out: Path, spec: str) -> str:
    proc = start_killable(data, out, spec)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 137, f"{spec} was never reached (exit {proc.returncode}): {err}"
    return err


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    return build_data(tmp_path_factory.mktemp("train"))


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("straight") / "run"
    assert run_cli(train_args(data, out)) == 0
    return out


def csv_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return [{k: v for k, v in r.items() if k not in TIMING} for r in csv.DictReader(fh)]


def without_timing(value):
    if isinstance(value, dict):
        return {k: without_timing(v) for k, v in value.items() if k not in (*TIMING, "out")}
    if isinstance(value, list):
        return [without_timing(v) for v in value]
    return value


def assert_same_run(expected: Path, got: Path) -> None:
    """The files users and other commands read hold the same bytes and numbers."""
    for name in ("last.safetensors", "best.safetensors"):
        assert (got / name).read_bytes() == (expected / name).read_bytes(), name
    for name in ("last.json", "best.json"):
        ours, theirs = (without_timing(json.loads((d / name).read_text())) for d in (got, expected))
        for sidecar in (ours, theirs):
            sidecar.pop("saved_at"), sidecar["args"].pop("resume")
        assert ours == theirs, name
    assert csv_rows(got / "metrics.csv") == csv_rows(expected / "metrics.csv")
    summaries = [json.loads((d / "summary.json").read_text()) for d in (got, expected)]
    assert without_timing(summaries[0]) == without_timing(summaries[1])
    val = sorted(p.name for p in (expected / "val").iterdir())
    assert sorted(p.name for p in (got / "val").iterdir()) == val
    for name in val:
        assert (got / "val" / name).read_bytes() == (expected / "val" / name).read_bytes(), name
    final = [checkpoint_folder(d) for d in (got, expected)]  # the same generation number too
    assert final[0].name == final[1].name
    assert sorted(p.name for p in (got / "checkpoints").iterdir()) == [final[0].name, POINTER]
    resume = [(f / "resume.safetensors").read_bytes() for f in final]  # optimizer and RNGs
    assert resume[0] == resume[1]
    leftovers = [p.name for p in got.rglob(".*") if p.name != ".omama.lock"]
    assert leftovers == [], leftovers


INSTANTS = {
    # Today's bug: last.safetensors of the 2nd checkpoint is new, the rest still the 1st's.
    "between-checkpoint-files": r"replace:^last\.safetensors$:2:after",
    "between-staged-files": r"replace:^checkpoints/\.tmp[^/]*/[^/]+$:6:after",
    "after-rename-before-pointer": r"replace:^checkpoints/\d+$:2:after",
    "after-pointer-before-cleanup": r"replace:^checkpoints/latest\.json$:3:after",
    "while-publishing-best": r"replace:^best\.json$:1:before",
    "log-row-written-checkpoint-not": r"replace:^metrics\.csv$:3:after",
    "mid-step-before-any-checkpoint": "step:2",
    "mid-step": "step:5",
    "during-validation": "validate:3",
    "during-the-final-write": r"replace:^summary\.json$:1:before",
}


@pytest.mark.parametrize("instant", list(INSTANTS))
def test_kill_at_an_instant_then_resume_is_bit_identical(data, straight, tmp_path, instant):
    out = tmp_path / "run"
    run_killed(data, out, INSTANTS[instant])
    assert run_cli([*train_args(data, out), "--resume"]) == 0
    assert_same_run(straight, out)


def test_sigkill_at_a_random_instant_then_resume_is_bit_identical(data, straight, tmp_path):
    out = tmp_path / "run"
    sigkill_after(start_killable(data, out), out / "metrics.csv", max_delay_s=2.0)
    assert run_cli([*train_args(data, out), "--resume"]) == 0
    assert_same_run(straight, out)


def test_a_second_train_on_the_same_folder_is_refused_at_once(data, straight, tmp_path, capsys):
    """The first run is held half-way (its epoch-1 row written, a checkpoint behind it); a
    second ``omama train`` on that folder stops at once with one line and writes nothing."""
    out, flag = tmp_path / "run", tmp_path / "paused"
    first = start_killable(data, out, rf"pause:^metrics\.csv$:3:{flag}")
    started = time.monotonic()
    while not flag.exists():
        assert first.poll() is None and time.monotonic() - started < 120
        time.sleep(0.01)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    for extra in (["--resume"], []):
        capsys.readouterr()
        refused_s = time.monotonic()
        assert run_cli([*train_args(data, out), *extra]) == 1
        refused_s = time.monotonic() - refused_s
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and "being written by another omama command" in lines[0], lines
        assert "omama train" in lines[0] and refused_s < 5
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before
    flag.unlink()
    _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert_same_run(straight, out)


def checkpoint_folder(out: Path) -> Path:
    """The generation the pointer names."""
    pointer = json.loads((out / "checkpoints" / POINTER).read_text())
    return out / "checkpoints" / f"{pointer['generation']:06d}"


def test_resume_removes_leftovers_and_refuses_a_damaged_checkpoint(data, tmp_path, caplog):
    out = tmp_path / "run"
    train(small_config(data, out, epochs=1))
    kept = checkpoint_folder(out)
    umask = os.umask(0)
    os.umask(umask)
    assert kept.stat().st_mode & 0o777 == 0o777 & ~umask  # readable as a plain mkdir's
    leftovers = [
        out / "checkpoints" / ".tmp-000009-x1y2z3" / "last.safetensors",  # killed while staging
        out / "checkpoints" / "000009" / "contents.json",  # renamed, never pointed to
        out / ".last.safetensors.ab12cd34.safetensors",  # killed while publishing
    ]
    for path in leftovers:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")
    with caplog.at_level("INFO"):
        train(small_config(data, out, epochs=1, resume=True))
    said = [r.getMessage() for r in caplog.records if "leftover" in r.getMessage()]
    assert len(said) == 1 and "removed 3 leftover(s) of an interrupted run" in said[0], said
    assert not any(p.exists() for p in leftovers) and checkpoint_folder(out) == kept
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [kept.name, POINTER]

    damaged = kept / "resume.safetensors"
    content = damaged.read_bytes()
    damaged.write_bytes(content[:-1] + bytes([content[-1] ^ 1]))  # one bit flipped
    with pytest.raises(OmamaError, match="resume.safetensors differs from its contents.json"):
        train(small_config(data, out, epochs=1, resume=True))


@pytest.mark.slow
def test_ddp_second_run_is_refused_by_rank_0_without_deadlock(data, tmp_path):
    """Under torchrun only rank 0 takes the lock; the refusal reaches every rank."""
    from runtime.locks import folder_lock

    out = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "omama_train.train", *train_args(data, out), "--device", "cpu",
    ]  # fmt: skip
    with folder_lock(out, "the holder"):
        done = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    # One refusal per rank; the two ranks share stderr, so their lines may interleave.
    assert done.stderr.count("error: ") == 2, done.stderr
    assert done.stderr.count("is being written by another omama command") == 2, done.stderr
    assert sorted(p.name for p in out.iterdir()) == [".omama.lock"]
