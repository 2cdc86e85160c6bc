"""Inference sessions: one interface, one class per backend, and the backend choice.

Every backend runs a model through the same small interface (polygraphy's runner shape):

- ``inputs`` / ``outputs``: :class:`runtime.manifest.TensorSpec` (name, shape with dynamic
  dims as names or None, numpy dtype name), the type the manifest records them in;
- ``backend``, ``device``, ``name``, ``providers`` (what runs it);
- ``infer(feeds) -> outputs``: dicts of numpy arrays by tensor name;
- ``warmup(n)``, ``close()`` (also a context manager).

Backends:

- ``onnxruntime`` (:class:`OrtSession`): an ``.onnx`` file on the best available execution
  provider (TensorRT EP, CUDA EP, CPU) for the device;
- ``tensorrt`` (:class:`TrtSession`): a serialized TensorRT 10 engine, loaded with
  polygraphy's ``BytesFromPath`` / ``EngineFromBytes`` and run by its ``TrtRunner`` (which
  keeps the execution context, stream and device buffers between calls); refuses an engine
  built with another TensorRT version or on another GPU;
- ``torch``: the PyTorch reference, registered by a higher layer through the entry-point
  group ``omama.backends`` (``runtime`` never imports torch), or by calling
  :func:`register_backend`.

:func:`select_backend` turns ``auto | tensorrt | onnxruntime | torch`` and a device into a
:class:`BackendChoice` (logging what it picked and why); ``choice.open(model)`` opens a
session. An unavailable backend is an :class:`OmamaError` that says why.

This module is the only code that constructs an ONNX Runtime session, a TensorRT engine or
runtime, or a polygraphy runner (``tests/test_layering.py`` parses every module to hold
that): the pipeline, ``omama-run verify``, the export's verification and ``omama bench``
all open artifacts through :func:`open_artifact`, so a verification record speaks for
exactly what users run.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import OmamaError
from runtime.info import nvidia_gpus
from runtime.manifest import TensorSpec

log = logging.getLogger(__name__)

BACKENDS: tuple[str, ...] = ("auto", "tensorrt", "onnxruntime", "torch")
ENTRY_POINT_GROUP = "omama.backends"

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


# ----------------------------------------------------------------------------- interface


class Session(ABC):
    """One loaded model on one backend. Subclasses set the attributes and implement
    :meth:`_run`; :meth:`infer` checks the feeds first."""

    backend: str = ""
    device: str = "cpu"
    name: str = ""
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    providers: tuple[str, ...] = ()  # what runs it: execution providers, library version

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model: ``{input name: array}`` -> ``{output name: array}``.

        Feeds are checked against :attr:`inputs` (names, ranks, static dims) and cast to the
        input dtype when the kind matches (float64 -> float32, int32 -> int64); anything
        else is an :class:`OmamaError` naming the input.
        """
        return self._run(self.check_feeds(feeds))

    @abstractmethod
    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def close(self) -> None:  # noqa: B027 - sessions without resources need nothing
        """Release the backend's resources; the session cannot run afterwards."""

    def warmup(self, n: int = 1, dims: Mapping[str, int] | None = None) -> list[float]:
        """Run ``n`` times on zeros (dynamic dims from ``dims``, else 1); latencies in ms."""
        feeds = {
            info.name: np.zeros(info.concrete_shape(dims), dtype=info.dtype) for info in self.inputs
        }
        latencies_ms = []
        for _ in range(n):
            t0 = time.perf_counter()
            self.infer(feeds)
            latencies_ms.append(1000 * (time.perf_counter() - t0))
        return latencies_ms

    def check_feeds(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        expected = {info.name: info for info in self.inputs}
        missing = [n for n in expected if n not in feeds]
        extra = [n for n in feeds if n not in expected]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing {', '.join(missing)}")
            if extra:
                parts.append(f"unknown {', '.join(extra)}")
            raise OmamaError(
                f"{self._what()}: inputs do not match ({'; '.join(parts)}); it takes "
                f"{'; '.join(i.describe() for i in self.inputs)}"
            )
        out = {}
        for name, info in expected.items():
            array = np.asarray(feeds[name])
            want = np.dtype(info.dtype)
            if array.ndim != len(info.shape) or any(
                isinstance(d, int) and d >= 0 and d != s
                for d, s in zip(info.shape, array.shape, strict=False)
            ):
                raise OmamaError(
                    f"{self._what()}: input {info.describe()} got shape {tuple(array.shape)}"
                )
            if array.dtype != want:
                if array.dtype.kind != want.kind and not (
                    array.dtype.kind in "iu" and want.kind in "iu"
                ):
                    raise OmamaError(
                        f"{self._what()}: input {info.describe()} got dtype {array.dtype}"
                    )
                array = array.astype(want)
            out[name] = np.ascontiguousarray(array)
        return out

    def _what(self) -> str:
        return f"{self.backend} session {self.name or '(model)'}"

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} on {self.device}>"


