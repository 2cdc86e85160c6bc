"""``omama features --ray`` without ``--device`` on a local Ray without GPUs: the workers
resolve ``auto`` themselves, to the CPU, and the report says where they ran. Run in a child
pytest process (:mod:`.test_data_ray`), after :mod:`.ray_data_cases`."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
ray = pytest.importorskip("ray")

from tests.omama_train.ray_data_cases import RAY, _cli, local_ray  # noqa: E402, F401
from tests.omama_train.test_features import small_root  # noqa: E402


@pytest.mark.timeout(300)
def test_features_on_ray_resolve_auto_on_the_workers(tmp_path, capsys):
    root = small_root(tmp_path / "data")
    argv = ["features", "--root", root, "--backbone", "dinov2_vits14_reg", "--random-init",
            "--flush-every", "6", "--out", tmp_path / "cache", *RAY]  # fmt: skip
    code, out, err = _cli(capsys, *argv)
    assert code == 0, err
    assert "12 images of 12: 12 computed" in out and "images/s on cpu" in out
    report = json.loads((tmp_path / "cache" / "report.json").read_text())
    assert (report["device"], report["batch_size"]) == ("cpu", 4)
    assert report["ray"]["gpus_per_worker"] == 0.0
    assert report["ray"]["worker_devices"] == {"cpu": 2}
    assert report["cache_devices"] == {"cpu": 12}
    parts = [
        json.loads(p.read_text()) for p in sorted((tmp_path / "cache" / "chunks").glob("*.json"))
    ]
    assert parts and all(p["device"] == "cpu" and not p["autocast_float16"] for p in parts)
