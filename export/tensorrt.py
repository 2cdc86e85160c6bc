"""TensorRT fp16 engines built with polygraphy, and the TensorRT vs ONNX Runtime comparison.

Engines are built from the fp32 ONNX graphs with ``CreateConfig(fp16=True)``, so TensorRT
picks fp16 kernels where it may while the layers that need range or accumulation
(normalisation, softmax, reductions, and named subgraphs such as the in-graph pooling
weights) are pinned to fp32 with precision constraints. Dynamic axes get one optimisation
profile each (:data:`PROFILE_CANDIDATES`, :data:`PROFILE_OBJECTS`). One timing cache is
shared by all builds of an export, so later builds reuse the kernel timings of earlier ones.

Written against the TensorRT 10 Python API and polygraphy's documented loaders
(``network_from_onnx_path``, ``CreateConfig``, ``Profile``, ``engine_from_network``,
``save_engine``, ``TrtRunner``; ``Comparator`` / ``CompareFunc`` for the comparison).
Engines are tied to the TensorRT version and GPU that built them; both are recorded.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.errors import OmamaError

# Optimisation profiles (issue 5): candidates N min 1 / opt 64 / max 256; objects B
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
) -> dict:
    """Build and serialise a TensorRT engine from ``onnx_path``; returns its manifest record.

    ``profile``: shape ranges of the dynamic inputs (empty for static graphs).
    ``timing_cache``: read when present, then updated, so builds share kernel timings.
    ``fp32_layer_prefixes``: layer-name prefixes kept in fp32 besides the normalisation,
    softmax and reduction layers.
    """
    import tensorrt as trt
    from polygraphy.backend.trt import (
        CreateConfig,
        Profile,
        engine_from_network,
        network_from_onnx_path,
        save_engine,
    )

    engine_path = Path(engine_path)
    start = time.perf_counter()
    builder, network, parser = network_from_onnx_path(str(onnx_path))
    pinned = 0
    if fp16:
        sensitive = {trt.LayerType.NORMALIZATION, trt.LayerType.SOFTMAX, trt.LayerType.REDUCE}
        for index in range(network.num_layers):
            layer = network.get_layer(index)
            if layer.type in sensitive or (
                fp32_layer_prefixes and layer.name.startswith(fp32_layer_prefixes)
            ):
                if any(layer.get_output(i).dtype != trt.float32 for i in range(layer.num_outputs)):
                    continue  # integer / bool layers have no float precision to pin
                layer.precision = trt.float32
                for i in range(layer.num_outputs):
                    layer.set_output_type(i, trt.float32)
                pinned += 1
    profiles = []
    if profile:
        trt_profile = Profile()
        for name, shape_range in profile.items():
            trt_profile.add(name, min=shape_range.min, opt=shape_range.opt, max=shape_range.max)
        profiles = [trt_profile]
    cache = Path(timing_cache) if timing_cache is not None else None
    config = CreateConfig(
        fp16=fp16,
        profiles=profiles or None,
        precision_constraints="prefer" if pinned else None,
        load_timing_cache=str(cache) if cache is not None and cache.is_file() else None,
    )
    engine = engine_from_network(
        (builder, network, parser),
        config=config,
        save_timing_cache=str(cache) if cache is not None else None,
    )
    if engine is None:
        raise OmamaError(f"TensorRT could not build an engine from {Path(onnx_path).name}")
    tmp = engine_path.with_name(f".{engine_path.name}.tmp")
    try:
        save_engine(engine, str(tmp))
        os.replace(tmp, engine_path)
    finally:
        tmp.unlink(missing_ok=True)
    return {
        **gpu_record(),
        "built_from": Path(onnx_path).name,
        "precision_flags": ["fp16"] if fp16 else [],
        "fp32_pinned_layers": pinned,
        "profiles": [{name: r.to_dict() for name, r in profile.items()}] if profile else [],
        "timing_cache": cache.name if cache is not None else None,
        "build_s": round(time.perf_counter() - start, 2),
    }


class TrtEngineRunner:
    """A serialised engine as a runner: ``runner(feeds) -> {output: array}`` (copies)."""

    backend = "tensorrt"

    def __init__(self, engine_path: str | os.PathLike) -> None:
        from polygraphy.backend.common import BytesFromPath
        from polygraphy.backend.trt import EngineFromBytes, TrtRunner

        self.path = Path(engine_path)
        self._runner = TrtRunner(EngineFromBytes(BytesFromPath(str(engine_path))))
        self._runner.activate()

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self._runner.infer(feeds)
        # polygraphy reuses its output buffers between calls.
        return {name: np.array(value, copy=True) for name, value in outputs.items()}

    def close(self) -> None:
        self._runner.deactivate()

    def __enter__(self) -> TrtEngineRunner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def compare_with_onnxruntime(
    engine_path: str | os.PathLike,
    onnx_path: str | os.PathLike,
    feeds: list[dict[str, np.ndarray]],
    relative: dict[str, float],
) -> dict[str, dict]:
    """Run the engine and the fp32 ONNX graph on ``feeds`` with polygraphy's Comparator.

    ``relative[name]``: allowed max abs error as a fraction of max(1, peak |value|) of the
    ONNX Runtime output (absolute for outputs in [-1, 1] such as similarities). Returns per
    output: max abs error, the allowed error, and polygraphy's verdict with that tolerance.
    """
    import onnxruntime as ort
    from polygraphy.backend.common import BytesFromPath
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner
    from polygraphy.comparator import Comparator, CompareFunc

    from export.verify import max_abs_error, worst_error

    providers = ["cuda"] if "CUDAExecutionProvider" in ort.get_available_providers() else ["cpu"]
    runners = [
        TrtRunner(EngineFromBytes(BytesFromPath(str(engine_path))), name="tensorrt"),
        OnnxrtRunner(
            SessionFromOnnx(BytesFromPath(str(onnx_path)), providers=providers), name="onnxruntime"
        ),
    ]
    results = Comparator.run(runners, data_loader=feeds)
    by_runner = dict(results.items())
    trt_iters, ort_iters = by_runner["tensorrt"], by_runner["onnxruntime"]
    report: dict[str, dict] = {}
    for name, fraction in relative.items():
        error = worst_error(
            *(
                max_abs_error(np.asarray(t[name]), np.asarray(o[name]))
                for t, o in zip(trt_iters, ort_iters, strict=True)
            )
        )
        peak = max(float(np.abs(np.asarray(o[name])).max()) for o in ort_iters)
        report[name] = {"max_abs_err": error, "allowed": fraction * max(1.0, peak)}
    accuracy = Comparator.compare_accuracy(
        results,
        compare_func=CompareFunc.simple(
            atol={name: r["allowed"] for name, r in report.items()}, rtol=0.0
        ),
    )
    verdict = bool(accuracy)
    for entry in report.values():
        entry["polygraphy_passed"] = verdict
    return report