@dataclass
class CallTiming:
    """One call of an :class:`InstrumentedSession`: host wall time and, when a device timer
    was given, the device time (ms)."""

    host_ms: float
    device_ms: float | None = None


class InstrumentedSession(Session):
    """A session that times every call and may keep its outputs: how ``omama bench``
    measures a pipeline (``Pipeline(..., wrap_session=...)``) without reaching into it.

    Arguments:
        inner: the session to run (attributes such as TensorRT's ``profile_range`` are
            forwarded).
        device_timer: a zero-argument factory of timers with ``start()`` and ``stop() ->
            ms`` (e.g. CUDA events, for work a clock on the host cannot see end); None
            records host time only.
        keep_outputs: keep every call's outputs (e.g. the matcher's similarity blocks).
    """

    def __init__(self, inner: Session, device_timer: Callable[[], Any] | None = None,
                 keep_outputs: bool = False) -> None:  # fmt: skip
        self.inner = inner
        self.backend, self.device, self.name = inner.backend, inner.device, inner.name
        self.inputs, self.outputs = inner.inputs, inner.outputs
        self.providers = tuple(getattr(inner, "providers", ()) or ())
        self.device_timer = device_timer
        self.keep_outputs = keep_outputs
        self.calls: list[CallTiming] = []
        self.kept: list[dict[str, np.ndarray]] = []

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        timer = self.device_timer() if self.device_timer is not None else None
        start = time.perf_counter()
        if timer is not None:
            timer.start()
        out = self.inner.infer(feeds)
        device_ms = timer.stop() if timer is not None else None
        self.calls.append(CallTiming(1e3 * (time.perf_counter() - start), device_ms))
        if self.keep_outputs:
            self.kept.append(out)
        return out

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.inner.infer(feeds)

    def take(self) -> tuple[list[CallTiming], list[dict[str, np.ndarray]]]:
        """The calls (and kept outputs) since the last ``take``, then forget them."""
        calls, kept = self.calls, self.kept
        self.calls, self.kept = [], []
        return calls, kept

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not set yet (failed construction)
            raise AttributeError(name)
        return getattr(self.inner, name)


def _device_index(device: str) -> int:
    """``cuda`` -> 0, ``cuda:1`` -> 1."""
    if ":" in device:
        try:
            return int(device.split(":", 1)[1])
        except ValueError as exc:
            raise OmamaError(f"device must be cpu, cuda or cuda:N, got {device!r}") from exc
    return 0


def check_device(device: str) -> str:
    """Normalise ``cpu | cuda | cuda:N | auto``."""
    device = (device or "auto").lower()
    if device in ("cpu", "cuda", "auto") or device.startswith("cuda:"):
        if device.startswith("cuda:"):
            _device_index(device)
        return device
    raise OmamaError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")


# ----------------------------------------------------------------------------- onnxruntime

