"""The backend registry and :func:`select_backend`:
``auto | tensorrt | onnxruntime | openvino | torch``.

``onnxruntime``, ``tensorrt`` and ``openvino`` are registered here; ``torch`` (the PyTorch
reference) is registered by a higher layer through the entry-point group ``omama.backends``
(``runtime`` never imports torch), or by calling :func:`register_backend`.

What ``auto`` picks on a CPU is one table, :data:`CPU_AUTO` (see :func:`cpu_auto_backend`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from runtime.errors import OmamaError
from runtime.sessions.base import Session, check_device
from runtime.sessions.openvino import OpenVinoSession, openvino_unavailable
from runtime.sessions.ort import ORT_PROVIDERS_GPU, OrtSession, import_ort, ort_unavailable
from runtime.sessions.trt import TrtSession, trt_unavailable

log = logging.getLogger(__name__)

BACKENDS: tuple[str, ...] = ("auto", "tensorrt", "onnxruntime", "openvino", "torch")
ENTRY_POINT_GROUP = "omama.backends"

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


register_backend("onnxruntime", OrtSession, ort_unavailable)
register_backend("tensorrt", TrtSession, trt_unavailable)
register_backend("openvino", OpenVinoSession, openvino_unavailable)

# What `--backend auto` runs on a CPU, per run precision: the first installed backend of each
# row, the fastest measured (2 threads, random weights, a shared 2-core Xeon with AVX-512 BF16
# and AMX; each pair of figures from one round-robin run). ViT-B/14-reg at 700x700 px
# (benchmarks/bench_cpu_precisions.py): ONNX Runtime fp32 3567 ms, OpenVINO f32 2728 ms (1.31x;
# 1.38x on the outlier profile), OpenVINO bf16 838 ms; the NNCF int8 file: OpenVINO 1052 ms,
# ONNX Runtime 2176 ms. A whole `omama-run pair` at the official sizes
# (benchmarks/bench_pair.py): ONNX Runtime fp32 14.6 s, OpenVINO fp32 12.0 s, bf16 4.7 s,
# int8 3.9 s (OpenVINO) and 9.5 s (ONNX Runtime). bf16 exists on OpenVINO only; fp16 files are
# for GPUs (the openvino backend refuses them).
CPU_AUTO: dict[str, tuple[str, ...]] = {
    "fp32": ("openvino", "onnxruntime"),
    "fp16": ("onnxruntime",),
    "bf16": ("openvino",),
    "int8": ("openvino", "onnxruntime"),
}


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
    name: str = "auto",
    device: str = "auto",
    engines_available: bool = True,
    precision: str = "fp32",
) -> BackendChoice:
    """Pick the backend for ``--backend NAME --device DEVICE`` and log the choice.

    ``auto``: TensorRT engines when TensorRT and a GPU are present (and the artifacts hold
    engines of the run's precision, ``engines_available``); else on a GPU ONNX Runtime with
    its GPU providers; else on the CPU the first installed backend of
    :data:`CPU_AUTO`'s row for ``precision`` (a run precision: fp32, fp16, bf16 or int8).
    bf16 runs on the CPU whatever GPU there is (no GPU backend here computes in bf16). A
    named backend that cannot run is an :class:`OmamaError` saying why.
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
        choice = _auto(device, engines_available, precision)
    # What auto picked is news; a backend the user named is only confirmed (debug).
    level = logging.INFO if name == "auto" else logging.DEBUG
    log.log(level, "backend: %s on %s (%s)", choice.name, choice.device, choice.reason)
    return choice


def cpu_auto_backend(precision: str) -> tuple[str, str]:
    """``(backend, why)``: the first backend of ``CPU_AUTO[precision]`` that can run on the
    CPU; an :class:`OmamaError` listing why none can."""
    if precision not in CPU_AUTO:
        raise OmamaError(f"precision must be one of {', '.join(CPU_AUTO)}, got {precision!r}")
    skipped = []
    for name in CPU_AUTO[precision]:
        backend = _REGISTRY.get(name)
        why_not = backend.unavailable("cpu") if backend else f"{name} is not registered"
        if why_not is None:
            first = "" if not skipped else f" ({'; '.join(skipped)})"
            return name, f"{name} runs {precision} on the CPU{first}"
        skipped.append(why_not)
    offered = " or ".join(CPU_AUTO[precision])
    raise OmamaError(
        f"no backend can run {precision} on the CPU: {precision} runs on {offered} "
        f"({'; '.join(skipped)})"
    )


def _auto(device: str, engines_available: bool, precision: str) -> BackendChoice:
    if precision == "bf16":
        if device.startswith("cuda"):
            raise OmamaError(
                "bf16 runs on the CPU (the openvino backend): use --device cpu, or fp16 on the GPU"
            )
        name, why = cpu_auto_backend(precision)
        return BackendChoice(name, "cpu", why)
    trt_why_not = trt_unavailable(device)
    if trt_why_not is None and not engines_available:
        trt_why_not = "the artifacts hold no TensorRT engines"
    if trt_why_not is None:
        return BackendChoice(
            "tensorrt", _resolve_device("tensorrt", device), "TensorRT and a GPU found"
        )
    ort_why_not = ort_unavailable(device)
    on_gpu = device.startswith("cuda") or (
        device == "auto" and ort_why_not is None and _resolve_device("onnxruntime", device) != "cpu"
    )
    if not on_gpu:
        name, why = cpu_auto_backend(precision)
        return BackendChoice(name, "cpu", f"{trt_why_not}; {why}")
    if ort_why_not is not None:
        raise OmamaError(f"no backend can run on {device}: {trt_why_not}; {ort_why_not}")
    ort_device = _resolve_device("onnxruntime", device)
    return BackendChoice("onnxruntime", ort_device, f"{trt_why_not}; onnxruntime on GPU providers")


def _resolve_device(backend: str, device: str) -> str:
    """``auto`` -> the device the backend will use; plugins resolve ``auto`` themselves."""
    if device != "auto":
        return device
    if backend == "tensorrt":
        return "cuda"
    if backend == "openvino":
        return "cpu"
    if backend == "onnxruntime":
        available = import_ort().get_available_providers()
        return "cuda" if any(p in available for p in ORT_PROVIDERS_GPU) else "cpu"
    return device
