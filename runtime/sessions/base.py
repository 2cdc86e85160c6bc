"""The session interface every backend implements, and the device names it runs on.

A session is one loaded model on one backend, with polygraphy's runner shape:

- ``inputs`` / ``outputs``: :class:`runtime.manifest.TensorSpec` (name, shape with dynamic
  dims as names or None, numpy dtype name), the type the manifest records them in;
- ``backend``, ``device``, ``name``, ``providers`` (what runs it);
- ``infer(feeds) -> outputs``: dicts of numpy arrays by tensor name;
- ``warmup(n)``, ``close()`` (also a context manager).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Mapping

import numpy as np

from runtime.errors import OmamaError
from runtime.info import nvidia_gpus
from runtime.manifest import TensorSpec


class Session(ABC):
    """One loaded model on one backend. Subclasses set the attributes and implement
    :meth:`_run`; :meth:`infer` checks the feeds first."""

    backend: str = ""
    device: str = "cpu"
    name: str = ""
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    providers: tuple[str, ...] = ()  # what runs it: execution providers, library version

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model: ``{input name: array}`` -> ``{output name: array}``.

        Feeds are checked against :attr:`inputs` (names, ranks, static dims) and cast to the
        input dtype when the kind matches (float64 -> float32, int32 -> int64); anything
        else is an :class:`OmamaError` naming the input.
        """
        return self._run(self.check_feeds(feeds))

    @abstractmethod
    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def close(self) -> None:  # noqa: B027 - sessions without resources need nothing
        """Release the backend's resources; the session cannot run afterwards."""

    def warmup(self, n: int = 1, dims: Mapping[str, int] | None = None) -> list[float]:
        """Run ``n`` times on zeros (dynamic dims from ``dims``, else 1); latencies in ms."""
        feeds = {
            info.name: np.zeros(info.concrete_shape(dims), dtype=info.dtype) for info in self.inputs
        }
        latencies_ms = []
        for _ in range(n):
            t0 = time.perf_counter()
            self.infer(feeds)
            latencies_ms.append(1000 * (time.perf_counter() - t0))
        return latencies_ms

    def check_feeds(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        expected = {info.name: info for info in self.inputs}
        missing = [n for n in expected if n not in feeds]
        extra = [n for n in feeds if n not in expected]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing {', '.join(missing)}")
            if extra:
                parts.append(f"unknown {', '.join(extra)}")
            raise OmamaError(
                f"{self._what()}: inputs do not match ({'; '.join(parts)}); it takes "
                f"{'; '.join(i.describe() for i in self.inputs)}"
            )
        out = {}
        for name, info in expected.items():
            array = np.asarray(feeds[name])
            want = np.dtype(info.dtype)
            if array.ndim != len(info.shape) or any(
                isinstance(d, int) and d >= 0 and d != s
                for d, s in zip(info.shape, array.shape, strict=False)
            ):
                raise OmamaError(
                    f"{self._what()}: input {info.describe()} got shape {tuple(array.shape)}"
                )
            if array.dtype != want:
                if array.dtype.kind != want.kind and not (
                    array.dtype.kind in "iu" and want.kind in "iu"
                ):
                    raise OmamaError(
                        f"{self._what()}: input {info.describe()} got dtype {array.dtype}"
                    )
                array = array.astype(want)
            out[name] = np.ascontiguousarray(array)
        return out

    def _what(self) -> str:
        return f"{self.backend} session {self.name or '(model)'}"

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} on {self.device}>"


def device_index(device: str) -> int:
    """``cuda`` -> 0, ``cuda:1`` -> 1."""
    if ":" in device:
        try:
            return int(device.split(":", 1)[1])
        except ValueError as exc:
            raise OmamaError(f"device must be cpu, cuda or cuda:N, got {device!r}") from exc
    return 0


def check_device(device: str) -> str:
    """Normalise ``cpu | cuda | cuda:N | auto``."""
    device = (device or "auto").lower()
    if device in ("cpu", "cuda", "auto") or device.startswith("cuda:"):
        if device.startswith("cuda:"):
            device_index(device)
        return device
    raise OmamaError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")


def gpu_name(device: str = "cuda") -> str | None:
    """Name of the NVIDIA GPU ``device`` refers to (``nvidia-smi``), or None."""
    gpus = nvidia_gpus()
    index = device_index(device)
    if index >= len(gpus):
        return None
    return gpus[index].split(",")[0].strip()
