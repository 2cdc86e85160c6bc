"""The ``torch`` backend of ``omama-run``: PyTorch modules behind the runtime's session API.

``runtime`` never imports torch, so this backend lives here and announces itself through the
entry-point group ``omama.backends``::

    [project.entry-points."omama.backends"]
    torch = "omama_train.torch_backend:register"

:func:`runtime.sessions.select_backend` loads it only when ``--backend torch`` is asked for.
A :class:`TorchSession` runs a given ``nn.Module`` (or a zero-argument loader returning one,
so nothing is built before the backend is chosen) with the same ``infer`` / ``inputs`` /
``outputs`` interface as the ONNX Runtime and TensorRT sessions; it is the reference that
every other backend is compared with. Importing this module does not import torch.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from runtime.errors import OmamaError
from runtime.sessions import Session, TensorInfo, check_device, register_backend

TensorSpec = TensorInfo | tuple[str, Sequence[Any], Any]


def _as_info(spec: TensorSpec) -> TensorInfo:
    if isinstance(spec, TensorInfo):
        return spec
    try:
        name, shape, dtype = spec
    except (TypeError, ValueError) as exc:
        raise OmamaError(
            f"a torch session tensor is a TensorInfo or (name, shape, dtype), got {spec!r}"
        ) from exc
    return TensorInfo(str(name), tuple(shape), np.dtype(dtype))


def resolve_torch_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; others unchanged."""
    device = check_device(device)
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _flatten(value: Any) -> list:
    """Tensors of a module's output in order (nested tuples/lists flattened depth-first)."""
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in _flatten(item)]
    return [value]


class TorchSession(Session):
    """PyTorch module(s) with the runtime's session interface.

    Arguments:
        module: an ``nn.Module``, or a zero-argument callable returning one (built here).
            It is called as ``module(*inputs)`` in input order and returns a tensor, a
            (nested) tuple / list of tensors in output order, or a dict by output name.
        inputs / outputs: :class:`TensorInfo` or ``(name, shape, dtype)`` of each tensor,
            e.g. another session's ``inputs`` / ``outputs`` so both take the same feeds.
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
        threads: torch's intra-op threads (process-wide in PyTorch), or None to leave it.
    """

    backend = "torch"

    def __init__(
        self,
        module: Any,
        inputs: Sequence[TensorSpec],
        outputs: Sequence[TensorSpec],
        device: str = "cpu",
        name: str | None = None,
        threads: int | None = None,
    ) -> None:
        import torch

        self.device = resolve_torch_device(device)
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise OmamaError("the torch backend was asked for cuda but torch sees no GPU")
        if threads:
            torch.set_num_threads(int(threads))
        if not isinstance(module, torch.nn.Module):
            if not callable(module):
                raise OmamaError(
                    f"the torch backend runs an nn.Module or a loader returning one, got "
                    f"{type(module).__name__}"
                )
            module = module()
            if not isinstance(module, torch.nn.Module):
                raise OmamaError(f"the torch model loader returned {type(module).__name__}")
        self.inputs = tuple(_as_info(s) for s in inputs)
        self.outputs = tuple(_as_info(s) for s in outputs)
        if not self.inputs or not self.outputs:
            raise OmamaError("a torch session needs at least one input and one output")
        self.name = name or type(module).__name__
        self._module = module.eval().to(self.device)

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        if self._module is None:
            raise OmamaError(f"{self._what()} is closed")
        with torch.inference_mode():
            args = [torch.from_numpy(feeds[i.name]).to(self.device) for i in self.inputs]
            result = self._module(*args)
        names = [o.name for o in self.outputs]
        if isinstance(result, Mapping):
            missing = [n for n in names if n not in result]
            if missing:
                raise OmamaError(f"{self._what()}: the module returned no {', '.join(missing)}")
            values = [result[n] for n in names]
        else:
            values = _flatten(result)
            if len(values) != len(names):
                raise OmamaError(
                    f"{self._what()}: the module returned {len(values)} tensors for "
                    f"{len(names)} outputs ({', '.join(names)})"
                )
        return {n: v.detach().cpu().numpy() for n, v in zip(names, values, strict=True)}

    def close(self) -> None:
        self._module = None


def _open(
    model: Any,
    device: str = "auto",
    inputs: Sequence[TensorSpec] = (),
    outputs: Sequence[TensorSpec] = (),
    name: str | None = None,
    threads: int | None = None,
) -> TorchSession:
    """Factory for :func:`runtime.sessions.register_backend` (``BackendChoice.open``)."""
    return TorchSession(model, inputs, outputs, device=device, name=name, threads=threads)


def _unavailable(device: str) -> str | None:
    if importlib.util.find_spec("torch") is None:
        return "PyTorch not installed (pip install 'omama[train]')"
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            return "PyTorch sees no CUDA GPU"
    return None


def register() -> None:
    """Entry point of ``omama.backends``: make ``--backend torch`` available."""
    register_backend("torch", _open, _unavailable)
