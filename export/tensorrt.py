"""TensorRT engines built with polygraphy, and the TensorRT vs ONNX Runtime comparison.

fp16 engines are built from the fp32 ONNX graphs with ``CreateConfig(fp16=True)``, so TensorRT
picks fp16 kernels where it may while the layers that need range or accumulation
(normalisation, softmax, reductions, and named subgraphs such as the in-graph pooling
weights) are pinned to fp32 with precision constraints. Dynamic axes get one optimisation
profile each (:data:`PROFILE_CANDIDATES`, :data:`PROFILE_OBJECTS`). One timing cache is
shared by all builds of an export, so later builds reuse the kernel timings of earlier ones.
int8 engines are built from the int8 QDQ files with ``CreateConfig(int8=True)``: an
explicitly quantized network carries its scales, no calibrator is needed.

Written against the TensorRT 10 Python API and polygraphy's documented loaders
(``network_from_onnx_path``, ``CreateConfig``, ``Profile``, ``engine_bytes_from_network``,
``save_bytes``): the build yields the serialized engine, which is written to disk without
being deserialised here. Running an engine is the runtime's business: open it with
``runtime.sessions.TrtSession`` (and the ONNX graph with ``runtime.sessions.OrtSession``),
then :func:`compare_sessions` compares the two. Engines are tied to the TensorRT version
and GPU that built them; both are recorded.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import OmamaError
from runtime.manifest import EngineRecord, EnginesRecord, VerificationRecord
from runtime.sessions import Session
from runtime.verification.replay import session_record
from runtime.verification.tolerances import TOLERANCES, check, max_abs_error, worst_error

# Optimisation profiles: candidates N min 1 / opt 64 / max 256; objects B
# opt 1 / max 16. Backbone batches: one frame per view per call, a few for video.
PROFILE_CANDIDATES = (1, 64, 256)
PROFILE_OBJECTS = (1, 1, 16)
PROFILE_BACKBONE_BATCH = (1, 1, 4)


@dataclass(frozen=True)
class ShapeRange:
    """min / opt / max shape of one dynamic input of an optimisation profile."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def to_dict(self) -> dict:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


def tensorrt_status() -> tuple[bool, str]:
    """(usable, why not / what) for building engines here: TensorRT importable and a CUDA GPU."""
    try:
        import tensorrt as trt
    except ImportError:
        return False, (
            "TensorRT is not installed (the `tensorrt` Python package, from NVIDIA's index)"
        )
    import torch

    if not torch.cuda.is_available():
        return False, f"TensorRT {trt.__version__} is installed but no CUDA GPU is visible"
    return True, f"TensorRT {trt.__version__} on {torch.cuda.get_device_name(0)}"


def skipped_engines(fp16: bool, engines: bool, int8: bool = False) -> EnginesRecord | None:
    """The manifest's engines record when an export builds none (not requested without
    ``fp16`` or ``int8``, ``--no-engines``, or no TensorRT / CUDA GPU here); None when it
    builds them."""
    if not fp16 and not int8:
        return EnginesRecord(
            built=False,
            note="engines: not requested (--fp16 builds TensorRT fp16 engines, --int8 int8 ones)",
        )
    if not engines:
        return EnginesRecord(built=False, note="engines: skipped (--no-engines)")
    usable, reason = tensorrt_status()
    if not usable:
        note = f"engines: skipped, {reason}; the ONNX files are complete without them"
        return EnginesRecord(built=False, note=note, reason=reason)
    return None


def gpu_record() -> dict:
    """TensorRT version, GPU name and compute capability of the build machine."""
    import tensorrt as trt
    import torch

    major, minor = torch.cuda.get_device_capability(0)
    return {
        "tensorrt_version": trt.__version__,
        "gpu_name": torch.cuda.get_device_name(0),
        "compute_capability": f"{major}.{minor}",
        "cuda_version": torch.version.cuda,
    }


def dynamic_profile(
    inputs: list,
    candidates: tuple[int, int, int] = PROFILE_CANDIDATES,
    objects: tuple[int, int, int] = PROFILE_OBJECTS,
    batch: tuple[int, int, int] = PROFILE_BACKBONE_BATCH,
) -> dict[str, ShapeRange]:
    """Profile ranges for the dynamic axes of graph inputs (manifest ``TensorSpec`` list).

    Axis names: ``N`` candidates, ``B`` objects, ``batch`` images; static inputs need no
    range and are left out.
    """
    ranges = {"N": candidates, "B": objects, "batch": batch}
    profile: dict[str, ShapeRange] = {}
    for spec in inputs:
        if all(isinstance(d, int) for d in spec.shape):
            continue
        unknown = [d for d in spec.shape if isinstance(d, str) and d not in ranges]
        if unknown:
            raise OmamaError(f"input {spec.name!r} has dynamic axes {unknown} with no profile")
        shapes = [
            tuple(ranges[d][k] if isinstance(d, str) else int(d) for d in spec.shape)
            for k in range(3)
        ]
        profile[spec.name] = ShapeRange(*shapes)
    return profile


