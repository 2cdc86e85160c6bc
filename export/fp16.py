"""fp16 ONNX variants: fp16 weights and arithmetic, fp32 inputs/outputs, sensitive ops in fp32.

Converted with onnxconverter-common (``convert_float_to_float16(keep_io_types=True)``):

- inputs and outputs stay float32, so the runtime feeds the same arrays to every variant;
- ops that lose accuracy or overflow in half precision stay float32: LayerNormalization
  (mean/variance over 768 values), Softmax, ReduceL2 (the cosine's norm: a sum of 768
  squares overflows fp16 at |x| > 9), ReduceSum/ReduceMean, Pow/Sqrt, plus the converter's
  own list (Resize, TopK, NonMaxSuppression, Range, CumSum, ...);
- whole subgraphs can be kept float32 by node-name prefix: the in-graph pooling weights of
  the masks-input matcher count mask cells (up to 175 x 238 = 41650, not exact in fp16).

The exporter's intermediate shape annotations are dropped before converting: the converter
otherwise inserts casts whose declared types contradict them (seen on FastSAM's Resize).
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from pathlib import Path

from export.graphs import save_onnx
from export.verify.graph import check_onnx
from runtime.manifest import GraphRecord

FP32_OPS: tuple[str, ...] = (
    "LayerNormalization",
    "Softmax",
    "ReduceL2",
    "ReduceSum",
    "ReduceMean",
    "Pow",
    "Sqrt",
)


def convert_fp16(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    fp32_ops: tuple[str, ...] = FP32_OPS,
    fp32_node_prefixes: tuple[str, ...] = (),
    check: bool = True,
) -> dict:
    """Write the fp16 variant of ONNX file ``src`` to ``dst`` and check it.

    Returns a report: node counts, the number of nodes kept in float32 (by op and by
    prefix) and the converter's version.
    """
    import onnx
    import onnxconverter_common
    from onnxconverter_common import float16

    model = onnx.load(str(src))
    del model.graph.value_info[:]
    block_ops = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(fp32_ops))
    block_nodes = [
        node.name
        for node in model.graph.node
        if fp32_node_prefixes and node.name.startswith(tuple(fp32_node_prefixes))
    ]
    kept_ops = Counter(node.op_type for node in model.graph.node if node.op_type in block_ops)
    _unshare_initializers(model, set(block_ops), set(block_nodes))
    with warnings.catch_warnings():
        # One warning per tiny constant flushed to fp16's smallest normal: noise, not news.
        warnings.simplefilter("ignore", UserWarning)
        converted = float16.convert_float_to_float16(
            model,
            keep_io_types=True,
            op_block_list=block_ops,
            node_block_list=block_nodes,
            # Constants beyond fp16's range are clamped; 65504 is fp16's largest value.
            max_finite_val=65504.0,
        )
    external = save_onnx(converted, dst)
    if check:
        check_onnx(dst)
    return {
        "converter": f"onnxconverter-common {onnxconverter_common.__version__}",
        "nodes": len(converted.graph.node),
        "fp32_ops": dict(sorted(kept_ops.items())),
        "fp32_nodes_by_prefix": len(block_nodes),
        "external_data": external,
        "size_bytes": Path(dst).stat().st_size,
    }


def fp16_graph_record(report: dict, opset: int) -> GraphRecord:
    """The manifest's graph record of an fp16 variant, from its :func:`convert_fp16` report."""
    return GraphRecord(
        opset=opset,
        nodes_final=int(report["nodes"]),
        converter=report["converter"],
        fp32_ops=dict(report["fp32_ops"]),
        fp32_nodes_by_prefix=int(report["fp32_nodes_by_prefix"]),
    )


def describe_kept(report: dict) -> str:
    """What a :func:`convert_fp16` report kept in float32, on one line."""
    parts = [f"{op} x{count}" for op, count in report["fp32_ops"].items()]
    if report["fp32_nodes_by_prefix"]:
        parts.append(f"{report['fp32_nodes_by_prefix']} nodes by name (pooling weights / NMS)")
    return ", ".join(parts) or "none"


def _unshare_initializers(model, block_ops: set[str], block_nodes: set[str]) -> int:
    """Give fp32-kept nodes their own copy of constants they share with converted nodes.

    onnxslim merges equal constants, so one initializer may feed a kept node and a converted
    one; the converter then leaves it float32 for both and the graph no longer type-checks.
    Returns the number of copies made.
    """
    from onnx import numpy_helper

    initializers = {init.name: init for init in model.graph.initializer}
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            if name in initializers:
                consumers.setdefault(name, []).append(node)
    copies = 0
    for name, nodes in consumers.items():
        kept = [n for n in nodes if n.op_type in block_ops or n.name in block_nodes]
        if not kept or len(kept) == len(nodes):
            continue
        copy_name = f"{name}__fp32"
        model.graph.initializer.append(
            numpy_helper.from_array(numpy_helper.to_array(initializers[name]), copy_name)
        )
        for node in kept:
            for i, value in enumerate(node.input):
                if value == name:
                    node.input[i] = copy_name
        copies += 1
    return copies
