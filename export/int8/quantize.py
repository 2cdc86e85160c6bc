"""One fp32 ONNX file -> a statically quantized int8 QDQ ONNX file, with NNCF.

``nncf.quantize`` on the ``onnx.ModelProto``: activations per tensor (the mean over the
calibration frames of each frame's min / max), weights per output channel, symmetric, as
QuantizeLinear / DequantizeLinear pairs around the compute ops (QDQ: ONNX Runtime,
OpenVINO and TensorRT all run such files with int8 kernels). The ViT backbones use NNCF's
``TRANSFORMER`` model type, which migrates activation outliers into the weights first
(SmoothQuant, alpha 0.95 on MatMuls) and leaves softmax, LayerNorm and GELU in float as NNCF
decides. A :class:`Recipe` says what else stays float and why; the recipes below were
chosen by measured fidelity (docs/export.md, "int8").
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from export.graphs import save_onnx
from runtime.errors import OmamaError
from runtime.manifest import CalibrationRecord, QuantizationRecord

COMPUTE_OPS = ("MatMul", "Conv", "Gemm")
CALIBRATION_METHOD = (
    "activations: mean over the frames of each frame's min / max, per tensor (NNCF MEAN_MINMAX); "
    "weights: min / max per output channel"
)


@dataclass(frozen=True)
class Recipe:
    """How one model is quantized: NNCF's ``preset`` (``performance``: symmetric activations;
    ``mixed``: asymmetric activations), its ``model_type`` (``transformer`` or None), the
    node names kept in float (``kept_float``: regular expressions matched at the start of
    the name, as NNCF's ``IgnoredScope`` matches them) and why."""

    preset: str
    model_type: str | None
    kept_float: tuple[str, ...] = ()
    kept_float_reason: str = ""
    smooth_quant_alpha: float | None = None

    def method(self) -> str:
        activations = "symmetric" if self.preset == "performance" else "asymmetric"
        return (
            f"static QDQ int8, NNCF preset {self.preset}: per-channel symmetric weights, "
            f"per-tensor {activations} activations"
        )


# The ViT backbones, chosen on the random-init ViT-S/14-reg (exo 140x252 px, 32 synthetic
# calibration frames, 200 candidate sets) and checked once on ViT-B/14-reg at 700x700
# (docs/export.md, "int8"). SmoothQuant is what makes outliers quantizable (outlier
# profile: mean per-token feature cosine 0.957 without it, 0.995 with it). The mixed preset
# (asymmetric activations), alpha 0.5 or 0.8, or the first and last blocks kept float each
# moved that mean by under 0.001: the symmetric preset (the faster kernels) stays.
BACKBONE_RECIPE = Recipe(
    preset="performance",
    model_type="transformer",
    kept_float=(r".*/patch_embed/", r"/backbone/proj/"),
    kept_float_reason=(
        "the patch embedding sees raw normalised pixels and the 1x1 projection writes the "
        "features the matcher pools: one layer each, under 1% of the work; measured on "
        "ViT-S/14-reg, their int8 versions cost up to 3e-2 of the features' peak (plain random "
        "weights, 8e-7 with both float) and lowered the per-token cosine from 0.9947 to "
        "0.9941 (outlier profile)"
    ),
    smooth_quant_alpha=0.95,
)
# FastSAM (a YOLOv8-seg CNN): asymmetric activations for the SiLU outputs.
FASTSAM_RECIPE = Recipe(
    preset="mixed",
    model_type=None,
    kept_float=(r"(?!/model)", r".*/model\.22/"),
    kept_float_reason=(
        "the NMS wrapper (nodes outside /model) compares float scores and boxes; the "
        "segmentation head (model.22) decodes boxes in pixels, scores and mask coefficients: "
        "its outputs need more than 8 bits of range"
    ),
)


@dataclass(frozen=True)
class Quantized:
    """What :func:`quantize_onnx` wrote: the file, its QuantizeLinear count, the compute ops
    running int8 out of all, the NNCF version and the external-data files."""

    path: Path
    quantize_nodes: int
    int8_ops: int
    compute_ops: int
    tool_version: str
    external_data: list[str]


def quantize_onnx(
    fp32_path: str | os.PathLike,
    int8_path: str | os.PathLike,
    feeds: Sequence[dict],
    recipe: Recipe,
) -> Quantized:
    """Quantize ``fp32_path`` into ``int8_path`` (written atomically), calibrated on
    ``feeds`` (a re-iterable sequence of feed dicts, as the runtime feeds the model)."""
    import onnx

    nncf = _quiet_nncf()
    if not len(feeds):
        raise OmamaError(f"int8: no calibration frames for {Path(fp32_path).name}")
    model = onnx.load(str(fp32_path))
    options = {}
    if recipe.kept_float:
        options["ignored_scope"] = nncf.IgnoredScope(patterns=list(recipe.kept_float),
                                                     validate=False)  # fmt: skip
    if recipe.model_type == "transformer":
        options["model_type"] = nncf.ModelType.TRANSFORMER
    if recipe.smooth_quant_alpha is not None:
        from nncf.quantization.advanced_parameters import (
            AdvancedQuantizationParameters,
            AdvancedSmoothQuantParameters,
        )

        options["advanced_parameters"] = AdvancedQuantizationParameters(
            smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=recipe.smooth_quant_alpha)
        )
    try:
        with _captured():  # NNCF draws progress bars on stdout: the export prints its own lines
            quantized = nncf.quantize(
                model,
                nncf.Dataset(feeds),
                preset=nncf.QuantizationPreset(recipe.preset),
                subset_size=len(feeds),
                **options,
            )
    except Exception as exc:  # NNCF raises its own and numpy's errors
        raise OmamaError(f"int8: NNCF could not quantize {Path(fp32_path).name}: {exc}") from exc
    external = save_onnx(quantized, int8_path)
    counts = qdq_counts(quantized)
    return Quantized(
        Path(int8_path), counts["QuantizeLinear"], counts["int8_ops"], counts["compute_ops"],
        nncf.__version__, external,
    )  # fmt: skip


