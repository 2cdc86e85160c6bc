"""``omama-run dataset`` in this process: a test split of two synthetic takes on the random-init
export; the takes' answers are ``omama-run take``'s, ``omama eval`` scores the results; a
run killed after its first take resumes to the same bytes; bad input gets one line.

The Ray executor is tested in ``test_dataset_ray.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")  # the shared assets are exported with torch

from runtime.egoexo import ProcessedRoot, take_observations  # noqa: E402
from tests.runtime.runs.cli import error_line, omama_run  # noqa: E402
from tests.runtime.runs.dataset_split import build_ego2exo, build_split, dataset_args  # noqa: E402

REPO = Path(__file__).resolve().parents[3]
ENV = {**os.environ, "OMAMA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "YOLO_OFFLINE": "1"}


@pytest.fixture(scope="module")
def split_root(tmp_path_factory) -> Path:
    return build_split(tmp_path_factory.getbasetemp() / "dataset_split")


@pytest.fixture(scope="module")
def straight(assets, split_root, tmp_path_factory) -> Path:
    """One uninterrupted in-process run over the split."""
    from runtime.cli import app
    from runtime.clikit import run_app

    out = tmp_path_factory.mktemp("dataset_straight") / "out"
    assert run_app(app, dataset_args(split_root, assets.random, out), prog_name="omama-run") == 0
    return out


def test_dataset_gives_each_take_what_omama_run_take_gives_and_omama_eval_scores_it(
    assets, split_root, straight, tmp_path, capsys
):
    from omama_train.cli import build_app
    from runtime.clikit import run_app
    from runtime.pipeline import Pipeline
    from runtime.runs.take import run_take

    index = ProcessedRoot(split_root)
    takes = sorted(index.takes("test"))
    assert len(takes) == 2
    results = json.loads((straight / "results.json").read_text())["exo-ego"]["results"]
    assert list(results) == takes  # sorted take order
    with Pipeline(assets.random, backend="onnxruntime", device="cpu", threads=1,
                  mask_size="submission") as pipe:  # fmt: skip
        for take in takes:
            run_take(pipe, index.take_dir(take), tmp_path / take, progress=False)
            alone = json.loads((tmp_path / take / "results.json").read_text())["exo-ego"]
            assert json.dumps(alone["results"][take]) == json.dumps(results[take])
            assert (straight / "takes" / f"{take}.exo2ego.json").is_file()
    n = sum(len(take_observations(index, take, "exo2ego")) for take in takes)
    summary = json.loads((straight / "summary.json").read_text())
    counts = summary["directions"]["exo2ego"]
    assert counts["observations"] == counts["observations_total"] == n == 60
    assert counts["frames"] == 6 and counts["takes_failed"] == {} and counts["takes"] == 2
    assert summary["executor"] == "in-process" and summary["frames_this_run"] == 6

    pred, report = straight / "results.json", tmp_path / "eval.json"
    # Masks at the official evaluator's size are scored under its protocol.
    args = ["eval", "--gt", straight / "gt.json", "--pred", pred, "--direction", "exo2ego",
            "--protocol", "egoexo4d", "--out", report, "--workers", "1"]  # fmt: skip
    assert run_app(build_app(), [str(a) for a in args]) == 0
    scored = json.loads(report.read_text())
    metrics = json.loads((straight / "metrics.json").read_text())
    assert metrics["protocol"] == scored["protocol"] == "egoexo4d"
    assert scored["counts"]["observations"] == n
    assert scored["aggregated_metrics"] == metrics["aggregated_metrics"]
    assert (
        counts
        and summary["directions"]["exo2ego"]["aggregated_metrics"]
        == (metrics["aggregated_metrics"])
    )


def test_items_of_one_frame_assemble_to_the_same_bytes(assets, split_root, straight, tmp_path):
    from runtime.runs.dataset import DatasetConfig, run_dataset

    config = DatasetConfig(
        split_root, "test", {"exo2ego": assets.random}, tmp_path, backend="onnxruntime",
        device="cpu", threads=1, frames_per_item=1, progress=False,
    )  # fmt: skip
    summary = run_dataset(config, echo=lambda line: None)
    assert summary["frames_this_run"] == 6
    for name in ("results.json", "gt.json"):
        assert (tmp_path / name).read_bytes() == (straight / name).read_bytes(), name


def _leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.rglob(".*") if p.name != ".omama.lock")


def test_a_rerun_after_a_kill_skips_the_finished_take(assets, split_root, straight, tmp_path,
                                                      capsys):  # fmt: skip
    out = tmp_path / "out"
    args = dataset_args(split_root, assets.random, out)
    # killed right after the first take's part was put in place
    cmd = [sys.executable, "-m", "tests.runtime.runs.faults", "replace:^takes/:1:after", "--",
           *args]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 137, proc.stderr
    assert len(list((out / "takes").glob("*.json"))) == 1 and not (out / "results.json").exists()

    code, text, err = omama_run(capsys, *args)
    assert code == 0, err
    assert "resuming: 1 of 2 take runs already done" in text
    assert "predicted again" not in text
    summary = json.loads((out / "summary.json").read_text())
    assert (
        summary["frames_this_run"] == 3
        and summary["directions"]["exo2ego"]["takes_done_earlier"] == 1
    )
    for name in ("results.json", "gt.json"):
        assert (out / name).read_bytes() == (straight / name).read_bytes(), name
    assert _leftovers(out) == []

    # a damaged part, and a part of other settings, are predicted again
    first, second = sorted((out / "takes").glob("*.json"))
    first.write_text('{"format": "omama-dataset-part/1", "take"')
    part = json.loads(second.read_text())
    part["settings"]["max_frames"] = 1
    second.write_text(json.dumps(part))
    code, text, err = omama_run(capsys, *args)
    assert code == 0, err
    assert "predicted again: 1 (unreadable), 1 (other settings)" in text
    assert (out / "results.json").read_bytes() == (straight / "results.json").read_bytes()


def test_parts_hold_the_engine_auto_resolved_to_and_the_takes_inputs(
    assets, split_root, straight, tmp_path, capsys
):
    root, out = tmp_path / "root", tmp_path / "out"
    shutil.copytree(split_root, root)
    shutil.copytree(straight, out)
    takes = sorted(ProcessedRoot(root).takes("test"))
    part = json.loads((out / "takes" / f"{takes[0]}.exo2ego.json").read_text())
    assert part["settings"]["precision"] == "fp32"  # --precision auto, as resolved here
    # The same engine asked for by name: the parts stand.
    code, text, err = omama_run(capsys, *dataset_args(root, assets.random, out,
                                "--precision", "fp32"))  # fmt: skip
    assert code == 0, err
    assert "resuming: 2 of 2 take runs already done" in text and "predicted again" not in text
    # A re-prepared take (its annotation.json bytes changed): predicted again.
    ann = root / "processed" / takes[1] / "annotation.json"
    ann.write_text(ann.read_text() + "\n")
    code, text, err = omama_run(capsys, *dataset_args(root, assets.random, out))
    assert code == 0, err
    assert "resuming: 1 of 2 take runs already done" in text
    assert "predicted again: 1 (other inputs)" in text
    assert (out / "results.json").read_bytes() == (straight / "results.json").read_bytes()


def test_a_take_failed_in_the_model_exits_1_after_writing_the_rest(
    assets, split_root, straight, tmp_path, capsys, monkeypatch
):
    from runtime.runs.dataset_jobs import ItemPredictor

    takes = sorted(ProcessedRoot(split_root).takes("test"))
    predict = ItemPredictor.predict

    def failing(self, item, images):
        if item.take == takes[0]:
            return {"item": item.to_json(), "error": "the model gave NaN"}
        return predict(self, item, images)

    monkeypatch.setattr(ItemPredictor, "predict", failing)
    out = tmp_path / "out"
    code, text, err = omama_run(capsys, *dataset_args(split_root, assets.random, out))
    assert code == 1
    assert error_line(err) == (
        f"error: 1 take run(s) failed and are not in the results: {takes[0]} (exo2ego): the "
        f"model gave NaN (all in {out / 'summary.json'})"
    )
    results = json.loads((out / "results.json").read_text())["exo-ego"]["results"]
    assert list(results) == [takes[1]] and "1 of 2 takes" in text
    # A take the split lists but that was never prepared stays a reported skip (exit 0).
    root = tmp_path / "root"
    shutil.copytree(split_root, root)
    (root / "split.json").write_text(json.dumps({"test": [*takes, "unprepared"]}))
    monkeypatch.setattr(ItemPredictor, "predict", predict)
    code, text, err = omama_run(capsys, *dataset_args(root, assets.random, tmp_path / "o2"))
    assert code == 0, err
    assert "take unprepared not predicted: not prepared (no annotation.json)" in text


def test_both_directions_write_one_results_file_each(assets, split_root, tmp_path, capsys,
                                                     tmp_path_factory):  # fmt: skip
    from runtime.results import load_gt, validate_results

    ego2exo = build_ego2exo(tmp_path_factory.getbasetemp() / "dataset_ego2exo")
    out = tmp_path / "both"
    code, text, err = omama_run(capsys, *dataset_args(split_root, assets.random, out,
                                "--artifacts", ego2exo, "--direction", "both", "--max-frames",
                                "1"))  # fmt: skip
    assert code == 0, err
    assert not (out / "results.json").exists()
    for direction, key in (("exo2ego", "exo-ego"), ("ego2exo", "ego-exo")):
        results = json.loads((out / f"results_{direction}.json").read_text())
        assert list(results) == [key] and len(results[key]["results"]) == 2
        gt = load_gt(out / f"gt_{direction}.json")
        assert validate_results(gt, results[key]["results"], direction) > 0
        assert (out / f"metrics_{direction}.json").is_file()
        assert len(list((out / "takes").glob(f"*.{direction}.json"))) == 2
        assert f"  {direction}: 2 of 2 takes" in text
        sizes = {tuple(e["pred_mask"]["size"]) for t in results[key]["results"].values()
                 for pairs in t["masks"].values() for frames in pairs.values()
                 for e in frames.values()}  # fmt: skip
        # the submission size of the destination view: ego 448x448, exo 896x504 (WxH)
        assert sizes == ({(480, 480)} if direction == "exo2ego" else {(270, 480)})


def test_bad_input_gets_one_line(assets, split_root, tmp_path, capsys, monkeypatch):
    def refused(*argv) -> str:
        code, _, err = omama_run(capsys, *argv)
        assert code == 1
        return error_line(err)

    out = tmp_path / "out"
    good = dataset_args(split_root, assets.random, out)
    assert "is not a folder" in refused(*dataset_args(tmp_path / "nowhere", assets.random, out))
    assert "split 'val' is not in" in refused(*good, "--split", "val")
    assert "--direction must be exo2ego, ego2exo or both" in refused(*good, "--direction", "up")
    assert "needs ego2exo artifacts" in refused(*good, "--direction", "both")
    assert "needs ego2exo artifacts" in refused(*good, "--direction", "ego2exo")
    assert "add --ray" in refused(*good, "--workers", "2")
    monkeypatch.setitem(sys.modules, "ray", None)  # as without the ray extra
    assert refused(*good, "--ray") == "error: needs Ray: pip install 'omama[ray]'"
    assert not (out / "results.json").exists()


def test_dataset_writes_masks_at_the_submission_size_by_default(straight):
    results = json.loads((straight / "results.json").read_text())["exo-ego"]["results"]
    sizes = {tuple(entry["pred_mask"]["size"])
             for take in results.values() for pairs in take["masks"].values()
             for frames in pairs.values() for entry in frames.values()}  # fmt: skip
    assert sizes == {(480, 480)}  # the 448x448 ego frames, longer side 480 as the evaluator's
    summary = json.loads((straight / "summary.json").read_text())
    assert summary["settings"]["exo2ego"]["mask_size"] == "submission"
