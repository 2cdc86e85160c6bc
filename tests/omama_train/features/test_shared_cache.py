"""Runs meeting on one ``omama features`` cache: with the same settings two runs share it
(the second waits for the first and skips what it cached), with other settings the second
is refused in one line, whichever run got there first, and the cache stays the first one's;
a run after a killed one clears what that one left half written.

Data: two small synthetic takes (12 images: 4 ego 224x224, 8 exo 126x224); the CLI runs
cache the train split's (6).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from omama_train.features import build as build_module
from omama_train.features.build import build_cache
from omama_train.features.images import resolve_pairs_files, unique_images
from omama_train.features.meta import BACKBONE_FILE
from omama_train.features.reader import FeatureCache
from omama_train.models.backbones import BACKBONES
from runtime.egoexo import pairs_path, read_pairs
from runtime.errors import OmamaError
from runtime.manifest import sha256_file
from tests.omama_train.test_features import small_root

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[3]
# `omama features`; with a gate file, its reads stop after its first chunk until the gate
# exists, so a second run surely starts while this one is writing.
GATED_CLI = """
import sys, time
from pathlib import Path
from omama_train.features import writer
read, gate, reads = writer.read_rgb, sys.argv[1], []
def gated_read(path):
    reads.append(path)
    deadline = time.monotonic() + 120
    while gate and len(reads) > 2 and not Path(gate).exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return read(path)
