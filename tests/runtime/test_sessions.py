"""Inference sessions: ONNX Runtime on a tiny generated model, the torch reference backend,
backend selection, and TensorRT (through polygraphy on a real TensorRT and GPU when present;
its refusals everywhere)."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import logging
import sys

import numpy as np
import pytest

from runtime import sessions
from runtime.errors import OmamaError
from runtime.manifest import TensorSpec
from runtime.sessions import (
    OrtSession,
    TrtSession,
    check_engine_compat,
    ort_providers_for,
    select_backend,
)

W = np.array([[1.0, -2.0], [0.5, 0.25], [-1.0, 3.0]], np.float32)  # (3, 2)
B = np.array([0.1, -0.2], np.float32)


def reference(x: np.ndarray) -> dict[str, np.ndarray]:
    y = np.maximum(x @ W + B, 0)
    return {"y": y, "total": y.sum(axis=1, keepdims=True)}


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    """``y = relu(x @ W + b)``, ``total = sum(y, axis=1)``; x is (N, 3) with dynamic N."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["pre"]),
            helper.make_node("Relu", ["pre"], ["y"]),
            helper.make_node("ReduceSum", ["y", "axes"], ["total"], keepdims=1),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2]),
            helper.make_tensor_value_info("total", TensorProto.FLOAT, ["N", 1]),
        ],
        initializer=[
            numpy_helper.from_array(W, "W"),
            numpy_helper.from_array(B, "b"),
            numpy_helper.from_array(np.array([1], np.int64), "axes"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    onnx.save(model, str(path))
    return path


@pytest.fixture()
def fresh_registry(monkeypatch):
    """Backends registered or discovered inside a test do not leak into the others."""
    monkeypatch.setattr(sessions, "_REGISTRY", dict(sessions._REGISTRY))
    monkeypatch.setattr(sessions, "_DISCOVERED", False)


# ----------------------------------------------------------------------------- onnxruntime


def test_ort_session_metadata_and_results(tiny_onnx):
    x = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    with OrtSession(tiny_onnx, device="cpu", threads=1) as session:
        assert session.providers == ("CPUExecutionProvider",)
        assert session.device == "cpu" and session.name == "tiny"
        assert session.inputs == (TensorSpec("x", ("N", 3), "float32"),)
        assert [o.name for o in session.outputs] == ["y", "total"]
        assert session.outputs[1].shape == ("N", 1) and session.inputs[0].dynamic
        out = session.infer({"x": x})
        want = reference(x)
        assert set(out) == {"y", "total"}
        np.testing.assert_allclose(out["y"], want["y"], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(out["total"], want["total"], rtol=1e-6, atol=1e-6)
        # float64 feeds (numpy's default) are cast, another batch size is fine
        out64 = session.infer({"x": x[:2].astype(np.float64)})
        np.testing.assert_allclose(out64["y"], want["y"][:2], rtol=1e-6, atol=1e-6)
        latencies = session.warmup(3, dims={"N": 4})
        assert len(latencies) == 3 and all(t > 0 for t in latencies)


@pytest.mark.parametrize(
    ("feeds", "message"),
    [
        ({}, "missing x"),
        ({"x": np.zeros((2, 3), np.float32), "z": np.zeros(1)}, "unknown z"),
        ({"x": np.zeros((2, 4), np.float32)}, "got shape (2, 4)"),
        ({"x": np.zeros((2, 3, 1), np.float32)}, "got shape (2, 3, 1)"),
        ({"x": np.zeros((2, 3), np.int64)}, "got dtype int64"),
    ],
)
def test_ort_session_rejects_bad_feeds(tiny_onnx, feeds, message):
    with OrtSession(tiny_onnx, device="cpu") as session, pytest.raises(OmamaError) as err:
        session.infer(feeds)
    assert message in str(err.value) and "x (?, 3) float32" in str(err.value).replace("N", "?")


def test_ort_session_errors(tiny_onnx, tmp_path):
    with pytest.raises(OmamaError, match="ONNX model not found"):
        OrtSession(tmp_path / "missing.onnx")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x08\x01garbage")
    with pytest.raises(OmamaError, match="onnxruntime cannot load .*broken.onnx"):
        OrtSession(broken)
    session = OrtSession(tiny_onnx)
    session.close()
    with pytest.raises(OmamaError, match="closed"):
        session.infer({"x": np.zeros((1, 3), np.float32)})


def test_ort_provider_rule():
    cpu_only = ["CPUExecutionProvider"]
    everything = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert ort_providers_for("cpu", everything) == ["CPUExecutionProvider"]
    assert ort_providers_for("auto", cpu_only) == ["CPUExecutionProvider"]
    assert ort_providers_for("auto", everything) == everything
    assert ort_providers_for("cuda:1", ["CUDAExecutionProvider", "CPUExecutionProvider"]) == [
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    with pytest.raises(OmamaError, match="onnxruntime-gpu"):
        ort_providers_for("cuda", cpu_only)
    with pytest.raises(OmamaError, match="device must be"):
        ort_providers_for("gpu", everything)


# ----------------------------------------------------------------------------- selection


def test_select_backend_auto_and_named(caplog):
    import onnxruntime

    gpu_ort = any(p in onnxruntime.get_available_providers() for p in sessions.ORT_PROVIDERS_GPU)
    with caplog.at_level(logging.INFO, logger="runtime.sessions"):
        choice = select_backend("auto", "cpu")
    assert (choice.name, choice.device) == ("onnxruntime", "cpu")
    assert "TensorRT runs on a GPU only" in choice.reason
    assert "backend: onnxruntime on cpu" in caplog.text
    if sessions._trt_unavailable("auto") is not None:  # this machine: no TensorRT engine path
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
    if sessions._trt_unavailable("cuda") is None:
        pytest.skip("TensorRT and a GPU are present here")
    with pytest.raises(OmamaError, match="backend tensorrt unavailable: ") as err:
        select_backend("tensorrt", "cuda")
    assert any(
        why in str(err.value)
        for why in ("TensorRT not installed", "no NVIDIA GPU", "needs polygraphy")
    )


def test_auto_without_engines_falls_back_to_onnxruntime(monkeypatch):
    monkeypatch.setattr(sessions, "_trt_unavailable", lambda device: None)
    assert select_backend("auto", "cuda", engines_available=True).name == "tensorrt"
    monkeypatch.setattr(sessions, "_ort_unavailable", lambda device: None)
    monkeypatch.setattr(sessions, "_resolve_device", lambda backend, device: device)
    choice = select_backend("auto", "cuda", engines_available=False)
    assert choice.name == "onnxruntime"
    assert "the artifacts hold no TensorRT engines" in choice.reason


def test_backend_status_lists_every_backend():
    status = sessions.backend_status("cpu")
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

    sessions._REGISTRY.pop("torch", None)

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
    monkeypatch.setattr(sessions, "entry_points", lambda group: plugins)
    assert select_backend("torch", "cpu").name == "torch"


def test_torch_backend_missing_says_how_to_get_it(monkeypatch, fresh_registry):
    sessions._REGISTRY.pop("torch", None)
    monkeypatch.setattr(sessions, "entry_points", lambda group: [])
    with pytest.raises(OmamaError, match=r"omama\[train\]"):
        select_backend("torch", "cpu")


# ----------------------------------------------------------------------------- tensorrt


def test_engine_compat_rule():
    built = {"tensorrt": "10.3.0.26", "gpu": "NVIDIA H100 80GB HBM3"}
    check_engine_compat("m.engine", built, "10.3.0.30", "NVIDIA H100 80GB HBM3")
    with pytest.raises(OmamaError) as err:
        check_engine_compat("m.engine", built, "10.7.0", "NVIDIA H100 80GB HBM3")
    message = str(err.value)
    assert "m.engine" in message and "TensorRT 10.3.0.26" in message and "10.7.0" in message
    assert "\n" not in message
    with pytest.raises(OmamaError, match="the GPU NVIDIA H100 80GB HBM3 .*NVIDIA A10"):
        check_engine_compat("m.engine", built, "10.3.0", "NVIDIA A10")
    check_engine_compat("m.engine", {**built, "version_compatible": True}, "10.7.0", built["gpu"])
    check_engine_compat("m.engine", {**built, "hardware_compatible": True}, "10.3.0", "NVIDIA A10")


def _real_tensorrt():
    try:
        import tensorrt  # noqa: F401
    except Exception as exc:  # not installed, or libnvinfer missing
        pytest.skip(f"TensorRT is not importable here ({type(exc).__name__}: {exc})")
    if sessions.gpu_name("cuda") is None:
        pytest.skip("no NVIDIA GPU visible (nvidia-smi)")
    pytest.importorskip("polygraphy")
    return sys.modules["tensorrt"]


@pytest.mark.gpu
def test_tensorrt_engine_matches_onnxruntime(tiny_onnx, tmp_path):
    trt = _real_tensorrt()
    from export.tensorrt import ShapeRange, build_engine, compare_sessions

    engine_path = tmp_path / "tiny.engine"
    record = build_engine(
        tiny_onnx,
        engine_path,
        {"x": ShapeRange((1, 3), (4, 3), (16, 3))},
        fp16=False,
        timing_cache=tmp_path / "timing.cache",
    )
    assert engine_path.stat().st_size > 0 and record["tensorrt_version"] == trt.__version__
    x = np.random.default_rng(2).standard_normal((16, 3)).astype(np.float32)
    built = {"tensorrt": trt.__version__, "gpu": sessions.gpu_name("cuda")}
    with TrtSession(engine_path, built_with=built) as session:
        assert (session.backend, session.device, session.name) == ("tensorrt", "cuda", "tiny")
        assert session.inputs == (TensorSpec("x", (None, 3), "float32"),)
        assert [(o.name, o.shape) for o in session.outputs] == [
            ("y", (None, 2)),
            ("total", (None, 1)),
        ]
        assert session.profile_range("x") == ((1, 3), (16, 3))
        first = session.infer({"x": x[:7]})
        kept = {name: value.copy() for name, value in first.items()}
        for n in (7, 2, 16, 1):
            got = session.infer({"x": x[:n]})
            want = reference(x[:n])
            assert got["y"].shape == (n, 2)
            np.testing.assert_allclose(got["y"], want["y"], rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(got["total"], want["total"], rtol=1e-4, atol=1e-5)
        for name in kept:  # results are copies: later calls do not overwrite them
            np.testing.assert_array_equal(first[name], kept[name])
        with pytest.raises(OmamaError, match=r"outside the engine's profile \(1, 3\)..\(16, 3\)"):
            session.infer({"x": np.zeros((17, 3), np.float32)})
        with OrtSession(tiny_onnx) as ort_session:
            feeds = [{"x": x[:n]} for n in (1, 5, 16)]
            report = compare_sessions(session, ort_session, feeds, {"y": 1e-4, "total": 1e-4})
        assert all(entry["passed"] for entry in report.values()), report
    with pytest.raises(OmamaError, match="closed"):
        session.infer({"x": x[:1]})
    with pytest.raises(OmamaError, match="built for TensorRT 9.0.0 .*rebuild it") as err:
        TrtSession(engine_path, built_with={**built, "tensorrt": "9.0.0"})
    assert "\n" not in str(err.value)
    foreign = tmp_path / "foreign.engine"
    foreign.write_bytes(b"\x00 not a plan from this TensorRT" * 64)
    with pytest.raises(OmamaError, match="cannot load engine foreign.engine") as err:
        TrtSession(foreign)
    message = str(err.value)
    assert "another TensorRT version or GPU" in message and "omama export --engines" in message
    assert "\n" not in message


def test_trt_session_refuses_the_cpu(tmp_path):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"any bytes")
    with pytest.raises(OmamaError) as err:
        TrtSession(engine, device="cpu")
    assert str(err.value) == "the TensorRT backend runs on a GPU only: use --device cuda"


def test_trt_session_refuses_a_missing_engine(tmp_path):
    with pytest.raises(OmamaError, match="TensorRT engine not found: .*none.engine"):
        TrtSession(tmp_path / "none.engine")


def test_trt_session_without_tensorrt_says_so(tmp_path):
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here")
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"any bytes")
    with pytest.raises(OmamaError) as err:
        TrtSession(engine, device="cuda")
    assert str(err.value) == "TensorRT not installed (python package `tensorrt`)"


def test_trt_unavailable_gives_each_reason(monkeypatch):
    """The availability rule (cheap checks, nothing imported), one missing piece at a time."""
    real_find_spec = importlib.util.find_spec
    missing: set[str] = set()
    present = importlib.machinery.ModuleSpec("present", None)

    def find_spec(name, *args):
        if name in ("tensorrt", "polygraphy"):
            return None if name in missing else present
        return real_find_spec(name, *args)

    monkeypatch.setattr(sessions.importlib.util, "find_spec", find_spec)
    monkeypatch.setattr(sessions, "gpu_name", lambda device="cuda": "NVIDIA H100")
    assert sessions._trt_unavailable("cuda") is None
    assert "GPU only" in sessions._trt_unavailable("cpu")
    missing.add("polygraphy")
    assert "needs polygraphy" in sessions._trt_unavailable("cuda")
    missing.add("tensorrt")
    assert sessions._trt_unavailable("auto") == "TensorRT not installed (python package `tensorrt`)"
    missing.clear()
    monkeypatch.setattr(sessions, "gpu_name", lambda device="cuda": None)
    assert "no NVIDIA GPU" in sessions._trt_unavailable("cuda:1")


def test_compare_sessions_reports_each_output(tiny_onnx):
    from export.tensorrt import compare_sessions

    class Shifted:
        """Another backend's results: ``y`` off by ``shift``, ``total`` exact."""

        def __init__(self, session, shift):
            self.session, self.shift = session, shift

        def infer(self, feeds):
            out = self.session.infer(feeds)
            return {**out, "y": out["y"] + self.shift}

    rng = np.random.default_rng(3)
    feeds = [{"x": rng.standard_normal((n, 3)).astype(np.float32)} for n in (1, 4)]
    with OrtSession(tiny_onnx) as ort_session:
        peak = max(float(np.abs(reference(f["x"])["y"]).max()) for f in feeds)
        same = compare_sessions(ort_session, ort_session, feeds, {"y": 1e-6, "total": 1e-6})
        assert same["y"]["max_abs_err"] == 0.0 and same["y"]["passed"]
        assert same["y"]["allowed"] == pytest.approx(1e-6 * max(1.0, peak), rel=1e-5)
        assert same["total"]["passed"]
        off = compare_sessions(Shifted(ort_session, 0.5), ort_session, feeds, {"y": 1e-3})
        assert set(off) == {"y"} and not off["y"]["passed"]
        assert off["y"]["max_abs_err"] == pytest.approx(0.5)
        assert off["y"]["allowed"] == pytest.approx(1e-3 * max(1.0, peak), rel=1e-5)
        broken = compare_sessions(Shifted(ort_session, np.nan), ort_session, feeds, {"y": 1.0})
        assert np.isnan(broken["y"]["max_abs_err"]) and not broken["y"]["passed"]