ORT_PROVIDERS_GPU = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def _import_ort():
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
        providers: explicit provider list, overriding the device rule.
        trt_cache_dir: where the TensorRT execution provider caches its engines (building
            them takes minutes; default ``$XDG_CACHE_HOME/omama/ort_trt``).
        trt_fp16: let the TensorRT execution provider use fp16 kernels.
    """

    backend = "onnxruntime"

    def __init__(
        self,
        model_path: str | os.PathLike,
        device: str = "cpu",
        threads: int | None = None,
        providers: Sequence[str] | None = None,
        trt_cache_dir: str | os.PathLike | None = None,
        trt_fp16: bool = False,
        name: str | None = None,
    ) -> None:
        ort = _import_ort()
        path = Path(model_path)
        if not path.is_file():
            raise OmamaError(f"ONNX model not found: {path}")
        self.name = name or path.stem
        device = check_device(device)
        chosen = (
            list(providers)
            if providers
            else ort_providers_for(device, ort.get_available_providers())
        )
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        provider_args = [
            (p, self._provider_options(p, device, trt_cache_dir, trt_fp16)) for p in chosen
        ]
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
    def _provider_options(provider: str, device: str, cache_dir, fp16: bool) -> dict:
        index = _device_index(device) if device.startswith("cuda") else 0
        if provider == "CUDAExecutionProvider":
            return {"device_id": str(index)}
        if provider == "TensorrtExecutionProvider":
            cache = Path(cache_dir) if cache_dir else _cache_home() / "omama" / "ort_trt"
            cache.mkdir(parents=True, exist_ok=True)
            return {
                "device_id": str(index),
                "trt_engine_cache_enable": "True",
                "trt_engine_cache_path": str(cache),
                "trt_fp16_enable": str(bool(fp16)),
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


# ----------------------------------------------------------------------------- tensorrt


def _import_tensorrt():
    if importlib.util.find_spec("tensorrt") is None:
        raise OmamaError("TensorRT not installed (python package `tensorrt`)")
    try:
        return importlib.import_module("tensorrt")
    except Exception as exc:  # a broken install fails in many ways (missing libnvinfer, ...)
        raise OmamaError(
            f"TensorRT is installed but does not load: {_one_line(exc) or type(exc).__name__}"
        ) from exc


def _import_polygraphy():
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


def gpu_name(device: str = "cuda") -> str | None:
    """Name of the NVIDIA GPU ``device`` refers to (``nvidia-smi``), or None."""
    gpus = nvidia_gpus()
    index = _device_index(device)
    if index >= len(gpus):
        return None
    return gpus[index].split(",")[0].strip()


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
        trt = _import_tensorrt()
        pg = _import_polygraphy()
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


# ----------------------------------------------------------------------------- registry

SessionFactory = Callable[..., Session]
Availability = Callable[[str], str | None]


@dataclass
class _Backend:
    factory: SessionFactory
    unavailable: Availability  # device -> None when usable, else the reason


_REGISTRY: dict[str, _Backend] = {}
_DISCOVERED = False


def register_backend(
    name: str, factory: SessionFactory, unavailable: Availability | None = None
) -> None:
    """Make backend ``name`` available: ``factory(model, device=..., **options) -> Session``.

    ``unavailable(device)`` returns None when the backend can run on ``device``, else a
    one-line reason. Registering a name again replaces it.
    """
    _REGISTRY[name] = _Backend(factory, unavailable or (lambda device: None))


def _discover() -> None:
    """Load the backends other layers announce in the ``omama.backends`` entry points."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        if ep.name in _REGISTRY:
            continue
        try:
            ep.load()()
        except Exception as exc:  # a broken plugin must not break the other backends
            log.warning("backend plugin %s (%s) failed to load: %s", ep.name, ep.value, exc)


def _ort_unavailable(device: str) -> str | None:
    if importlib.util.find_spec("onnxruntime") is None:
        return "onnxruntime not installed (pip install onnxruntime, or onnxruntime-gpu)"
    if device.startswith("cuda"):
        try:
            ort_providers_for(device, _import_ort().get_available_providers())
        except OmamaError as exc:
            return str(exc)
    return None


def _trt_unavailable(device: str) -> str | None:
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


register_backend("onnxruntime", OrtSession, _ort_unavailable)
register_backend("tensorrt", TrtSession, _trt_unavailable)


def backend_status(device: str = "auto") -> dict[str, str | None]:
    """``{backend: None if usable on device else reason}`` for every known backend."""
    device = check_device(device)
    _discover()
    status = {name: b.unavailable(device) for name, b in sorted(_REGISTRY.items())}
    if "torch" not in status:
        status["torch"] = _torch_missing()
    return status


def _torch_missing() -> str:
    return (
        "the torch backend is not registered: install omama with its training extra "
        "(pip install 'omama[train]'), which provides it"
    )


@dataclass(frozen=True)
class BackendChoice:
    """The backend :func:`select_backend` picked, and why."""

    name: str
    device: str
    reason: str
    options: dict = field(default_factory=dict)

    def open(self, model: Any, **options: Any) -> Session:
        """Open ``model`` (a path for onnxruntime / tensorrt; what the torch plugin takes
        for torch) on this backend and device."""
        backend = _REGISTRY[self.name]
        return backend.factory(model, device=self.device, **{**self.options, **options})


def select_backend(
    name: str = "auto", device: str = "auto", engines_available: bool = True
) -> BackendChoice:
    """Pick the backend for ``--backend NAME --device DEVICE`` and log the choice.

    ``auto``: TensorRT engines when TensorRT and a GPU are present (and the artifacts hold
    engines, ``engines_available``), else ONNX Runtime with the best execution provider
    for the device. A named backend that cannot run is an :class:`OmamaError` saying why.
    """
    if name not in BACKENDS:
        raise OmamaError(f"backend must be one of {', '.join(BACKENDS)}, got {name!r}")
    device = check_device(device)
    if name == "torch":
        _discover()
        if "torch" not in _REGISTRY:
            raise OmamaError(_torch_missing())
    if name != "auto":
        why_not = _REGISTRY[name].unavailable(device)
        if why_not:
            raise OmamaError(f"backend {name} unavailable: {why_not}")
        choice = BackendChoice(name, _resolve_device(name, device), "asked for")
    else:
        choice = _auto(device, engines_available)
    # What auto picked is news; a backend the user named is only confirmed (debug).
    level = logging.INFO if name == "auto" else logging.DEBUG
    log.log(level, "backend: %s on %s (%s)", choice.name, choice.device, choice.reason)
    return choice


