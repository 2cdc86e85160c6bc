"""One writer per output: while an ``omama data`` command writes its output, a second one
with other inputs stops at once with one error line instead of overwriting it."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from omama_train.cli import build_app
from omama_train.data import gt as gt_module
from omama_train.data import pairs as pairs_module
from omama_train.data import synth as synth_module
from omama_train.data.pairs import make_pairs
from runtime.clikit import run_app
from runtime.egoexo import ProcessedRoot, read_pairs
from tests.omama_train.data.test_pairs import SMALL, write_root


@pytest.fixture()
def root(tmp_path) -> Path:
    return write_root(tmp_path / "root", {"ta": SMALL}, {"train": [], "val": [], "test": ["ta"]})


def held(module, name: str, monkeypatch) -> tuple[threading.Event, threading.Event]:
    """Make ``module.name`` wait, in the thread named "first", until ``release`` is set."""
    started, release = threading.Event(), threading.Event()
    real = getattr(module, name)

    def waiting(*args, **kwargs):
        if threading.current_thread().name == "first":
            started.set()
            release.wait(timeout=60)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, waiting)
    return started, release


def second_is_refused(first_argv, second_argv, module, name, monkeypatch, capsys) -> list[int]:
    """Run ``first_argv`` held inside ``module.name``, then ``second_argv``: the second must
    fail with one line. Returns the first one's exit status."""
    started, release = held(module, name, monkeypatch)
    codes: list[int] = []
    first = threading.Thread(
        target=lambda: codes.append(run_app(build_app(), first_argv)), name="first"
    )
    first.start()
    try:
        assert started.wait(timeout=60)
        capsys.readouterr()
        code = run_app(build_app(), second_argv)
        lines = capsys.readouterr().err.strip().splitlines()
        assert code == 1 and len(lines) == 1, lines
        assert "is being written by another omama command" in lines[0]
        if second_argv[1] == "pairs":  # its folder follows from --root: nothing else to give
            assert lines[0].endswith("wait for it to finish"), lines[0]
        else:
            assert f"give omama data {second_argv[1]} another output" in lines[0]
    finally:
        release.set()
        first.join(timeout=60)
    return codes


def test_pairs(root, monkeypatch, capsys):
    base = ["data", "pairs", "--root", str(root), "--direction", "exo2ego", "--split", "test"]
    codes = second_is_refused(
        base, [*base, "--sample-ratio", "0.5"], pairs_module, "make_pairs", monkeypatch, capsys
    )
    assert codes == [0]
    every = make_pairs(ProcessedRoot(root), "test", "exo2ego").pairs  # the first's: no sampling
    assert read_pairs(root / "dataset_jsons" / "test_exoego_pairs.json") == every


def test_gt(root, tmp_path, monkeypatch, capsys):
    out = tmp_path / "gt.json"
    base = ["data", "gt", "--root", str(root), "--direction", "exo2ego", "--out", str(out)]
    codes = second_is_refused(
        base, [*base, "--cam", "cam02"], gt_module, "build_gt", monkeypatch, capsys
    )
    assert codes == [0]
    masks = json.loads(out.read_text())["annotations"]["ta"]["masks"]["cup"]
    assert "cam01" in masks  # the first run's GT (all cameras), not the second's


def test_synth(tmp_path, monkeypatch, capsys):
    out = tmp_path / "synth"
    base = ["data", "synth", "--out", str(out), "--num-takes", "1", "--small", "--frames", "2"]
    codes = second_is_refused(
        base, [*base, "--seed", "1"], synth_module, "synthesize", monkeypatch, capsys
    )
    assert codes == [0]
    assert json.loads((out / "synth_meta.json").read_text())["recipe"]["seed"] == 0