def _captured():
    """stdout and stderr captured (and dropped) while NNCF works."""
    stack = contextlib.ExitStack()
    buffer = io.StringIO()
    stack.enter_context(contextlib.redirect_stdout(buffer))
    stack.enter_context(contextlib.redirect_stderr(buffer))
    return stack


def _quiet_nncf():
    """``nncf``, imported without its import-time chatter, logging warnings only."""
    with _captured():
        import nncf
    nncf.set_log_level(logging.WARNING)
    return nncf


def qdq_counts(model) -> dict[str, int]:
    """QuantizeLinear / DequantizeLinear nodes of an ``onnx.ModelProto``, and how many of its
    compute ops (MatMul, Conv, Gemm) take a dequantized input (``int8_ops``) of all."""
    produced_by = {out: node.op_type for node in model.graph.node for out in node.output}
    compute = [n for n in model.graph.node if n.op_type in COMPUTE_OPS]
    int8 = [n for n in compute if any(produced_by.get(i) == "DequantizeLinear" for i in n.input)]
    return {
        "QuantizeLinear": sum(n.op_type == "QuantizeLinear" for n in model.graph.node),
        "DequantizeLinear": sum(n.op_type == "DequantizeLinear" for n in model.graph.node),
        "int8_ops": len(int8),
        "compute_ops": len(compute),
    }


def kept_float_nodes(model, recipe: Recipe) -> list[str]:
    """Compute-op names of ``model`` that ``recipe`` keeps in float."""
    patterns = [re.compile(p) for p in recipe.kept_float]
    return [
        n.name
        for n in model.graph.node
        if n.op_type in COMPUTE_OPS and any(p.match(n.name) for p in patterns)
    ]


def quantization_record(
    from_file: str,
    quantized: Quantized,
    recipe: Recipe,
    calibration: CalibrationRecord,
    weight_profile: str,
) -> QuantizationRecord:
    """The manifest's record of how ``quantized`` was made from ``from_file``."""
    return QuantizationRecord(
        from_file=from_file,
        tool="nncf",
        tool_version=quantized.tool_version,
        method=f"{recipe.method()}; {quantized.int8_ops} of {quantized.compute_ops} MatMul / "
        f"Conv / Gemm ops int8, {quantized.quantize_nodes} QuantizeLinear nodes",
        calibration=calibration,
        calibration_method=CALIBRATION_METHOD,
        smooth_quant_alpha=recipe.smooth_quant_alpha,
        kept_float=recipe.kept_float,
        kept_float_reason=recipe.kept_float_reason,
        weight_profile=weight_profile,
    )
