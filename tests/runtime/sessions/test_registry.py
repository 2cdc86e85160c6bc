"""Backend selection (auto and named, with reasons), backend status, and what a missing
backend says (the torch backend itself is tested in tests/omama_train/test_torch_backend.py)."""

from __future__ import annotations

import logging

import pytest

from runtime.errors import OmamaError
from runtime.sessions import backend_status, registry, select_backend, trt
from runtime.sessions.openvino import openvino_unavailable
from runtime.sessions.ort import ORT_PROVIDERS_GPU


def test_select_backend_auto_and_named(caplog):
    import onnxruntime

    gpu_ort = any(p in onnxruntime.get_available_providers() for p in ORT_PROVIDERS_GPU)
    with caplog.at_level(logging.INFO, logger="runtime.sessions"):
        choice = select_backend("auto", "cpu")
    # On a CPU, fp32: OpenVINO when installed (measured faster), else ONNX Runtime.
    cpu_fp32 = "onnxruntime" if openvino_unavailable("cpu") else "openvino"
    assert (choice.name, choice.device) == (cpu_fp32, "cpu")
    assert "TensorRT runs on a GPU only" in choice.reason
    assert f"backend: {cpu_fp32} on cpu" in caplog.text
    if trt.trt_unavailable("auto") is not None:  # this machine: no TensorRT engine path
        auto = select_backend("auto", "auto")
        assert (auto.name, auto.device) == (
            ("onnxruntime", "cuda") if gpu_ort else (cpu_fp32, "cpu")
        )
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


def test_torch_backend_missing_says_how_to_get_it(monkeypatch, fresh_registry):
    registry._REGISTRY.pop("torch", None)
    monkeypatch.setattr(registry, "entry_points", lambda group: [])
    with pytest.raises(OmamaError, match=r"omama\[train\]"):
        select_backend("torch", "cpu")


# ----------------------------------------------------------------------------- tensorrt