def _auto(device: str, engines_available: bool) -> BackendChoice:
    trt_why_not = _trt_unavailable(device)
    if trt_why_not is None and not engines_available:
        trt_why_not = "the artifacts hold no TensorRT engines"
    if trt_why_not is None:
        return BackendChoice(
            "tensorrt", _resolve_device("tensorrt", device), "TensorRT and a GPU found"
        )
    ort_why_not = _ort_unavailable(device)
    if ort_why_not is not None:
        raise OmamaError(f"no backend can run on {device}: {trt_why_not}; {ort_why_not}")
    ort_device = _resolve_device("onnxruntime", device)
    provider = "GPU providers" if ort_device.startswith("cuda") else "CPU"
    return BackendChoice("onnxruntime", ort_device, f"{trt_why_not}; onnxruntime on {provider}")


def _resolve_device(backend: str, device: str) -> str:
    """``auto`` -> the device the backend will use; plugins resolve ``auto`` themselves."""
    if device != "auto":
        return device
    if backend == "tensorrt":
        return "cuda"
    if backend == "onnxruntime":
        available = _import_ort().get_available_providers()
        return "cuda" if any(p in available for p in ORT_PROVIDERS_GPU) else "cpu"
    return device


# ----------------------------------------------------------------------------- artifacts


@dataclass(frozen=True)
class ModelRef:
    """What the ``torch`` backend is given instead of a file: the manifest entry of a model
    (its recorded configuration) and where to look for the original weights files."""

    manifest: Any
    entry: Any
    weights_dirs: tuple[Path, ...] = ()


def open_artifact(
    choice: BackendChoice,
    manifest: Any,
    entry: Any,
    threads: int | None = None,
    weights_dirs: Sequence[str | os.PathLike] = (),
) -> Session:
    """Open one model file of an artifacts folder (a ``runtime.manifest.ArtifactFile`` of a
    loaded ``Manifest``) on ``choice``'s backend and device: the one way the pipeline,
    ``omama-run verify``, the export's verification and ``omama bench`` open models.

    ONNX Runtime gets the file and ``threads``; TensorRT the engine and what the manifest
    says it was built with (a foreign engine is refused in one line); the torch backend a
    :class:`ModelRef` from which it rebuilds the module the file was exported from.
    """
    path = manifest.path_of(entry)
    if choice.name == "onnxruntime":
        return choice.open(path, threads=threads, name=entry.model)
    if choice.name == "tensorrt":
        engine = entry.engine
        built_with = None
        if engine is not None:
            built_with = {
                "tensorrt": engine.tensorrt_version,
                "gpu": engine.gpu_name,
                "version_compatible": engine.version_compatible,
                "hardware_compatible": engine.hardware_compatible,
            }
        return choice.open(path, name=entry.model, built_with=built_with)
    ref = ModelRef(manifest, entry, tuple(Path(d) for d in weights_dirs))
    return choice.open(ref, name=entry.model, threads=threads)


PRECISION_CHOICES: tuple[str, ...] = ("auto", "fp32", "fp16")


@dataclass(frozen=True)
class ArtifactPlan:
    """Which backend, device, file format and precision a run of an artifacts folder uses."""

    choice: BackendChoice
    file_format: str  # "onnx" | "tensorrt"
    precision: str  # "fp32" | "fp16"

    @property
    def backend(self) -> str:
        return self.choice.name

    @property
    def device(self) -> str:
        return self.choice.device


def plan_artifacts(
    manifest: Any, backend: str = "auto", device: str = "auto", precision: str = "auto"
) -> ArtifactPlan:
    """Resolve ``--backend``, ``--device`` and ``--precision`` for an artifacts folder.

    ``auto`` precision: fp16 engines on TensorRT, fp32 ONNX files otherwise; the torch
    backend is the fp32 reference and takes nothing else.
    """
    if precision not in PRECISION_CHOICES:
        raise OmamaError(
            f"precision must be one of {', '.join(PRECISION_CHOICES)}, got {precision!r}"
        )
    has_engines = any(f.format == "tensorrt" for f in manifest.files)
    choice = select_backend(backend, device, engines_available=has_engines)
    file_format = "tensorrt" if choice.name == "tensorrt" else "onnx"
    if precision == "auto":
        precision = "fp16" if choice.name == "tensorrt" else "fp32"
    if choice.name == "torch" and precision != "fp32":
        raise OmamaError("the torch backend is the fp32 reference: use --precision fp32")
    return ArtifactPlan(choice, file_format, precision)
