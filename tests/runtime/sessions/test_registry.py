"""Backend selection (auto and named, with reasons), backend status, and the torch backend
registered through the ``omama.backends`` entry points."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from runtime.errors import OmamaError
from runtime.sessions import OrtSession, backend_status, registry, select_backend, trt
from runtime.sessions.ort import ORT_PROVIDERS_GPU
from tests.runtime.sessions.tiny_model import B, W


def test_select_backend_auto_and_named(caplog):
    import onnxruntime

    gpu_ort = any(p in onnxruntime.get_available_providers() for p in ORT_PROVIDERS_GPU)
    with caplog.at_level(logging.INFO, logger="runtime.sessions"):
        choice = select_backend("auto", "cpu")
    assert (choice.name, choice.device) == ("onnxruntime", "cpu")
    assert "TensorRT runs on a GPU only" in choice.reason
    assert "backend: onnxruntime on cpu" in caplog.text
    if trt.trt_unavailable("auto") is not None:  # this machine: no TensorRT engine path
        auto = select_backend("auto", "auto")
        assert auto.name == "onnxruntime"
        assert auto.device == ("cuda" if gpu_ort else "cpu")
    named = select_backend("onnxruntime", "cpu")
    assert named.reason == "asked for"
    with pytest.raises(OmamaError, match="backend must be one of"):
        select_backend("tflite", "cpu")
    with pytest.raises(OmamaError, match="device must be"):
        select_backend("auto", "tpu")
    with pytest.raises(OmamaError, match="backend tensorrt unavailable: TensorRT runs on a GPU"):
        select_backend("tensorrt", "cpu")


def test_select_backend_says_why_tensorrt_is_missing():
    if trt.trt_unavailable("cuda") is None:
        pytest.skip("TensorRT and a GPU are present here")
    with pytest.raises(OmamaError, match="backend tensorrt unavailable: ") as err:
        select_backend("tensorrt", "cuda")
    assert any(
        why in str(err.value)
        for why in ("TensorRT not installed", "no NVIDIA GPU", "needs polygraphy")
    )


def test_auto_without_engines_falls_back_to_onnxruntime(monkeypatch):
    monkeypatch.setattr(registry, "trt_unavailable", lambda device: None)
    assert select_backend("auto", "cuda", engines_available=True).name == "tensorrt"
    monkeypatch.setattr(registry, "ort_unavailable", lambda device: None)
    monkeypatch.setattr(registry, "_resolve_device", lambda backend, device: device)
    choice = select_backend("auto", "cuda", engines_available=False)
    assert choice.name == "onnxruntime"
    assert "the artifacts hold no TensorRT engines" in choice.reason


def test_backend_status_lists_every_backend():
    status = backend_status("cpu")
    assert {"onnxruntime", "tensorrt", "torch"} <= set(status)
    assert status["onnxruntime"] is None
    assert "GPU only" in status["tensorrt"]


# ----------------------------------------------------------------------------- torch


def _torch_linear():
    import torch

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(3, 2)
            with torch.no_grad():
                self.linear.weight.copy_(torch.from_numpy(W.T.copy()))
                self.linear.bias.copy_(torch.from_numpy(B))

        def forward(self, x):
            y = torch.relu(self.linear(x))
            return y, y.sum(dim=1, keepdim=True)

    return Tiny()


def test_torch_backend_matches_onnxruntime(tiny_onnx, fresh_registry):
    pytest.importorskip("torch")
    from omama_train.torch_backend import register

    register()
    x = np.random.default_rng(1).standard_normal((4, 3)).astype(np.float32)
    with OrtSession(tiny_onnx) as ort_session:
        want = ort_session.infer({"x": x})
        choice = select_backend("torch", "cpu")
        assert (choice.name, choice.device) == ("torch", "cpu")
        # a loader: nothing is built before the backend is chosen
        with choice.open(
            _torch_linear, inputs=ort_session.inputs, outputs=ort_session.outputs
        ) as torch_session:
            assert torch_session.inputs == ort_session.inputs
            got = torch_session.infer({"x": x})
    assert set(got) == {"y", "total"}
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6)


def test_torch_session_checks_outputs(fresh_registry):
    pytest.importorskip("torch")
    from omama_train.torch_backend import TorchSession

    session = TorchSession(
        _torch_linear(), inputs=[("x", ("N", 3), np.float32)], outputs=[("y", ("N", 2), "f4")]
    )
    with pytest.raises(OmamaError, match="returned 2 tensors for 1 outputs"):
        session.infer({"x": np.zeros((1, 3), np.float32)})
    with pytest.raises(OmamaError, match="nn.Module or a loader"):
        TorchSession(42, inputs=[("x", (1,), "f4")], outputs=[("y", (1,), "f4")])


def test_torch_backend_is_discovered_through_entry_points(monkeypatch, fresh_registry):
    pytest.importorskip("torch")
    from omama_train import torch_backend

    registry._REGISTRY.pop("torch", None)

    class EntryPoint:
        def __init__(self, name, target):
            self.name, self.value, self._target = name, f"tests:{name}", target

        def load(self):
            if isinstance(self._target, Exception):
                raise self._target
            return self._target

    plugins = [
        EntryPoint("torch", torch_backend.register),
        EntryPoint("broken", ImportError("no such module")),
    ]
    monkeypatch.setattr(registry, "entry_points", lambda group: plugins)
    assert select_backend("torch", "cpu").name == "torch"


def test_torch_backend_missing_says_how_to_get_it(monkeypatch, fresh_registry):
    registry._REGISTRY.pop("torch", None)
    monkeypatch.setattr(registry, "entry_points", lambda group: [])
    with pytest.raises(OmamaError, match=r"omama\[train\]"):
        select_backend("torch", "cpu")


# ----------------------------------------------------------------------------- tensorrt
