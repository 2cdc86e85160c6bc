"""The manifest of a finished export: every record ``runtime.manifest`` documents, built from
the run (models, files, decisions, engines, verification) and the tool versions."""

from __future__ import annotations

import datetime as dt
import platform
from pathlib import Path
from typing import TYPE_CHECKING

from export.config import ExportConfig, fastsam_settings
from export.verify.int8 import int8_tolerances
from runtime import __version__ as omama_version
from runtime.info import package_versions
from runtime.manifest import (
    DescriptorSpec,
    FastSAMSpec,
    GoldenFile,
    Manifest,
    MatcherSpec,
    PreprocessSpec,
    ToolsRecord,
    VerificationRecord,
    VerificationSection,
)
from runtime.pooling import CONTEXT_PX, REDUCTION
from runtime.preprocess import IMAGENET_MEAN, IMAGENET_STD
from runtime.verification.tolerances import TOLERANCES

if TYPE_CHECKING:
    from export.pipeline import _Export

TOOL_PACKAGES = (
    "torch",
    "timm",
    "onnx",
    "onnxruntime",
    "onnxslim",
    "onnxconverter-common",
    "onnx-graphsurgeon",
    "polygraphy",
    "ultralytics",
    "tensorrt",
    "numpy",
)


def tool_versions() -> dict[str, str | None]:
    """Versions of the export's tools (None: not installed), Python's and omama's."""
    versions = package_versions(TOOL_PACKAGES)
    versions["python"] = platform.python_version()
    versions["omama"] = omama_version
    return versions


def verification_section(
    config: ExportConfig, records: list[VerificationRecord], golden: list[GoldenFile]
) -> VerificationSection:
    """The manifest's ``verification``: every record, passed when none failed."""
    failures = tuple(line for r in records for line in r.failures())
    return VerificationSection(
        verified=config.verify,
        seed=config.seed,
        passed=not failures,
        failures=failures,
        tolerances={k: dict(v) for k, v in TOLERANCES.items()} | {"int8": int8_tolerances(config)},
        parity_sets=config.parity_sets if config.verify else 0,
        records=tuple(records),
        golden=tuple(golden),
    )


def build_manifest(run: _Export) -> Manifest:
    """The manifest of a finished run (``runtime.manifest`` documents every record)."""
    config, models, decision = run.config, run.models, run.decision
    matcher = models.matcher
    return Manifest(
        direction=models.direction,
        random_init=config.random_init,
        views=models.views,
        preprocess=PreprocessSpec(
            patch_size=models.spec.patch_size,
            mean=tuple(float(v) for v in IMAGENET_MEAN),
            std=tuple(float(v) for v in IMAGENET_STD),
        ),
        descriptor=DescriptorSpec(
            reduction=REDUCTION,
            context_px=CONTEXT_PX,
            feature_dim=matcher.dim,
            descriptor_dim=2 * matcher.dim,
            query_box="tight box of the query mask: x1, y1, w = xmax - xmin, h = ymax - ymin",
            candidate_boxes="x1, y1, w, h in pixels of the destination image",
        ),
        matcher=MatcherSpec(
            input=decision.chosen,
            input_decision=decision,
            attention=config.attention,
            dim=matcher.dim,
            heads=matcher.heads,
            src_grid=tuple(matcher.src_grid),
            dst_grid=tuple(matcher.dst_grid),
            weights=models.matcher_weights,
            model="matcher",
            inputs=_matcher_inputs_doc(decision.chosen),
        ),
        fastsam=_fastsam_spec(run),
        backbone=models.backbone_record,
        files=list(run.files),
        tools=ToolsRecord(
            versions=tool_versions(),
            opset=config.opset,
            exporter="torch.onnx.export (TorchScript-based, dynamo=False); FastSAM: ultralytics",
        ),
        engines=run.engines,
        verification=verification_section(config, list(run.records), run.golden),
        created_utc=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        omama_version=omama_version,
    )


def _fastsam_spec(run: _Export) -> FastSAMSpec:
    config = run.config
    if not config.include_fastsam:
        return FastSAMSpec(included=False)
    settings = fastsam_settings(config)
    conf, iou, max_det = settings.conf, settings.iou, settings.max_det
    if run.fastsam_in_graph:
        nms = (
            f"graph: ultralytics' class-agnostic NMS inside fastsam.onnx with conf {conf:g}, "
            f"iou {iou:g} and max_det {max_det} baked in; the runtime skips its own NMS, "
            "may raise conf (the rows are filtered again) but not lower it or change iou, "
            "and assembles the masks from the 32 coefficients x output1 prototypes"
        )
        output0 = (
            f"(1, {max_det}, 4 + 1 + 1 + 32): kept detections x1, y1, x2, y2 px, score, "
            "class, coefficients, by decreasing score; zero rows after the last"
        )
    else:
        nms = (
            "runtime: class-agnostic NMS on output0 (conf and iou above, adjustable at run "
            "time), then masks from the 32 coefficients x output1 prototypes"
        )
        output0 = "(1, 4 + 1 + 32, anchors): box cx, cy, w, h px, score, coefficients"
    return FastSAMSpec(
        included=True,
        model="fastsam",
        variant=_fastsam_variant(config),
        imgsz=config.fastsam_imgsz,
        conf=conf,
        iou=iou,
        max_det=max_det,
        retina_masks=True,
        mask_coefficients=32,
        nms_in_graph=run.fastsam_in_graph,
        nms=nms,
        nms_decision=run.nms_decision,
        input="images (1, 3, imgsz, imgsz) float32 RGB in [0, 1], letterboxed (centred, pad "
        "value 114/255)",
        outputs={
            "output0": output0,
            "output1": "(1, 32, imgsz / 4, imgsz / 4): mask prototypes",
        },
        exporter=f"ultralytics {run.ultralytics_version}",
        weights=run.models.fastsam_record,
    )


def _fastsam_variant(config: ExportConfig) -> str:
    if not config.random_init:
        return Path(config.fastsam_weights).stem
    if config.fastsam_variant == "n":
        return "YOLOv8n-seg stand-in, random weights"
    return f"FastSAM-{config.fastsam_variant} architecture, random weights"


def _matcher_inputs_doc(form: str) -> dict[str, str]:
    common = {
        "src_feats": "(1, D, hs, ws) source backbone features",
        "dst_feats": "(1, D, hd, wd) destination backbone features",
    }
    if form == "weights":
        return common | {
            "src_weights": "(B, 1, 2, hs*ws) runtime.pooling.descriptor_weights of the query "
            "masks and boxes (source view)",
            "dst_weights": "(1, N, 2, hd*wd) descriptor_weights of the candidates",
        }
    return common | {
        "src_mask": "(B, 1, Hs, Ws) uint8 query masks at the source image size",
        "src_box": "(B, 1, 4) float32 x1, y1, w, h px of the query masks",
        "dst_masks": "(1, N, Hd, Wd) uint8 candidate masks at the destination image size",
        "dst_boxes": "(1, N, 4) float32 x1, y1, w, h px of the candidates",
    }
