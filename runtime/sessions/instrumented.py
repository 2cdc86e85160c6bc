"""A session wrapper that times every call: how ``omama bench`` measures a pipeline."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from runtime.sessions.base import Session


@dataclass
class CallTiming:
    """One call of an :class:`InstrumentedSession`: host wall time and, when a device timer
    was given, the device time (ms)."""

    host_ms: float
    device_ms: float | None = None


class InstrumentedSession(Session):
    """A session that times every call and may keep its outputs: how ``omama bench``
    measures a pipeline (``Pipeline(..., wrap_session=...)``) without reaching into it.

    Arguments:
        inner: the session to run (attributes such as TensorRT's ``profile_range`` are
            forwarded).
        device_timer: a zero-argument factory of timers with ``start()`` and ``stop() ->
            ms`` (e.g. CUDA events, for work a clock on the host cannot see end); None
            records host time only.
        keep_outputs: keep every call's outputs (e.g. the matcher's similarity blocks).
    """

    def __init__(self, inner: Session, device_timer: Callable[[], Any] | None = None,
                 keep_outputs: bool = False) -> None:  # fmt: skip
        self.inner = inner
        self.backend, self.device, self.name = inner.backend, inner.device, inner.name
        self.inputs, self.outputs = inner.inputs, inner.outputs
        self.providers = tuple(getattr(inner, "providers", ()) or ())
        self.device_timer = device_timer
        self.keep_outputs = keep_outputs
        self.calls: list[CallTiming] = []
        self.kept: list[dict[str, np.ndarray]] = []

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        timer = self.device_timer() if self.device_timer is not None else None
        start = time.perf_counter()
        if timer is not None:
            timer.start()
        out = self.inner.infer(feeds)
        device_ms = timer.stop() if timer is not None else None
        self.calls.append(CallTiming(1e3 * (time.perf_counter() - start), device_ms))
        if self.keep_outputs:
            self.kept.append(out)
        return out

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.inner.infer(feeds)

    def take(self) -> tuple[list[CallTiming], list[dict[str, np.ndarray]]]:
        """The calls (and kept outputs) since the last ``take``, then forget them."""
        calls, kept = self.calls, self.kept
        self.calls, self.kept = [], []
        return calls, kept

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not set yet (failed construction)
            raise AttributeError(name)
        return getattr(self.inner, name)
