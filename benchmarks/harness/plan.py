"""What an ``omama bench`` run measures: its configuration and the rows it plans.

:class:`BenchConfig` holds the command's options (validated by :func:`validate_config`);
:func:`plan_rows` turns the asked backends x precisions (and the O-MaMa reference row)
into :class:`RowPlan` records, each runnable or with the reason it is not (backend not
installed, no GPU, no fp16 or int8 files in the artifacts, a precision the backend does
not offer, ...), so unavailable rows still get a line in the report.
:func:`candidate_source` and :func:`fastsam_conf` settle, once for every row, where the
timed runs' candidates come from.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.errors import OmamaError
from runtime.fastsam_post import RANDOM_WEIGHTS_CONF, nms_thresholds

BACKEND_CHOICES = ("torch", "onnxruntime", "tensorrt", "openvino")
PRECISION_CHOICES = ("fp32", "fp16", "bf16", "int8")  # run precisions (runtime.manifest)
# What `omama bench` measures unless told: the GPU comparison. CPU rows are asked for, e.g.
# --backends torch,onnxruntime,openvino --precisions fp32,bf16,int8.
DEFAULT_BACKENDS = ("torch", "onnxruntime", "tensorrt")
DEFAULT_PRECISIONS = ("fp32", "fp16")
CANDIDATE_SOURCES = ("auto", "fastsam", "synthetic")
REFERENCE_ROW = "reference"
TORCH_ROW = "torch fp32"  # the fidelity reference of every other row
# A random-weight FastSAM scores every box between 1e-3 and 1.3e-2, far below the reference's
# 0.4: random-init exports bake 0.01 (it keeps the coarsest level's boxes: up to max_det after
# NMS); older random-init artifacts, exported with 0.4 and runtime NMS, get it at run time.
RANDOM_INIT_FASTSAM_CONF = RANDOM_WEIGHTS_CONF


@dataclass
class BenchConfig:
    """What ``omama bench`` measures; the CLI options map onto these fields."""

    artifacts: Path
    out_dir: Path = Path("bench")
    backends: list[str] = field(default_factory=lambda: list(DEFAULT_BACKENDS))
    precisions: list[str] = field(default_factory=lambda: list(DEFAULT_PRECISIONS))
    device: str = "auto"
    num_pairs: int = 10
    objects_per_frame: int = 4
    repeats: int = 3
    reference_repeats: int = 1
    warmup: int = 2
    threads: int | None = None
    seed: int = 0
    candidate_source: str = "auto"
    fastsam_conf: float | None = None
    reference: bool = True
    score_root: Path | None = None
    score_split: str | None = None
    score_frames: int | None = 10
    weights_dirs: list[Path] = field(default_factory=list)
    timeout_s: float = 3600.0


@dataclass
class RowPlan:
    """A row of the report before it runs: runnable (``reason`` None) or not."""

    label: str
    kind: str  # "pipeline" (the deployed pipeline) or "reference" (the O-MaMa shape)
    backend: str
    precision: str
    size_mb: float | None = None
    files: list[str] = field(default_factory=list)
    reason: str | None = None


def parse_list(text: str | Sequence[str], allowed: Sequence[str], what: str) -> list[str]:
    """``"a,b"`` (or a list) -> ``["a", "b"]``, each in ``allowed``, order kept, no repeats."""
    items = text.split(",") if isinstance(text, str) else list(text)
    out = []
    for item in (i.strip().lower() for i in items):
        if not item:
            continue
        if item not in allowed:
            raise OmamaError(f"{what} must be among {', '.join(allowed)}, got {item!r}")
        if item not in out:
            out.append(item)
    if not out:
        raise OmamaError(f"give at least one of {', '.join(allowed)} for {what}")
    return out


def validate_config(config: BenchConfig) -> None:
    """One OmamaError naming the flag for the first out-of-range option."""
    for name, value, least in (
        ("--num-pairs", config.num_pairs, 1),
        ("--objects-per-frame", config.objects_per_frame, 1),
        ("--repeats", config.repeats, 1),
        ("--warmup", config.warmup, 0),
        ("--reference-repeats", config.reference_repeats, 1),
    ):
        if value < least:
            raise OmamaError(f"{name} must be at least {least}, got {value}")
    if config.threads is not None and config.threads < 1:
        raise OmamaError(f"--threads must be at least 1, got {config.threads}")
    if config.candidate_source not in CANDIDATE_SOURCES:
        raise OmamaError(
            f"--candidate-source must be one of {', '.join(CANDIDATE_SOURCES)}, "
            f"got {config.candidate_source!r}"
        )
    if config.fastsam_conf is not None and not 0.0 <= config.fastsam_conf < 1.0:
        raise OmamaError(f"--fastsam-conf must lie in [0, 1), got {config.fastsam_conf}")
    if config.score_frames is not None and config.score_frames < 1:
        raise OmamaError(f"--score-frames must be at least 1, got {config.score_frames}")


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when an NVIDIA GPU is visible, else ``cpu``."""
    from runtime.sessions import check_device, gpu_name

    device = check_device(device)
    if device != "auto":
        return device
    return "cuda" if gpu_name("cuda") is not None else "cpu"


def candidate_source(config: BenchConfig, manifest: Any) -> str:
    """``fastsam`` or ``synthetic``: ``auto`` picks FastSAM when the artifacts hold it."""
    source = config.candidate_source
    if source == "auto":
        source = "fastsam" if manifest.fastsam.included else "synthetic"
    if source == "fastsam" and not manifest.fastsam.included:
        raise OmamaError(
            f"--candidate-source fastsam: the artifacts in {config.artifacts} hold no FastSAM "
            "model (exported with --no-fastsam-export); use --candidate-source synthetic"
        )
    return source


