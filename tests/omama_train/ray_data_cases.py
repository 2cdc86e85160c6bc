"""``omama data masks --ray`` and ``omama features --ray`` on a local Ray of 2 CPUs (2 workers
of 0.5 CPU each): the files are the in-process run's, the reports say the same counts, and a
rerun skips everything. Run in a child pytest process (:mod:`.test_data_ray`).

Ray starts once for the module; the commands use the Ray this process started.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
ray = pytest.importorskip("ray")

from omama_train.data import masks as masks_module  # noqa: E402
from omama_train.features.cli import register as register_features  # noqa: E402
from runtime.clikit import new_app, run_app  # noqa: E402
from runtime.egoexo import Pair, write_pairs  # noqa: E402
from tests.omama_train.data.test_masks import EGO, EXO, FRAMES, VISIBLE, _write_take  # noqa: E402
from tests.omama_train.test_features import small_root  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
RAY = ["--ray", "--workers", "2", "--cpus-per-worker", "0.5", "--no-progress"]
# Timing, times of day and where a run ran differ between runs; every other entry must not.
VARYING = {"timing", "finished_at", "machine", "versions", "ray", "elapsed_s", "written_at",
           "output_dir", "pairs_file", "cache", "created_at"}  # fmt: skip

torch.set_num_threads(1)  # as each 0.5-CPU worker runs (threads_for), so the bytes agree


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}},
    )
    yield
    ray.shutdown()


def _cli(capsys, *argv) -> tuple[int, str, str]:
    app = new_app("test app")
    data_app = new_app("data")
    masks_module.add_commands(data_app)
    app.add_typer(data_app, name="data")
    register_features(app)
    capsys.readouterr()
    code = run_app(app, [str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` but reports and locks, by relative path."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.endswith(".lock") and "report" not in p.name
    }


def _same(report: dict) -> dict:
    return {k: v for k, v in report.items() if k not in VARYING}


def _masks_root(base: Path) -> Path:
    """test_masks' two takes (take_b's ego frame 0 has no image): 4 destination frames."""
    root = base / "root"
    _write_take(root, "take_a", VISIBLE, {EGO: FRAMES, EXO: FRAMES})
    _write_take(root, "take_b", {"red mug_0": {EGO: (0,), EXO: (0,)}}, {EXO: (0,)})
    (root / "split.json").write_text(json.dumps({"test": ["take_a", "take_b"]}))
    pairs = [Pair("take_a", obj, EGO, EXO, f) for obj in VISIBLE for f in FRAMES]
    pairs.append(Pair("take_b", "red mug_0", EGO, EXO, 0))
    write_pairs(root / "dataset_jsons" / "test_exoego_pairs.json", pairs, root)
    return root


@pytest.mark.timeout(300)
def test_masks_on_ray_write_the_in_process_files_and_a_rerun_skips(tmp_path, capsys):
    reports = {}
    for where in ("local", "ray"):
        root = _masks_root(tmp_path / where)
        args = ["data", "masks", "--root", root, "--direction", "exo2ego", "--from-annotations"]
        code, out, err = _cli(capsys, *args, *(RAY if where == "ray" else ["--no-progress"]))
        assert code == 0, err
        assert "4 destination frames of 4: 3 written, 0 already done, 1 missing images" in out
        reports[where] = json.loads((root / "masks_report_test_exo2ego.json").read_text())
    local, on_ray = tmp_path / "local" / "root", tmp_path / "ray" / "root"
    files = _files(on_ray / "Masks_TEST_EXO2EGO")
    assert len(files) == 2 * 3 + 1  # masks and boxes of 3 frames, candidates_source.json
    assert files == _files(local / "Masks_TEST_EXO2EGO")
    assert _same(reports["ray"]) == _same(reports["local"])
    assert reports["ray"]["ray"]["workers"] == 2
    assert reports["ray"]["ray"]["cpus_per_worker"] == 0.5
    assert reports["ray"]["ray"]["jobs"] == 4  # the frame without an image is tried too

    code, out, err = _cli(capsys, *args, *RAY)
    assert code == 0, err
    assert "4 destination frames of 4: 0 written, 3 already done, 1 missing images" in out
    rerun = json.loads((on_ray / "masks_report_test_exo2ego.json").read_text())
    assert rerun["ray"]["jobs"] == 1  # the frame without an image, tried again
    assert _files(on_ray / "Masks_TEST_EXO2EGO") == files


@pytest.mark.timeout(300)
def test_features_on_ray_write_the_in_process_chunks_and_a_rerun_skips(tmp_path, capsys):
    root = small_root(tmp_path / "data")
    common = ["features", "--root", root, "--backbone", "dinov2_vits14_reg", "--random-init",
              "--device", "cpu", "--batch-size", "2", "--flush-every", "3"]  # fmt: skip
    code, out, err = _cli(capsys, *common, "--out", tmp_path / "local", "--no-progress")
    assert code == 0, err
    code, out, err = _cli(capsys, *common, "--out", tmp_path / "ray", *RAY)
    assert code == 0, err
    assert "12 images of 12: 12 computed, 0 already cached, 0 left" in out
    local, on_ray = _files(tmp_path / "local"), _files(tmp_path / "ray")
    assert local.keys() == on_ray.keys()
    assert sum(name.endswith(".npy") for name in on_ray) == 5  # 4 ego, 8 exo images; 3 a chunk
    for name in local:
        if name.endswith(".json"):  # index parts and meta.json, times of writing aside
            assert _same(json.loads(on_ray[name])) == _same(json.loads(local[name])), name
        else:
            assert on_ray[name] == local[name], name
    report = json.loads((tmp_path / "ray" / "report.json").read_text())
    local_report = json.loads((tmp_path / "local" / "report.json").read_text())
    assert _same(report) == _same(local_report)
    assert (report["ray"]["workers"], report["ray"]["jobs"]) == (2, 5)

    code, out, err = _cli(capsys, *common, "--out", tmp_path / "ray", *RAY)
    assert code == 0, err
    assert "12 images of 12: 0 computed, 12 already cached, 0 left" in out
    assert _files(tmp_path / "ray") == on_ray