writer.read_rgb = gated_read
import torch
torch.set_num_threads(1)
from omama_train.cli import build_app
from runtime.clikit import run_app
sys.exit(run_app(build_app(), sys.argv[2:]))
"""


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return small_root(tmp_path_factory.mktemp("shared"))


def maps(path: Path) -> dict[str, np.ndarray]:
    cache = FeatureCache(path)
    return {key: np.array(cache.get_array(*key.split("/"))) for key in cache}


def index_parts(path: Path) -> dict[str, list[str]]:
    """Chunk name -> its keys, over every index part."""
    return {
        p.stem: json.loads(p.read_text())["keys"] for p in sorted((path / "chunks").glob("*.json"))
    }


def start(root: Path, out: Path, log: Path, gate: Path | None = None) -> subprocess.Popen:
    """``omama features`` in another process, its stdout in ``log.out``, stderr in ``log.err``."""
    argv = ["features", "--root", str(root), "--out", str(out), "--backbone",
            "dinov2_vits14_reg", "--random-init", "--device", "cpu", "--batch-size", "1",
            "--flush-every", "2", "--io-threads", "1", "--no-progress", "--split", "train",
            "--direction", "exo2ego"]  # fmt: skip
    with open(log.with_suffix(".out"), "w") as stdout, open(log.with_suffix(".err"), "w") as err:
        return subprocess.Popen(
            [sys.executable, "-c", GATED_CLI, str(gate or ""), *argv],
            cwd=REPO,
            stdout=stdout,
            stderr=err,
        )


def wait_for(condition, what: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_two_runs_with_the_same_settings_share_the_cache(root, tmp_path):
    out, gate = tmp_path / "cache", tmp_path / "gate"
    first = start(root, out, tmp_path / "first", gate)
    wait_for(lambda: list((out / "chunks").glob("*.json")), "the first run wrote no chunk")
    second = start(root, out, tmp_path / "second")  # the first one holds after one chunk
    waiting = tmp_path / "second.err"
    wait_for(lambda: second.poll() is not None or "waiting" in waiting.read_text(),
             "the second run neither finished nor said it waits")  # fmt: skip
    gate.touch()
    n = len(unique_images(read_pairs(pairs_path(root, "train", "exo2ego"))))
    for run in (first, second):
        assert run.wait(timeout=300) == 0, (
            tmp_path / "first.err"
        ).read_text() + waiting.read_text()
    out_first, out_second = ((tmp_path / f"{n}.out").read_text() for n in ("first", "second"))
    assert f"{n} computed, 0 already cached" in out_first
    assert f"0 computed, {n} already cached" in out_second

    # The cache is a single run's: each image once, the same chunks, the same maps.
    parts = index_parts(out)
    keys = [k for chunk in parts.values() for k in chunk]
    assert len(keys) == len(set(keys)) == n and FeatureCache(out).duplicates == 0
    single = tmp_path / "single"
    files = [pairs_path(root, "train", "exo2ego")]
    build_cache(root, single, files, "dinov2_vits14_reg", random_init=True,
                device="cpu", batch_size=1, flush_every=2, progress=False)  # fmt: skip
    assert parts == index_parts(single)
    assert sha256_file(out / BACKBONE_FILE) == sha256_file(single / BACKBONE_FILE)
    shared, alone = maps(out), maps(single)
    for key in alone:
        np.testing.assert_allclose(shared[key], alone[key], rtol=2e-3, atol=2e-3)
    assert not [p.name for p in out.rglob(".*") if not p.name.endswith(".lock")]


def test_a_run_with_other_weights_is_refused_whichever_starts_first(root, tmp_path, monkeypatch):
    """Run A (seed 0) is held just after writing backbone.safetensors, before meta.json;
    run B (seed 1) starts then. B must be refused for the cache's weights, not told to delete
    A's file, and A's cache must stay whole and consistent."""
    out, files = tmp_path / "cache", resolve_pairs_files(root)
    a_wrote, b_done = threading.Event(), threading.Event()
    write_backbone_file = build_module.write_backbone_file

    def held_after_writing(folder, weights):
        saved = write_backbone_file(folder, weights)
        if weights.seed == 0:
            a_wrote.set()
            b_done.wait(timeout=2)  # B may be waiting on A: then A goes on after 2 s
        return saved

    monkeypatch.setattr(build_module, "write_backbone_file", held_after_writing)
    errors: dict[str, str] = {}

    def run(name: str, seed: int) -> None:
        try:
            build_cache(root, out, files, "dinov2_vits14_reg", random_init=True, seed=seed,
                        device="cpu", batch_size=2, limit=2, progress=False)  # fmt: skip
        except OmamaError as exc:
            errors[name] = str(exc)
        finally:
            if name == "b":
                b_done.set()

    a = threading.Thread(target=run, args=("a", 0))
    a.start()
    assert a_wrote.wait(timeout=120)
    b = threading.Thread(target=run, args=("b", 1))
    b.start()
    b.join(timeout=120)
    a.join(timeout=120)
    assert "a" not in errors, errors
    assert "was built with weights sha256" in errors["b"] and "--out elsewhere" in errors["b"]
    assert "delete it" not in errors["b"]
    cache = FeatureCache(out)
    assert len(cache) == 2
    assert cache.meta["weights"]["seed"] == 0
    assert cache.meta["weights"]["saved_file"]["sha256"] == sha256_file(out / BACKBONE_FILE)


def test_a_resumed_run_removes_what_a_killed_one_left_half_written(root, tmp_path):
    """A kill during an atomic write leaves its temporary (``.NAME.XXXX.SUFFIX``); the next
    run removes those of meta.json, backbone.safetensors and its report (chunk temporaries
    were already removed), so the cache ends up file for file as one run writes it."""
    small = dataclasses.replace(BACKBONES["dinov2_vits14_reg"], timm_overrides={"depth": 2})
    files = [pairs_path(root, "train", "exo2ego")]
    settings = {"random_init": True, "device": "cpu", "batch_size": 2, "progress": False}
    out = tmp_path / "cache"
    build_cache(root, out, files, small, limit=2, **settings)
    leftovers = [".meta.json.k1ll3d.json", ".backbone.safetensors.x7y8.safetensors",
                 ".report.json.q1w2.json"]  # fmt: skip
    for name in leftovers:
        (out / name).write_bytes(b"half written")
    report = build_cache(root, out, files, small, **settings)
    assert report["computed"] > 0
    assert not [p.name for p in out.rglob(".*") if not p.name.endswith(".lock")]
