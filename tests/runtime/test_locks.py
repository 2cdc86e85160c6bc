"""One writer per output folder: a second command on a folder another one is writing gets
one clear error at once; a killed writer leaves no stale lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from omama_train.cli import build_app
from runtime.clikit import run_app
from runtime.errors import OmamaError
from runtime.locks import folder_lock

REPO = Path(__file__).resolve().parents[2]
HOLDER = """
import sys, time
from runtime.locks import folder_lock
with folder_lock(sys.argv[1], "the holder"):
    print("locked", flush=True)
    time.sleep(120)
"""


@pytest.fixture()
def held(tmp_path):
    """``tmp_path / "out"`` locked by another process (killed with -9 afterwards)."""
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "locked"
    yield out, holder
    holder.kill()
    holder.wait()


def test_a_second_writer_is_refused_and_a_killed_one_leaves_no_lock(held):
    out, holder = held
    refused = pytest.raises(OmamaError, match="is being written by another omama command")
    with refused as info, folder_lock(out, "omama-run video"):
        pass
    assert "give omama-run video another output folder" in str(info.value)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    with folder_lock(out, "omama-run video"):  # the kernel released the dead holder's lock
        pass


def test_commands_refuse_a_folder_being_written(held, tmp_path, capsys):
    from runtime.cli import app as omama_run
    from runtime.cli import main as run_main  # noqa: F401  (the omama-run app below)

    out, _ = held
    image = np.zeros((32, 32, 3), np.uint8)
    mask = np.zeros((32, 32), np.uint8)
    mask[8:16, 8:16] = 255
    for name, array in (("src.png", image), ("dst.png", image), ("query.png", mask)):
        cv2.imwrite(str(tmp_path / name), array)
    commands = [
        (omama_run, ["pair", str(tmp_path / "src.png"), str(tmp_path / "dst.png"), "--query",
                     str(tmp_path / "query.png"), "--artifacts", str(tmp_path), "--out", str(out)]),
        (build_app(), ["export", "--random-init", "--out", str(out)]),
    ]  # fmt: skip
    for app, argv in commands:
        capsys.readouterr()
        code = run_app(app, argv)
        lines = capsys.readouterr().err.strip().splitlines()
        assert code == 1 and len(lines) == 1, (argv[0], lines)
        assert "is being written by another omama command" in lines[0]
    assert sorted(p.name for p in out.iterdir()) == [".omama.lock"]  # nothing was written


def test_eval_and_baseline_refuse_an_output_being_written(tmp_path, capsys):
    """omama eval --out/--gallery and omama data baseline --out: one writer per output."""
    from filelock import FileLock

    from runtime.locks import LOCK_NAME

    fixtures = REPO / "tests" / "fixtures" / "eval_casa_gio"
    report, gallery = tmp_path / "m.json", tmp_path / "gallery"
    evaluate = ["eval", "--gt", str(fixtures / "exo2egoGT.json"), "--pred",
                str(fixtures / "predictions_baseline.json"), "--direction", "exo2ego"]  # fmt: skip
    baseline = ["data", "baseline", "--root", str(tmp_path / "root"), "--split", "test",
                "--direction", "exo2ego", "--kind", "random", "--out", str(report)]  # fmt: skip
    gallery.mkdir()
    for argv, lock in (
        ([*evaluate, "--out", str(report)], tmp_path / f".m.json{LOCK_NAME}"),
        ([*evaluate, "--gallery", str(gallery)], gallery / LOCK_NAME),
        (baseline, tmp_path / f".m.json{LOCK_NAME}"),
    ):
        with FileLock(lock, timeout=0):
            code = run_app(build_app(), argv)
        lines = capsys.readouterr().err.strip().splitlines()
        assert code == 1 and len(lines) == 1, lines
        assert "is being written by another omama command" in lines[0]
    assert not report.exists() and list(gallery.iterdir()) == [gallery / LOCK_NAME]
