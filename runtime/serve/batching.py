"""One batch of ``/v1/match`` requests through one pipeline, each frame encoded once.

Requests that arrive together (Ray Serve's ``@serve.batch`` collects them) often name the
same destination frame: several clients asking about one camera frame, or one client
sending its objects in separate requests. :func:`run_batch` groups the batch by
destination (image bytes and candidates: ``MatchRequest.dst_key``), runs FastSAM and the
destination backbone once per group, then by source image (``src_key``), runs the source
backbone once per source and the matcher once for all queries of a (source, destination)
pair, as :meth:`runtime.pipeline.Pipeline.match_frame` does for the queries of one call.

A request's latency is the stages of its group: a shared encode counts for every request
that used it (it is what each of them waited for); ``queue`` is the time from arrival to
the start of the batch. Nothing here imports Ray.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
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
    """One source image's requests against one encoded destination: one matcher call."""
    first = requests[indices[0]]
    try:
        src = pipeline.encode_src(first.src_rgb)
        counters.src_encodes += 1
        src_ms = src.take_latency()
        queries = [q for i in indices for q in requests[i].queries]
        matches = pipeline.match(src, dst, queries)
        counters.matcher_calls += 1
    except OmamaError as exc:
        for i in indices:
            out[i] = RequestError(422, str(exc))
        return
    latency: dict[str, float] = {}
    for part in (dst_ms, src_ms, pipeline.last_latency_ms):
        _add(latency, part)
    latency["total"] = sum(latency.get(s, 0.0) for s in STAGES)
    offset = 0
    for i in indices:
        count = len(requests[i].queries)
        out[i] = match_response(
            matches[offset : offset + count], latency, {"shared_src": len(indices)}
        )
        offset += count
