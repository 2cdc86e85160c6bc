"""FastSAM to ONNX through ultralytics' own exporter, and the random-weight stand-in.

The graph is ultralytics' (imgsz 1024 by default, static shapes, simplified with
onnxslim); its outputs are the raw head outputs ``output0`` (1, 4 + 1 + 32, anchors):
xywh box, score, 32 mask coefficients, and ``output1`` (1, 32, imgsz/4, imgsz/4): the
mask prototypes. Confidence filtering, NMS and mask assembly are left to the runtime
(``runtime.fastsam_post``), which keeps the reference's conf 0.4 / IoU 0.9 adjustable at
run time; ultralytics' in-graph NMS would fix both at export time and cap the output at
300 detections.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

from omama_train.models.fastsam import (
    _import_ultralytics,
    build_random_fastsam,
    preserve_thread_settings,
)
from runtime.errors import OmamaError

OUTPUT_NAMES = ("output0", "output1")
MASK_COEFFICIENTS = 32


@contextlib.contextmanager
def quiet_ultralytics() -> Iterator[None]:
    """Keep ultralytics' export banner and notes out of omama's output (errors still show)."""
    _import_ultralytics()
    from ultralytics.utils import LOGGER

    level = LOGGER.level
    LOGGER.setLevel(logging.ERROR)
    try:
        with preserve_thread_settings():
            yield
    finally:
        LOGGER.setLevel(level)


def build_standin_fastsam(path: str | os.PathLike, seed: int = 0) -> Path:
    """Write a random-weight FastSAM stand-in (YOLOv8n-seg, one class) to ``path``.

    Same head and output layout as FastSAM-s/x (YOLOv8-seg with one class), the smallest
    scale, built from ultralytics' bundled yaml without any download. For trying the
    toolchain and for tests only.
    """
    with quiet_ultralytics():
        return build_random_fastsam(path, "n", seed)


def load_fastsam_network(weights: str | os.PathLike) -> torch.nn.Module:
    """The PyTorch network of a FastSAM checkpoint (eval mode), the parity reference:
    ``net(images)[0]`` is (output0, output1) as in the exported graph."""
    from omama_train.models.fastsam import load_fastsam

    with preserve_thread_settings():
        model = load_fastsam(weights)
    return model.model.eval()


def export_fastsam_onnx(
    weights: str | os.PathLike, workdir: str | os.PathLike, imgsz: int = 1024, opset: int = 17
) -> tuple[Path, str]:
    """Export ``weights`` with ultralytics (static shapes, simplify on, no NMS) into
    ``workdir``; returns (onnx path, ultralytics version).

    Ultralytics writes its ONNX beside the checkpoint, so the checkpoint is linked (or
    copied) into ``workdir`` first and the user's weights folder stays untouched.
    """
    weights = Path(weights)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    local = workdir / weights.name
    if not local.exists():
        try:
            local.symlink_to(weights.resolve())
        except OSError:
            shutil.copy2(weights, local)
    ultralytics = _import_ultralytics()
    with quiet_ultralytics(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on ultralytics' shape checks
        try:
            model = ultralytics.FastSAM(str(local))
            produced = model.export(
                format="onnx",
                imgsz=imgsz,
                dynamic=False,
                simplify=True,
                nms=False,
                opset=opset,
                device="cpu",
                verbose=False,
            )
        except Exception as exc:  # ultralytics raises many types
            raise OmamaError(
                f"ultralytics could not export {weights} to ONNX: {type(exc).__name__}: {exc}"
            ) from exc
    return Path(produced), ultralytics.__version__
