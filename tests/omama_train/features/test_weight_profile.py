"""``omama features --random-init --weight-profile outlier``: the cache is computed with the
outlier weights, its meta.json and backbone.safetensors record the profile, and a run with
the other profile is refused on the same cache."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from omama_train.features.cli import register
from omama_train.features.meta import BACKBONE_FILE
from omama_train.features.reader import FeatureCache
from omama_train.features.weights import weights_sha256
from omama_train.models.backbone_checkpoints import read_state_dict
from omama_train.models.backbones import BACKBONES, backbone_file_info, random_backbone_state
from runtime.clikit import new_app, run_app
from tests.omama_train.test_features import small_root

torch.set_num_threads(1)

SMALL = dataclasses.replace(BACKBONES["dinov2_vits14_reg"], timm_overrides={"depth": 2})


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return small_root(tmp_path_factory.mktemp("profile"))


def features(root: Path, out: Path, *extra: str, capsys, monkeypatch) -> tuple[int, str, str]:
    """``omama features`` of the train split (exo2ego) with a 2-block ViT-S, in process."""
    monkeypatch.setitem(BACKBONES, "dinov2_vits14_reg", SMALL)
    app = new_app("test")
    register(app)
    argv = ["features", "--root", str(root), "--out", str(out), "--backbone",
            "dinov2_vits14_reg", "--device", "cpu", "--batch-size", "2", "--io-threads", "1",
            "--no-progress", "--split", "train", "--direction", "exo2ego", *extra]  # fmt: skip
    code = run_app(app, argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_outlier_cache_records_its_profile_and_refuses_the_plain_one(
    root, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "cache"
    run = dict(capsys=capsys, monkeypatch=monkeypatch)
    code, stdout, stderr = features(
        root, out, "--random-init", "--weight-profile", "outlier", "--seed", "2", **run
    )
    assert code == 0, stderr
    assert "(random init, seed 2, outlier profile)" in stdout
    meta = json.loads((out / "meta.json").read_text())
    outlier = random_backbone_state(SMALL, 2, "outlier")
    assert meta["weights"]["profile"] == "outlier" and meta["weights"]["seed"] == 2
    assert meta["weights"]["sha256"] == weights_sha256(outlier)
    # backbone.safetensors holds the outlier weights and says so (omama export reads it).
    info = backbone_file_info(out / BACKBONE_FILE)
    assert info["profile"] == "outlier" and info["seed"] == 2 and info["random_init"] is True
    saved = read_state_dict(out / BACKBONE_FILE)
    assert all(torch.equal(saved[k], outlier[k]) for k in outlier)

    # The plain profile's weights differ: the same cache refuses them, in one line.
    code, _, stderr = features(root, out, "--random-init", "--seed", "2", **run)
    assert code != 0 and len(stderr.strip().splitlines()) == 1
    assert "weights sha256" in stderr and "rebuild it with omama features" in stderr

    plain_out = tmp_path / "plain"
    assert features(root, plain_out, "--random-init", "--seed", "2", **run)[0] == 0
    assert json.loads((plain_out / "meta.json").read_text())["weights"]["profile"] == "plain"
    a, b = FeatureCache(out), FeatureCache(plain_out)
    key = next(iter(a))
    assert not np.array_equal(a.get_array(*key.split("/")), b.get_array(*key.split("/")))


def test_weight_profile_needs_random_init(root, tmp_path, capsys, monkeypatch):
    weights = tmp_path / "w.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in random_backbone_state(SMALL, 0).items()}, weights)
    code, _, stderr = features(
        root, tmp_path / "c", "--backbone-weights", str(weights), "--weight-profile", "outlier",
        capsys=capsys, monkeypatch=monkeypatch,
    )  # fmt: skip
    assert code != 0
    assert stderr.strip() == (
        "error: --weight-profile outlier shapes the random weights of --random-init; a weights "
        "file is what it is: add --random-init or drop --weight-profile"
    )
    code, _, stderr = features(
        root, tmp_path / "d", "--random-init", "--weight-profile", "spiky",
        capsys=capsys, monkeypatch=monkeypatch,
    )  # fmt: skip
    assert code != 0 and "weight profile must be one of plain, outlier" in stderr
