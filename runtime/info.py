"""What this installation can run: library versions, devices, usable backends (no torch)."""

from __future__ import annotations

import importlib
import importlib.metadata as md
import platform
import resource
import shutil
import subprocess

PACKAGES = (
    "omama",
    "numpy",
    "onnx",
    "onnxruntime",
    "onnxruntime-gpu",
    "tensorrt",
    "polygraphy",
    "av",
    "opencv-python-headless",
    "pycocotools",
)


def package_version(name: str) -> str | None:
    """Installed version of distribution ``name``, or None (never imports it)."""
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def package_versions(names: tuple[str, ...] | list[str]) -> dict[str, str | None]:
    """{name: installed version or None} for each distribution in ``names``."""
    return {name: package_version(name) for name in names}


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MB (Linux reports ``ru_maxrss`` in KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cpu_model() -> str | None:
    """The CPU's model name (from /proc/cpuinfo on Linux, else what platform reports)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def nvidia_gpus() -> list[str]:
    """GPU names reported by ``nvidia-smi`` (empty without an NVIDIA driver)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run(
            [exe, "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def onnxruntime_providers() -> list[str]:
    try:
        ort = importlib.import_module("onnxruntime")
    except ImportError:
        return []
    return list(ort.get_available_providers())


def tensorrt_status() -> tuple[bool, str]:
    """(usable, reason or version) for the TensorRT backend."""
    try:
        trt = importlib.import_module("tensorrt")
    except ImportError:
        return False, "TensorRT not installed (python package `tensorrt`)"
    if not nvidia_gpus():
        return False, f"TensorRT {trt.__version__} installed but no NVIDIA GPU visible"
    return True, f"TensorRT {trt.__version__}"


def runtime_info() -> dict:
    """A JSON-serialisable summary of the runtime side of this installation."""
    providers = onnxruntime_providers()
    trt_ok, trt_msg = tensorrt_status()
    backends = {
        "onnxruntime": (bool(providers), ", ".join(providers) or "onnxruntime not installed"),
        "tensorrt": (trt_ok, trt_msg),
    }
    return {
        "versions": {name: package_version(name) for name in PACKAGES},
        "onnxruntime_providers": providers,
        "gpus": nvidia_gpus(),
        "backends": {k: {"usable": ok, "detail": msg} for k, (ok, msg) in backends.items()},
    }


def format_info(info: dict) -> str:
    lines = ["versions:"]
    for name, ver in info["versions"].items():
        lines.append(f"  {name:24s} {ver or '-'}")
    lines.append(f"GPUs: {', '.join(info['gpus']) or 'none visible'}")
    if info.get("torch_cuda_devices") is not None:
        lines.append(f"torch CUDA devices: {', '.join(info['torch_cuda_devices']) or 'none'}")
    lines.append("backends:")
    for name, b in info["backends"].items():
        lines.append(f"  {name:12s} {'usable' if b['usable'] else 'unavailable':12s} {b['detail']}")
    return "\n".join(lines)
