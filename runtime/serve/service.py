"""What one ``omama serve`` replica does, without Ray: open the artifacts, answer the routes.

:class:`MatchService` opens the artifacts folder once (the signature first with ``trust``,
then :class:`runtime.pipeline.Pipeline`, which checks the files against the manifest and
opens every model through :mod:`runtime.sessions`), and answers ``GET /healthz``,
``GET /v1/info`` and ``POST /v1/match`` given the method, path, content type and body.
:mod:`runtime.serve.app` wraps it in a Ray Serve deployment whose ``@serve.batch`` method
feeds :meth:`MatchService.run_batch`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass

from runtime.errors import OmamaError
from runtime.pipeline import Pipeline
from runtime.serve.batching import BatchCounters, run_batch
from runtime.serve.protocol import (
    MAX_PIXELS,
    MatchRequest,
    RequestError,
    check_match,
    parse_match,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeConfig:
    """Everything a replica needs (sent to each replica by Ray: paths are the replica's).

    Attributes:
        artifacts: the ``omama export`` folder (the same path on every node of a cluster).
        backend, device, precision, threads: as ``omama-run``'s flags.
        trust: public key to verify the folder's signature with, or None.
        weights_dirs: original weights (``torch`` backend only).
        max_batch: requests per ``@serve.batch`` call; batch_wait_ms: how long a batch
            waits to fill.
        max_body_mb: larger request bodies get 413.
        max_pixels: larger images and masks get 413 (from their headers, before decoding).
        health_timeout_s: a batch running longer fails the health check (Serve restarts
            the replica: a wedged model never answers again).
    """

    artifacts: str
    backend: str = "auto"
    device: str = "auto"
    precision: str = "auto"
    threads: int | None = None
    trust: str | None = None
    weights_dirs: tuple[str, ...] = ()
    max_batch: int = 8
    batch_wait_ms: float = 10.0
    max_body_mb: float = 50.0
    max_pixels: int = MAX_PIXELS
    health_timeout_s: float = 120.0

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)

    def to_json(self) -> dict:
        return asdict(self)


def open_pipeline(config: ServeConfig) -> Pipeline:
    """The replica's pipeline: signature (with ``trust``), manifest and files, sessions."""
    if config.trust is not None:
        from runtime.manifest.signing import verify_signature

        verify_signature(config.artifacts, config.trust)
    return Pipeline(
        config.artifacts,
        backend=config.backend,
        device=config.device,
        precision=config.precision,
        threads=config.threads,
        mask_size="image",
        weights_dirs=config.weights_dirs,
    )


class MatchService:
    """One replica's state: the pipeline, its description and the batch counters."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.pipeline = open_pipeline(config)
        self.counters = BatchCounters()
        self.started_s = time.time()
        self._batch_started: float | None = None  # monotonic start of the running batch
        self._info = self._describe()
        log.info(
            "omama serve replica ready: %s on %s %s %s",
            config.artifacts,
            self.pipeline.backend,
            self.pipeline.device,
            self.pipeline.precision,
        )

    def _describe(self) -> dict:
        from runtime.verification.replay import missing_verification

        pipe, manifest = self.pipeline, self.pipeline.manifest
        files = [
            manifest.run_file(model, pipe.plan.file_format, pipe.precision).path
            for model in manifest.role_models().values()
        ]
        lacking = missing_verification(manifest, pipe.plan, files)
        verification = {"verified": lacking is None, "files": files}
        if lacking is not None:
            verification["unverified"] = lacking
            verification["hint"] = (
                f"run `omama-run verify {manifest.root} --backend {pipe.backend} --device "
                f"{pipe.device} --precision {pipe.precision}` on this machine"
            )
        # With --trust the replica does not start unless the signature verifies.
        signature = (
            {"verified": True, "public_key": self.config.trust}
            if self.config.trust
            else {"verified": False, "reason": "not checked: started without --trust"}
        )
        return {
            **pipe.describe(),
            "verification": verification,
            "signature": signature,
            "config": self.config.to_json(),
        }

    def info(self) -> dict:
        return {**self._info, "counters": self.counters.to_json(),
                "uptime_s": round(time.time() - self.started_s, 3)}  # fmt: skip

    def health_problem(self) -> str | None:
        """Why the replica cannot answer, or None: its models closed, or a batch running
        past ``health_timeout_s`` (wedged: the requests behind it would wait forever)."""
        if not self.pipeline.sessions:
            return "the replica's models are closed"
        started = self._batch_started
        running_s = 0.0 if started is None else time.monotonic() - started
        if running_s > self.config.health_timeout_s:
            return (f"a batch has been running for {running_s:.1f} s, over the "
                    f"{self.config.health_timeout_s:g} s of --health-timeout-s")  # fmt: skip
        return None

    def healthy(self) -> bool:
        return self.health_problem() is None

    def check_health(self) -> None:
        """Raise when the replica cannot answer (Ray Serve restarts it)."""
        problem = self.health_problem()
        if problem is not None:
            raise OmamaError(problem)

    def prepare(self, body: bytes, content_type: str) -> MatchRequest:
        """A checked request (or a :class:`RequestError`), ready for :meth:`run_batch`."""
        request = parse_match(body, content_type, self.config.max_pixels)
        check_match(request, self.pipeline)
        request.received_s = time.perf_counter()
        return request

    def run_batch(self, requests: list[MatchRequest]) -> list[dict | RequestError]:
        # The pipeline keeps every call's latency for run summaries; a service answering for
        # weeks would grow it without end, and each response carries its own latency.
        self.pipeline.reset_latency()
        self._batch_started = time.monotonic()
        try:
            return run_batch(self.pipeline, requests, self.counters)
        finally:
            self._batch_started = None

    def close(self) -> None:
        self.pipeline.close()
