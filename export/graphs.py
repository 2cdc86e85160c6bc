"""The ONNX graphs of the export: traced from the torch modules, then finalised.

Backbone and matcher go through the TorchScript-based ``torch.onnx.export`` (FastSAM
through ultralytics' exporter, ``export.fastsam``); every graph is then folded with
onnxslim, saved atomically (weights beside it past the protobuf limit) and, when checked,
passes the ONNX checker and strict shape inference (``export.verify.graph``). The traced
modules are ``omama_train.models.artifact_modules``: the torch backend runs the same ones.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np

from export.verify.graph import check_onnx
from runtime.manifest import GraphRecord, TensorSpec, ViewSpec
from runtime.pooling import descriptor_weights
from runtime.sessions import Session, select_backend
from runtime.verification.inputs import candidate_boxes, random_masks

# ONNX protobuf size limit: bigger models keep their weights in one external-data file.
EXTERNAL_DATA_THRESHOLD_BYTES = 1_800_000_000
# Node-name prefixes of the in-graph pooling weights of the masks-input matcher.
MATCHER_POOLING_PREFIXES = ("/src_weights/", "/dst_weights/")


class FinalGraph(NamedTuple):
    """A folded, checked ONNX file: its manifest ``GraphRecord`` and the external-data files
    it was saved with (names relative to its folder)."""

    record: GraphRecord
    external_data: list[str]


# ------------------------------------------------------------------------------ tracing


def _torch_export(
    module, args: tuple, path: Path, input_names, output_names, dynamic_axes, opset: int
) -> None:
    """TorchScript-based ``torch.onnx.export``: it traces dynamic axes through shape ops and
    keeps every weight in one file; its tracer and deprecation warnings are expected."""
    import torch

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes=dynamic_axes,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )


def export_backbone(backbone, raw_path: Path, opset: int) -> None:
    """``image`` (batch, 3, H, W) -> ``feats`` (batch, 768, h, w); traced at batch 2 so that
    no batch-1 shortcut is recorded."""
    import torch

    from omama_train.models.artifact_modules import BackboneOnnx

    example = torch.zeros(2, 3, *backbone.image_size)
    _torch_export(
        BackboneOnnx(backbone).eval(),
        (example,),
        raw_path,
        ["image"],
        ["feats"],
        {"image": {0: "batch"}, "feats": {0: "batch"}},
        opset,
    )


def _matcher_example(matcher, src: ViewSpec, dst: ViewSpec, form: str, count: int = 3):
    import torch

    rng = np.random.default_rng(0)
    src_masks = random_masks(rng, 1, src.image_size)
    dst_masks = random_masks(rng, count, dst.image_size)
    src_boxes = candidate_boxes(rng, src_masks)
    dst_boxes = candidate_boxes(rng, dst_masks)
    src_feats = torch.randn(1, matcher.dim, *src.feat_grid)
    dst_feats = torch.randn(1, matcher.dim, *dst.feat_grid)
    if form == "weights":
        return (
            src_feats,
            dst_feats,
            torch.from_numpy(
                descriptor_weights(src_masks, src_boxes, src.image_size, src.feat_grid)
            )[:, None],
            torch.from_numpy(
                descriptor_weights(dst_masks, dst_boxes, dst.image_size, dst.feat_grid)
            )[None],
        )
    return (
        src_feats,
        dst_feats,
        torch.from_numpy(src_masks)[:, None],
        torch.from_numpy(src_boxes)[:, None],
        torch.from_numpy(dst_masks)[None],
        torch.from_numpy(dst_boxes)[None],
    )


def export_matcher(
    matcher, src: ViewSpec, dst: ViewSpec, form: str, raw_path: Path, opset: int
) -> None:
    """The pooling + matcher graph of input ``form`` (``weights`` or ``masks``).

    Traced with B = 1 object and N = 3 candidates: with one object the matcher takes no
    batch-folding branch, so nothing in the graph depends on B, and both axes are dynamic.
    """
    from omama_train.models.artifact_modules import matcher_module

    wrapper = matcher_module(matcher, form, src.image_size, dst.image_size)
    if form == "weights":
        dynamic = {"src_weights": {0: "B"}, "dst_weights": {1: "N"}}
    else:
        dynamic = {
            "src_mask": {0: "B"},
            "src_box": {0: "B"},
            "dst_masks": {1: "N"},
            "dst_boxes": {1: "N"},
        }
    dynamic["similarities"] = {0: "B", 1: "N"}
    _torch_export(
        wrapper,
        _matcher_example(matcher, src, dst, form),
        raw_path,
        wrapper.input_names,
        ["similarities"],
        dynamic,
        opset,
    )


# ------------------------------------------------------------------------------ finalising


def onnx_opset(model) -> int:
    """The default-domain opset of an ``onnx.ModelProto``."""
    return next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def save_onnx(model, path: str | os.PathLike) -> list[str]:
    """Write ``model`` to ``path`` atomically; weights go to ``<name>.data`` beside it when the
    model is too big for one protobuf. Returns the external-data file names (relative)."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    external = model.ByteSize() > EXTERNAL_DATA_THRESHOLD_BYTES
    data_name = path.name + ".data"
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        if external:
            # The data file name is recorded inside the graph, so it is written in place.
            (path.parent / data_name).unlink(missing_ok=True)
            onnx.save_model(
                model,
                str(tmp),
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=data_name,
                size_threshold=1024,
            )
        else:
            onnx.save_model(model, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if not external:
        (path.parent / data_name).unlink(missing_ok=True)
    return [data_name] if external else []


def finalize_onnx(
    raw_path: str | os.PathLike, final_path: str | os.PathLike, check: bool = True
) -> FinalGraph:
    """Fold constants with onnxslim, save ``final_path``; with ``check``, run the ONNX checker
    and strict shape inference on the result.

    Stale intermediate shapes recorded by the exporter are dropped first (onnxslim infers
    them again), so a dimension traced at export time never looks static downstream.
    """
    import onnx
    import onnxslim

    model = onnx.load(str(raw_path))
    nodes_exported = len(model.graph.node)
    del model.graph.value_info[:]
    slimmed = onnxslim.slim(model)
    external = save_onnx(slimmed, final_path)
    if check:
        check_onnx(final_path)
    record = GraphRecord(
        opset=onnx_opset(slimmed),
        nodes_final=len(slimmed.graph.node),
        nodes_exported=nodes_exported,
        folded_with=f"onnxslim {onnxslim.__version__}",
        checker="ok" if check else "skipped",
        shape_inference="ok" if check else "skipped",
    )
    return FinalGraph(record, external)


# ------------------------------------------------------------------------------ reading


def io_specs(path: str | os.PathLike) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs and outputs of an ONNX file as manifest tensor specs (dynamic axes as names)."""
    import onnx
    from onnx import helper

    model = onnx.load(str(path), load_external_data=False)

    def spec(value) -> TensorSpec:
        tensor = value.type.tensor_type
        shape = tuple(
            d.dim_param if d.dim_param else (int(d.dim_value) if d.HasField("dim_value") else None)
            for d in tensor.shape.dim
        )
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type)).name
        return TensorSpec(value.name, shape, dtype)

    initializers = {init.name for init in model.graph.initializer}
    inputs = [spec(v) for v in model.graph.input if v.name not in initializers]
    return inputs, [spec(v) for v in model.graph.output]


def onnxruntime_cpu(path: Path, name: str | None = None, threads: int | None = None) -> Session:
    """An ONNX file on ONNX Runtime's CPU provider, opened as ``omama-run --backend
    onnxruntime --device cpu`` opens it (``name``: the model's, default the file's stem)."""
    return select_backend("onnxruntime", "cpu").open(path, name=name, threads=threads)
