"""Opening an artifacts folder's models: the backend, file format and precision of a run
(:func:`plan_artifacts`) and the one way every caller opens a model file (:func:`open_artifact`).

Run precisions (``--precision``): ``fp32`` and ``fp16`` files; ``bf16``, the fp32 files in
bfloat16 arithmetic (OpenVINO on a CPU with bfloat16 units); ``int8``, the int8 QDQ files of
``omama export --int8`` (and the fp32 files of the models it kept in float).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from runtime.errors import OmamaError
from runtime.manifest import RUN_PRECISIONS
from runtime.sessions.base import Session
from runtime.sessions.openvino import bf16_unsupported
from runtime.sessions.registry import BackendChoice, select_backend


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

    ONNX Runtime gets the file and ``threads``; OpenVINO the file, ``threads`` and the
    arithmetic :func:`plan_artifacts` put in ``choice.options`` (``inference_precision``:
    ``bf16`` for a bf16 run, else ``f32``), except that the models of a bf16 run that make
    hard decisions (the matcher, FastSAM) compute in f32 (:func:`openvino_arithmetic`);
    TensorRT the engine and what the manifest says
    it was built with (a foreign engine is refused in one line); the torch backend a
    :class:`ModelRef` from which it rebuilds the module the file was exported from.
    """
    path = manifest.path_of(entry)
    if choice.name == "onnxruntime":
        return choice.open(path, threads=threads, name=entry.model)
    if choice.name == "openvino":
        asked = choice.options.get("inference_precision", "f32")
        decides = entry.model in (manifest.matcher.model, manifest.fastsam.model)
        arithmetic = openvino_arithmetic(asked, decides)
        return choice.open(path, threads=threads, name=entry.model, inference_precision=arithmetic)
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


def openvino_arithmetic(asked: str, decides: bool) -> str:
    """OpenVINO's arithmetic for one model of a run that asked for ``asked`` (f32 | bf16).

    A bf16 run computes the backbones in bf16 (where bf16 pays: 4x at ViT-B scale) and keeps
    the models that make hard decisions in f32 (``decides``):

    - the matcher: in bf16 its similarities come out rounded to bfloat16's 8-bit mantissa
      (steps of 0.004 near 0.7), where close candidates tie and flip. On the 12 objects of
      the runtime tests' weights export, with the same candidates: bf16 everywhere chose as
      fp32 for 67% of them (top similarity off by 5.8e-3); bf16 backbones and FastSAM with an
      f32 matcher for 100% (2.2e-4); an f32 run with only the matcher in bf16 for 75%;
    - FastSAM: its confidence threshold and NMS turn rounding into candidates gained or lost.
      At the official sizes (``benchmarks/bench_pair.py``, FastSAM-s at 1024 px) bf16 FastSAM
      gave 61 candidates where fp32 gave 64, so no pick could be compared; in f32 it costs
      about 0.46 s of a 3.7 s pair there.
    """
    return "f32" if decides else asked


# ``--precision``: auto, or a run precision (fp32 | fp16 | bf16 | int8).
PRECISION_CHOICES: tuple[str, ...] = ("auto", *RUN_PRECISIONS)
# Run precisions each backend offers. bf16 is arithmetic on the fp32 files, which only
# OpenVINO's CPU plugin does here; fp16 files are GPU files: OpenVINO's CPU plugin would
# widen their weights back and compute in its own precision, so "openvino fp16" would not
# be what its name says (bf16 is the CPU's half precision).
BACKEND_PRECISIONS: dict[str, tuple[str, ...]] = {
    "onnxruntime": ("fp32", "fp16", "int8"),
    "tensorrt": ("fp32", "fp16", "int8"),
    "openvino": ("fp32", "bf16", "int8"),
    "torch": ("fp32",),
}


