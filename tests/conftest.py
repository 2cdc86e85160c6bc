"""Shared test fixtures. Tests never touch the network: ultralytics runs offline."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["ULTRALYTICS_SAFE_LOAD"] = "1"  # as omama sets it: never unpickle freely

from runtime.sessions import registry  # noqa: E402
from tests.tiny_model import B, W  # noqa: E402

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="session")
def eval_fixture_dir() -> Path:
    """The real exo->ego evaluation case with published metrics (tests/fixtures/README.md)."""
    return FIXTURES / "eval_casa_gio"


# A tiny ONNX model with a numpy reference (tests/tiny_model.py), and a session-backend
# registry a test may change without leaking into the others: used by the session tests
# of every layer.


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
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_DISCOVERED", False)
