"""Inference sessions: one interface, one class per backend, and the backend choice.

Every backend runs a model through the same small interface, :class:`Session`
(``base.py``: polygraphy's runner shape, ``infer(feeds) -> outputs``). One module per job:

- ``base.py``: :class:`Session` and the device names (``cpu | cuda | cuda:N | auto``);
- ``ort.py``: ``onnxruntime`` (:class:`OrtSession`), an ``.onnx`` file on the best available
  execution provider (TensorRT EP, CUDA EP, CPU) for the device;
- ``trt.py``: ``tensorrt`` (:class:`TrtSession`), a serialized TensorRT 10 engine, loaded
  with polygraphy's ``BytesFromPath`` / ``EngineFromBytes`` and run by its ``TrtRunner``;
  refuses an engine built with another TensorRT version or on another GPU;
- ``openvino.py``: ``openvino`` (:class:`OpenVinoSession`), an ``.onnx`` file (fp32 or int8
  QDQ) on OpenVINO's CPU plugin in fp32 or bfloat16 arithmetic;
- ``registry.py``: :func:`select_backend` turns ``auto | tensorrt | onnxruntime | openvino
  | torch``, a device and a run precision into a :class:`BackendChoice` (logging what it
  picked and why; on a CPU by the table ``CPU_AUTO``); ``torch`` is registered by a higher
  layer through the entry-point group ``omama.backends``;
- ``artifacts.py``: :func:`plan_artifacts` (which backend offers which run precision) and
  :func:`open_artifact`, how every caller opens the model files of an artifacts folder;
- ``instrumented.py``: :class:`InstrumentedSession`, a wrapper timing every call.

This package is the only code that constructs an ONNX Runtime session, a TensorRT engine
or runtime, an OpenVINO ``Core`` or compiled model, or a polygraphy runner
(``tests/test_layering.py`` parses every module to hold that): the pipeline,
``omama-run verify``, the export's verification and ``omama bench`` all open artifacts
through :func:`open_artifact`, so a verification record speaks for exactly what users run.
The names below are the package's API.
"""

from runtime.sessions.artifacts import (
    ArtifactPlan,
    ModelRef,
    open_artifact,
    plan_artifacts,
    precision_refusal,
)
from runtime.sessions.base import Session, check_device, gpu_name
from runtime.sessions.instrumented import CallTiming, InstrumentedSession
from runtime.sessions.openvino import OpenVinoSession, bf16_unsupported
from runtime.sessions.ort import OrtSession, ort_providers_for
from runtime.sessions.registry import (
    BackendChoice,
    backend_status,
    register_backend,
    select_backend,
)
from runtime.sessions.trt import TrtSession, check_engine_compat

__all__ = [
    "ArtifactPlan",
    "BackendChoice",
    "CallTiming",
    "InstrumentedSession",
    "ModelRef",
    "OpenVinoSession",
    "OrtSession",
    "Session",
    "TrtSession",
    "backend_status",
    "bf16_unsupported",
    "check_device",
    "check_engine_compat",
    "gpu_name",
    "open_artifact",
    "ort_providers_for",
    "plan_artifacts",
    "precision_refusal",
    "register_backend",
    "select_backend",
]