@dataclass(frozen=True)
class ArtifactPlan:
    """Which backend, device, file format and precision a run of an artifacts folder uses.

    ``precision`` is the run precision (:data:`runtime.manifest.RUN_PRECISIONS`):
    ``Manifest.run_file`` turns it into each model's file; what the backend needs beyond
    the file (OpenVINO's ``inference_precision``) travels in ``choice.options``.
    """

    choice: BackendChoice
    file_format: str  # "onnx" | "tensorrt"
    precision: str  # "fp32" | "fp16" | "bf16" | "int8"

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

    ``auto`` precision: fp16 engines on TensorRT, fp32 otherwise (bf16 and int8 change the
    answers a little: users ask for them). A backend that does not offer the precision
    (:data:`BACKEND_PRECISIONS`) is refused in one line naming those that do; ``auto``
    backend picks by precision (:func:`runtime.sessions.registry.select_backend`).
    """
    if precision not in PRECISION_CHOICES:
        raise OmamaError(
            f"precision must be one of {', '.join(PRECISION_CHOICES)}, got {precision!r}"
        )
    if backend in BACKEND_PRECISIONS and precision != "auto":
        _check_backend_offers(backend, precision)
    missing = missing_engine(manifest, "fp16" if precision == "auto" else precision)
    wanted = "fp32" if precision == "auto" else precision
    choice = select_backend(backend, device, engines_available=missing is None, precision=wanted)
    if missing is not None and choice.reason.startswith(NO_ENGINES):
        choice = replace(choice, reason=missing + choice.reason[len(NO_ENGINES) :])
    file_format = "tensorrt" if choice.name == "tensorrt" else "onnx"
    if precision == "auto":
        precision = "fp16" if choice.name == "tensorrt" else "fp32"
    _check_backend_offers(choice.name, precision)
    _check_files(manifest, file_format, precision)
    if choice.name == "openvino":
        if precision == "bf16" and (why := bf16_unsupported()):
            raise OmamaError(f"--precision bf16: {why}")
        arithmetic = "bf16" if precision == "bf16" else "f32"
        choice = replace(choice, options={**choice.options, "inference_precision": arithmetic})
    return ArtifactPlan(choice, file_format, precision)


NO_ENGINES = "the artifacts hold no TensorRT engines"  # the registry's reason


def missing_engine(manifest: Any, precision: str) -> str | None:
    """None when ``Manifest.run_file`` finds a TensorRT file for every role model of the
    pipeline at run ``precision``, else why not (naming the first model without one).

    A partial set is no set: ``--int8`` builds fp32 engines only for the models it kept in
    float, and TensorRT cannot run a pipeline some of whose models have no engine.
    """
    if precision == "bf16":
        return "bf16 is not a TensorRT precision"
    for model in manifest.role_models().values():
        try:
            manifest.run_file(model, "tensorrt", precision)
        except OmamaError:
            return f"the artifacts hold no {precision} TensorRT engine for {model}"
    return None


def _check_files(manifest: Any, file_format: str, precision: str) -> None:
    """Refuse in one line a run precision whose files the folder lacks altogether, naming
    the export flag that makes them (``Manifest.run_file`` names a single missing model)."""
    flag = {"fp16": "--fp16", "int8": "--int8"}.get(precision)
    if flag is None or any(
        f.format == file_format and f.precision == precision for f in manifest.files
    ):
        return
    kind = "TensorRT engines" if file_format == "tensorrt" else "ONNX files"
    raise OmamaError(
        f"--precision {precision}: the artifacts in {manifest.root} hold no {precision} {kind}: "
        f"export them with `omama export {flag}`"
    )


def precision_refusal(backend: str, precision: str) -> str | None:
    """None when ``backend`` offers the run ``precision`` (:data:`BACKEND_PRECISIONS`; a
    plugin backend not listed there decides for itself), else the one-line refusal naming
    the backends that do."""
    offered = BACKEND_PRECISIONS.get(backend)
    if offered is None or precision in offered:
        return None
    if backend == "torch":
        return "the torch backend is the fp32 reference: use --precision fp32"
    others = [b for b, p in BACKEND_PRECISIONS.items() if precision in p and b != backend]
    hint = {
        "bf16": " (bfloat16 arithmetic on the fp32 files, on CPUs with AVX-512 BF16 or AMX)",
        "fp16": " (fp16 files are for GPUs; on the CPU use bf16 or int8)",
    }.get(precision, "")
    return f"backend {backend} does not run {precision}: use --backend {' or '.join(others)}{hint}"


def _check_backend_offers(backend: str, precision: str) -> None:
    refusal = precision_refusal(backend, precision)
    if refusal is not None:
        raise OmamaError(refusal)
