"""The two runners a bench row times, behind one interface.

``run(pair, candidates)`` matches every query of a pair end to end and returns
``({"host": stage ms, "device": CUDA-event ms per model}, matches)``;
``similarities(pair)`` matches on the pair's fixed candidates and returns the (K, N)
similarities with the matches (the fidelity pass).

* :class:`PipelineRunner`: the deployed pipeline (:class:`runtime.pipeline.Pipeline`);
* :class:`ReferenceRunner`: the O-MaMa shape (:class:`benchmarks.reference.ReferencePipeline`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from benchmarks.harness.inputs import BenchPair
from runtime.candidates import Candidates
from runtime.errors import OmamaError
from runtime.pipeline import STAGES, Match
from runtime.sessions import InstrumentedSession, Session


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


class PipelineRunner:
    """The deployed pipeline behind the bench's interface. Every model session is an
    :class:`runtime.sessions.InstrumentedSession` (``Pipeline(wrap_session=...)``): the
    matcher's keeps its similarity blocks, and on a GPU the torch backend's time each call
    with CUDA events."""

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

    def run(self, pair: BenchPair, candidates: Candidates | None) -> tuple[dict, list[Match]]:
        self._take()
        matches = self.pipeline.match_frame(pair.src_rgb, pair.dst_rgb, pair.queries, candidates)
        record = {s: float(self.pipeline.last_latency_ms.get(s, 0.0)) for s in STAGES}
        device, _ = self._take()
        return {"host": record, "device": device}, matches

    def similarities(self, pair: BenchPair) -> tuple[np.ndarray, list[Match]]:
        self._take()
        matches = self.pipeline.match_frame(
            pair.src_rgb, pair.dst_rgb, pair.queries, pair.candidates
        )
        _, blocks = self._take()
        sims = assemble_blocks(blocks, len(pair.queries), len(pair.candidates))
        return sims, matches


class ReferenceRunner:
    """The O-MaMa shape (:class:`benchmarks.reference.ReferencePipeline`) on the models of
    a torch-backend pipeline, behind the same interface (no device times)."""

    def __init__(self, pipeline: Any, weights_dirs: Sequence[str] = ()) -> None:
        from benchmarks.reference import ReferencePipeline

        self.reference = ReferencePipeline(pipeline, weights_dirs)

    def run(self, pair: BenchPair, candidates: Candidates | None) -> tuple[dict, list[Match]]:
        matches, _ = self.reference.match_frame(
            pair.src_rgb, pair.dst_rgb, pair.queries, candidates
        )
        return {"host": dict(self.reference.last_latency_ms), "device": {}}, matches

    def similarities(self, pair: BenchPair) -> tuple[np.ndarray, list[Match]]:
        matches, sims = self.reference.match_frame(
            pair.src_rgb, pair.dst_rgb, pair.queries, pair.candidates
        )
        return np.stack(sims).astype(np.float32), matches
