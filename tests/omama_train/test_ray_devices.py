"""The device of ``--ray`` data jobs (``omama data masks``, ``omama features``) is chosen
where the work runs: ``auto`` asks Ray for a GPU per worker when the cluster has GPUs and
each worker resolves it; ``cuda`` is checked against the cluster's GPUs, not the driver's.

No Ray is started here: the cluster is a dict, and the CLI tests run against a fake Ray
whose actors record what they were asked for and stop the run before any work."""

from __future__ import annotations

import contextlib
import json

import pytest

from omama_train import raywork
from omama_train.data import masks as masks_module
from omama_train.features.cli import register as register_features
from runtime import raykit
from runtime.clikit import new_app, run_app
from runtime.egoexo import Pair, write_pairs
from runtime.errors import OmamaError
from tests.omama_train.data.test_masks import EGO, EXO, FRAMES, VISIBLE, _write_take
from tests.omama_train.test_features import small_root

GPU_CLUSTER = {"CPU": 8.0, "GPU": 2.0}
CPU_CLUSTER = {"CPU": 2.0}


def _options(**kw) -> raywork.RayOptions:
    return raywork.RayOptions(**({"workers": 2} | kw))


def test_auto_on_a_cluster_with_gpus_asks_a_gpu_per_worker_and_workers_resolve_cuda():
    cpus, gpus = raywork.worker_resources(GPU_CLUSTER, _options(), "auto")
    assert (cpus, gpus) == (1.0, 1.0)
    assert raykit.worker_device("auto", gpu_ids=[0]) == "cuda"


def test_auto_on_a_cluster_without_gpus_runs_on_cpus():
    cpus, gpus = raywork.worker_resources(CPU_CLUSTER, _options(), "auto")
    assert (cpus, gpus) == (0.5, 0.0)
    assert raykit.worker_device("auto", gpu_ids=[]) == "cpu"


def test_auto_with_no_gpus_per_worker_runs_on_cpus_on_a_gpu_cluster():
    cpus, gpus = raywork.worker_resources(GPU_CLUSTER, _options(gpus_per_worker=0.0), "auto")
    assert (cpus, gpus) == (3.5, 0.0)
    assert raykit.worker_device("auto", gpu_ids=[]) == "cpu"


def test_cuda_is_checked_against_the_clusters_gpus_in_one_line():
    assert raywork.worker_resources(GPU_CLUSTER, _options(), "cuda") == (1.0, 1.0)
    with pytest.raises(OmamaError) as err:
        raywork.worker_resources(CPU_CLUSTER, _options(), "cuda")
    assert str(err.value) == (
        "--device cuda asks the Ray workers for GPUs, but the Ray cluster has none: "
        "use --device cpu or auto, or add nodes with GPUs"
    )
    with pytest.raises(OmamaError, match="--device cuda:1 needs GPUs on the Ray workers"):
        raywork.worker_resources(GPU_CLUSTER, _options(gpus_per_worker=0.0), "cuda:1")


@pytest.mark.parametrize(
    ("device", "gpu_ids", "resolved"),
    [("cpu", [], "cpu"), ("cuda", [1], "cuda"), ("cuda:1", [1], "cuda"), ("auto", [3], "cuda")],
)
def test_a_worker_runs_on_its_own_gpu_as_device_0(device, gpu_ids, resolved):
    assert raykit.worker_device(device, gpu_ids=gpu_ids) == resolved


class _FakeRay:
    """``ray`` as :func:`raywork.run_jobs` uses it, on a cluster of ``cluster``: creating an
    actor records its resources and device, then stops the run with one line."""

    STOP = "fake cluster: stopped before the workers start"

    def __init__(self, cluster: dict) -> None:
        self.cluster, self.actors = cluster, []

    def cluster_resources(self) -> dict:
        return dict(self.cluster)

    def remote(self, **resources):
        fake = self

        def wrap(cls):
            class Handle:
                @staticmethod
                def remote(factory, kwargs, device, threads):
                    fake.actors.append({**resources, "device": device, "threads": threads})
                    raise OmamaError(fake.STOP)

            return Handle

        return wrap


@pytest.fixture
def fake_ray(monkeypatch):
    """Installs a fake Ray; returns a function giving it a cluster."""
    monkeypatch.setattr(raykit, "import_ray", lambda *parts: object())
    ray = _FakeRay({})

    @contextlib.contextmanager
    def connection(address, *parts):
        yield ray

    monkeypatch.setattr(raykit, "connection", connection)

    def on(cluster: dict) -> _FakeRay:
        ray.cluster = cluster
        return ray

    return on


