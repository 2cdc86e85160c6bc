"""``omama-run take``: the observations of a processed take, precomputed candidates from
``--candidates``, scoring with ``--score``, refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

from runtime import rle  # noqa: E402
from runtime.candidates import Candidates, write_candidates  # noqa: E402
from runtime.egoexo import candidate_paths, take_observations  # noqa: E402
from tests.runtime.assets import EGO  # noqa: E402
from tests.runtime.runs.cli import error_line, omama_run  # noqa: E402


def test_take_observations_follow_the_pairs_rule(assets):
    from omama_train.data.pairs import all_pairs
    from runtime.egoexo import ProcessedRoot

    index = ProcessedRoot(assets.root)
    got = take_observations(index, assets.take, "exo2ego")
    want = all_pairs(index, [assets.take], "exo2ego")
    assert [(o.obj, o.src_cam, o.frame) for o in got] == [(p.obj, p.exo_cam, p.frame) for p in want]
    assert all(o.dst_cam == EGO for o in got)


def test_take_uses_precomputed_candidates_and_prints_metrics(assets, tmp_path, capsys):
    from runtime.egoexo import ProcessedRoot
    from runtime.results import load_gt, validate_results

    index = ProcessedRoot(assets.root)
    gt = [rle.decode(index.mask_rle(assets.take, o, EGO, 0)) for o in index.objects(assets.take)
          if index.mask_rle(assets.take, o, EGO, 0) is not None]  # fmt: skip
    # processed ego frames are 224x224; candidates of frame 0 at that size
    cands = Candidates.from_masks(
        np.stack([m[::2, ::2] for m in gt])  # the GT is at the video's 448x448
    )
    write_candidates(*candidate_paths(assets.root, "test", "exo2ego", assets.take, EGO, 0), cands)
    out = tmp_path / "take"
    try:
        code, text, err = omama_run(capsys, "take", assets.take_dir, "--score", "--out", out,
                                    "--candidates", assets.root / "Masks_TEST_EXO2EGO",
                                    "--artifacts", assets.weights, "--backend", "onnxruntime",
                                    "--device", "cpu", "--threads", "1")  # fmt: skip
        # without --candidates every destination frame gets FastSAM
        code_fastsam, _, err_fastsam = omama_run(
            capsys, "take", assets.take_dir, "--max-frames", "1", "--out", tmp_path / "fastsam",
            "--artifacts", assets.weights, "--backend", "onnxruntime", "--device", "cpu",
            "--threads", "1",
        )  # fmt: skip
    finally:
        import shutil

        shutil.rmtree(assets.root / "Masks_TEST_EXO2EGO")
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["precomputed_frames"] == 1 and summary["fastsam_frames"] == 2
    assert code_fastsam == 0, err_fastsam
    fastsam_only = json.loads((tmp_path / "fastsam" / "summary.json").read_text())
    assert (fastsam_only["precomputed_frames"], fastsam_only["fastsam_frames"]) == (0, 1)
    n = len(take_observations(index, assets.take, "exo2ego"))
    assert n == 4 * 2 * 3  # objects x exo cams x annotated frames
    assert summary["observations"] == summary["observations_total"] == n
    assert "omama eval: exo2ego, protocol omama" in text and "balanced_acc" in text
    gt_annotations = load_gt(out / "gt.json")
    results = json.loads((out / "results.json").read_text())["exo-ego"]["results"]
    assert validate_results(gt_annotations, results, "exo2ego") == n
    sizes = {tuple(e["pred_mask"]["size"]) for _, _, _, e in _walk(results)}
    assert sizes == {(70, 70)}  # the model's destination size, as O-MaMa writes them
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["counts"]["observations"] == n


def _walk(results: dict):
    for take, t in results.items():
        for obj, pairs in t["masks"].items():
            for pair, frames in pairs.items():
                for frame, entry in frames.items():
                    yield take, obj, (pair, frame), entry


def test_take_refuses_a_folder_that_is_not_a_processed_take(assets, tmp_path, capsys):
    code, _, err = omama_run(capsys, "take", tmp_path, "--artifacts", assets.weights,
                             "--backend", "onnxruntime")  # fmt: skip
    assert code == 1 and "is not a processed take" in error_line(err)


def test_take_without_fastsam_or_candidates_fails_before_any_frame(assets, tmp_path):
    from types import SimpleNamespace

    from runtime.errors import OmamaError
    from runtime.runs.take import run_take

    # Artifacts exported with --no-fastsam-export: only their FastSAM flag and root matter here.
    no_fastsam = SimpleNamespace(has_fastsam=False, manifest=SimpleNamespace(root=tmp_path))
    with pytest.raises(OmamaError, match="hold no FastSAM model.*--candidates"):
        run_take(no_fastsam, assets.take_dir, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
