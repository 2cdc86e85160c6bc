"""Opening an artifacts folder's models: the backend, file format and precision of a run
(:func:`plan_artifacts`) and the one way every caller opens a model file (:func:`open_artifact`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.errors import OmamaError
from runtime.sessions.base import Session
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
