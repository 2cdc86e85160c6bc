"""Fixtures of the run tests: the GT of the video run and one ONNX Runtime video run."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.cli import app
from runtime.clikit import run_app
from tests.runtime.assets import EXO
from tests.runtime.runs.cli import video_args


@pytest.fixture(scope="module")
def gt_file(assets, tmp_path_factory) -> Path:
    """The GT of the take's cam01 -> ego observations (what the video run predicts)."""
    from omama_train.data.gt import build_gt
    from omama_train.data.pairs import all_pairs
    from runtime.atomic import write_json
    from runtime.egoexo import ProcessedRoot

    index = ProcessedRoot(assets.root)
    pairs = [p for p in all_pairs(index, [assets.take], "exo2ego") if p.exo_cam == EXO]
    gt, _ = build_gt(index, pairs, "exo2ego")
    path = tmp_path_factory.mktemp("gt") / "gt.json"
    write_json(path, gt)
    return path


@pytest.fixture(scope="module")
def ort_run(assets, gt_file, tmp_path_factory):
    """``omama-run video`` on ONNX Runtime with --overlay and --gt."""
    out = tmp_path_factory.mktemp("video_ort")
    code = run_app(app, [str(a) for a in video_args(assets, out, "onnxruntime", "--overlay",
                                                      "--gt", gt_file)])  # fmt: skip
    assert code == 0
    return out