def build_engine(
    onnx_path: str | os.PathLike,
    engine_path: str | os.PathLike,
    profile: dict[str, ShapeRange],
    fp16: bool = True,
    timing_cache: str | os.PathLike | None = None,
    fp32_layer_prefixes: tuple[str, ...] = (),
    int8: bool = False,
) -> dict:
    """Build and serialise a TensorRT engine from ``onnx_path``; returns its manifest record.

    ``profile``: shape ranges of the dynamic inputs (empty for static graphs).
    ``int8``: an explicitly quantized (QDQ) graph's int8 layers run in int8; its Q/DQ
    scales are the calibration, so no calibrator is given.
    ``timing_cache``: read when present, then updated, so builds share kernel timings.
    ``fp32_layer_prefixes``: layer-name prefixes kept in fp32 besides the normalisation,
    softmax and reduction layers.
    """
    from polygraphy.backend.common import save_bytes
    from polygraphy.backend.trt import (
        CreateConfig,
        Profile,
        engine_bytes_from_network,
        network_from_onnx_path,
    )
    from polygraphy.exception import PolygraphyException

    engine_path = Path(engine_path)
    start = time.perf_counter()
    try:
        builder, network, parser = network_from_onnx_path(str(onnx_path))
    except PolygraphyException as exc:
        raise OmamaError(f"TensorRT cannot parse {Path(onnx_path).name}: {_one_line(exc)}") from exc
    pinned = _pin_fp32_layers(network, fp32_layer_prefixes) if fp16 else 0
    profiles = []
    if profile:
        trt_profile = Profile()
        for name, shape_range in profile.items():
            trt_profile.add(name, min=shape_range.min, opt=shape_range.opt, max=shape_range.max)
        profiles = [trt_profile]
    cache = Path(timing_cache) if timing_cache is not None else None
    config = CreateConfig(
        fp16=fp16,
        int8=int8,
        profiles=profiles or None,
        precision_constraints="prefer" if pinned else None,
        load_timing_cache=str(cache) if cache is not None and cache.is_file() else None,
    )
    try:
        # The serialized engine (trt.IHostMemory); polygraphy raises when the build fails.
        serialized = engine_bytes_from_network(
            (builder, network, parser),
            config=config,
            save_timing_cache=str(cache) if cache is not None else None,
        )
    except PolygraphyException as exc:
        raise OmamaError(
            f"TensorRT could not build an engine from {Path(onnx_path).name}: {_one_line(exc)}"
        ) from exc
    # save_engine takes an engine object; save_bytes writes any buffer. Written to a temporary
    # name first so that an interrupted build never leaves a truncated engine behind.
    tmp = engine_path.with_name(f".{engine_path.name}.tmp")
    try:
        save_bytes(serialized, str(tmp))
        os.replace(tmp, engine_path)
    finally:
        tmp.unlink(missing_ok=True)
    return {
        **gpu_record(),
        "built_from": Path(onnx_path).name,
        "precision_flags": [flag for flag, on in (("fp16", fp16), ("int8", int8)) if on],
        "fp32_pinned_layers": pinned,
        "profiles": [{name: r.to_dict() for name, r in profile.items()}] if profile else [],
        "timing_cache": cache.name if cache is not None else None,
        "build_s": round(time.perf_counter() - start, 2),
    }


def _pin_fp32_layers(network, prefixes: tuple[str, ...]) -> int:
    """Pin the normalisation, softmax and reduction layers, and those named with one of
    ``prefixes``, to fp32 (precision and output types); returns how many were pinned."""
    import tensorrt as trt

    sensitive = {trt.LayerType.NORMALIZATION, trt.LayerType.SOFTMAX, trt.LayerType.REDUCE}
    pinned = 0
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        if layer.type in sensitive or (prefixes and layer.name.startswith(prefixes)):
            if any(layer.get_output(i).dtype != trt.float32 for i in range(layer.num_outputs)):
                continue  # integer / bool layers have no float precision to pin
            layer.precision = trt.float32
            for i in range(layer.num_outputs):
                layer.set_output_type(i, trt.float32)
            pinned += 1
    return pinned


