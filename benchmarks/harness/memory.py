"""Device memory of a bench row: ``nvidia-smi``'s used memory, sampled in a thread.

Host memory is :func:`runtime.info.peak_rss_mb` (``ru_maxrss`` of the worker process);
torch rows on CUDA read the allocator's own peak instead of this sampler.
"""

from __future__ import annotations

import shutil
import subprocess
import threading

GPU_SAMPLE_S = 0.05


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
