"""Which layers hurt an int8 file most: the error growth block by block.

Both graphs get each block's output as an extra graph output (the last node of every
numbered stage, ``blocks.N`` in a ViT, ``model.N`` in a YOLO network, then the graph's own
outputs); the fp32 and int8 files run on the same images and the error after every block is
the mean over tokens of each token's relative error ``||int8 - fp32|| / ||fp32||`` (per
token, not over the whole tensor: a token carrying massive activations, as trained ViTs
have, would otherwise hide every other token's error). A block's *jump* is how much the
error grew across it (the first block's: its error). Ranked by jump, the first blocks are
where quantization loses the most: the ones to keep in float next (``Recipe.kept_float``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export.graphs import onnxruntime_cpu, save_onnx
from runtime.manifest import CheckRecord
from runtime.verification.tolerances import check

STAGE = re.compile(r"/((?:blocks|model|layers|stages)\.\d+)/")
SENSITIVITY_INPUTS = "layer sensitivity"


@dataclass(frozen=True)
class BlockError:
    """The relative error after ``block`` (its output tensor ``tensor``) and its growth."""

    block: str
    tensor: str
    error: float
    jump: float


def checkpoints(model) -> list[tuple[str, str]]:
    """(block, tensor) of every numbered stage's last output in graph order, then the
    graph's outputs."""
    last: dict[str, str] = {}
    for node in model.graph.node:
        found = STAGE.search(node.name)
        if found and node.output:
            last[found.group(1)] = node.output[0]
    return [*last.items(), *((out.name, out.name) for out in model.graph.output)]


def _with_outputs(path: Path, tensors: Sequence[str], target: Path) -> Path:
    """A copy of ``path`` whose graph also outputs ``tensors`` (those it computes)."""
    import onnx
    from onnx import helper

    model = onnx.load(str(path))
    produced = {out for node in model.graph.node for out in node.output}
    have = {out.name for out in model.graph.output}
    for name in tensors:
        if name in produced and name not in have:
            model.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT,
                                                                    None))  # fmt: skip
    save_onnx(model, target)
    return target


def block_errors(
    fp32_path: Path, int8_path: Path, feeds: Sequence[dict], work: Path
) -> list[BlockError]:
    """The relative error after every block of ``int8_path`` against ``fp32_path`` on
    ``feeds``, in graph order (``work``: where the instrumented copies go)."""
    import onnx

    points = checkpoints(onnx.load(str(fp32_path), load_external_data=False))
    tensors = [tensor for _, tensor in points]
    outputs = {}
    for tag, path in (("fp32", fp32_path), ("int8", int8_path)):
        copy = _with_outputs(path, tensors, work / f"{path.stem}.{tag}.blocks.onnx")
        with onnxruntime_cpu(copy, path.stem) as session:
            outputs[tag] = [session.infer(feed) for feed in feeds]
    errors: list[BlockError] = []
    previous = 0.0
    for block, tensor in points:
        if not all(tensor in o for o in outputs["fp32"] + outputs["int8"]):
            continue  # folded away in one of the graphs
        error = float(np.mean([token_error(r[tensor], g[tensor])
                               for r, g in zip(*outputs.values(), strict=True)]))  # fmt: skip
        errors.append(BlockError(block, tensor, error, error - previous))
        previous = error
    return errors


def token_error(reference: np.ndarray, got: np.ndarray) -> float:
    """Mean over tokens of ``||got - reference|| / ||reference||``: tokens are the vectors
    along the last axis of a (B, T, C) tensor, along axis 1 of a (B, C, H, W) one."""
    ref, out = (np.asarray(a, np.float64) for a in (reference, got))
    if ref.ndim == 4:
        ref, out = np.moveaxis(ref, 1, -1), np.moveaxis(out, 1, -1)
    ref, out = ref.reshape(-1, ref.shape[-1]), out.reshape(-1, ref.shape[-1])
    norms = np.linalg.norm(ref, axis=1)
    return float(np.mean(np.linalg.norm(out - ref, axis=1) / np.maximum(norms, 1e-12)))


def ranked(errors: Sequence[BlockError]) -> list[BlockError]:
    """Blocks by decreasing error jump."""
    return sorted(errors, key=lambda e: e.jump, reverse=True)


def sensitivity_checks(errors: Sequence[BlockError]) -> list[CheckRecord]:
    """One reported (ungated) check per block, largest jump first."""
    return [
        check(
            e.block,
            "relative error jump",
            e.jump,
            0.0,
            gated=False,
            detail=f"relative error {e.error:.3e} after it (tensor {e.tensor})",
        )
        for e in ranked(errors)
    ]