def fastsam_conf(
    config: BenchConfig, manifest: Any, source: str
) -> tuple[float | None, str | None]:
    """The FastSAM confidence threshold every row runs with (None: the manifest's) and the
    report's note when it was lowered for random weights."""
    conf, note = config.fastsam_conf, None
    manifest_conf = float(manifest.fastsam.conf)
    if (
        source == "fastsam"
        and conf is None
        and manifest.random_init
        and manifest_conf > RANDOM_INIT_FASTSAM_CONF
        and not manifest.fastsam.nms_in_graph
    ):
        conf = RANDOM_INIT_FASTSAM_CONF
        note = (
            "random-weight FastSAM scores lie between 1e-3 and 1.3e-2: its confidence "
            f"threshold is lowered from {manifest_conf} to {conf} so the matcher "
            "sees candidates (--fastsam-conf sets it)"
        )
    if source == "fastsam" and conf is not None:
        # Refused here, in one line, before any worker starts: a conf below the one baked
        # into an in-graph NMS (the workers apply it through Pipeline.set_fastsam_thresholds).
        nms_thresholds(manifest.fastsam, conf=conf)
    return conf, note


def row_files(manifest: Any, backend: str, precision: str) -> tuple[list[Any], str | None]:
    """The artifact files a row runs (torch: the fp32 ONNX files, whose weights it holds;
    otherwise ``Manifest.run_file``'s: bf16 the fp32 files, int8 the int8 files and the
    float ones an int8 export kept), or the reason they are not there."""
    fmt = "tensorrt" if backend == "tensorrt" else "onnx"
    wanted = "fp32" if backend == "torch" else precision
    files, missing = [], []
    for model in dict.fromkeys(manifest.role_models().values()):
        try:
            files.append(manifest.run_file(model, fmt, wanted))
        except OmamaError:
            missing.append(model)
    if not missing:
        return files, None
    kind = "fp32" if wanted == "bf16" else wanted
    if fmt == "tensorrt":
        engines = manifest.engines
        why = engines.reason or engines.note or "exported without engines"
        return files, (
            f"no TensorRT {kind} engine for {', '.join(missing)} in the artifacts ({why})"
        )
    hint = {"fp16": " (export with --fp16)", "int8": " (export with --int8)"}.get(kind, "")
    return files, f"no {kind} ONNX file for {', '.join(missing)} in the artifacts{hint}"


def backend_reasons(device: str) -> dict[str, str | None]:
    """Why each backend cannot run on ``device`` (None: it can). TensorRT missing is said
    first, whatever the device."""
    from runtime.sessions import backend_status

    status = backend_status(device)
    reasons = {name: status.get(name) for name in BACKEND_CHOICES}
    if importlib.util.find_spec("tensorrt") is None:
        not_installed = "TensorRT not installed (python package `tensorrt`)"
        other = reasons["tensorrt"]
        reasons["tensorrt"] = not_installed + (
            f"; {other}"
            if other and other != not_installed and "not installed" not in other
            else ""
        )
    return reasons


def _size_mb(files: Sequence[Any]) -> float:
    """Size of model files (external data included), MB."""
    return sum(ref.size_bytes for f in files for ref in f.file_refs()) / 1e6


def _plan(
    label: str, kind: str, backend: str, precision: str, manifest: Any, reason: str | None
) -> RowPlan:
    """A row running the artifact files of ``backend`` x ``precision``, unavailable for
    ``reason`` or for missing files."""
    files, missing = row_files(manifest, backend, precision)
    plan = RowPlan(label, kind, backend, precision, files=[f.path for f in files])
    plan.reason = reason or missing
    if plan.reason is None:
        plan.size_mb = _size_mb(files)
    return plan


def precision_reason(backend: str, precision: str) -> str | None:
    """Why ``backend`` (installed and usable on the device) cannot run ``precision`` here:
    a precision it does not offer, or bf16 on a CPU without bfloat16 units."""
    from runtime.sessions import bf16_unsupported, precision_refusal

    if backend == "torch" and precision != "fp32":
        return (
            f"the torch backend is the fp32 reference ({precision} runs from the exported "
            "ONNX files and engines)"
        )
    refusal = precision_refusal(backend, precision)
    if refusal is None and backend == "openvino" and precision == "bf16":
        refusal = bf16_unsupported()
    return refusal


def plan_rows(config: BenchConfig, manifest: Any, device: str) -> list[RowPlan]:
    """Every requested backend x precision (and the reference row), runnable or with the
    reason it is not."""
    reasons = backend_reasons(device)
    plans = []
    for backend in config.backends:
        for precision in config.precisions:
            reason = reasons[backend] or precision_reason(backend, precision)
            label = f"{backend} {precision}"
            plans.append(_plan(label, "pipeline", backend, precision, manifest, reason))
    if config.reference:
        reason = reasons["torch"] and f"needs the torch backend: {reasons['torch']}"
        plans.append(_plan(REFERENCE_ROW, "reference", "torch", "fp32", manifest, reason))
    return plans


def fidelity_reference_plan(
    plans: Sequence[RowPlan], config: BenchConfig, manifest: Any, device: str
) -> RowPlan | None:
    """The torch fp32 row whose outputs every other row is compared with: the asked one
    when it can run, else an untimed one made for that purpose, else None."""
    torch_plan = next((p for p in plans if p.label == TORCH_ROW), None)
    if torch_plan is not None and torch_plan.reason is None:
        return torch_plan
    runnable = any(p.reason is None for p in plans)
    wanted = runnable or config.reference
    torch_usable = backend_reasons(device)["torch"] is None
    if wanted and torch_usable and row_files(manifest, "torch", "fp32")[1] is None:
        return RowPlan(TORCH_ROW, "pipeline", "torch", "fp32")
    return None
