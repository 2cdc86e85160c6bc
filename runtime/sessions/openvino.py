"""The ``openvino`` backend: an ``.onnx`` file (fp32, or an int8 QDQ file) on OpenVINO's CPU
plugin, in fp32 or bfloat16 arithmetic.

OpenVINO reads the ONNX file itself (no conversion step, nothing cached on disk). Two
settings decide what it computes:

- ``INFERENCE_PRECISION_HINT``: ``f32`` or ``bf16``. OpenVINO's default on a CPU with
  bfloat16 units (AVX-512 BF16, AMX) is bf16, which changes results: the session always
  sets it, so an fp32 run is fp32 everywhere. bf16 keeps fp32 tensors at the interface
  (inputs and outputs stay float32) and runs the matrix products in bfloat16 inside; it is
  refused on a CPU whose ``OPTIMIZATION_CAPABILITIES`` lack ``BF16`` (OpenVINO would
  silently emulate or ignore it there).
- int8 QDQ files (``omama export --int8``) run OpenVINO's int8 kernels whatever the hint:
  the hint only decides the arithmetic of the layers the file kept in float.

Dynamic dims (the backbone's batch, the matcher's ``B`` and ``N``) stay dynamic: OpenVINO
reshapes per call.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import OmamaError
from runtime.manifest import TensorSpec
from runtime.sessions.base import Session, check_device

log = logging.getLogger(__name__)

# What omama calls the arithmetic -> OpenVINO's INFERENCE_PRECISION_HINT value.
INFERENCE_PRECISIONS = ("f32", "bf16")
NOT_INSTALLED = "openvino not installed (pip install 'omama[openvino]')"
CPU_ONLY = (
    "omama runs OpenVINO on the CPU only (its GPU plugin targets Intel GPUs): use --device "
    "cpu, or onnxruntime / tensorrt for an NVIDIA GPU"
)


def import_openvino() -> Any:
    try:
        import openvino
    except ImportError as exc:
        raise OmamaError(NOT_INSTALLED) from exc
    return openvino


def openvino_version(ov: Any) -> str:
    """``2026.4.1-22982-e213a147257-releases/2026/4`` -> ``2026.4.1``."""
    return str(ov.__version__).split("-", 1)[0]


def openvino_unavailable(device: str) -> str | None:
    """Why :class:`OpenVinoSession` cannot run on ``device`` (None when it can): cheap checks
    only, nothing is imported."""
    if importlib.util.find_spec("openvino") is None:
        return NOT_INSTALLED
    if device.startswith("cuda"):
        return CPU_ONLY
    return None


_CORE: list[Any] = []


def shared_core() -> Any:
    """The process's one ``openvino.Core``, made on first use and kept for the process's
    life (OpenVINO's advice: one Core per process; a session never destroys it)."""
    if not _CORE:
        _CORE.append(import_openvino().Core())
    return _CORE[0]


def bf16_unsupported(core: Any = None) -> str | None:
    """None when this CPU computes in bfloat16 natively (OpenVINO lists ``BF16`` among the CPU
    plugin's ``OPTIMIZATION_CAPABILITIES``: AVX-512 BF16 or AMX), else why not."""
    core = core if core is not None else shared_core()
    capabilities = [str(c).upper() for c in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")]
    if "BF16" in capabilities:
        return None
    cpu = str(core.get_property("CPU", "FULL_DEVICE_NAME"))
    return (
        f"this CPU ({cpu}) has no bfloat16 units (OpenVINO's CPU capabilities: "
        f"{', '.join(capabilities) or 'none'}; bf16 needs AVX-512 BF16 or AMX): use "
        "--precision fp32 or int8"
    )


class OpenVinoSession(Session):
    """An ONNX model on OpenVINO's CPU plugin.

    Arguments:
        model_path: the ``.onnx`` file (fp32, or an int8 QDQ file; external data next to it).
        device: ``cpu`` or ``auto`` (-> ``cpu``); ``cuda`` is refused (:data:`CPU_ONLY`).
        threads: ``INFERENCE_NUM_THREADS`` (None: OpenVINO's default, one per core).
        inference_precision: ``f32`` or ``bf16`` (``INFERENCE_PRECISION_HINT``; see the
            module docstring).
        name: the model's name in messages (default: the file's stem).

    Compiled with ``PERFORMANCE_HINT=LATENCY`` (one stream: one request at a time, all
    threads on it), as the pipeline calls each model once per step.
    """

    backend = "openvino"

    def __init__(
        self,
        model_path: str | os.PathLike,
        device: str = "cpu",
        threads: int | None = None,
        inference_precision: str = "f32",
        name: str | None = None,
    ) -> None:
        self._compiled = self._request = None
        device = check_device(device)
        if device.startswith("cuda"):
            raise OmamaError(f"backend openvino unavailable: {CPU_ONLY}")
        if inference_precision not in INFERENCE_PRECISIONS:
            raise OmamaError(
                f"OpenVINO inference precision must be one of {', '.join(INFERENCE_PRECISIONS)}"
                f", got {inference_precision!r}"
            )
        path = Path(model_path)
        if not path.is_file():
            raise OmamaError(f"ONNX model not found: {path}")
        self.name = name or path.stem
        self.device = "cpu"
        ov = import_openvino()
        core = shared_core()
        if inference_precision == "bf16" and (why := bf16_unsupported(core)):
            raise OmamaError(f"OpenVINO bf16: {why}")
        config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": inference_precision,
            "PERFORMANCE_HINT": "LATENCY",
        }
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        try:
            # The names come from the model as read: compiling may add aliases to a port.
            model = core.read_model(str(path))
            self.inputs = tuple(_spec(port, path) for port in model.inputs)
            self.outputs = tuple(_spec(port, path) for port in model.outputs)
            self._compiled = core.compile_model(model, "CPU", config)
        except OmamaError:
            raise
        except Exception as exc:  # OpenVINO raises RuntimeError with multi-line messages
            raise OmamaError(f"openvino cannot load {path}: {_one_line(exc)}") from exc
        self._request = self._compiled.create_infer_request()
        got = str(self._compiled.get_property("INFERENCE_PRECISION_HINT"))
        self.inference_precision = "bf16" if "bf" in got.lower() else "f32"
        self.providers = (
            f"OpenVINO {openvino_version(ov)} CPU",
            f"inference precision {self.inference_precision}",
        )
        log.debug("openvino: %s on %s", self.name, ", ".join(self.providers))

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._request is None:
            raise OmamaError(f"{self._what()} is closed")
        ordered = [feeds[info.name] for info in self.inputs]
        try:
            # Outputs are copied out of the request's buffers (share_outputs defaults off).
            results = self._request.infer(ordered)
        except Exception as exc:  # RuntimeError from the plugin (a shape it cannot take, ...)
            detail = _one_line(exc)
            raise OmamaError(f"{self._what()}: OpenVINO inference failed: {detail}") from exc
        values = results.to_tuple()
        return {info.name: np.asarray(v) for info, v in zip(self.outputs, values, strict=True)}

    def close(self) -> None:
        self._request = self._compiled = None


def _spec(port: Any, path: Path) -> TensorSpec:
    """A port of the model as read -> :class:`TensorSpec` (dynamic dims: None)."""
    try:
        dtype = np.dtype(port.get_element_type().to_dtype()).name
    except Exception as exc:  # bf16, int4, ...: types numpy cannot hold
        raise OmamaError(
            f"{path.name}: tensor {port.get_any_name()} has type {port.get_element_type()}, "
            "which numpy cannot hold"
        ) from exc
    shape = tuple(
        None if dim.is_dynamic else int(dim.get_length()) for dim in port.get_partial_shape()
    )
    return TensorSpec(port.get_any_name(), shape, dtype)


def _one_line(exc: BaseException) -> str:
    """OpenVINO's messages span several lines of ``Exception from src/...``: keep the last
    meaningful one."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    meaningful = [line for line in lines if not line.startswith(("Exception from", "Check "))]
    return (meaningful or lines or [type(exc).__name__])[-1]
