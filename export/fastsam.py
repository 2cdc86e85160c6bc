"""FastSAM to ONNX through ultralytics' own exporter, and the random-weight stand-in.

The graph is ultralytics' (imgsz 1024 by default, static shapes, simplified with
onnxslim), in one of two forms:

- NMS in the graph (``nms=True``): ultralytics wraps the network in its NMS module, so
  ``output0`` is (1, max_det, 4 + 1 + 1 + 32): ``x1, y1, x2, y2`` input pixels, score,
  class, 32 mask coefficients per kept detection, zero rows after the last one. The score
  threshold (a ``Greater`` on the scores), the IoU threshold (an input of the ONNX
  ``NonMaxSuppression``) and max_det (the padded row count) are constants of the graph:
  :func:`nms_graph_params` reads them back so the export can prove they are its own.
  Suppression is class-agnostic (FastSAM has one class; ``agnostic_nms`` is set anyway).
- raw head outputs (``nms=False``): ``output0`` (1, 4 + 1 + 32, anchors) = xywh box,
  score, coefficients; the runtime (``runtime.fastsam_post``) filters and runs NMS, so
  conf and iou stay adjustable at run time and there is no 300-detection cap in the file.

``output1`` (1, 32, imgsz/4, imgsz/4), the mask prototypes, is the same in both; masks
are always assembled by the runtime.

TensorRT (not installed here, so not run): the in-graph form uses ``NonZero``,
``NonMaxSuppression`` (TensorRT's INMSLayer: same ``IoU > iou`` suppression, ties in an
unspecified order, at most its TopK limit of 5000 boxes above conf considered),
``GatherND``, ``Pad`` and ``ScatterND``; its NMS inputs are constants as TensorRT's ONNX
parser requires (:func:`nms_graph_params` checks it), and the shapes are static, so the
engine needs no optimisation profile. Ultralytics' own TensorRT export with ``nms=True``
goes through this same ONNX graph.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from omama_train.models.fastsam import (
    _import_ultralytics,
    build_random_fastsam,
    load_fastsam,
    preserve_thread_settings,
)
from runtime.errors import OmamaError
from runtime.manifest import CheckRecord, NmsSettings, TensorSpec

NETWORK_PREFIX = "/model/"  # ultralytics' NMS wrapper names the network's nodes /model/...


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

    with preserve_thread_settings():
        model = load_fastsam(weights)
    return model.model.eval()


def raw_io_specs(imgsz: int) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs and outputs of FastSAM's raw network (the torch reference of either form)."""
    return (
        [TensorSpec("images", (1, 3, imgsz, imgsz), "float32")],
        [
            TensorSpec("output0", (1, None, None), "float32"),
            TensorSpec("output1", (1, None, imgsz // 4, imgsz // 4), "float32"),
        ],
    )


def export_fastsam_onnx(
    weights: str | os.PathLike,
    workdir: str | os.PathLike,
    imgsz: int = 1024,
    opset: int = 17,
    nms: NmsSettings | None = None,
) -> tuple[Path, str]:
    """Export ``weights`` with ultralytics (static shapes, simplify on) into ``workdir``;
    returns (onnx path, ultralytics version).

    ``nms``: None exports the raw head outputs; settings export ultralytics' in-graph NMS
    with exactly those thresholds (``conf``, ``iou``, ``max_det``, ``agnostic_nms`` are
    the exporter's arguments for it). Ultralytics writes its ONNX beside the checkpoint, so
    the checkpoint is linked (or copied) into ``workdir`` first and the user's weights
    folder stays untouched.
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
            model = load_fastsam(local)
            extra = {"nms": False}
            if nms is not None:
                extra = dict(
                    nms=True, conf=nms.conf, iou=nms.iou, max_det=nms.max_det, agnostic_nms=True
                )
            produced = model.export(
                format="onnx",
                imgsz=imgsz,
                dynamic=False,
                simplify=True,
                opset=opset,
                device="cpu",
                verbose=False,
                **extra,
            )
        except Exception as exc:  # ultralytics raises many types
            raise OmamaError(
                f"ultralytics could not export {weights} to ONNX: {type(exc).__name__}: {exc}"
            ) from exc
    return Path(produced), ultralytics.__version__


def nms_graph_params(path: str | os.PathLike) -> NmsSettings:
    """The NMS settings baked into an ultralytics ONNX file with NMS in the graph.

    conf: the scalar constant of the ``Greater`` whose result selects the boxes
    (``NonZero``); iou: the ``NonMaxSuppression`` node's IoU threshold input; max_det:
    ``output0``'s row count. Raises OmamaError when the file has no such NMS.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        for attr in node.attribute if node.op_type == "Constant" else ():
            if attr.name == "value":
                values[node.output[0]] = numpy_helper.to_array(attr.t)
            elif attr.name == "value_float":
                values[node.output[0]] = np.asarray(attr.f)
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def scalar(name: str) -> float | None:
        value = values.get(name)
        return None if value is None or value.size != 1 else float(value.reshape(()))

    nms_nodes = [n for n in graph.node if n.op_type == "NonMaxSuppression"]
    thresholds = [
        scalar(n.input[1])
        for n in graph.node
        if n.op_type == "Greater"
        and any(c.op_type == "NonZero" for c in consumers.get(n.output[0], []))
    ]
    output0 = next((o for o in graph.output if o.name == "output0"), None)
    if len(nms_nodes) != 1 or len(thresholds) != 1 or thresholds[0] is None or output0 is None:
        raise OmamaError(
            f"{Path(path).name} has no ultralytics in-graph NMS (expected one "
            "NonMaxSuppression node, one constant score threshold and an output0)"
        )
    node = nms_nodes[0]
    iou = scalar(node.input[3]) if len(node.input) > 3 else None
    dims = output0.type.tensor_type.shape.dim
    # TensorRT's ONNX parser wants NonMaxSuppression's max_output_boxes_per_class and
    # thresholds as constants (onnx-tensorrt's operator notes); this graph must have them so.
    constant = all(name in values for name in node.input[2:] if name)
    if iou is None or not constant or len(dims) != 3 or not dims[1].HasField("dim_value"):
        raise OmamaError(
            f"{Path(path).name}: its NMS box limit, IoU threshold or max_det is not a constant"
        )
    return NmsSettings(conf=thresholds[0], iou=iou, max_det=int(dims[1].dim_value))


def check_baked_nms(path: str | os.PathLike, wanted: NmsSettings) -> NmsSettings:
    """Read the NMS settings of ``path`` and raise OmamaError unless they are ``wanted``
    (thresholds compared in float32, the graph's type). Returns the settings read."""
    baked = nms_graph_params(path)
    same = (
        np.float32(baked.conf) == np.float32(wanted.conf)
        and np.float32(baked.iou) == np.float32(wanted.iou)
        and baked.max_det == wanted.max_det
    )
    if not same:
        raise OmamaError(
            f"ultralytics baked conf {baked.conf:g}, iou {baked.iou:g}, max_det "
            f"{baked.max_det} into {Path(path).name}, not the requested conf "
            f"{wanted.conf:g}, iou {wanted.iou:g}, max_det {wanted.max_det}"
        )
    return baked


def nms_tail_nodes(path: str | os.PathLike) -> tuple[str, ...]:
    """Names of the nodes of ultralytics' NMS wrapper (everything outside the network), to
    keep float32 in half-precision variants: ONNX NonMaxSuppression takes float boxes, and
    the score threshold should compare the scores the fp32 graph compares.

    Left out: the node writing a graph output (the final ``ScatterND`` into the padded
    rows). onnxconverter-common 1.16 gives a blocked node's graph output an fp16 cast even
    with ``keep_io_types``; converted, that one copy runs in fp16 and the output stays
    float32 (rows rounded to fp16: <= 0.25 px at 1024 px, <= 2.5e-4 on scores). Names that
    are a prefix of a converted node's name are left out too (blocking is by prefix).
    """
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    outputs = {o.name for o in graph.output}
    tail, converted = [], []
    for node in graph.node:
        in_tail = not node.name.startswith(NETWORK_PREFIX) and not set(node.output) & outputs
        (tail if in_tail else converted).append(node.name)
    return tuple(n for n in tail if not any(other.startswith(n) for other in converted))


def nms_choice(mode: str, checks: list[CheckRecord]) -> tuple[bool, str]:
    """(NMS stays in the graph, why) for ``--fastsam-nms`` ``mode`` (``auto`` or ``graph``)
    after the in-graph parity ``checks``: ``auto`` falls back to the runtime's NMS when a
    check failed, ``graph`` keeps the file (the export then fails on those checks)."""
    failed = [c for c in checks if not c.passed]
    if failed and mode == "auto":
        numbers = "; ".join(
            f"{c.output}: {c.metric} {c.value:.3g} (tolerance {c.tolerance:g}) [{c.detail}]"
            for c in failed
        )
        return False, f"in-graph NMS parity failed: {numbers}"
    if mode == "auto":
        return True, "in-graph NMS parity holds"
    return True, "requested (--fastsam-nms graph)"
