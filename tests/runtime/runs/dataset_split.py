"""The data of the ``omama-run dataset`` tests: a test split of two synthetic takes, and a
random-init ego2exo export to run beside the shared assets' exo2ego one (``assets.random``).

Each is built once per test process, under pytest's base temporary folder.
"""

from __future__ import annotations

import dataclasses
from functools import cache
from pathlib import Path

from tests.runtime.assets import FASTSAM_IMGSZ, GRIDS


@cache
def build_split(base: Path) -> Path:
    """A processed root whose ``test`` split holds two takes (``omama data synth --small``,
    6 frames annotated every 2: 3 frames per take)."""
    from omama_train.data.prepare import prepare
    from omama_train.data.synth import synthesize

    synth, root = base / "synth", base / "root"
    synthesize(synth, 2, small=True, seed=0, frames=6, annotate_every=2)
    for name in ("relations_train.json", "relations_test.json"):  # synth splits 2 takes 1/1
        prepare(synth / "annotations" / name, synth / "takes", root, split="test", progress=False)
    return root


@cache
def build_ego2exo(base: Path) -> Path:
    """Random-init ego2exo artifacts with the shapes of ``assets.random``."""
    from export.config import ExportConfig
    from export.pipeline import export_artifacts
    from omama_train.models.backbones import BACKBONES

    small = dataclasses.replace(BACKBONES["dinov2_vits14_reg"], timm_overrides={"depth": 1})
    out = base / "art_ego2exo"
    export_artifacts(
        ExportConfig(out_dir=out, backbone=small, random_init=True, random_grids=dict(GRIDS),
                     direction="ego2exo", matcher_input="masks", fastsam_imgsz=FASTSAM_IMGSZ,
                     parity_sets=4, parity_large_n=40),
        echo=lambda line: None,
        progress=False,
    )  # fmt: skip
    return out


def dataset_args(root: Path, artifacts: Path, out: Path, *extra) -> list[str]:
    """``omama-run dataset`` on ONNX Runtime, one thread per model."""
    return [str(a) for a in (
        "dataset", root, "--split", "test", "--artifacts", artifacts, "--out", out,
        "--backend", "onnxruntime", "--device", "cpu", "--threads", "1", *extra,
    )]  # fmt: skip
