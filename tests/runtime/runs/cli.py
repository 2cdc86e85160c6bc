"""How the run tests call ``omama-run`` and read what it wrote."""

from __future__ import annotations

import json
from pathlib import Path

from runtime.cli import app
from runtime.clikit import run_app
from tests.runtime.assets import EGO, EXO


def omama_run(capsys, *argv) -> tuple[int, str, str]:
    code = run_app(app, [str(a) for a in argv], prog_name="omama-run")
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def error_line(err: str) -> str:
    """The one ``error:`` line (progress bars and log lines aside); never a traceback."""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def video_args(assets, out, backend="onnxruntime", *extra):
    return [
        "video", assets.video(EXO), assets.video(EGO), "--query", assets.annotation,
        "--src-cam", EXO, "--out", out, "--artifacts", assets.weights, "--backend", backend,
        "--device", "cpu", "--threads", "1", "--weights-dir", assets.weights_dir, *extra,
    ]  # fmt: skip


def details(out: Path) -> dict[tuple[int, str], dict]:
    lines = (out / "predictions.jsonl").read_text().splitlines()
    return {(d["frame"], d["object"]): d for d in map(json.loads, lines)}


def predictions(out: Path) -> dict:
    results = json.loads((out / "results.json").read_text())["exo-ego"]["results"]
    return {
        (take, obj, pair, frame): entry
        for take, t in results.items()
        for obj, pairs in t["masks"].items()
        for pair, frames in pairs.items()
        for frame, entry in frames.items()
    }
