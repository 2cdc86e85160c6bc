"""Ego->exo end to end, as a user makes the second half of a challenge submission (O-MaMa
released only exo->ego weights): ``omama data pairs / masks --direction ego2exo`` -> feature
cache -> ``omama train --direction ego2exo --init`` an exo->ego matcher -> ``omama export`` ->
``omama-run dataset`` -> ``omama submit`` with the exo->ego results file -> ``omama eval`` of
the submission.

Small shapes: 3 synthetic takes (1 train, 1 val, 1 test) of 6 frames annotated every 3, a
one-block ViT-S/14 with seeded random weights, one epoch.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from omama_train.cli import build_app
from omama_train.features.build import build_cache
from omama_train.models.backbones import get_spec
from omama_train.models.matcher import OMaMaMatcher, save_matcher
from omama_train.train.model import load_init
from runtime.cli import app as run_app_cli
from runtime.clikit import run_app
from runtime.egoexo import ProcessedRoot
from runtime.errors import OmamaError
from runtime.metrics import egoexo4d_size
from tests.omama_train.test_dataset import build_root

torch.set_num_threads(1)
TINY_VIT = dataclasses.replace(get_spec("dinov2_vits14_reg"), timm_overrides={"depth": 1})
KEYS = {"exo2ego": "exo-ego", "ego2exo": "ego-exo"}


def omama(*args) -> None:
    assert run_app(build_app(), [str(a) for a in args]) == 0, args


def omama_run(*args) -> None:
    assert run_app(run_app_cli, [str(a) for a in args]) == 0, args


def dataset_run(root: Path, artifacts: Path, direction: str, out: Path) -> dict:
    """``omama-run dataset`` of the test split (default --mask-size: submission)."""
    omama_run(
        "dataset", root, "--split", "test", "--direction", direction, "--artifacts", artifacts,
        "--candidates", root / f"Masks_TEST_{direction.upper()}", "--backend", "onnxruntime",
        "--device", "cpu", "--threads", "1", "--out", out,
    )  # fmt: skip
    return json.loads((out / "metrics.json").read_text())


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("ego2exo")
    root = build_root(base, 3, 6, 3, directions=())
    for direction in ("ego2exo", "exo2ego"):
        omama("data", "pairs", "--root", root, "--direction", direction, "--seed", "0")
        for split in ("train", "val", "test"):
            omama("data", "masks", "--root", root, "--split", split, "--direction", direction,
                  "--from-annotations", "--no-progress")  # fmt: skip
    index = ProcessedRoot(root)
    pairs = [index.pairs_path(s, d) for s in ("train", "val", "test") for d in KEYS]
    cache = base / "cache"
    build_cache(root, cache, pairs, TINY_VIT, random_init=True, device="cpu", progress=False)
    # The exo->ego matcher (O-MaMa's released direction), then ego->exo started from it.
    for direction, init in (("exo2ego", []), ("ego2exo", ["--init", base / "run_exo2ego" /
                                                          "best.safetensors"])):  # fmt: skip
        omama(
            "train", "--root", root, "--cache", cache, "--out", base / f"run_{direction}",
            "--direction", direction, "--epochs", "1", "--batch-size", "8", "--num-candidates",
            "8", "--workers", "0", "--gap-pairs", "4", "--eval-workers", "1", "--no-progress",
            *init,
        )  # fmt: skip
    out = {"root": root, "base": base}
    for direction in KEYS:
        artifacts = base / f"art_{direction}"
        omama("export", "--matcher", base / f"run_{direction}" / "best.safetensors",
              "--backbone-weights", cache / "backbone.safetensors", "--no-fastsam-export",
              "--parity-sets", "4", "--out", artifacts)  # fmt: skip
        out[f"metrics_{direction}"] = dataset_run(root, artifacts, direction, base / direction)
        omama("data", "gt", "--root", root, "--split", "test", "--direction", direction,
              "--out", base / f"gt_{direction}.json")  # fmt: skip
    return out


def test_ego2exo_export_is_the_trained_matcher_in_that_direction(chain):
    manifest = json.loads((chain["base"] / "art_ego2exo" / "manifest.json").read_text())
    assert manifest["direction"] == "ego2exo" and not manifest["random_init"]
    assert manifest["matcher"]["src_grid"] == [16, 16]  # ego source, exo destination
    assert manifest["matcher"]["dst_grid"] == [9, 16]
    assert (manifest["views"]["src"]["kind"], manifest["views"]["dst"]["kind"]) == ("ego", "exo")


def test_ego2exo_results_and_an_exo2ego_file_make_a_submission_the_rules_accept(
    chain, tmp_path, capsys
):
    base = chain["base"]
    submission = tmp_path / "submission.json"
    capsys.readouterr()
    omama(
        "submit", "--exo2ego", base / "exo2ego" / "results.json",
        "--ego2exo", base / "ego2exo" / "results.json", "--gt-exo2ego", base / "gt_exo2ego.json",
        "--gt-ego2exo", base / "gt_ego2exo.json", "--out", submission,
    )  # fmt: skip
    stdout = capsys.readouterr().out
    data = json.loads(submission.read_text())
    assert sorted(data) == ["ego-exo", "exo-ego"]
    gt = json.loads((base / "gt_ego2exo.json").read_text())["annotations"]
    results = data["ego-exo"]["results"]
    assert sorted(results) == sorted(gt)
    scored = 0
    for take, gt_take in gt.items():
        for obj, cams in gt_take["masks"].items():
            ego = [c for c in cams if "aria" in c]
            for exo in (c for c in cams if "aria" not in c):
                frames = results[take]["masks"][obj][f"{ego[0]}_{exo}"]
                assert sorted(frames, key=int) == sorted(cams[ego[0]], key=int)
                for frame, entry in frames.items():
                    if frame in cams[exo]:  # the exo frame's size under the 480 rule
                        expected = egoexo4d_size(tuple(cams[exo][frame]["size"]))
                        assert tuple(entry["pred_mask"]["size"]) == expected
                    scored += int(frame) in gt_take["annotated_frames"][obj][exo]
    assert scored > 0 and f"({scored} scored by the evaluator)" in stdout

    # omama eval of the submission under the challenge's protocol gives each direction's
    # omama-run dataset numbers (its submission-size masks are scored under that protocol).
    assert run_app(build_app(), [str(a) for a in (
        "eval", "--pred", submission, "--gt-exo2ego", base / "gt_exo2ego.json",
        "--gt-ego2exo", base / "gt_ego2exo.json", "--protocol", "egoexo4d",
        "--out", tmp_path / "metrics.json",
    )]) == 0  # fmt: skip
    reports = json.loads((tmp_path / "metrics.json").read_text())
    for direction in KEYS:
        ours = reports[direction]["aggregated_metrics"]
        assert ours == pytest.approx(chain[f"metrics_{direction}"]["aggregated_metrics"])


def test_an_exo2ego_matcher_initialises_ego2exo_with_each_view_table_kept(tmp_path):
    torch.manual_seed(0)
    exo2ego = OMaMaMatcher("exo2ego", src_grid=(9, 16), dst_grid=(16, 16))
    save_matcher(exo2ego, tmp_path / "exo2ego.safetensors")
    ego2exo = OMaMaMatcher("ego2exo", src_grid=(16, 16), dst_grid=(9, 16))
    load_init(ego2exo, tmp_path / "exo2ego.safetensors")
    ours, theirs = ego2exo.state_dict(), exo2ego.state_dict()
    # T: destination tokens, Q: source tokens; the ego table stays the ego table.
    assert torch.equal(ours["pos_embed_Q"], theirs["pos_embed_T"])  # ego 16x16
    assert torch.equal(ours["pos_embed_T"], theirs["pos_embed_Q"])  # exo 9x16
    for key, value in theirs.items():
        if not key.startswith("pos_embed"):
            assert torch.equal(ours[key], value), key
    other_grids = OMaMaMatcher("ego2exo", src_grid=(9, 16), dst_grid=(16, 16))
    with pytest.raises(OmamaError, match="token grids"):
        load_init(other_grids, tmp_path / "exo2ego.safetensors")
