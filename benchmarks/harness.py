"""The ``omama bench`` harness: inputs, timing, statistics, fidelity, memory, environment.

One benchmark run measures every requested backend x precision of an artifacts folder on
the same inputs:

* **inputs** (:func:`synthetic_pairs`): P frame pairs at the model's view sizes, each with
  K objects (ellipses of distinct colours, placed differently in the two views); the K
  source masks are the queries. Each destination frame also has a fixed set of candidate
  masks (the K objects and random distractors), used by the fidelity pass and, when the
  artifacts hold no FastSAM (or ``--candidates synthetic``), by the timed runs;
* **rows**: one fresh worker process per backend x precision (``python -m
  benchmarks.harness SPEC.json``), so each row's peak host memory is its own, thread
  settings cannot leak between rows, and a crash costs one row. The torch fp32 row runs
  first: its outputs are the fidelity reference every other row is compared with. The
  ``reference`` row runs the O-MaMa shape (:mod:`benchmarks.reference`) on the same torch
  models;
* **timing**: ``time.perf_counter`` around each stage (the pipeline's own per-stage
  record) and around the whole pair (end to end), after warm-up, for ``repeats`` passes
  over the P pairs. On a GPU every session call returns host arrays, so its GPU work is
  finished when the clock stops (torch copies to the host, TensorRT synchronises its
  stream, ONNX Runtime's ``run`` is synchronous); the torch backend also records CUDA
  events around each model call (``device_ms``);
* **fidelity** vs torch fp32 on the same inputs: argmax agreement and the largest absolute
  similarity difference on the fixed candidate sets (so FastSAM differences cannot mix
  candidate indices), and the mean IoU of the final masks of the end-to-end run;
* **memory**: peak resident memory of the worker (``ru_maxrss``: imports, model loading
  and the runs); on CUDA the torch allocator's peak, or for the other backends the
  device-wide used memory above its pre-run value (``nvidia-smi``, sampled during warm-up
  and the fidelity pass, never while timing);
* **GT** (``--gt ROOT``): each backend runs the takes of a processed root
  (:func:`runtime.pipeline.run_take`) and the official metrics (:mod:`runtime.evaluate`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runtime.candidates import Candidates
from runtime.errors import OmamaError
from runtime.fastsam_post import RANDOM_WEIGHTS_CONF, nms_thresholds
from runtime.info import cpu_model, package_version
from runtime.pipeline import STAGES
from runtime.sessions import InstrumentedSession, Session

END_TO_END = "end_to_end"
REFERENCE_ROW = "reference"
FIDELITY_CANDIDATES = 32  # O-MaMa trains with 32 candidates per frame
# A random-weight FastSAM scores every box between 1e-3 and 1.3e-2, far below the reference's
# 0.4: random-init exports bake 0.01 (it keeps the coarsest level's boxes: up to max_det after
# NMS); older random-init artifacts, exported with 0.4 and runtime NMS, get it at run time.
RANDOM_INIT_FASTSAM_CONF = RANDOM_WEIGHTS_CONF
GPU_SAMPLE_S = 0.05
VERSIONED_PACKAGES = (
    "omama",
    "numpy",
    "onnxruntime",
    "onnxruntime-gpu",
    "tensorrt",
    "polygraphy",
    "torch",
    "torchvision",
    "timm",
    "ultralytics",
    "onnx",
    "opencv-python-headless",
    "opencv-python",
    "pycocotools",
    "av",
)
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
WORKER_TAIL_LINES = 12


# ----------------------------------------------------------------------------- statistics


def latency_stats(samples_ms: Sequence[float]) -> dict[str, float | int | None]:
    """Summary of latency samples (ms): n, mean, std, min, p50, p90, p99, max.

    Percentiles interpolate linearly between samples (numpy's default), so p99 of a few
    samples lies between the two largest. No samples: every value None, n 0.
    """
    values = np.asarray(samples_ms, np.float64)
    if values.size == 0:
        return {
            k: None for k in ("mean_ms", "std_ms", "min_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms")
        } | {"n": 0}
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {
        "n": int(values.size),
        "mean_ms": float(values.mean()),
        "std_ms": float(values.std(ddof=1)) if values.size > 1 else 0.0,
        "min_ms": float(values.min()),
        "p50_ms": float(p50),
        "p90_ms": float(p90),
        "p99_ms": float(p99),
        "max_ms": float(values.max()),
    }


def throughput(mean_pair_ms: float | None, objects_per_frame: int) -> dict[str, float | None]:
    """Pairs per second and object matches per second from the mean end-to-end latency."""
    if not mean_pair_ms:
        return {"pairs_per_s": None, "object_matches_per_s": None}
    pairs_per_s = 1000.0 / mean_pair_ms
    return {"pairs_per_s": pairs_per_s, "object_matches_per_s": pairs_per_s * objects_per_frame}


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two binary masks of the same (H, W); two empty masks count as 1 (as the
    official metric does)."""
    a, b = np.asarray(a) != 0, np.asarray(b) != 0
    if a.shape != b.shape:
        raise OmamaError(f"masks to compare differ in size: {a.shape} vs {b.shape}")
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def fidelity(
    choice: np.ndarray,
    ref_choice: np.ndarray,
    sims: np.ndarray,
    ref_sims: np.ndarray,
    masks: np.ndarray,
    ref_masks: np.ndarray,
) -> dict[str, float | int]:
    """Agreement of one row with the reference on the same inputs.

    Arguments:
        choice, ref_choice: (P, K) chosen candidate per pair and object on the fixed
            candidate sets.
        sims, ref_sims: (P, K, N) similarities on those candidate sets.
        masks, ref_masks: (P, K, H, W) final masks of the end-to-end runs.

    Returns ``argmax_agreement_pct``, ``max_abs_similarity_error``, ``mean_mask_iou``,
    ``min_mask_iou`` and the number of ``objects`` compared.
    """
    choice, ref_choice = np.asarray(choice), np.asarray(ref_choice)
    sims, ref_sims = np.asarray(sims, np.float64), np.asarray(ref_sims, np.float64)
    if choice.shape != ref_choice.shape or sims.shape != ref_sims.shape:
        raise OmamaError(
            f"fidelity inputs differ in shape: choices {choice.shape} vs {ref_choice.shape}, "
            f"similarities {sims.shape} vs {ref_sims.shape} (were both rows run with the same "
            "--pairs, --objects-per-frame and --seed?)"
        )
    if masks.shape != ref_masks.shape:
        raise OmamaError(f"final masks differ in shape: {masks.shape} vs {ref_masks.shape}")
    flat, ref_flat = masks.reshape(-1, *masks.shape[-2:]), ref_masks.reshape(-1, *masks.shape[-2:])
    ious = [mask_iou(m, r) for m, r in zip(flat, ref_flat, strict=True)]
    return {
        "objects": int(choice.size),
        "argmax_agreement_pct": float(100.0 * np.mean(choice == ref_choice))
        if choice.size
        else 0.0,
        "max_abs_similarity_error": float(np.abs(sims - ref_sims).max()) if sims.size else 0.0,
        "mean_mask_iou": float(np.mean(ious)) if ious else 0.0,
        "min_mask_iou": float(np.min(ious)) if ious else 0.0,
    }


# ----------------------------------------------------------------------------- inputs


@dataclass
class BenchPair:
    """One synthetic frame pair.

    Attributes:
        src_rgb, dst_rgb: (Hs, Ws, 3) and (Hd, Wd, 3) uint8 RGB at the model's view sizes.
        queries: K (Hs, Ws) uint8 0/1 masks of the objects in the source view.
        targets: (K, Hd, Wd) uint8 the same objects in the destination view.
        candidates: the destination's fixed candidate set (targets and distractors,
            shuffled); ``target_index[k]`` is where object k's mask sits in it.
    """

    src_rgb: np.ndarray
    dst_rgb: np.ndarray
    queries: list[np.ndarray]
    targets: np.ndarray
    candidates: Candidates
    target_index: np.ndarray


def _ellipse(size_hw: tuple[int, int], cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    ys, xs = np.ogrid[: size_hw[0], : size_hw[1]]
    return (((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1.0).astype(np.uint8)


def _background(rng: np.random.Generator, size_hw: tuple[int, int]) -> np.ndarray:
    """A smooth colour gradient with mild noise: (H, W, 3) float."""
    h, w = size_hw
    ys, xs = np.mgrid[:h, :w]
    corners = rng.uniform(40, 200, size=(2, 2, 3))
    fy, fx = (ys / max(h - 1, 1))[..., None], (xs / max(w - 1, 1))[..., None]
    top = corners[0, 0] * (1 - fx) + corners[0, 1] * fx
    bottom = corners[1, 0] * (1 - fx) + corners[1, 1] * fx
    return top * (1 - fy) + bottom * fy + rng.normal(0, 6, size=(h, w, 3))


def _place_objects(
    rng: np.random.Generator, size_hw: tuple[int, int], count: int
) -> list[np.ndarray]:
    """``count`` non-overlapping ellipses, one per cell of a near-square grid of cells."""
    cols = int(np.ceil(np.sqrt(count)))
    rows = int(np.ceil(count / cols))
    cell_h, cell_w = size_hw[0] / rows, size_hw[1] / cols
    cells = rng.permutation(rows * cols)[:count]
    masks = []
    for cell in cells:
        r, c = divmod(int(cell), cols)
        ry = max(2.0, rng.uniform(0.2, 0.42) * cell_h)
        rx = max(2.0, rng.uniform(0.2, 0.42) * cell_w)
        cy = (r + 0.5) * cell_h + rng.uniform(-0.05, 0.05) * cell_h
        cx = (c + 0.5) * cell_w + rng.uniform(-0.05, 0.05) * cell_w
        masks.append(_ellipse(size_hw, cy, cx, ry, rx))
    return masks


def synthetic_pairs(
    src_hw: tuple[int, int],
    dst_hw: tuple[int, int],
    pairs: int,
    objects: int,
    candidates: int = FIDELITY_CANDIDATES,
    seed: int = 0,
) -> list[BenchPair]:
    """``pairs`` deterministic frame pairs with ``objects`` objects each (see the module
    docstring); the same arguments give the same arrays in every process."""
    if pairs < 1 or objects < 1:
        raise OmamaError(f"need at least one pair and one object, got {pairs} and {objects}")
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(pairs):
        colours = rng.uniform(0, 255, size=(objects, 3))
        views = []
        for size_hw in (src_hw, dst_hw):
            image = _background(rng, size_hw)
            masks = _place_objects(rng, size_hw, objects)
            for mask, colour in zip(masks, colours, strict=True):
                texture = rng.normal(0, 10, size=(*size_hw, 3))
                image = np.where(mask[..., None] != 0, colour + texture, image)
            views.append((np.clip(image, 0, 255).astype(np.uint8), masks))
        (src_rgb, queries), (dst_rgb, targets) = views
        distractors = []
        for _ in range(max(candidates, objects) - objects):
            ry, rx = rng.uniform(0.05, 0.3) * dst_hw[0], rng.uniform(0.05, 0.3) * dst_hw[1]
            cy, cx = rng.uniform(0, dst_hw[0]), rng.uniform(0, dst_hw[1])
            distractors.append(_ellipse(dst_hw, cy, cx, max(ry, 1.5), max(rx, 1.5)))
        stack = np.stack([*targets, *distractors]) if distractors else np.stack(targets)
        order = rng.permutation(len(stack))
        out.append(
            BenchPair(
                src_rgb=src_rgb,
                dst_rgb=dst_rgb,
                queries=queries,
                targets=np.stack(targets),
                candidates=Candidates.from_masks(stack[order]),
                target_index=np.argsort(order)[:objects],
            )
        )
    return out


# ----------------------------------------------------------------------------- sessions


def assemble_blocks(blocks: Sequence[np.ndarray], batch: int, count: int) -> np.ndarray:
    """The (B, N) similarity matrix from the pipeline's matcher calls, which cover it in
    row-major blocks (objects outer, candidates inner) when a TensorRT profile limits B or
    N; one call gives one block."""
    out = np.full((batch, count), np.nan, np.float32)
    b0 = n0 = 0
    for block in blocks:
        block = np.asarray(block).reshape(-1, np.asarray(block).shape[-1])
        rows, cols = block.shape
        if b0 + rows > batch or n0 + cols > count:
            raise OmamaError(
                f"matcher outputs do not tile a {batch}x{count} matrix (block {rows}x{cols} at "
                f"{b0},{n0})"
            )
        out[b0 : b0 + rows, n0 : n0 + cols] = block
        n0 += cols
        if n0 == count:
            b0, n0 = b0 + rows, 0
    if b0 != batch or np.isnan(out).any():
        raise OmamaError(f"matcher outputs cover only part of the {batch}x{count} matrix")
    return out


class CudaEventTimer:
    """Device time of one call with CUDA events (torch sessions on a GPU): the device timer
    :class:`runtime.sessions.InstrumentedSession` takes."""

    def __init__(self) -> None:
        import torch

        self._start = torch.cuda.Event(enable_timing=True)
        self._end = torch.cuda.Event(enable_timing=True)

    def start(self) -> None:
        self._start.record()

    def stop(self) -> float:
        self._end.record()
        self._end.synchronize()
        return float(self._start.elapsed_time(self._end))


# ----------------------------------------------------------------------------- memory


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MB (Linux reports ru_maxrss in KB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def gpu_memory_used_mb(index: int = 0) -> float | None:
    """Used memory of GPU ``index`` (all processes), MB, from ``nvidia-smi``; None without."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "--query-gpu=memory.used", "--format=csv,noheader,nounits", f"--id={index}"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout
        return float(out.strip().splitlines()[0])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


class GpuMemorySampler:
    """Samples the device-wide used memory every ``interval_s`` in a thread; ``peak_mb``
    is the largest value above the one read at start (other processes on the GPU count
    too, which the report states)."""

    def __init__(self, index: int = 0, interval_s: float = GPU_SAMPLE_S) -> None:
        self.index, self.interval_s = index, interval_s
        self.baseline_mb = gpu_memory_used_mb(index)
        self.peak_mb: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="omama-gpu-mem")

    def _loop(self) -> None:
        while not self._stop.is_set():
            used = gpu_memory_used_mb(self.index)
            if used is not None:
                self.peak_mb = used if self.peak_mb is None else max(self.peak_mb, used)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> GpuMemorySampler:
        if self.baseline_mb is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    @property
    def above_baseline_mb(self) -> float | None:
        if self.baseline_mb is None or self.peak_mb is None:
            return None
        return max(self.peak_mb - self.baseline_mb, 0.0)


# ----------------------------------------------------------------------------- environment


def gpu_details() -> dict[str, Any]:
    """GPU names, memory, driver and the driver's CUDA version from ``nvidia-smi``."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return {"gpus": [], "driver": None, "cuda_driver": None, "note": "nvidia-smi not found"}
    details: dict[str, Any] = {"gpus": [], "driver": None, "cuda_driver": None}
    try:
        query = subprocess.run(
            [exe, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
        for line in query.splitlines():
            parts = [p.strip() for p in line.split(",")]
            if len(parts) >= 3:
                details["gpus"].append({"name": parts[0], "memory_total": parts[1]})
                details["driver"] = parts[2]
        header = subprocess.run([exe], capture_output=True, text=True, timeout=10).stdout
        found = re.search(r"CUDA Version:\s*([0-9.]+)", header)
        details["cuda_driver"] = found.group(1) if found else None
    except (OSError, subprocess.SubprocessError) as exc:
        details["note"] = f"nvidia-smi failed: {exc}"
    return details


def git_revision(path: Path | None = None) -> dict[str, Any]:
    """``git rev-parse HEAD`` of the omama checkout (and whether it has local changes), or
    None values outside a git checkout."""
    repo = path or Path(__file__).resolve().parents[1]
    exe = shutil.which("git")
    if exe is None:
        return {"revision": None, "dirty": None, "note": "git not found"}
    try:
        head = subprocess.run(
            [exe, "rev-parse", "HEAD"],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            [exe, "--no-optional-locks", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {"revision": None, "dirty": None, "note": "not a git checkout"}
    return {"revision": head, "dirty": bool(status.strip())}


def environment() -> dict[str, Any]:
    """Machine and software of this run (no torch import: the torch worker adds its CUDA
    build to its row)."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        affinity = None
    try:
        from runtime.info import onnxruntime_providers

        providers = onnxruntime_providers()
    except Exception:  # a broken onnxruntime must not stop the report
        providers = []
    return {
        "cpu_model": cpu_model(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": affinity,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {name: package_version(name) for name in VERSIONED_PACKAGES},
        "onnxruntime_providers": providers,
        **gpu_details(),
        "omama_git": git_revision(),
    }


# ----------------------------------------------------------------------------- rows


@dataclass
class RowSpec:
    """What one worker measures; written as JSON for ``python -m benchmarks.harness``.

    ``kind``: ``pipeline`` (the deployed pipeline on ``backend`` at ``precision``) or
    ``reference`` (the O-MaMa shape, torch). ``repeats`` 0: outputs only (the fidelity
    reference when the torch row is not asked for). ``candidates``: ``fastsam`` or
    ``synthetic``. ``fastsam_conf``: None keeps the manifest's.
    """

    artifacts: str
    backend: str
    precision: str
    device: str
    kind: str = "pipeline"
    threads: int | None = None
    pairs: int = 10
    objects: int = 4
    repeats: int = 3
    warmup: int = 2
    seed: int = 0
    candidates: str = "fastsam"
    fastsam_conf: float | None = None
    save_outputs: str | None = None
    reference_outputs: str | None = None
    gt_root: str | None = None
    gt_split: str | None = None
    gt_frames: int | None = None
    weights_dirs: list[str] = field(default_factory=list)
    work_dir: str = "."
    result_path: str = "result.json"

    @property
    def label(self) -> str:
        return REFERENCE_ROW if self.kind == "reference" else f"{self.backend} {self.precision}"


@dataclass
class PassOutput:
    """Outputs of one pass over the pairs: (P, K) choices; for an end-to-end pass the
    (P, K, H, W) final masks and (P,) candidate counts, for the fidelity pass the
    (P, K, N) similarities on the fixed candidates."""

    choices: np.ndarray
    masks: np.ndarray | None = None
    candidates: np.ndarray | None = None
    sims: np.ndarray | None = None


class PipelineRunner:
    """The deployed pipeline (:class:`runtime.pipeline.Pipeline`) behind the bench's
    interface: ``run`` one pair (per-stage ms, matches) and ``similarities`` on fixed
    candidates. Every model session is an :class:`runtime.sessions.InstrumentedSession`
    (``Pipeline(wrap_session=...)``): the matcher's keeps its similarity blocks, and on a
    GPU the torch backend's time each call with CUDA events."""

    def __init__(self, pipeline: Any) -> None:
        self.pipeline = pipeline
        self.timed: dict[str, InstrumentedSession] = dict(pipeline.sessions)

    @staticmethod
    def wrapper(cuda_events: bool):
        """The ``wrap_session`` to open the pipeline with."""

        def wrap(role: str, session: Session) -> Session:
            return InstrumentedSession(
                session,
                device_timer=CudaEventTimer if cuda_events else None,
                keep_outputs=role == "matcher",
            )

        return wrap

    def _take(self) -> tuple[dict[str, float], list[np.ndarray]]:
        device: dict[str, float] = {}
        blocks: list[np.ndarray] = []
        for role, session in self.timed.items():
            calls, kept = session.take()
            timed = [c.device_ms for c in calls if c.device_ms is not None]
            if timed:
                device[role] = float(sum(timed))
            if role == "matcher":
                blocks = [np.asarray(next(iter(out.values()))) for out in kept]
        return device, blocks

    def run(self, pair: BenchPair, candidates: Candidates | None) -> tuple[dict, list]:
        self._take()
        matches = self.pipeline.match_frame(pair.src_rgb, pair.dst_rgb, pair.queries, candidates)
        record = {s: float(self.pipeline.last_latency_ms.get(s, 0.0)) for s in STAGES}
        device, _ = self._take()
        return {"host": record, "device": device}, matches

    def similarities(self, pair: BenchPair) -> tuple[np.ndarray, list]:
        self._take()
        matches = self.pipeline.match_frame(
            pair.src_rgb, pair.dst_rgb, pair.queries, pair.candidates
        )
        _, blocks = self._take()
        sims = assemble_blocks(blocks, len(pair.queries), len(pair.candidates))
        return sims, matches


def run_pass(
    runner: Any,
    pairs: Sequence[BenchPair],
    candidates_of: Any,
    host: dict[str, list[float]] | None = None,
    device: dict[str, list[float]] | None = None,
) -> PassOutput:
    """One pass over the pairs; appends each pair's stage and end-to-end ms to ``host``
    (and CUDA-event ms per model to ``device``) when given."""
    choices, masks, counts = [], [], []
    for pair in pairs:
        t0 = time.perf_counter()
        record, matches = runner.run(pair, candidates_of(pair))
        elapsed_ms = 1e3 * (time.perf_counter() - t0)
        if host is not None:
            host[END_TO_END].append(elapsed_ms)
            for stage in STAGES:
                host[stage].append(record["host"][stage])
        if device is not None:
            for role, value in record["device"].items():
                device.setdefault(role, []).append(value)
        choices.append([m.candidate for m in matches])
        masks.append(np.stack([m.mask for m in matches]))
        counts.append(matches[0].n_candidates)
    return PassOutput(np.asarray(choices), np.stack(masks), np.asarray(counts))


def save_outputs(path: str | os.PathLike, final: PassOutput, fid: PassOutput) -> None:
    """The fidelity reference of a run: final masks bit-packed, choices, similarities."""
    from runtime.atomic import atomic_path

    with atomic_path(path, suffix=".npz") as tmp:
        np.savez_compressed(
            tmp,
            masks_packed=np.packbits(final.masks.astype(bool), axis=-1),
            mask_width=np.int64(final.masks.shape[-1]),
            choices=final.choices,
            fid_choices=fid.choices,
            fid_sims=fid.sims,
        )


def load_outputs(path: str | os.PathLike) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        width = int(data["mask_width"])
        masks = np.unpackbits(data["masks_packed"], axis=-1, count=width).astype(np.uint8)
        return {"masks": masks, "fid_choices": data["fid_choices"], "fid_sims": data["fid_sims"]}


def _set_torch_threads(threads: int | None) -> int | None:
    """Re-apply the thread count (ultralytics changes torch's behind our back); returns
    torch's setting when torch is loaded."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    if threads:
        torch.set_num_threads(int(threads))
    return int(torch.get_num_threads())


def measure_row(spec: RowSpec) -> dict[str, Any]:
    """Measure one row in this process (the worker's body); returns its result dict."""
    from runtime.pipeline import Pipeline

    started = time.perf_counter()
    t0 = time.perf_counter()
    cuda_events = (
        spec.kind != "reference"
        and spec.backend == "torch"
        and (str(spec.device).startswith("cuda"))
    )
    pipeline = Pipeline(
        spec.artifacts,
        backend="torch" if spec.kind == "reference" else spec.backend,
        device=spec.device,
        precision=spec.precision,
        threads=spec.threads,
        mask_size="image",
        weights_dirs=spec.weights_dirs,
        check_hashes=False,  # the parent verified the hashes once
        wrap_session=None if spec.kind == "reference" else PipelineRunner.wrapper(cuda_events),
    )
    load_s = time.perf_counter() - t0
    conf = spec.fastsam_conf
    if pipeline.has_fastsam and conf is not None:
        pipeline.set_fastsam_thresholds(conf=float(conf))
    torch_threads = _set_torch_threads(spec.threads)
    on_cuda = str(pipeline.device).startswith("cuda")
    torch_cuda = spec.kind == "reference" or pipeline.backend == "torch"
    if torch_cuda and on_cuda:
        import torch

        torch.cuda.reset_peak_memory_stats()
    if spec.kind == "reference":
        from benchmarks.reference import ReferenceRunner

        runner = ReferenceRunner(pipeline, spec.weights_dirs)
    else:
        runner = PipelineRunner(pipeline)
    src_hw = pipeline.views["src"].image_size
    dst_hw = pipeline.views["dst"].image_size
    pairs = synthetic_pairs(src_hw, dst_hw, spec.pairs, spec.objects, seed=spec.seed)
    use_fastsam = spec.candidates == "fastsam"

    def candidates_of(pair: BenchPair) -> Candidates | None:
        return None if use_fastsam else pair.candidates

    gpu_index = int(pipeline.device.split(":")[1]) if ":" in str(pipeline.device) else 0
    sampler = GpuMemorySampler(gpu_index) if on_cuda and not torch_cuda else None
    with sampler if sampler is not None else contextlib.nullcontext():
        for i in range(spec.warmup):
            runner.run(pairs[i % len(pairs)], candidates_of(pairs[i % len(pairs)]))
        fid_choices, fid_sims = [], []
        for pair in pairs:
            sims, matches = runner.similarities(pair)
            fid_sims.append(sims)
            fid_choices.append([m.candidate for m in matches])
    fid = PassOutput(np.asarray(fid_choices), sims=np.stack(fid_sims))

    host: dict[str, list[float]] = {s: [] for s in (*STAGES, END_TO_END)}
    device: dict[str, list[float]] = {}
    final = None
    for _ in range(spec.repeats):
        final = run_pass(runner, pairs, candidates_of, host, device)
    if final is None:  # outputs only (the untimed fidelity reference)
        final = run_pass(runner, pairs, candidates_of)

    result: dict[str, Any] = {
        "label": spec.label,
        "kind": spec.kind,
        "backend": spec.backend,
        "precision": spec.precision,
        "status": "ok",
        "device": pipeline.device,
        "describe": pipeline.describe(),
        "load_s": load_s,
        "threads": {"requested": spec.threads, "torch": torch_threads},
        "candidates": {
            "source": "fastsam" if use_fastsam else "synthetic",
            "fastsam_conf": pipeline.fastsam_conf if pipeline.has_fastsam else None,
            "per_pair": final.candidates.tolist(),
            "mean": float(final.candidates.mean()),
        },
        "samples_ms": host,
        "stages": {stage: latency_stats(values) for stage, values in host.items()},
        "device_ms": {role: latency_stats(v) for role, v in device.items()} or None,
        "device_samples_ms": device or None,
        **throughput(latency_stats(host[END_TO_END])["mean_ms"], spec.objects),
    }
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
    if spec.gt_root:
        result["gt"] = gt_metrics(pipeline, spec)
    result["memory"] = {"peak_host_rss_mb": peak_rss_mb()}
    if on_cuda and torch_cuda:
        import torch

        result["memory"]["peak_device_mb"] = torch.cuda.max_memory_allocated() / 2**20
        result["memory"]["device_method"] = "torch.cuda.max_memory_allocated"
        result["torch_cuda"] = {"cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}
    elif sampler is not None:
        result["memory"]["peak_device_mb"] = sampler.above_baseline_mb
        result["memory"]["device_method"] = (
            "nvidia-smi device-wide used memory above its pre-run value, sampled every "
            f"{GPU_SAMPLE_S * 1e3:.0f} ms during warm-up and the fidelity pass"
            if sampler.baseline_mb is not None
            else "n/a: nvidia-smi not found"
        )
    pipeline.close()
    result["wall_s"] = time.perf_counter() - started
    return result


def gt_metrics(pipeline: Any, spec: RowSpec) -> dict[str, Any]:
    """The official metrics of ``pipeline`` on the takes of a processed root: every take of
    ``gt_split`` (default: test when split.json has it, else every take), at most
    ``gt_frames`` frames each, masks at the model size (as O-MaMa writes them)."""
    from runtime.egoexo import ProcessedRoot
    from runtime.evaluate import evaluate_report
    from runtime.pipeline import run_take
    from runtime.results import read_json

    index = ProcessedRoot(spec.gt_root)
    takes = gt_takes(index, spec.gt_split)
    pipeline.mask_size = "model"
    predictions: dict = {}
    annotations: dict = {}
    counts = {"precomputed_frames": 0, "fastsam_frames": 0, "skipped": 0}
    base = Path(spec.work_dir) / f"gt_{spec.label.replace(' ', '_')}"
    started = time.perf_counter()
    for take in takes:
        out = base / take
        summary = run_take(
            pipeline, index.take_dir(take), out, max_frames=spec.gt_frames, gt=True, progress=False
        )
        counts["precomputed_frames"] += summary["precomputed_frames"]
        counts["fastsam_frames"] += summary["fastsam_frames"]
        counts["skipped"] += summary["skipped"]["count"]
        results = read_json(out / "results.json", "results")
        predictions.update(next(iter(results.values()))["results"])
        annotations.update(read_json(out / "gt.json", "GT")["annotations"])
    report = evaluate_report(annotations, predictions, pipeline.direction, workers=1)
    return {
        "root": str(spec.gt_root),
        "split": spec.gt_split,
        "takes": len(takes),
        "frames_per_take": spec.gt_frames,
        "protocol": report["protocol"],
        "fastsam_conf": pipeline.fastsam_conf if pipeline.has_fastsam else None,
        **report["aggregated_metrics"],
        "observations": report["counts"]["observations"],
        "gt_visible": report["counts"]["gt_visible"],
        **counts,
        "wall_s": time.perf_counter() - started,
    }


def gt_takes(index: Any, split: str | None) -> list[str]:
    """Takes to evaluate: ``split``'s, or test's when split.json has a test split, else
    every prepared take; an OmamaError when there are none."""
    if split is None and index.split_json.is_file() and "test" in index.split_map():
        split = "test"
    takes = index.takes(split)
    takes = [t for t in takes if index.has_take(t)]
    if not takes:
        where = f"split {split!r} of " if split else ""
        raise OmamaError(
            f"--gt: no prepared takes in {where}{index.root} (give a processed root written by "
            "`omama data prepare`, e.g. of `omama data synth` takes)"
        )
    return takes


# ----------------------------------------------------------------------------- workers


def worker_command(spec_path: Path) -> list[str]:
    return [sys.executable, "-m", "benchmarks.harness", str(spec_path)]


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
    try:
        with open(log_path, "w", encoding="utf-8") as log:
            done = subprocess.run(
                worker_command(spec_path),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                timeout=timeout_s,
                check=False,
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


def worker_main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.harness SPEC.json``: measure one row, write its result JSON.
    Problems print one ``error:`` line (the parent shows it in the row) and exit 1."""
    import logging
    import traceback

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
    from runtime.atomic import write_json

    write_json(spec.result_path, result)
    return 0


@dataclass
class RowPlan:
    """A row of the report before it runs: runnable (``spec``) or not (``reason``)."""

    label: str
    kind: str
    backend: str
    precision: str
    size_mb: float | None = None
    files: list[str] = field(default_factory=list)
    spec: RowSpec | None = None
    reason: str | None = None


# ----------------------------------------------------------------------------- the run

BACKEND_CHOICES = ("torch", "onnxruntime", "tensorrt")
PRECISION_CHOICES = ("fp32", "fp16")
CANDIDATE_CHOICES = ("auto", "fastsam", "synthetic")
DEVICE_CHOICES = ("auto", "cpu", "cuda")
REFERENCE_OUTPUTS = "reference_outputs.npz"
WORK_DIR = ".work"


@dataclass
class BenchConfig:
    """What ``omama bench`` measures; the CLI options map onto these fields."""

    artifacts: Path
    out_dir: Path = Path("bench")
    backends: list[str] = field(default_factory=lambda: list(BACKEND_CHOICES))
    precisions: list[str] = field(default_factory=lambda: list(PRECISION_CHOICES))
    device: str = "auto"
    pairs: int = 10
    objects: int = 4
    repeats: int = 3
    reference_repeats: int = 1
    warmup: int = 2
    threads: int | None = None
    seed: int = 0
    candidates: str = "auto"
    fastsam_conf: float | None = None
    reference: bool = True
    gt_root: Path | None = None
    gt_split: str | None = None
    gt_frames: int | None = 10
    weights_dirs: list[Path] = field(default_factory=list)
    timeout_s: float = 3600.0


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


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when an NVIDIA GPU is visible, else ``cpu``."""
    from runtime.sessions import check_device, gpu_name

    device = check_device(device)
    if device != "auto":
        return device
    return "cuda" if gpu_name("cuda") is not None else "cpu"


def _validate(config: BenchConfig) -> None:
    for name, value, least in (
        ("--pairs", config.pairs, 1),
        ("--objects-per-frame", config.objects, 1),
        ("--repeats", config.repeats, 1),
        ("--warmup", config.warmup, 0),
        ("--reference-repeats", config.reference_repeats, 1),
    ):
        if value < least:
            raise OmamaError(f"{name} must be at least {least}, got {value}")
    if config.threads is not None and config.threads < 1:
        raise OmamaError(f"--threads must be at least 1, got {config.threads}")
    if config.candidates not in CANDIDATE_CHOICES:
        raise OmamaError(
            f"--candidates must be one of {', '.join(CANDIDATE_CHOICES)}, got {config.candidates!r}"
        )
    if config.fastsam_conf is not None and not 0.0 <= config.fastsam_conf < 1.0:
        raise OmamaError(f"--fastsam-conf must lie in [0, 1), got {config.fastsam_conf}")
    if config.gt_frames is not None and config.gt_frames < 1:
        raise OmamaError(f"--gt-frames must be at least 1, got {config.gt_frames}")


def row_files(manifest: Any, backend: str, precision: str) -> tuple[list[Any], str | None]:
    """The artifact files a row runs (torch: the fp32 ONNX files, whose weights it holds),
    or the reason they are not there."""
    fmt = "tensorrt" if backend == "tensorrt" else "onnx"
    wanted = "fp32" if backend == "torch" else precision
    files, missing = [], []
    for model in dict.fromkeys(manifest.role_models().values()):
        entry = manifest.find(model, fmt, wanted)
        if entry is None:
            missing.append(model)
        else:
            files.append(entry)
    if not missing:
        return files, None
    if fmt == "tensorrt":
        engines = manifest.engines
        why = engines.reason or engines.note or "exported without engines"
        return files, (
            f"no TensorRT {wanted} engine for {', '.join(missing)} in the artifacts ({why})"
        )
    hint = " (export with --fp16)" if wanted == "fp16" else ""
    return files, f"no {wanted} ONNX file for {', '.join(missing)} in the artifacts{hint}"


def backend_reasons(device: str) -> dict[str, str | None]:
    """Why each backend cannot run on ``device`` (None: it can). TensorRT missing is said
    first, whatever the device."""
    import importlib.util

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


def plan_rows(config: BenchConfig, manifest: Any, device: str) -> list[RowPlan]:
    """Every requested backend x precision (and the reference row), runnable or with the
    reason it is not."""
    reasons = backend_reasons(device)
    plans = []
    for backend in config.backends:
        for precision in config.precisions:
            plan = RowPlan(f"{backend} {precision}", "pipeline", backend, precision)
            files, missing = row_files(manifest, backend, precision)
            plan.files = [f.path for f in files]
            if reasons[backend]:
                plan.reason = reasons[backend]
            elif backend == "torch" and precision != "fp32":
                plan.reason = (
                    "the torch backend is the fp32 reference (fp16 runs from the "
                    "exported ONNX files and engines)"
                )
            else:
                plan.reason = missing
            if plan.reason is None:
                plan.size_mb = _size_mb(files)
            plans.append(plan)
    if config.reference:
        plan = RowPlan(REFERENCE_ROW, "reference", "torch", "fp32")
        files, missing = row_files(manifest, "torch", "fp32")
        plan.files = [f.path for f in files]
        plan.reason = reasons["torch"] and f"needs the torch backend: {reasons['torch']}"
        plan.reason = plan.reason or missing
        if plan.reason is None:
            plan.size_mb = _size_mb(files)
        plans.append(plan)
    return plans


def timing_method(device: str) -> str:
    if device.startswith("cuda"):
        return (
            "time.perf_counter around each stage and around each whole pair, after warm-up; "
            "every model call returns host arrays, so its GPU work is complete when the clock "
            "stops (torch copies outputs to the host, TensorRT synchronises its CUDA stream, "
            "ONNX Runtime's run() is synchronous); the torch backend also records CUDA events "
            "around each model call (device_ms)"
        )
    return (
        "time.perf_counter (host wall clock) around each stage and around each whole pair, "
        "after warm-up"
    )


def run_bench(config: BenchConfig, progress: bool = True) -> dict[str, Any]:
    """Measure every row of ``config`` (one worker process each) and return the report
    dict (:mod:`benchmarks.report` writes it). Raises OmamaError for a bad artifacts
    folder, bad options or a ``--gt`` root without takes."""
    import datetime as dt

    from tqdm import tqdm

    from runtime.manifest import check_artifacts

    _validate(config)
    manifest = check_artifacts(config.artifacts)
    device = resolve_device(config.device)
    candidates = config.candidates
    if candidates == "auto":
        candidates = "fastsam" if manifest.fastsam.included else "synthetic"
    if candidates == "fastsam" and not manifest.fastsam.included:
        raise OmamaError(
            f"--candidates fastsam: the artifacts in {config.artifacts} hold no FastSAM model "
            "(exported with --no-fastsam-export); use --candidates synthetic"
        )
    conf = config.fastsam_conf
    conf_note = None
    manifest_conf = float(manifest.fastsam.conf)
    if (
        candidates == "fastsam"
        and conf is None
        and manifest.random_init
        and manifest_conf > RANDOM_INIT_FASTSAM_CONF
        and not manifest.fastsam.nms_in_graph
    ):
        conf = RANDOM_INIT_FASTSAM_CONF
        conf_note = (
            "random-weight FastSAM scores lie between 1e-3 and 1.3e-2: its confidence "
            f"threshold is lowered from {manifest_conf} to {conf} so the matcher "
            "sees candidates (--fastsam-conf sets it)"
        )
    if candidates == "fastsam" and conf is not None:
        # Refused here, in one line, before any worker starts: a conf below the one baked
        # into an in-graph NMS (the workers apply it through Pipeline.set_fastsam_thresholds).
        nms_thresholds(manifest.fastsam, conf=conf)
    if config.gt_root is not None:
        from runtime.egoexo import ProcessedRoot

        gt_takes(ProcessedRoot(config.gt_root), config.gt_split)
    out = Path(config.out_dir)
    work = out / WORK_DIR
    work.mkdir(parents=True, exist_ok=True)
    env_start = environment()
    plans = plan_rows(config, manifest, device)
    ref_path = work / REFERENCE_OUTPUTS
    if ref_path.exists():
        ref_path.unlink()

    def spec_for(plan: RowPlan, **overrides: Any) -> RowSpec:
        name = plan.label.replace(" ", "_")
        base = dict(
            artifacts=str(config.artifacts),
            backend=plan.backend,
            precision=plan.precision,
            device=device,
            kind=plan.kind,
            threads=config.threads,
            pairs=config.pairs,
            objects=config.objects,
            repeats=config.repeats,
            warmup=config.warmup,
            seed=config.seed,
            candidates=candidates,
            fastsam_conf=conf,
            weights_dirs=[str(d) for d in config.weights_dirs],
            work_dir=str(work),
            result_path=str(work / f"{name}.result.json"),
        )
        if plan.kind == "reference":
            base["repeats"] = config.reference_repeats
        if config.gt_root is not None and plan.kind == "pipeline":
            base.update(
                gt_root=str(config.gt_root), gt_split=config.gt_split, gt_frames=config.gt_frames
            )
        return RowSpec(**(base | overrides))

    torch_plan = next((p for p in plans if p.label == "torch fp32"), None)
    runnable = [p for p in plans if p.reason is None]
    reference_plan = None
    if torch_plan is not None and torch_plan.reason is None:
        reference_plan = torch_plan
    elif backend_reasons(device)["torch"] is None and (runnable or config.reference):
        # The torch row was not asked for: run it for its outputs only (the fidelity reference).
        reference_plan = RowPlan("torch fp32", "pipeline", "torch", "fp32")
        if row_files(manifest, "torch", "fp32")[1] is not None:
            reference_plan = None
    order: list[tuple[RowPlan, RowSpec]] = []
    if reference_plan is not None:
        extra = {} if reference_plan is torch_plan else {"repeats": 0, "warmup": 0, "gt_root": None}
        order.append(
            (
                reference_plan,
                spec_for(
                    reference_plan,
                    save_outputs=str(ref_path),
                    reference_outputs=str(ref_path),
                    **extra,
                ),
            )
        )
    for plan in runnable:
        if plan is not reference_plan:
            order.append((plan, spec_for(plan)))

    results: dict[str, dict] = {}
    fidelity_note = None
    bar = tqdm(total=len(order), desc="bench", unit="row", disable=not progress, file=sys.stderr)
    try:
        for plan, spec in order:
            bar.set_postfix_str(plan.label)
            if spec.reference_outputs is None and ref_path.is_file():
                spec.reference_outputs = str(ref_path)
            result = run_worker(spec, timeout_s=config.timeout_s)
            if plan is reference_plan and result.get("status") != "ok":
                fidelity_note = f"the torch fp32 reference run failed: {result.get('reason')}"
            results[plan.label if any(plan is p for p in plans) else "_fidelity_"] = result
            bar.update(1)
    finally:
        bar.close()
    if reference_plan is None:
        fidelity_note = "no torch fp32 reference: " + (
            backend_reasons(device)["torch"] or "not run"
        )

    rows = []
    for plan in plans:
        row: dict[str, Any] = {
            "label": plan.label,
            "kind": plan.kind,
            "backend": plan.backend,
            "precision": plan.precision,
            "size_mb": plan.size_mb,
            "files": plan.files,
        }
        if plan.reason is not None:
            row.update(status="unavailable", reason=plan.reason)
        else:
            result = results.get(plan.label, {"status": "failed", "reason": "not run"})
            row.update(result)
            row["size_mb"], row["files"] = plan.size_mb, plan.files
            if row.get("status") == "ok" and "fidelity" not in row:
                row["fidelity_note"] = fidelity_note or "n/a"
        rows.append(row)
    ref_row = next(
        (r for r in rows if r["label"] == REFERENCE_ROW and r.get("status") == "ok"), None
    )
    if ref_row is not None:
        ref_mean = ref_row["stages"][END_TO_END]["mean_ms"]
        for row in rows:
            if row.get("status") == "ok" and ref_mean:
                row["speedup_vs_reference"] = ref_mean / row["stages"][END_TO_END]["mean_ms"]
    notes = [conf_note] if conf_note else []
    if reference_plan is not None and reference_plan is not torch_plan:
        notes.append("torch fp32 was not asked for: it ran untimed, as the fidelity reference")
    if results and all(r.get("status") == "ok" for r in results.values()):
        shutil.rmtree(work, ignore_errors=True)  # specs, logs, outputs: only kept for failures
    if manifest.random_init:
        notes.append(
            "the artifacts hold random weights: latency and fidelity are meaningful, "
            "accuracy is not"
        )
    env_end_load = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return {
        "format": "omama.bench",
        "schema_version": 1,
        "created_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "artifacts": {
            "path": str(config.artifacts),
            "direction": manifest.direction,
            "random_init": manifest.random_init,
            "views": {role: view.to_dict() for role, view in manifest.views.items()},
            "matcher_input": manifest.matcher.input,
            "attention": manifest.matcher.attention,
            "backbone": manifest.backbone.name,
            "fastsam": manifest.fastsam.variant if manifest.fastsam.included else None,
            "fastsam_imgsz": manifest.fastsam.imgsz,
            "engines": manifest.engines.note,
        },
        "config": {
            "backends": config.backends,
            "precisions": config.precisions,
            "device": device,
            "device_asked": config.device,
            "pairs": config.pairs,
            "objects_per_frame": config.objects,
            "repeats": config.repeats,
            "reference_repeats": config.reference_repeats,
            "warmup": config.warmup,
            "threads": config.threads,
            "seed": config.seed,
            "candidates": candidates,
            "fastsam_conf": conf,
            "fidelity_candidates": FIDELITY_CANDIDATES,
            "reference": config.reference,
            "gt_root": str(config.gt_root) if config.gt_root else None,
            "gt_split": config.gt_split,
            "gt_frames": config.gt_frames,
        },
        "inputs": (
            f"{config.pairs} synthetic frame pairs at the model sizes (source "
            f"{manifest.views['src'].image_size[1]}x{manifest.views['src'].image_size[0]}, "
            f"destination {manifest.views['dst'].image_size[1]}x"
            f"{manifest.views['dst'].image_size[0]} px), {config.objects} objects each "
            f"(seed {config.seed}); candidates: "
            + (
                "FastSAM on the destination image"
                if candidates == "fastsam"
                else f"{FIDELITY_CANDIDATES} fixed synthetic masks per frame"
            )
        ),
        "timing_method": timing_method(device),
        "memory_method": (
            "host: peak resident set (ru_maxrss) of a fresh worker process per row, including "
            "imports and model loading; device: torch.cuda.max_memory_allocated for torch rows, "
            "nvidia-smi device-wide used memory above its pre-run value for the others"
        ),
        "fidelity_method": (
            "vs the torch fp32 row on the same inputs: argmax agreement and max |similarity "
            f"difference| on {FIDELITY_CANDIDATES} fixed candidates per frame (FastSAM "
            "excluded, so candidate indices mean the same), mean IoU of the final masks of the "
            "end-to-end run (FastSAM included; two empty masks count as 1)"
        ),
        "fidelity_reference": None if fidelity_note else "torch fp32",
        "fidelity_note": fidelity_note,
        "environment": env_start | {"load_average_end": env_end_load},
        "rows": rows,
        "notes": notes,
    }


if __name__ == "__main__":
    raise SystemExit(worker_main())