def engine_record(made: dict) -> EngineRecord:
    """The manifest record of what :func:`build_engine` returned."""
    return EngineRecord(
        tensorrt_version=str(made["tensorrt_version"]),
        gpu_name=str(made["gpu_name"]),
        compute_capability=str(made.get("compute_capability", "")),
        cuda_version=made.get("cuda_version"),
        built_from=str(made.get("built_from", "")),
        precision_flags=tuple(made.get("precision_flags", ())),
        fp32_pinned_layers=int(made.get("fp32_pinned_layers", 0)),
        profiles=tuple(made.get("profiles", ())),
        timing_cache=made.get("timing_cache"),
        build_s=float(made.get("build_s", 0.0)),
    )


def compare_sessions(
    engine_session: Any,
    onnx_session: Any,
    feeds: Iterable[Mapping[str, np.ndarray]],
    relative: Mapping[str, float],
) -> dict[str, dict]:
    """Compare a TensorRT engine with its fp32 ONNX graph on ``feeds``.

    ``engine_session`` / ``onnx_session``: open sessions (anything with
    ``infer(feeds) -> {output: array}``, e.g. ``runtime.sessions.TrtSession`` and
    ``OrtSession``); the caller opens and closes them. ``feeds``: input dicts, each run
    through both. ``relative[name]``: allowed max abs error as a fraction of
    max(1, peak |value|) of the ONNX output over all feeds (so absolute for outputs in
    [-1, 1] such as similarities).

    Returns per output in ``relative``: ``max_abs_err`` (worst over the feeds; NaN when an
    output is broken: NaN values, or a shape other than the ONNX output's), ``allowed`` and
    ``passed`` (error within allowed, NaN fails).
    """
    errors: dict[str, list[float]] = {name: [] for name in relative}
    peaks: dict[str, float] = dict.fromkeys(relative, 0.0)
    runs = 0
    for feed in feeds:
        got = engine_session.infer(feed)
        want = onnx_session.infer(feed)
        for name in relative:
            if name not in got or name not in want:
                raise OmamaError(f"comparison: output {name!r} missing from a session's results")
            reference, value = np.asarray(want[name]), np.asarray(got[name])
            if value.shape != reference.shape:  # no broadcasting: another shape is broken
                errors[name].append(float("nan"))
                continue
            errors[name].append(max_abs_error(value, reference))
            peak = float(np.abs(reference.astype(np.float64)).max(initial=0.0))
            peaks[name] = max(peaks[name], peak)  # a NaN output fails on its error
        runs += 1
    if not runs:
        raise OmamaError("comparison: no feeds to compare on")
    report: dict[str, dict] = {}
    for name, fraction in relative.items():
        error = worst_error(*errors[name])
        allowed = float(fraction) * max(1.0, peaks[name])
        report[name] = {
            "max_abs_err": error,
            "allowed": allowed,
            "passed": bool(error <= allowed),  # False for NaN
        }
    return report


def comparison_tolerances(
    model: str, fastsam_nms_in_graph: bool = False, precision: str = "fp16"
) -> dict[str, float]:
    """``relative`` of :func:`compare_sessions` for ``model``'s outputs: the engine's
    ``precision`` tolerances (fp32 engines: fp16's, TensorRT picks its own kernels)."""
    tol = TOLERANCES["fp16" if precision == "fp32" else precision]
    if model == "matcher":
        return {"similarities": tol["similarities_max_abs"]}
    if model == "fastsam" and fastsam_nms_in_graph:
        # Detection rows come out in score order and tie-decided: compared element-wise
        # they would differ on a swapped tie. The parity run matches them instead.
        return {"output1": tol["fastsam_rel"]}
    if model == "fastsam":
        return {"output0": tol["fastsam_rel"], "output1": tol["fastsam_rel"]}
    return {"feats": tol["feats_rel"]}


def comparison_record(
    engine_session: Session,
    onnx_session: Session,
    file: str,
    model: str,
    feeds: Iterable[Mapping[str, np.ndarray]],
    relative: Mapping[str, float],
    precision: str = "fp16",
) -> VerificationRecord:
    """The verification record of :func:`compare_sessions` on ``feeds``: one check per
    output, the engine's max abs error against the ONNX graph it was built from (fp32, or
    int8 QDQ for int8 engines) on ONNX Runtime."""
    report = compare_sessions(engine_session, onnx_session, feeds, relative)
    graph = "int8" if precision == "int8" else "fp32"
    metric = f"max abs err vs onnxruntime {graph}"
    checks = [
        check(output, metric, values["max_abs_err"], values["allowed"])
        for output, values in report.items()
    ]
    return session_record(engine_session, file, model, precision,
                          f"onnxruntime {graph} outputs", TOLERANCES[precision],
                          checks)  # fmt: skip


def _one_line(exc: BaseException) -> str:
    """An exception's message on one line (polygraphy's span several)."""
    return " ".join(str(exc).split()) or type(exc).__name__
