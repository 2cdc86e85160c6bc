"""One batch of ``/v1/match`` requests through one pipeline, each frame encoded once.

Requests that arrive together (Ray Serve's ``@serve.batch`` collects them) often name the
same destination frame: several clients asking about one camera frame, or one client
sending its objects in separate requests. :func:`run_batch` groups the batch by
destination (image bytes and candidates: ``MatchRequest.dst_key``), runs FastSAM and the
destination backbone once per group, then by source image (``src_key``), runs the source
backbone once per source and the matcher once for all queries of a (source, destination)
pair, as :meth:`runtime.pipeline.Pipeline.match_frame` does for the queries of one call.
A matcher call that fails (a bad query) is retried request by request, so a bad request
fails only itself.

A request's latency is the stages of its group: a shared encode counts for every request
that used it (it is what each of them waited for); ``queue`` is the time from arrival to
the start of the batch.

:class:`BatchMerger` runs the batches one at a time and merges those that wait meanwhile:
Ray Serve 2.60's ``@serve.batch`` forms the next batch while one runs (from what arrives
within ``batch_wait_timeout_s`` of its first request), so under load every batch would
hold one or two requests while the others queue behind the model. Nothing here imports
Ray.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from runtime.errors import OmamaError
from runtime.pipeline import STAGES, Pipeline
from runtime.serve.protocol import MatchRequest, RequestError, match_response


@dataclass
class BatchCounters:
    """What a replica has done since it started (``GET /v1/info``): requests answered,
    batches run, destination and source encodes, matcher calls."""

    requests: int = 0
    batches: int = 0
    dst_encodes: int = 0
    src_encodes: int = 0
    matcher_calls: int = 0

    def to_json(self) -> dict:
        return dict(vars(self))


def group_batch(requests: Sequence[MatchRequest]) -> dict[str, dict[str, list[int]]]:
    """``{dst_key: {src_key: [request index, ...]}}`` in arrival order."""
    groups: dict[str, dict[str, list[int]]] = {}
    for i, request in enumerate(requests):
        groups.setdefault(request.dst_key, {}).setdefault(request.src_key, []).append(i)
    return groups


def _add(total: dict[str, float], part: dict[str, float]) -> None:
    for stage, value in part.items():
        if stage in STAGES:
            total[stage] = total.get(stage, 0.0) + value


def run_batch(
    pipeline: Pipeline, requests: Sequence[MatchRequest], counters: BatchCounters | None = None
) -> list[dict | RequestError]:
    """The response JSON of each request (:func:`runtime.serve.protocol.match_response`), or
    the :class:`RequestError` of a request whose frame the model refused (422)."""
    counters = counters if counters is not None else BatchCounters()
    start = time.perf_counter()
    counters.batches += 1
    out: list[dict | RequestError | None] = [None] * len(requests)
    for src_groups in group_batch(requests).values():
        members = [i for indices in src_groups.values() for i in indices]
        first = requests[members[0]]
        try:
            dst = pipeline.encode_dst(first.dst_rgb, first.candidates)
        except OmamaError as exc:
            for i in members:
                out[i] = RequestError(422, str(exc))
            continue
        counters.dst_encodes += 1
        dst_ms = dst.take_latency()
        for indices in src_groups.values():
            _match_group(pipeline, requests, indices, dst, dst_ms, out, counters)
        for i in members:
            if isinstance(out[i], dict):
                out[i]["batch"].update(requests=len(requests), shared_dst=len(members))
                received = requests[i].received_s
                out[i]["latency_ms"]["queue"] = round(max(0.0, start - received) * 1e3, 3)
    counters.requests += len(requests)
    return out  # type: ignore[return-value]


def _match_group(pipeline, requests, indices, dst, dst_ms, out, counters) -> None:
    """One source image's requests against one encoded destination: one matcher call; when
    it fails, one call per request, so that only the requests at fault get the 422."""
    first = requests[indices[0]]
    try:
        src = pipeline.encode_src(first.src_rgb)
    except OmamaError as exc:  # the source image itself: every request that sent it
        for i in indices:
            out[i] = RequestError(422, str(exc))
        return
    counters.src_encodes += 1
    src_ms = src.take_latency()
    parts = [indices] if len(indices) == 1 else [indices, *([i] for i in indices)]
    for part in parts:
        try:
            matches = pipeline.match(src, dst, [q for i in part for q in requests[i].queries])
        except OmamaError as exc:
            if len(part) == 1:
                out[part[0]] = RequestError(422, str(exc))
            continue
        counters.matcher_calls += 1
        latency: dict[str, float] = {}
        for stage_ms in (dst_ms, src_ms, pipeline.last_latency_ms):
            _add(latency, stage_ms)
        latency["total"] = sum(latency.get(s, 0.0) for s in STAGES)
        offset = 0
        for i in part:
            count = len(requests[i].queries)
            out[i] = match_response(
                matches[offset : offset + count], latency, {"shared_src": len(indices)}
            )
            offset += count
        if part is indices:
            return


class BatchMerger:
    """Run ``run(items) -> results`` (a blocking call, in a thread) for one batch at a time;
    batches submitted while one runs are merged, in arrival order, into the next call of at
    most ``max_items`` items (one asyncio loop: a replica's).

    One worker task drains the queue, so a submitter that goes away (a client closing its
    connection) never stops a call that other requests wait for."""

    def __init__(self, run: Callable[[list], list], max_items: int) -> None:
        self._run = run
        self._max_items = max(1, max_items)
        self._pending: list[tuple[object, asyncio.Future]] = []
        self._worker: asyncio.Task | None = None

    async def submit(self, items: Sequence) -> list:
        """The results of ``items``, in order; the exception of a call that ran one of them
        is raised."""
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in items]
        self._pending += zip(items, futures, strict=True)
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._drain())
        results = await asyncio.gather(*futures, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return results

    async def _drain(self) -> None:
        while self._pending:
            taken = self._pending[: self._max_items]
            del self._pending[: self._max_items]
            live = [(i, f) for i, (_, f) in enumerate(taken) if not f.done()]
            try:
                results = await asyncio.to_thread(self._run, [item for item, _ in taken])
            except Exception as exc:
                for _, future in live:
                    if not future.done():  # its submitter may have gone away meanwhile
                        future.set_exception(exc)
                continue
            for i, future in live:
                if not future.done():
                    future.set_result(results[i])
