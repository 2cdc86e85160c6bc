"""The TensorRT backend: the engine compatibility rule and its refusals everywhere, and
through polygraphy on a real TensorRT and GPU when present."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys

import numpy as np
import pytest

from runtime.errors import OmamaError
from runtime.manifest import TensorSpec
from runtime.sessions import OrtSession, TrtSession, check_engine_compat, gpu_name
from runtime.sessions import trt as trt_backend
from tests.tiny_model import reference


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
    if gpu_name("cuda") is None:
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
    built = {"tensorrt": trt.__version__, "gpu": gpu_name("cuda")}
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

    monkeypatch.setattr(trt_backend.importlib.util, "find_spec", find_spec)
    monkeypatch.setattr(trt_backend, "gpu_name", lambda device="cuda": "NVIDIA H100")
    assert trt_backend.trt_unavailable("cuda") is None
    assert "GPU only" in trt_backend.trt_unavailable("cpu")
    missing.add("polygraphy")
    assert "needs polygraphy" in trt_backend.trt_unavailable("cuda")
    missing.add("tensorrt")
    want = "TensorRT not installed (python package `tensorrt`)"
    assert trt_backend.trt_unavailable("auto") == want
    missing.clear()
    monkeypatch.setattr(trt_backend, "gpu_name", lambda device="cuda": None)
    assert "no NVIDIA GPU" in trt_backend.trt_unavailable("cuda:1")
