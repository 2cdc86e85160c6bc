"""The ``onnxruntime`` backend: an ``.onnx`` file on the best execution provider for the device."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from runtime.errors import OmamaError
from runtime.manifest import TensorSpec
from runtime.sessions.base import Session, check_device, device_index

log = logging.getLogger(__name__)

# ONNX Runtime type strings -> numpy
_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int16)": np.int16,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


ORT_PROVIDERS_GPU = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def import_ort():
    try:
        return importlib.import_module("onnxruntime")
    except ImportError as exc:
        raise OmamaError(
            "onnxruntime not installed (pip install onnxruntime, or onnxruntime-gpu)"
        ) from exc


def ort_providers_for(device: str, available: Sequence[str]) -> list[str]:
    """Execution providers to ask ONNX Runtime for, best first (pure: no ORT call).

    ``cpu``: CPU only. ``cuda``: TensorRT EP and CUDA EP where present, CPU last (for ops
    the GPU providers leave); an error when neither GPU provider exists. ``auto``: the GPU
    providers when present, else CPU.
    """
    device = check_device(device)
    gpu = [p for p in ORT_PROVIDERS_GPU if p in available]
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device.startswith("cuda") and not gpu:
        raise OmamaError(
            "onnxruntime has no CUDA or TensorRT execution provider here (it has "
            f"{', '.join(available) or 'none'}): install onnxruntime-gpu or use --device cpu"
        )
    return [*gpu, "CPUExecutionProvider"]


class OrtSession(Session):
    """An ONNX model on ONNX Runtime.

    Arguments:
        model_path: the ``.onnx`` file (external data next to it).
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (see :func:`ort_providers_for`).
        threads: intra-op threads (None: ONNX Runtime's default, one per core).
        name: the model's name in messages (default: the file's stem).

    The TensorRT execution provider caches the engines it builds (minutes) in
    ``$XDG_CACHE_HOME/omama/ort_trt`` and runs fp32 kernels: fp16 is a separate artifact.
    """

    backend = "onnxruntime"

    def __init__(
        self,
        model_path: str | os.PathLike,
        device: str = "cpu",
        threads: int | None = None,
        name: str | None = None,
    ) -> None:
        ort = import_ort()
        path = Path(model_path)
        if not path.is_file():
            raise OmamaError(f"ONNX model not found: {path}")
        self.name = name or path.stem
        device = check_device(device)
        chosen = ort_providers_for(device, ort.get_available_providers())
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        provider_args = [(p, self._provider_options(p, device)) for p in chosen]
        try:
            self._session = ort.InferenceSession(
                str(path),
                sess_options=options,
                providers=[p for p, _ in provider_args],
                provider_options=[o for _, o in provider_args],
            )
        except Exception as exc:  # ORT raises its own exception types (Fail, InvalidGraph, ...)
            raise OmamaError(f"onnxruntime cannot load {path}: {exc}") from exc
        self.providers = tuple(self._session.get_providers())
        gpu_asked = device.startswith("cuda")
        gpu_got = any(p in ORT_PROVIDERS_GPU for p in self.providers)
        if gpu_asked and not gpu_got:
            raise OmamaError(
                f"onnxruntime could not start a GPU provider for {path.name} "
                f"(asked {', '.join(chosen)}, got {', '.join(self.providers)}): check the CUDA "
                "libraries onnxruntime-gpu needs, or use --device cpu"
            )
        self.device = device if device != "auto" else ("cuda" if gpu_got else "cpu")
        log.debug("onnxruntime: %s on %s", self.name, ", ".join(self.providers))
        self.inputs = tuple(self._info(a) for a in self._session.get_inputs())
        self.outputs = tuple(self._info(a) for a in self._session.get_outputs())

    @staticmethod
    def _provider_options(provider: str, device: str) -> dict:
        index = device_index(device) if device.startswith("cuda") else 0
        if provider == "CUDAExecutionProvider":
            return {"device_id": str(index)}
        if provider == "TensorrtExecutionProvider":
            cache = _cache_home() / "omama" / "ort_trt"
            cache.mkdir(parents=True, exist_ok=True)
            return {
                "device_id": str(index),
                "trt_engine_cache_enable": "True",
                "trt_engine_cache_path": str(cache),
                "trt_fp16_enable": "False",
            }
        return {}

    @staticmethod
    def _info(arg) -> TensorSpec:
        dtype = _ORT_TYPES.get(arg.type)
        if dtype is None:
            raise OmamaError(f"onnxruntime tensor {arg.name} has unsupported type {arg.type}")
        return TensorSpec(arg.name, tuple(arg.shape), np.dtype(dtype).name)

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._session is None:
            raise OmamaError(f"{self._what()} is closed")
        names = [o.name for o in self.outputs]
        return dict(zip(names, self._session.run(names, feeds), strict=True))

    def close(self) -> None:
        self._session = None


def _cache_home() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")


def ort_unavailable(device: str) -> str | None:
    if importlib.util.find_spec("onnxruntime") is None:
        return "onnxruntime not installed (pip install onnxruntime, or onnxruntime-gpu)"
    if device.startswith("cuda"):
        try:
            ort_providers_for(device, import_ort().get_available_providers())
        except OmamaError as exc:
            return str(exc)
    return None
