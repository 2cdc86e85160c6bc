"""One small random-init export and one ``omama bench`` run of it, shared by the tests.

The export: ViT-S/14 with one block, exo 126x224 / ego 70x70 px, FastSAM stand-in at
128 px, fp32 only. The run (CPU): 2 pairs x 2 objects, 2 timed passes, one synthetic take
scored with ``--score-root``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from tests.benchmarks.helpers import OBJECTS, PAIRS, REPEATS, run_cli

GRIDS = {"exo": (9, 16), "ego": (5, 5)}  # exo 126x224 px: the small synthetic takes' shape


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory) -> Path:
    import torch

    from export.config import ExportConfig
    from export.pipeline import export_artifacts
    from omama_train.models.backbones import BACKBONES

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("bench_export") / "artifacts"
    small = dataclasses.replace(BACKBONES["dinov2_vits14_reg"], timm_overrides={"depth": 1})
    config = ExportConfig(
        out_dir=out,
        backbone=small,
        random_init=True,
        random_grids=dict(GRIDS),
        direction="exo2ego",
        fastsam_imgsz=128,
        matcher_input="weights",
        parity_sets=3,
        parity_large_n=40,
    )
    export_artifacts(config, echo=lambda line: None, progress=False)
    return out


@pytest.fixture(scope="session")
def score_root(tmp_path_factory) -> Path:
    """One small synthetic take (test split), prepared."""
    from omama_train.data.prepare import prepare
    from omama_train.data.synth import synthesize

    base = tmp_path_factory.mktemp("bench_synth")
    synthesize(base / "raw", 1, small=True, seed=0, frames=4, annotate_every=3)
    root = base / "root"
    prepare(base / "raw/annotations/relations_test.json", base / "raw/takes", root, progress=False)
    return root


@pytest.fixture(scope="session")
def bench(artifacts, score_root, tmp_path_factory):
    """(exit code, stdout, stderr, out folder, report dict or None) of the shared run."""
    out = tmp_path_factory.mktemp("bench_out")
    argv = [
        "bench",
        "--artifacts",
        str(artifacts),
        "--device",
        "cpu",
        "--num-pairs",
        str(PAIRS),
        "--objects-per-frame",
        str(OBJECTS),
        "--repeats",
        str(REPEATS),
        "--warmup",
        "1",
        "--threads",
        "1",
        "--out",
        str(out),
        "--score-root",
        str(score_root),
        "--score-frames",
        "1",
    ]
    code, stdout, stderr = run_cli(argv)
    report = json.loads((out / "report.json").read_text()) if code == 0 else None
    return code, stdout, stderr, out, report
