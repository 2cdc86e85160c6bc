"""The onnxruntime backend on a tiny generated model: metadata, results, feed checks, providers."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.errors import OmamaError
from runtime.manifest import TensorSpec
from runtime.sessions import OrtSession, ort_providers_for
from tests.tiny_model import reference


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
