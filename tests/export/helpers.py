"""Small export configurations and helpers shared by the export tests.

ViT-S/14 with 1 block (the export path is the same for every depth) at a few tokens per
view keeps each export to seconds; the matcher keeps its official width (768, 4 heads).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from export.config import ExportConfig
from export.verify.matcher import MatcherCase, MatcherParity, ViewGeometry
from omama_train.models.backbones import BACKBONES
from runtime.clikit import new_app, run_app
from runtime.pooling import mask_boxes
from runtime.verification.inputs import candidate_boxes, random_masks

SMALL = dataclasses.replace(BACKBONES["dinov2_vits14_reg"], timm_overrides={"depth": 1})
GRIDS = {"exo": (4, 6), "ego": (5, 5)}  # exo 56x84 px, ego 70x70 px
FASTSAM_IMGSZ = 128


def small_config(out, **overrides) -> ExportConfig:
    """A random-init export of :data:`SMALL` at :data:`GRIDS`, FastSAM at 128 px."""
    base = dict(
        out_dir=out,
        backbone=SMALL,
        random_init=True,
        random_grids=dict(GRIDS),
        fastsam_imgsz=FASTSAM_IMGSZ,
        parity_large_n=300,
    )
    return ExportConfig(**(base | overrides))


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """``omama export ARGS``: exit status, stdout, stderr."""
    from export.cli import register

    app = new_app("test")
    register(app)
    code = run_app(app, args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def records(result_or_manifest, file: str, inputs: str = "export parity"):
    """The verification records of ``file`` from ``inputs`` (an ExportResult or a manifest)."""
    found = getattr(result_or_manifest, "records", None)
    if found is None:
        found = result_or_manifest.verification.records
    return [r for r in found if r.file == file and r.inputs == inputs]


def reference_case(matcher, src, dst, batch, count, seed) -> MatcherCase:
    rng = np.random.default_rng(seed)
    src_masks = random_masks(rng, batch, src.image_size)
    dst_masks = random_masks(rng, count, dst.image_size, empty=(0,) if count > 1 else ())
    return MatcherCase(
        src_feats=rng.standard_normal((1, matcher.dim, *src.feat_grid), dtype=np.float32),
        dst_feats=rng.standard_normal((1, matcher.dim, *dst.feat_grid), dtype=np.float32),
        src_masks=src_masks,
        src_boxes=mask_boxes(src_masks),
        dst_masks=dst_masks,
        dst_boxes=candidate_boxes(rng, dst_masks),
    )


def rebuilt_matcher(manifest):
    """The random-init matcher of an export, rebuilt from its seed (the export's recipe)."""
    from export.models import build_models

    config = small_config(manifest.root, direction=manifest.direction, include_fastsam=False)
    return build_models(config, manifest.root).matcher


def matcher_parity(manifest, matcher) -> MatcherParity:
    views = manifest.views
    src = ViewGeometry(views["src"].image_size, views["src"].feat_grid)
    dst = ViewGeometry(views["dst"].image_size, views["dst"].feat_grid)
    # Only its feeds are used here: the references come from the training code.
    return MatcherParity(None, matcher.dim, src, dst, manifest.matcher.input)


def training_similarities(matcher, parity: MatcherParity, case: MatcherCase) -> np.ndarray:
    """Similarities (B, N) from the training code (descriptors, then the matcher): an
    independent reference for the exported graph, whatever its input form."""
    from omama_train.models.descriptors import object_descriptors

    batch = len(case.src_masks)
    with torch.no_grad():
        src_feats = torch.from_numpy(case.src_feats)
        dst_feats = torch.from_numpy(case.dst_feats)
        src_desc = object_descriptors(
            src_feats.expand(batch, -1, -1, -1),
            torch.from_numpy(case.src_masks)[:, None],
            torch.from_numpy(case.src_boxes)[:, None],
            parity.src.image_size,
        )
        dst_desc = object_descriptors(
            dst_feats,
            torch.from_numpy(case.dst_masks)[None],
            torch.from_numpy(case.dst_boxes)[None],
            parity.dst.image_size,
        )
        return matcher(src_desc, dst_desc, src_feats, dst_feats).numpy()