def _cli(capsys, *argv) -> tuple[int, str]:
    app = new_app("test app")
    data_app = new_app("data")
    masks_module.add_commands(data_app)
    app.add_typer(data_app, name="data")
    register_features(app)
    capsys.readouterr()
    code = run_app(app, [str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert "Traceback" not in err and len(lines) == 1, err
    return code, lines[0]


@pytest.fixture(scope="module")
def features_root(tmp_path_factory):
    return small_root(tmp_path_factory.mktemp("ray_devices"))


def _features(root, out, *flags):
    return ["features", "--root", root, "--out", out, "--backbone", "dinov2_vits14_reg",
            "--random-init", "--no-progress", "--ray", "--workers", "2", *flags]  # fmt: skip


def test_features_cuda_on_ray_is_not_refused_for_the_drivers_missing_cuda(
    features_root, tmp_path, fake_ray, capsys, monkeypatch
):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a head without a GPU
    ray = fake_ray(GPU_CLUSTER)
    code, line = _cli(capsys, *_features(features_root, tmp_path / "c", "--device", "cuda"))
    assert (code, line) == (1, f"error: {_FakeRay.STOP}")
    assert ray.actors[0]["num_gpus"] == 1.0 and ray.actors[0]["device"] == "cuda"

    fake_ray(CPU_CLUSTER)
    code, line = _cli(capsys, *_features(features_root, tmp_path / "c", "--device", "cuda"))
    assert code == 1 and line.startswith("error: --device cuda asks the Ray workers for GPUs")


def test_features_without_device_on_ray_asks_the_cluster_for_gpus(
    features_root, tmp_path, fake_ray, capsys, monkeypatch
):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    ray = fake_ray(GPU_CLUSTER)
    code, line = _cli(capsys, *_features(features_root, tmp_path / "c"))
    assert (code, line) == (1, f"error: {_FakeRay.STOP}")
    assert ray.actors[0]["num_gpus"] == 1.0 and ray.actors[0]["device"] == "auto"
    ray = fake_ray(CPU_CLUSTER)
    ray.actors.clear()
    code, line = _cli(capsys, *_features(features_root, tmp_path / "c", "--device", "auto"))
    assert (code, line) == (1, f"error: {_FakeRay.STOP}")
    assert ray.actors[0]["num_gpus"] is None and ray.actors[0]["device"] == "auto"


def _masks_root(base):
    root = base / "root"
    _write_take(root, "take_a", VISIBLE, {EGO: FRAMES, EXO: FRAMES})
    (root / "split.json").write_text(json.dumps({"test": ["take_a"]}))
    pairs = [Pair("take_a", obj, EGO, EXO, f) for obj in VISIBLE for f in FRAMES]
    write_pairs(root / "dataset_jsons" / "test_exoego_pairs.json", pairs, root)
    return root


def test_masks_without_device_on_ray_asks_the_cluster_for_gpus(
    tmp_path, fake_ray, capsys, monkeypatch
):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    root = _masks_root(tmp_path)
    weights = tmp_path / "FastSAM-x.pt"
    weights.write_bytes(b"read on the workers only")
    ray = fake_ray(GPU_CLUSTER)
    argv = ["data", "masks", "--root", root, "--direction", "exo2ego", "--fastsam", weights,
            "--no-progress", "--ray", "--workers", "2"]  # fmt: skip
    code, line = _cli(capsys, *argv)
    assert (code, line) == (1, f"error: {_FakeRay.STOP}")
    assert ray.actors[0]["num_gpus"] == 1.0 and ray.actors[0]["device"] == "auto"
    fake_ray(CPU_CLUSTER)
    code, line = _cli(capsys, *argv, "--device", "cuda")
    assert code == 1 and line.startswith("error: --device cuda asks the Ray workers for GPUs")


def test_a_cache_mixed_from_cpu_and_gpu_chunks_is_recorded_and_said(features_root, tmp_path):
    """A resume on another device (here: a first run's chunks marked as a GPU worker's) is
    accepted; the report counts the images per device and the summary says they differ."""
    from omama_train.features.build import summary_text
    from omama_train.features.images import resolve_pairs_files
    from tests.omama_train.test_features import build

    out = tmp_path / "cache"
    pairs = resolve_pairs_files(features_root)
    build(features_root, out, pairs, limit=5)
    for part in sorted((out / "chunks").glob("*.json")):
        entry = json.loads(part.read_text())
        part.write_text(json.dumps(entry | {"device": "cuda", "autocast_float16": True}))
    report = build(features_root, out, pairs)
    assert report["computed"] == 7 and report["device"] == "cpu"
    assert report["cache_devices"] == {"cpu": 7, "cuda": 5}
    assert (
        "the cache mixes maps computed on cpu (7 images) and cuda (5 images, float16 "
        "autocast): they differ by rounding; rebuild it on one device for uniform maps"
    ) in summary_text(report)
