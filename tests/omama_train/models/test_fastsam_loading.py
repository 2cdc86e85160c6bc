"""FastSAM checkpoints are never unpickled freely: a ``.pt`` that would run code when
unpickled is refused in one line, and its code never runs (the file it would create never
appears), whichever command reaches the loader."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from omama_train.models.fastsam import build_random_fastsam, load_fastsam
from runtime.errors import OmamaError


class _CreatesFile:
    """Unpickling this runs ``touch <marker>``: what a hostile checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _zip_payload(path: Path, marker: Path) -> Path:
    torch.save({"model": _CreatesFile(marker)}, path)
    return path


def _legacy_payload(path: Path, marker: Path) -> Path:
    path.write_bytes(pickle.dumps({"model": _CreatesFile(marker)}, protocol=2))
    return path


def _hidden_payload(path: Path, marker: Path) -> Path:
    """A real FastSAM checkpoint with one extra entry that runs code."""
    genuine = build_random_fastsam(path.with_name("genuine.pt"), "n")
    checkpoint = torch.load(genuine, map_location="cpu", weights_only=False)  # our own file
    checkpoint["notes"] = _CreatesFile(marker)
    torch.save(checkpoint, path)
    return path


@pytest.mark.parametrize("make", [_zip_payload, _legacy_payload, _hidden_payload])
def test_a_checkpoint_that_runs_code_is_refused_and_runs_nothing(make, tmp_path):
    marker = tmp_path / "pwned"
    path = make(tmp_path / "FastSAM-x.pt", marker)
    with pytest.raises(OmamaError, match="not a loadable ultralytics FastSAM checkpoint") as info:
        load_fastsam(path)
    assert "\n" not in str(info.value)
    assert not marker.exists()


def test_a_genuine_checkpoint_loads(tmp_path):
    model = load_fastsam(build_random_fastsam(tmp_path / "FastSAM-s.pt", "s"))
    assert model.task == "segment"


def test_without_restricted_loading_nothing_is_loaded(tmp_path, monkeypatch):
    from ultralytics.nn import tasks

    path = build_random_fastsam(tmp_path / "FastSAM-s.pt", "n")
    monkeypatch.setattr(tasks, "SAFE_LOAD", False)
    with pytest.raises(OmamaError, match="ULTRALYTICS_SAFE_LOAD=1"):
        load_fastsam(path)
    monkeypatch.setattr(tasks, "SAFE_LOAD", True)
    monkeypatch.delattr(torch.serialization, "get_unsafe_globals_in_checkpoint")
    with pytest.raises(OmamaError, match="torch >= 2.6"):
        load_fastsam(path)


def test_the_torch_backend_refuses_the_fastsam_file_an_artifacts_folder_names(tmp_path):
    """A downloaded artifacts folder names its FastSAM file; the torch backend loads it."""
    from types import SimpleNamespace

    from omama_train.torch_backend import _fastsam_network
    from runtime.manifest import WeightsRecord, sha256_file

    marker = tmp_path / "pwned"
    payload = _zip_payload(tmp_path / "fastsam.pt", marker)
    record = WeightsRecord(random=False, file=payload.name, sha256=sha256_file(payload))
    manifest = SimpleNamespace(fastsam=SimpleNamespace(weights=record))
    with pytest.raises(OmamaError, match="not a loadable ultralytics FastSAM checkpoint"):
        _fastsam_network(manifest, (tmp_path,))
    assert not marker.exists()
