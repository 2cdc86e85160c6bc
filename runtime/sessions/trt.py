"""The ``tensorrt`` backend: a serialized TensorRT 10 engine run by polygraphy's ``TrtRunner``.

Refuses an engine built with another TensorRT version or on another GPU, in one line.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import OmamaError
from runtime.manifest import TensorSpec
from runtime.sessions.base import Session, check_device, gpu_name

log = logging.getLogger(__name__)


def import_tensorrt():
    if importlib.util.find_spec("tensorrt") is None:
        raise OmamaError("TensorRT not installed (python package `tensorrt`)")
    try:
        return importlib.import_module("tensorrt")
    except Exception as exc:  # a broken install fails in many ways (missing libnvinfer, ...)
        raise OmamaError(
            f"TensorRT is installed but does not load: {_one_line(exc) or type(exc).__name__}"
        ) from exc


def import_polygraphy():
    """The polygraphy pieces the TensorRT backend runs engines with (a namespace)."""
    import contextlib
    from types import SimpleNamespace

    try:
        from polygraphy.backend.common import BytesFromPath
        from polygraphy.backend.trt import EngineFromBytes, TrtRunner
        from polygraphy.datatype import DataType
        from polygraphy.exception import PolygraphyException
        from polygraphy.logger import G_LOGGER
    except ImportError as exc:
        raise OmamaError(
            "the TensorRT backend needs polygraphy to run engines (pip install polygraphy)"
        ) from exc

    def quiet():
        """polygraphy prints its info messages ("Loading bytes from ...") on stdout: keep
        only errors while a session loads, unless someone asked for even less."""
        if G_LOGGER.module_severity.get() >= G_LOGGER.ERROR:
            return contextlib.nullcontext()
        return G_LOGGER.verbosity(G_LOGGER.ERROR)

    return SimpleNamespace(
        BytesFromPath=BytesFromPath,
        EngineFromBytes=EngineFromBytes,
        TrtRunner=TrtRunner,
        DataType=DataType,
        PolygraphyException=PolygraphyException,
        quiet=quiet,
    )


def _one_line(exc: BaseException) -> str:
    """An exception's message on one line (polygraphy's span several)."""
    return " ".join(str(exc).split())


def _version_tuple(version: str, parts: int = 3) -> tuple[str, ...]:
    return tuple(str(version).split(".")[:parts])


def check_engine_compat(
    engine: str,
    built_with: Mapping[str, Any],
    running_tensorrt: str,
    running_gpu: str | None,
) -> None:
    """Refuse an engine that this TensorRT / GPU cannot run, with one clear line.

    ``built_with`` holds what the engine was built with (from the manifest): ``tensorrt``
    (version), ``gpu`` (name), and optionally ``version_compatible`` /
    ``hardware_compatible`` (engines built in TensorRT's compatibility modes). TensorRT
    versions must agree up to the patch level.
    """
    problems = []
    built_trt = built_with.get("tensorrt")
    if (
        built_trt
        and not built_with.get("version_compatible")
        and _version_tuple(built_trt) != _version_tuple(running_tensorrt)
    ):
        problems.append(f"TensorRT {built_trt} (this machine runs TensorRT {running_tensorrt})")
    built_gpu = built_with.get("gpu")
    if built_gpu and not built_with.get("hardware_compatible") and built_gpu != running_gpu:
        problems.append(f"the GPU {built_gpu} (this machine has {running_gpu or 'no GPU'})")
    if problems:
        raise OmamaError(
            f"engine {engine} was built for {' and '.join(problems)}: rebuild it here with "
            "`omama export --engines`, or use --backend onnxruntime"
        )


class TrtSession(Session):
    """A serialized TensorRT 10 engine, run through polygraphy.

    The engine file is read and deserialised with polygraphy's loaders (``BytesFromPath``,
    ``EngineFromBytes``) and run by its ``TrtRunner``, which owns the execution context,
    the CUDA stream and the device buffers (reused between calls, grown when a larger shape
    arrives). Input shapes are set per call: for dynamic inputs they must lie in
    optimisation profile 0. The engine runs on the current CUDA device (choose the GPU with
    ``CUDA_VISIBLE_DEVICES``).

    Arguments:
        engine_path: the ``.engine`` / ``.plan`` file.
        device: ``cuda`` or ``cuda:N``.
        built_with: what the manifest says the engine was built with (see
            :func:`check_engine_compat`); checked before deserialising.
    """

    backend = "tensorrt"

    def __init__(
        self,
        engine_path: str | os.PathLike,
        device: str = "cuda",
        built_with: Mapping[str, Any] | None = None,
        name: str | None = None,
    ) -> None:
        self._runner = None
        self._engine = None
        device = check_device(device)
        if device == "auto":
            device = "cuda"
        if device == "cpu":
            raise OmamaError("the TensorRT backend runs on a GPU only: use --device cuda")
        path = Path(engine_path)
        if not path.is_file():
            raise OmamaError(f"TensorRT engine not found: {path}")
        self.name = name or path.stem
        self.device = device
        trt = import_tensorrt()
        pg = import_polygraphy()
        running_gpu = gpu_name(device)
        if running_gpu is None:
            raise OmamaError(f"TensorRT {trt.__version__} installed but no NVIDIA GPU {device}")
        if built_with:
            check_engine_compat(path.name, built_with, trt.__version__, running_gpu)
        self._polygraphy_error = pg.PolygraphyException
        with pg.quiet():
            try:
                engine = pg.EngineFromBytes(pg.BytesFromPath(str(path)))()
            except Exception as exc:  # PolygraphyException, or TensorRT's own on a bad plan
                raise OmamaError(
                    f"TensorRT {trt.__version__} on {running_gpu} cannot load engine "
                    f"{path.name} ({_one_line(exc) or type(exc).__name__}): it was probably "
                    "built with another TensorRT version or GPU; rebuild it with "
                    "`omama export --engines`"
                ) from exc
            inputs, outputs = [], []
            for i in range(engine.num_io_tensors):
                tname = engine.get_tensor_name(i)
                shape = tuple(int(d) if d >= 0 else None for d in engine.get_tensor_shape(tname))
                trt_dtype = engine.get_tensor_dtype(tname)
                try:  # TensorRT -> polygraphy -> numpy, as TrtRunner types its outputs
                    dtype = pg.DataType.to_dtype(
                        pg.DataType.from_dtype(trt_dtype, "tensorrt"), "numpy"
                    )
                except pg.PolygraphyException:  # bfloat16, fp8, int4, ...
                    dtype = None
                if dtype is None:  # polygraphy returns None for a type it does not map
                    raise OmamaError(
                        f"engine {path.name}: tensor {tname} has type {trt_dtype}, which numpy "
                        "cannot hold"
                    )
                info = TensorSpec(tname, shape, np.dtype(dtype).name)
                is_input = engine.get_tensor_mode(tname) == trt.TensorIOMode.INPUT
                (inputs if is_input else outputs).append(info)
            self.inputs, self.outputs = tuple(inputs), tuple(outputs)
            runner = pg.TrtRunner(engine, name=f"omama-{self.name}")
            try:  # execution context, CUDA stream (polygraphy loads libcudart here)
                runner.activate()
            except Exception as exc:  # PolygraphyException, OSError from ctypes, TensorRT's
                raise OmamaError(
                    f"TensorRT could not start engine {path.name} on {running_gpu} "
                    f"(execution context or CUDA runtime): {_one_line(exc) or type(exc).__name__}"
                ) from exc
        self._engine, self._runner = engine, runner
        self.providers = (f"TensorRT {trt.__version__}",)
        log.debug("tensorrt: %s (TensorRT %s) on %s", self.name, trt.__version__, running_gpu)

    def profile_range(self, name: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(min, max) shapes that profile 0 accepts for input ``name``."""
        if self._engine is None:
            raise OmamaError(f"{self._what()} is closed")
        lo, _, hi = self._engine.get_tensor_profile_shape(name, 0)
        return tuple(int(d) for d in lo), tuple(int(d) for d in hi)

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._runner is None:
            raise OmamaError(f"{self._what()} is closed")
        for info in self.inputs:
            array = feeds[info.name]
            if info.dynamic:
                lo, hi = self.profile_range(info.name)
                if any(s < a or s > b for s, a, b in zip(array.shape, lo, hi, strict=True)):
                    raise OmamaError(
                        f"{self._what()}: input {info.name} shape {array.shape} is outside "
                        f"the engine's profile {lo}..{hi}"
                    )
        try:
            results = self._runner.infer(feeds)
        except (self._polygraphy_error, RuntimeError) as exc:
            detail = _one_line(exc) or type(exc).__name__
            raise OmamaError(f"{self._what()}: TensorRT inference failed: {detail}") from exc
        # polygraphy reuses its host output buffers between calls: hand out copies.
        return {info.name: np.array(results[info.name], copy=True) for info in self.outputs}

    def close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None and runner.is_active:
            runner.deactivate()
        self._engine = None


def trt_unavailable(device: str) -> str | None:
    """Why :class:`TrtSession` cannot run on ``device`` (None when it can): cheap checks
    only, nothing is imported."""
    if device == "cpu":
        return "TensorRT runs on a GPU only (device is cpu)"
    if importlib.util.find_spec("tensorrt") is None:
        return "TensorRT not installed (python package `tensorrt`)"
    if importlib.util.find_spec("polygraphy") is None:
        return "the TensorRT backend needs polygraphy to run engines (pip install polygraphy)"
    if gpu_name("cuda" if device == "auto" else device) is None:
        return "TensorRT installed but no NVIDIA GPU visible"
    return None
