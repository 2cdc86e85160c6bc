"""The ``tensorrt`` stage of an export: which engines to build, built and verified.

With ``--fp16``, ``<model>_fp16.engine`` of every model from its fp32 ONNX file (fp16
kernels where TensorRT may, sensitive layers pinned to fp32). With ``--int8``,
``<model>_int8.engine`` of every model the int8 stage quantized, from its QDQ file (an
explicitly quantized network: the Q/DQ scales are the calibration, TensorRT needs no
calibrator; the float layers stay fp32), and ``<model>.engine`` (fp32) of the models kept in
float, which an int8 run on TensorRT uses (``Manifest.run_file``). Each engine is checked
like its ONNX file (parity with the torch backend under its precision's tolerances) and
compared with that ONNX file on ONNX Runtime. Without TensorRT and a CUDA GPU, one line
says why nothing was built (``export.tensorrt.skipped_engines``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from export.graphs import io_specs, onnxruntime_cpu
from export.tensorrt import (
    build_engine,
    comparison_record,
    comparison_tolerances,
    dynamic_profile,
    engine_record,
    skipped_engines,
)
from runtime.manifest import EngineRecord, EnginesRecord
from runtime.sessions import BackendChoice, select_backend

if TYPE_CHECKING:
    from export.pipeline import _Export


class EngineStage:
    """The engines of one export run (``run``: the :class:`export.pipeline._Export`)."""

    def __init__(self, run: _Export) -> None:
        self.run = run
        self.config = run.config

    def builds(self) -> list[tuple[str, str, str, str]]:
        """(model, ONNX file, engine file, precision) of every engine to build."""
        run, config = self.run, self.config
        int8_files = run.int8_stage.int8_files if run.int8_stage is not None else {}
        builds = []
        for model, fp32_name in run.fp32_files.items():
            if config.fp16:
                builds.append((model, fp32_name, f"{model}_fp16.engine", "fp16"))
            if config.int8 and model in int8_files:
                builds.append((model, int8_files[model], f"{model}_int8.engine", "int8"))
            elif config.int8:
                builds.append((model, fp32_name, f"{model}.engine", "fp32"))
        return builds

    def __call__(self) -> EnginesRecord:
        run, config = self.run, self.config
        skipped = skipped_engines(config.fp16, config.engines, config.int8)
        if skipped is not None:
            if config.fp16 or config.int8:
                run.echo(skipped.note)
            return skipped
        cache = Path(config.timing_cache or run.out / "trt_timing.cache")
        backend = select_backend("tensorrt", "cuda")
        builds = self.builds()
        for model, onnx_name, name, precision in builds:
            engine = self._engine(model, onnx_name, name, precision, cache, backend)
        built = [name for _, _, name, _ in builds]
        note = f"engines: built {', '.join(built)} (TensorRT {engine.tensorrt_version}, " + (
            f"{engine.gpu_name})"
        )
        run.echo(note)
        return EnginesRecord(
            built=True,
            note=note,
            files=tuple(built),
            timing_cache=cache.name,
            tensorrt_version=engine.tensorrt_version,
            gpu_name=engine.gpu_name,
        )

    def _engine(
        self,
        model: str,
        onnx_name: str,
        name: str,
        precision: str,
        cache: Path,
        backend: BackendChoice,
    ) -> EngineRecord:
        """Build engine ``name`` of ``precision`` from ONNX file ``onnx_name``; with
        ``--verify``, its parity and its comparison with that file on ONNX Runtime."""
        run = self.run
        onnx_path = run.out / onnx_name
        with run.timed(name, "export_s"):
            made = build_engine(
                onnx_path,
                run.out / name,
                dynamic_profile(io_specs(onnx_path)[0]),
                fp16=precision == "fp16",
                int8=precision == "int8",
                timing_cache=cache,
                fp32_layer_prefixes=run.fp32_prefixes(model),
            )
        engine = engine_record(made)
        record = None
        with run.timed(name, "verify_s"):
            if self.config.verify:
                built_with = {"tensorrt": engine.tensorrt_version, "gpu": engine.gpu_name}
                with (
                    backend.open(run.out / name, name=model, built_with=built_with) as session,
                    onnxruntime_cpu(onnx_path, model) as onnx_session,
                ):
                    record = run.parity(model, session, name, precision)
                    tolerances = comparison_tolerances(model, run.fastsam_in_graph, precision)
                    run.records.append(
                        comparison_record(session, onnx_session, name, model,
                                          self._comparison_feeds(model), tolerances, precision)
                    )  # fmt: skip
        run.add_file(name, model, "tensorrt", precision, record, io_from=onnx_path,
                     engine=engine)  # fmt: skip
        return engine

    def _comparison_feeds(self, model: str) -> list[dict]:
        """Inputs of the TensorRT vs ONNX Runtime comparison."""
        from runtime.verification.inputs import random_images

        run = self.run
        rng = np.random.default_rng([self.config.seed, 9])
        if model == "matcher":
            return run.matcher_parity.fixed_feeds()
        if model == "fastsam":
            size = self.config.fastsam_imgsz
            return [{"images": rng.random((1, 3, size, size), dtype=np.float32)}]
        backbone = run.models.backbones[model.removeprefix("backbone_")]
        return [{"image": random_images(rng, 1, backbone.image_size)}]
