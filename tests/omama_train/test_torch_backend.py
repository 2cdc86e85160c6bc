"""The torch backend (``omama_train.torch_backend``): a session of the runtime's interface,
found through the ``omama.backends`` entry point, equal to ONNX Runtime on the same model."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.errors import OmamaError
from runtime.sessions import OrtSession, registry, select_backend
from tests.tiny_model import B, W


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
