"""The runtime tests' shared assets: a synthetic take and two small exports of it.

Two artifacts folders are exported once per test process (see :func:`build_assets`):

- ``weights``: from weights files (ViT-B/14 with one block, a matcher with grids exo 5x9 /
  ego 5x5, i.e. 70x126 / 70x70 px views, and a YOLOv8n-seg FastSAM whose BatchNorm is
  calibrated so that its scores depend on the image), matcher input ``weights``;
- ``random``: ``--random-init`` (ViT-S/14 with one block and its 1x1 projection, the
  YOLOv8n-seg stand-in), matcher input ``masks``.

The synthetic take is ``omama data synth --small`` (ego 448x448, exo 896x504, 6 frames,
annotated every 2) prepared with ``omama data prepare``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

GRIDS = {"exo": (5, 9), "ego": (5, 5)}
FASTSAM_IMGSZ = 128
FASTSAM_CLS_BIAS = -1.2  # scores of 0.4-0.99 on the synthetic frames: 7-80 candidates
EGO, EXO = "aria01_214-1", "cam01"


@dataclass(frozen=True)
class Assets:
    synth: Path  # omama data synth output (videos, relations)
    root: Path  # processed root
    take: str  # take uid
    weights_dir: Path
    weights: Path  # artifacts exported from weights files (matcher input: weights)
    random: Path  # random-init artifacts (matcher input: masks)

    @property
    def take_dir(self) -> Path:
        return self.root / "processed" / self.take

    @property
    def annotation(self) -> Path:
        return self.take_dir / "annotation.json"

    def video(self, cam: str) -> Path:
        return self.synth / "takes" / "synth_tabletop_000" / "frame_aligned_videos" / f"{cam}.mp4"


def small_backbone_spec() -> object:
    """The backbone of the ``weights`` artifacts: ViT-B/14 with registers, 1 block."""
    from omama_train.models.backbones import BACKBONES

    return dataclasses.replace(BACKBONES["dinov2_vitb14_reg"], timm_overrides={"depth": 1})


def _write_weights(folder: Path) -> object:
    """Weights files of a small model set; returns the backbone spec (ViT-B/14, 1 block)."""
    import ultralytics
    from safetensors.torch import save_file
    from ultralytics.nn.tasks import SegmentationModel, yaml_model_load

    from omama_train.models.backbones import build_backbone
    from omama_train.models.fastsam import preserve_thread_settings
    from omama_train.models.matcher import OMaMaMatcher, save_matcher

    folder.mkdir(parents=True, exist_ok=True)
    spec = small_backbone_spec()
    torch.manual_seed(0)
    backbone = build_backbone(spec, (70, 70))  # timm layout, 5x5 table: resized per view
    trunk = {k: v.contiguous() for k, v in backbone.trunk.state_dict().items()}
    save_file(trunk, str(folder / "backbone.safetensors"))
    torch.manual_seed(1)
    matcher = OMaMaMatcher("exo2ego", GRIDS["exo"], GRIDS["ego"], backbone="dinov2_vitb14_reg")
    save_matcher(matcher, folder / "matcher.safetensors")
    with preserve_thread_settings():
        torch.manual_seed(2)
        wrapper = ultralytics.YOLO("yolov8n-seg.yaml", task="segment")
        cfg = yaml_model_load("yolov8n-seg.yaml")
        cfg["nc"] = 1
        net = SegmentationModel(cfg, verbose=False)
        # Random YOLO weights shrink activations ~4x per layer, so every score would be the
        # class bias: one train-mode pass with momentum 1 calibrates BatchNorm on noise.
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.momentum = 1.0
        net.train()
        with torch.no_grad():
            net(
                torch.rand(
                    4, 3, FASTSAM_IMGSZ, FASTSAM_IMGSZ, generator=torch.Generator().manual_seed(3)
                )
            )
            for branch in net.model[-1].cv3:
                branch[-1].bias.fill_(FASTSAM_CLS_BIAS)
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.momentum = 0.03
        net.eval()
        net.args, net.task, net.names = wrapper.model.args, "segment", {0: "object"}
        wrapper.model = net
        wrapper.save(str(folder / "fastsam.pt"))
    return spec


@cache
def build_assets(base: Path) -> Assets:
    """Synthetic take + both artifacts folders under ``base`` (once per test process)."""
    from export.config import ExportConfig
    from export.pipeline import export_artifacts
    from omama_train.data.prepare import prepare
    from omama_train.data.synth import synthesize

    synth = base / "synth"
    synthesize(synth, 1, small=True, seed=0, frames=6, annotate_every=2)
    root = base / "root"
    report = prepare(synth / "annotations" / "relations_test.json", synth / "takes", root,
                     progress=False)  # fmt: skip
    take = report.takes[0].take
    weights_dir = base / "weights"
    spec = _write_weights(weights_dir)
    common = dict(fastsam_imgsz=FASTSAM_IMGSZ, parity_sets=4, parity_large_n=40)
    export_artifacts(
        ExportConfig(
            out_dir=base / "art_weights",
            backbone=spec,
            backbone_weights=weights_dir / "backbone.safetensors",
            matcher_weights=weights_dir / "matcher.safetensors",
            fastsam_weights=weights_dir / "fastsam.pt",
            matcher_input="weights",
            # The parity table of FastSAM compares NMS on noise images whose calibrated
            # scores tie; the end-to-end tests compare the backends on real frames instead.
            verify=False,
            **common,
        ),
        echo=lambda line: None,
        progress=False,
    )
    from omama_train.models.backbones import BACKBONES

    small = dataclasses.replace(BACKBONES["dinov2_vits14_reg"], timm_overrides={"depth": 1})
    export_artifacts(
        ExportConfig(
            out_dir=base / "art_random",
            backbone=small,
            random_init=True,
            random_grids=dict(GRIDS),
            direction="exo2ego",
            matcher_input="masks",
            **common,
        ),
        echo=lambda line: None,
        progress=False,
    )
    return Assets(synth, root, take, weights_dir, base / "art_weights", base / "art_random")
