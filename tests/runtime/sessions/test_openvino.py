"""The openvino backend on the tiny generated model: metadata, fp32 and bf16 results, dynamic
dims, refusals (cuda, bf16 without bfloat16 units, missing or broken files), and what the
registry says about it."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from runtime.errors import OmamaError
from runtime.manifest import TensorSpec
from runtime.sessions import backend_status, openvino, registry, select_backend
from runtime.sessions.openvino import NOT_INSTALLED, OpenVinoSession, bf16_unsupported
from tests.tiny_model import reference

needs_openvino = pytest.mark.skipif(
    importlib.util.find_spec("openvino") is None,
    reason="openvino not installed (pip install 'omama[openvino]'; CI installs the extra)",
)


def _has_bf16() -> bool:
    return importlib.util.find_spec("openvino") is not None and bf16_unsupported() is None


@needs_openvino
def test_openvino_session_metadata_results_and_dynamic_n(tiny_onnx):
    import openvino as ov

    version = ov.__version__.split("-")[0]
    rng = np.random.default_rng(0)
    with OpenVinoSession(tiny_onnx, device="auto", threads=1) as session:
        assert session.providers == (f"OpenVINO {version} CPU", "inference precision f32")
        assert session.backend == "openvino" and session.device == "cpu"
        assert session.name == "tiny" and session.inference_precision == "f32"
        assert session.inputs == (TensorSpec("x", (None, 3), "float32"),)
        assert session.outputs == (
            TensorSpec("y", (None, 2), "float32"),
            TensorSpec("total", (None, 1), "float32"),
        )
        for n in (5, 1, 17, 2):  # one compiled model, reshaped per call
            x = rng.standard_normal((n, 3))  # float64: cast to the input's float32
            out, want = session.infer({"x": x}), reference(x.astype(np.float32))
            assert out["y"].shape == (n, 2) and out["total"].shape == (n, 1)
            np.testing.assert_allclose(out["y"], want["y"], rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(out["total"], want["total"], rtol=1e-6, atol=1e-6)
        assert len(session.warmup(2)) == 2
        with pytest.raises(OmamaError, match=r"got shape \(2, 4\)"):
            session.infer({"x": np.zeros((2, 4), np.float32)})


@needs_openvino
@pytest.mark.skipif(not _has_bf16(), reason="this CPU has no bfloat16 units")
def test_bf16_is_asked_for_and_fp32_is_fp32_on_a_cpu_whose_default_is_bf16(tiny_onnx):
    # 1000 values well away from ReLU's kink: bf16 rounds each input to 8 bits of mantissa.
    x = np.random.default_rng(1).uniform(1.0, 2.0, (1000, 3)).astype(np.float32)
    want = reference(x)["y"]
    with OpenVinoSession(tiny_onnx, threads=1, inference_precision="bf16") as session:
        assert session.providers[1] == "inference precision bf16"
        got = session.infer({"x": x})["y"]
    bf16_err = float(np.abs(got - want).max())
    assert 1e-4 < bf16_err < 5e-2  # rounded, and only by bfloat16's step
    with OpenVinoSession(tiny_onnx, threads=1) as session:  # OpenVINO's own default: bf16
        assert float(np.abs(session.infer({"x": x})["y"] - want).max()) < 1e-5


class _FakeCore:
    def __init__(self, capabilities: list[str]) -> None:
        self.capabilities = capabilities

    def get_property(self, device: str, name: str):
        assert device == "CPU"
        values = {"OPTIMIZATION_CAPABILITIES": self.capabilities, "FULL_DEVICE_NAME": "Old"}
        return values[name]


def test_bf16_support_is_read_from_the_cpu_capabilities():
    assert bf16_unsupported(_FakeCore(["FP32", "BF16", "INT8"])) is None
    why = bf16_unsupported(_FakeCore(["WINOGRAD", "FP32", "INT8", "BIN"]))
    assert why.startswith("this CPU (Old) has no bfloat16 units")
    assert "WINOGRAD, FP32, INT8, BIN" in why and "use --precision fp32 or int8" in why


@needs_openvino
def test_bf16_session_refused_in_one_line_without_bfloat16_units(tiny_onnx, monkeypatch):
    monkeypatch.setattr(openvino, "bf16_unsupported", lambda core: "this CPU (Old) has none")
    with pytest.raises(OmamaError) as err:
        OpenVinoSession(tiny_onnx, inference_precision="bf16")
    assert str(err.value) == "OpenVINO bf16: this CPU (Old) has none"
    OpenVinoSession(tiny_onnx).close()  # f32 does not ask


@needs_openvino
def test_openvino_session_errors(tiny_onnx, tmp_path):
    with pytest.raises(OmamaError, match="runs OpenVINO on the CPU only"):
        OpenVinoSession(tiny_onnx, device="cuda")
    with pytest.raises(OmamaError, match="inference precision must be one of f32, bf16"):
        OpenVinoSession(tiny_onnx, inference_precision="fp16")
    with pytest.raises(OmamaError, match="ONNX model not found"):
        OpenVinoSession(tmp_path / "missing.onnx")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x08\x01garbage")
    with pytest.raises(OmamaError, match="openvino cannot load .*broken.onnx") as err:
        OpenVinoSession(broken)
    assert "\n" not in str(err.value) and "Exception from" not in str(err.value)
    session = OpenVinoSession(tiny_onnx)
    session.close()
    with pytest.raises(OmamaError, match="closed"):
        session.infer({"x": np.zeros((1, 3), np.float32)})


def test_registry_knows_openvino_and_why_it_cannot_run():
    assert "openvino" in registry.BACKENDS
    status = backend_status("cuda")
    assert status["openvino"] in (NOT_INSTALLED, openvino.CPU_ONLY)
    with pytest.raises(OmamaError, match="backend openvino unavailable: "):
        select_backend("openvino", "cuda")
    if importlib.util.find_spec("openvino") is not None:
        assert backend_status("cpu")["openvino"] is None
        choice = select_backend("openvino", "auto")
        assert (choice.name, choice.device) == ("openvino", "cpu")


def test_openvino_not_installed_says_how_to_get_it(monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "openvino" else find_spec(name)
    )
    assert openvino.openvino_unavailable("cpu") == (
        "openvino not installed (pip install 'omama[openvino]')"
    )
    with pytest.raises(OmamaError) as err:
        select_backend("openvino", "cpu")
    assert str(err.value) == (
        "backend openvino unavailable: openvino not installed (pip install 'omama[openvino]')"
    )
