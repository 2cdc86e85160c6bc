"""What the standalone benchmark scripts (``python -m benchmarks.bench_*``) share: where
results go, the machine record beside every number (its load average also goes into
``omama bench``'s environment), a child process's resident memory, and the synthetic
masks and video frames several scripts draw.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from runtime.atomic import write_json
from runtime.info import cpu_model, package_versions

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def log(message: str) -> None:
    """A progress line on stderr (stdout is kept for the results)."""
    print(message, file=sys.stderr, flush=True)


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where the OS has none): timings on a
    shared CPU depend on them."""
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def machine_record(
    load_at_start: Sequence[float] | None, packages: Sequence[str] = (), **extra: Any
) -> dict[str, Any]:
    """The machine a script measured on: CPU, Python, the load average at start and now
    (other processes distort timings, most on a 2-core machine), the versions of
    ``packages`` and the script's own ``extra`` fields (threads, GPU, ...)."""
    return {
        "processor": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average_at_start": list(load_at_start) if load_at_start else None,
        "load_average_at_end": load_average(),
        "versions": package_versions(list(packages)),
        **extra,
    }


def write_result(path: Path, result: dict[str, Any]) -> Path:
    """``result`` as indented JSON at ``path`` (atomically); returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, result, indent=2)
    return path


def rss_reader(pid: int) -> tuple[Callable[[], float | None], str]:
    """(a function returning the current resident set size of ``pid`` in MB, None once it
    has exited; how it reads it): psutil when installed, else ``/proc/PID/status``."""
    try:
        import psutil
    except ImportError:

        def read_proc() -> float | None:
            try:
                with open(f"/proc/{pid}/status") as fh:
                    for line in fh:
                        if line.startswith("VmRSS:"):
                            return int(line.split()[1]) / 1024  # kB
            except OSError:
                return None
            return None

        return read_proc, "/proc/PID/status VmRSS"
    process = psutil.Process(pid)

    def read() -> float | None:
        try:
            return process.memory_info().rss / 2**20
        except psutil.Error:
            return None

    return read, f"psutil {psutil.__version__}"


def blob_masks(rng: np.random.Generator, count: int, size: tuple[int, int]) -> np.ndarray:
    """(count, H, W) uint8 ellipses of random centre and radii (4 to 250 px): FastSAM-like
    candidates."""
    height, width = size
    masks = np.zeros((count, height, width), dtype=np.uint8)
    for n in range(count):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        ry, rx = rng.uniform(4, 250, size=2)
        masks[n] = ellipse_mask(size, cy, cx, ry, rx)
    return masks


def ellipse_mask(
    size_hw: tuple[int, int], cy: float, cx: float, ry: float, rx: float
) -> np.ndarray:
    """(H, W) uint8 0/1 filled ellipse of centre (cy, cx) and radii (ry, rx), in pixels."""
    ys, xs = np.ogrid[: size_hw[0], : size_hw[1]]
    return (((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1.0).astype(np.uint8)


def moving_frame(i: int, size: int, shift: int) -> np.ndarray:
    """Frame ``i`` (size, size, 3) uint8 of a moving gradient with a bright square: cheap
    to make, real work to encode; ``shift`` offsets the gradient (another video)."""
    ramp = (np.arange(size, dtype=np.uint16) + i * 2 + shift) % 256
    frame = np.empty((size, size, 3), np.uint8)
    frame[:, :, 0] = ramp[None, :]
    frame[:, :, 1] = ramp[:, None]
    frame[:, :, 2] = (i * 3) % 256
    x = (i * 4) % (size - 40)
    frame[60:100, x : x + 40] = 255
    return frame
