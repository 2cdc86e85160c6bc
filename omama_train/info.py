"""``omama info``: the runtime summary plus torch, timm and ultralytics (imported lazily)."""

from __future__ import annotations

import json

import typer

from runtime.info import format_info, package_version, runtime_info

TRAIN_PACKAGES = (
    "torch",
    "torchvision",
    "timm",
    "ultralytics",
    "safetensors",
    "onnxscript",
    "onnxslim",
)


def full_info() -> dict:
    info = runtime_info()
    for name in TRAIN_PACKAGES:
        info["versions"][name] = package_version(name)
    devices: list[str] = []
    if package_version("torch") is not None:
        import torch

        devices = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        cuda = torch.version.cuda or "none"
        detail = f"torch {torch.__version__} (CUDA build {cuda}), devices: cpu" + "".join(
            f", cuda:{i}" for i in range(len(devices))
        )
        info["backends"] = {"torch": {"usable": True, "detail": detail}, **info["backends"]}
    else:
        info["backends"] = {
            "torch": {
                "usable": False,
                "detail": "torch not installed (pip install 'omama[train]')",
            },
            **info["backends"],
        }
    info["torch_cuda_devices"] = devices
    return info


def register(app: typer.Typer) -> None:
    @app.command("info")
    def info_command(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
        """Versions of omama, torch, onnx, onnxruntime, tensorrt, ultralytics; devices; backends.

        Example: omama info --json
        """
        info = full_info()
        typer.echo(json.dumps(info, indent=2) if as_json else format_info(info))
