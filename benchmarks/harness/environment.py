"""The machine and software of a bench run, recorded in report.json (no torch import: the
torch worker adds its CUDA build to its own row)."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from benchmarks.common import load_average
from runtime.info import cpu_model, package_versions

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
    repo = path or Path(__file__).resolve().parents[2]
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
    """Machine and software of this run: CPU, load, Python, package versions, ONNX Runtime
    providers, GPUs and the omama revision."""
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
        "load_average": load_average(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": package_versions(VERSIONED_PACKAGES),
        "onnxruntime_providers": providers,
        **gpu_details(),
        "omama_git": git_revision(),
    }
