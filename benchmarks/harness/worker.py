"""One bench row in its own process: ``python -m benchmarks.harness.worker SPEC.json``.

The parent (:mod:`benchmarks.harness.run`) writes a :class:`RowSpec` as JSON and calls
:func:`run_worker`; the child (:func:`worker_main`) measures the row with
:func:`measure_row` and writes its result JSON. A fresh process per row keeps each row's
peak host memory its own and thread settings from leaking, and a crash costs one row.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness.inputs import BenchPair, synthetic_pairs
from benchmarks.harness.memory import GPU_SAMPLE_S, GpuMemorySampler
from benchmarks.harness.passes import (
    PassOutput,
    fidelity_pass,
    load_outputs,
    run_pass,
    save_outputs,
)
from benchmarks.harness.plan import REFERENCE_ROW
from benchmarks.harness.runners import PipelineRunner, ReferenceRunner
from benchmarks.harness.stats import END_TO_END, fidelity, latency_stats, throughput
from runtime.candidates import Candidates
from runtime.errors import OmamaError
from runtime.info import peak_rss_mb
from runtime.pipeline import STAGES

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
WORKER_TAIL_LINES = 12


@dataclass
class RowSpec:
    """What one worker measures; written as JSON for the worker process.

    ``kind``: ``pipeline`` (the deployed pipeline on ``backend`` at ``precision``) or
    ``reference`` (the O-MaMa shape, torch). ``repeats`` 0: outputs only (the fidelity
    reference when the torch row is not asked for). ``candidate_source``: ``fastsam`` or
    ``synthetic``. ``fastsam_conf``: None keeps the manifest's.
    """

    artifacts: str
    backend: str
    precision: str
    device: str
    kind: str = "pipeline"
    threads: int | None = None
    num_pairs: int = 10
    objects_per_frame: int = 4
    repeats: int = 3
    warmup: int = 2
    seed: int = 0
    candidate_source: str = "fastsam"
    fastsam_conf: float | None = None
    save_outputs: str | None = None
    reference_outputs: str | None = None
    score_root: str | None = None
    score_split: str | None = None
    score_frames: int | None = None
    weights_dirs: list[str] = field(default_factory=list)
    work_dir: str = "."
    result_path: str = "result.json"

    @property
    def label(self) -> str:
        return REFERENCE_ROW if self.kind == "reference" else f"{self.backend} {self.precision}"


# ----------------------------------------------------------------------------- the child


def _set_torch_threads(threads: int | None) -> int | None:
    """Re-apply the thread count (ultralytics changes torch's behind our back); returns
    torch's setting when torch is loaded."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    if threads:
        torch.set_num_threads(int(threads))
    return int(torch.get_num_threads())


def _open_pipeline(spec: RowSpec) -> Any:
    """The row's :class:`runtime.pipeline.Pipeline`; pipeline rows get instrumented
    sessions (CUDA-event timers for torch on a GPU)."""
    from runtime.pipeline import Pipeline

    reference = spec.kind == "reference"
    cuda_events = not reference and spec.backend == "torch" and spec.device.startswith("cuda")
    pipeline = Pipeline(
        spec.artifacts,
        backend="torch" if reference else spec.backend,
        device=spec.device,
        precision=spec.precision,
        threads=spec.threads,
        mask_size="image",
        weights_dirs=spec.weights_dirs,
        check_hashes=False,  # the parent verified the hashes once
        wrap_session=None if reference else PipelineRunner.wrapper(cuda_events),
    )
    if pipeline.has_fastsam and spec.fastsam_conf is not None:
        pipeline.set_fastsam_thresholds(conf=float(spec.fastsam_conf))
    return pipeline


def _timed_passes(
    runner: Any, pairs: list[BenchPair], spec: RowSpec, candidates_of: Any
) -> tuple[PassOutput, dict[str, list[float]], dict[str, list[float]]]:
    """``spec.repeats`` timed passes: the last one's outputs, host and device samples (ms).
    With no repeats, one untimed pass for the outputs (the untimed fidelity reference)."""
    host: dict[str, list[float]] = {s: [] for s in (*STAGES, END_TO_END)}
    device: dict[str, list[float]] = {}
    final = None
    for _ in range(spec.repeats):
        final = run_pass(runner, pairs, candidates_of, host, device)
    if final is None:
        final = run_pass(runner, pairs, candidates_of)
    return final, host, device


def _memory(on_cuda: bool, torch_cuda: bool, sampler: GpuMemorySampler | None) -> dict:
    """Peak host memory, and device memory by the torch allocator or nvidia-smi."""
    memory: dict[str, Any] = {"peak_host_rss_mb": peak_rss_mb()}
    if on_cuda and torch_cuda:
        import torch

        memory["peak_device_mb"] = torch.cuda.max_memory_allocated() / 2**20
        memory["device_method"] = "torch.cuda.max_memory_allocated"
    elif sampler is not None:
        memory["peak_device_mb"] = sampler.above_baseline_mb
        memory["device_method"] = (
            "nvidia-smi device-wide used memory above its pre-run value, sampled every "
            f"{GPU_SAMPLE_S * 1e3:.0f} ms during warm-up and the fidelity pass"
            if sampler.baseline_mb is not None
            else "n/a: nvidia-smi not found"
        )
    return memory


def _timing_record(
    spec: RowSpec, pipeline: Any, final: PassOutput, host: dict, device: dict
) -> dict[str, Any]:
    """The row's result without fidelity, score and memory: what ran, candidates, samples."""
    return {
        "label": spec.label,
        "kind": spec.kind,
        "backend": spec.backend,
        "precision": spec.precision,
        "status": "ok",
        "device": pipeline.device,
        "describe": pipeline.describe(),
        "candidates": {
            "source": spec.candidate_source,
            "fastsam_conf": pipeline.fastsam_conf if pipeline.has_fastsam else None,
            "per_pair": final.candidates.tolist(),
            "mean": float(final.candidates.mean()),
        },
        "samples_ms": host,
        "stages": {stage: latency_stats(values) for stage, values in host.items()},
        "device_ms": {role: latency_stats(v) for role, v in device.items()} or None,
        "device_samples_ms": device or None,
        **throughput(latency_stats(host[END_TO_END])["mean_ms"], spec.objects_per_frame),
    }


def measure_row(spec: RowSpec) -> dict[str, Any]:
    """Measure one row in this process (the worker's body); returns its result dict.

    Order: open the pipeline, warm up and run the fidelity pass (device memory sampled
    there, never while timing), the timed passes, then fidelity against the reference
    outputs, the score on ``score_root`` and the memory peaks.
    """
    started = time.perf_counter()
    pipeline = _open_pipeline(spec)
    load_s = time.perf_counter() - started
    torch_threads = _set_torch_threads(spec.threads)
    on_cuda = str(pipeline.device).startswith("cuda")
    torch_cuda = spec.kind == "reference" or pipeline.backend == "torch"
    if torch_cuda and on_cuda:
        import torch

        torch.cuda.reset_peak_memory_stats()
    if spec.kind == "reference":
        runner: Any = ReferenceRunner(pipeline, spec.weights_dirs)
    else:
        runner = PipelineRunner(pipeline)
    src_hw, dst_hw = pipeline.views["src"].image_size, pipeline.views["dst"].image_size
    pairs = synthetic_pairs(src_hw, dst_hw, spec.num_pairs, spec.objects_per_frame, seed=spec.seed)
    use_fastsam = spec.candidate_source == "fastsam"

    def candidates_of(pair: BenchPair) -> Candidates | None:
        return None if use_fastsam else pair.candidates

    gpu_index = int(pipeline.device.split(":")[1]) if ":" in str(pipeline.device) else 0
    sampler = GpuMemorySampler(gpu_index) if on_cuda and not torch_cuda else None
    with sampler if sampler is not None else contextlib.nullcontext():
        for i in range(spec.warmup):
            runner.run(pairs[i % len(pairs)], candidates_of(pairs[i % len(pairs)]))
        fid = fidelity_pass(runner, pairs)
    final, host, device = _timed_passes(runner, pairs, spec, candidates_of)

    result = _timing_record(spec, pipeline, final, host, device)
    result["load_s"] = load_s
    result["threads"] = {"requested": spec.threads, "torch": torch_threads}
    if spec.save_outputs:
        save_outputs(spec.save_outputs, final, fid)
    if spec.reference_outputs:
        ref = load_outputs(spec.reference_outputs)
        result["fidelity"] = fidelity(
            fid.choices, ref["fid_choices"], fid.sims, ref["fid_sims"], final.masks, ref["masks"]
        )
    result["fidelity_targets_found_pct"] = float(
        100.0 * np.mean(fid.choices == np.stack([p.target_index for p in pairs]))
    )
    if spec.score_root:
        from benchmarks.harness.score import score_metrics

        work = Path(spec.work_dir) / f"score_{spec.label.replace(' ', '_')}"
        result["score"] = score_metrics(
            pipeline, spec.score_root, spec.score_split, spec.score_frames, work
        )
    result["memory"] = _memory(on_cuda, torch_cuda, sampler)
    if on_cuda and torch_cuda:
        import torch

        result["torch_cuda"] = {"cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}
    pipeline.close()
    result["wall_s"] = time.perf_counter() - started
    return result


def worker_main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.harness.worker SPEC.json``: measure one row, write its result
    JSON. Problems print one ``error:`` line (the parent shows it in the row) and exit 1."""
    import logging
    import traceback

    from runtime.atomic import write_json

    parser = argparse.ArgumentParser(description="omama bench worker (one row)")
    parser.add_argument("spec", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    spec = RowSpec(**json.loads(args.spec.read_text(encoding="utf-8")))
    try:
        result = measure_row(spec)
    except OmamaError as exc:
        print(f"error: {exc}", flush=True)
        return 1
    except Exception as exc:
        traceback.print_exc()
        print(f"error: {type(exc).__name__}: {exc}", flush=True)
        return 1
    write_json(spec.result_path, result)
    return 0


# ----------------------------------------------------------------------------- the parent


def run_worker(spec: RowSpec, timeout_s: float | None = None) -> dict[str, Any]:
    """Run ``spec`` in a fresh Python process; its result dict, or a ``failed`` row naming
    the last lines the worker printed (its full log stays in ``work_dir``)."""
    work = Path(spec.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    name = spec.label.replace(" ", "_")
    spec_path = work / f"{name}.spec.json"
    log_path = work / f"{name}.log"
    result_path = Path(spec.result_path)
    if result_path.exists():
        result_path.unlink()
    spec_path.write_text(json.dumps(asdict(spec), indent=1), encoding="utf-8")
    env = dict(os.environ)
    env.setdefault("YOLO_OFFLINE", "1")
    if spec.threads:
        env.update({var: str(spec.threads) for var in THREAD_VARS})
    started = time.perf_counter()
    command = [sys.executable, "-m", "benchmarks.harness.worker", str(spec_path)]
    try:
        with open(log_path, "w", encoding="utf-8") as log:
            done = subprocess.run(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=timeout_s
            )
        code: int | None = done.returncode
    except subprocess.TimeoutExpired:
        code = None
    if code == 0 and result_path.is_file():
        return json.loads(result_path.read_text(encoding="utf-8"))
    tail = _tail(log_path)
    if code is None:
        why = f"timed out after {timeout_s:.0f} s"
    else:
        why = _last_error(tail) or f"worker exited with status {code}"
    return {
        "label": spec.label,
        "kind": spec.kind,
        "backend": spec.backend,
        "precision": spec.precision,
        "status": "failed",
        "reason": why,
        "log": str(log_path),
        "log_tail": tail,
        "wall_s": time.perf_counter() - started,
    }


def _tail(path: Path, lines: int = WORKER_TAIL_LINES) -> list[str]:
    try:
        return path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
    except OSError:
        return []


def _last_error(lines: Sequence[str]) -> str | None:
    for line in reversed(lines):
        if line.startswith("error: "):
            return line.removeprefix("error: ")
    return None


if __name__ == "__main__":
    raise SystemExit(worker_main())
