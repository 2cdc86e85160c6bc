"""``omama-run dataset --ray`` on a local Ray of 2 CPUs: 1 and 2 workers give the in-process
run's bytes, and so does a run in which a worker dies on its first item.

Ray starts once for the module (a few seconds) with a worker setup hook
(:mod:`tests.runtime.runs.ray_faults`) that kills one worker when the test arms it; the
command uses the Ray this process started and leaves it running.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")  # the shared assets are exported with torch
ray = pytest.importorskip("ray")

from tests.runtime.runs import ray_faults  # noqa: E402
from tests.runtime.runs.cli import omama_run  # noqa: E402
from tests.runtime.runs.dataset_split import build_split, dataset_args  # noqa: E402

REPO = Path(__file__).resolve().parents[3]
SAME = ("results.json", "gt.json")


@pytest.fixture(scope="module")
def split_root(tmp_path_factory) -> Path:
    return build_split(tmp_path_factory.getbasetemp() / "dataset_split")


@pytest.fixture(scope="module")
def in_process(assets, split_root, tmp_path_factory) -> Path:
    from runtime.cli import app
    from runtime.clikit import run_app

    out = tmp_path_factory.mktemp("dataset_in_process") / "out"
    assert run_app(app, dataset_args(split_root, assets.random, out), prog_name="omama-run") == 0
    return out


@pytest.fixture(scope="module")
def die_once(tmp_path_factory):
    """Ray for the module; the file whose creation makes the next worker die once."""
    marker = tmp_path_factory.mktemp("ray_faults") / "die_once"
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        runtime_env={
            "worker_process_setup_hook": "tests.runtime.runs.ray_faults.install",
            "env_vars": {
                "PYTHONPATH": str(REPO),
                ray_faults.ENV: str(marker),
                "OMP_NUM_THREADS": "1",
            },  # fmt: skip
        },
    )
    yield marker
    ray.shutdown()


def _run_on_ray(capsys, assets, split_root, out: Path, workers: int) -> dict:
    code, text, err = omama_run(capsys, *dataset_args(split_root, assets.random, out, "--ray",
                                                      "--workers", workers))  # fmt: skip
    assert code == 0, err
    return json.loads((out / "summary.json").read_text())


@pytest.mark.timeout(420)
def test_one_and_two_ray_workers_give_the_in_process_bytes(assets, split_root, in_process,
                                                           die_once, tmp_path, capsys):  # fmt: skip
    for workers in (2, 1):
        out = tmp_path / f"ray{workers}"
        summary = _run_on_ray(capsys, assets, split_root, out, workers)
        assert summary["executor"] == "ray" and summary["ray"]["workers"] == workers
        assert summary["ray"]["cpus_per_worker"] == (0.5 if workers == 2 else 1.0)
        assert summary["frames_this_run"] == 6
        for name in SAME:
            assert (out / name).read_bytes() == (in_process / name).read_bytes(), (workers, name)
    assert ray.is_initialized()  # the command left the Ray it did not start running


@pytest.mark.timeout(420)
def test_a_dead_worker_is_replaced_and_its_item_redone(assets, split_root, in_process, die_once,
                                                       tmp_path, capsys):  # fmt: skip
    die_once.touch()
    out = tmp_path / "out"
    summary = _run_on_ray(capsys, assets, split_root, out, 2)
    assert not die_once.exists() and Path(f"{die_once}.fired").exists()  # a worker died
    assert summary["directions"]["exo2ego"]["takes_failed"] == {}
    for name in SAME:
        assert (out / name).read_bytes() == (in_process / name).read_bytes(), name
