"""The models of an export built from weights files: records of their hashes, a feature
cache's backbone, the seeded projection."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from export.config import ExportConfig
from export.graphs import onnxruntime_cpu
from export.pipeline import export_artifacts
from runtime.egoexo import view_kinds
from runtime.errors import OmamaError
from runtime.manifest import WeightsRecord, check_artifacts
from tests.export.helpers import GRIDS, SMALL


def test_view_kinds_are_source_first():
    assert view_kinds("exo2ego") == ("exo", "ego")
    assert view_kinds("ego2exo") == ("ego", "exo")


def test_weights_files_export_records_their_hashes(tmp_path):
    """The real-weights path (checkpoint files instead of --random-init), small models: an
    omama .safetensors matcher, a timm-layout backbone file with a square pretraining grid
    (interpolated per view, as official DINOv2 files are) and a FastSAM checkpoint."""
    from safetensors.torch import save_file

    from export.fastsam import build_standin_fastsam
    from omama_train.models.backbones import build_backbone
    from omama_train.models.matcher import OMaMaMatcher, save_matcher
    from runtime.manifest import sha256_file

    torch.manual_seed(3)
    matcher = OMaMaMatcher(
        "ego2exo", src_grid=GRIDS["ego"], dst_grid=GRIDS["exo"], backbone="dinov2_vits14_reg"
    )
    matcher_path = save_matcher(matcher, tmp_path / "weights" / "matcher.safetensors")
    pretrained = build_backbone(SMALL, (518, 518))  # 37 x 37 positional grid, like DINOv2's
    backbone_path = tmp_path / "weights" / "vits14.safetensors"
    save_file(
        {k: v.contiguous() for k, v in pretrained.trunk.state_dict().items()}, str(backbone_path)
    )
    fastsam_path = build_standin_fastsam(tmp_path / "weights" / "FastSAM-n.pt", seed=4)
    out = tmp_path / "artifacts"
    config = ExportConfig(
        out_dir=out,
        backbone=SMALL,
        backbone_weights=backbone_path,
        matcher_weights=matcher_path,
        fastsam_weights=fastsam_path,
        fastsam_imgsz=64,
        matcher_input="weights",
        parity_sets=3,
        parity_large_n=5,
    )
    export_artifacts(config, echo=lambda line: None, progress=False)
    manifest = check_artifacts(out)
    assert manifest.direction == "ego2exo" and manifest.random_init is False
    assert manifest.views["src"] == manifest.views["src"].__class__("ego", (70, 70), (5, 5))
    assert manifest.backbone.weights == WeightsRecord(
        random=False, file="vits14.safetensors", sha256=sha256_file(backbone_path)
    )
    assert manifest.matcher.weights.sha256 == sha256_file(matcher_path)
    assert manifest.fastsam.weights.file == "FastSAM-n.pt"
    assert manifest.matcher.input_decision.rule.startswith("given")
    # The torch backend rebuilt every fp32 file from the weights files (found beside them)
    # and gave the exported numbers on the golden inputs.
    torch_records = [r for r in manifest.verification.records if r.backend == "torch"]
    assert len(torch_records) == 4 and all(r.passed for r in torch_records)
    assert sorted(p.name for p in fastsam_path.parent.iterdir()) == [
        "FastSAM-n.pt",
        "matcher.safetensors",
        "vits14.safetensors",
    ]  # the weights folder is left as it was
    with pytest.raises(OmamaError, match="is a ego2exo matcher, not exo2ego"):
        export_artifacts(
            dataclasses.replace(config, direction="exo2ego"),
            echo=lambda line: None,
            progress=False,
        )
    check_artifacts(out)  # a refused re-export leaves the previous folder intact


def _cache_of_small_takes(base, weight_profile: str = "plain"):
    """Two synthetic takes (ego 224x224 -> 16x16 tokens, exo 126x224 -> 9x16) cached with a
    seeded random 1-block ViT-S of ``weight_profile``; returns (root, cache)."""
    from omama_train.data.pairs import make_pairs
    from omama_train.data.prepare import prepare
    from omama_train.data.synth import synthesize
    from omama_train.features.build import build_cache
    from runtime.egoexo import ProcessedRoot, pairs_path, write_pairs

    synthesize(base / "in", 2, small=True, seed=0, frames=3, annotate_every=3)
    for relations in sorted((base / "in" / "annotations").glob("relations_*.json")):
        prepare(relations, base / "in" / "takes", base / "root", progress=False)
    index = ProcessedRoot(base / "root")
    files = []
    for split in index.splits():
        files.append(pairs_path(base / "root", split, "exo2ego"))
        write_pairs(files[-1], make_pairs(index, split, "exo2ego").pairs, base / "root")
    cache = base / "cache"
    build_cache(
        base / "root",
        cache,
        files,
        SMALL,
        random_init=True,
        weight_profile=weight_profile,
        device="cpu",
        progress=False,
    )
    return base / "root", cache


@pytest.mark.parametrize("profile", ["plain", "outlier"])
def test_export_from_a_cache_reproduces_its_features(tmp_path, profile):
    """THE check that the deployed backbone sees what training saw: a random-init cache's
    backbone.safetensors plus a matcher of the cache's grids, exported; the ONNX backbones
    on ONNX Runtime give the cached features of an image of each view. The cache's weight
    profile travels with its backbone file into the manifest."""
    from omama_train.features.meta import BACKBONE_FILE
    from omama_train.features.reader import FeatureCache
    from omama_train.imagekey import cam_kind
    from omama_train.models.matcher import OMaMaMatcher, save_matcher
    from runtime.egoexo import ProcessedRoot
    from runtime.images import read_rgb
    from runtime.manifest import sha256_file
    from runtime.preprocess import preprocess_image

    root, cache_dir = _cache_of_small_takes(tmp_path, profile)
    cache = FeatureCache(cache_dir)
    assert cache.meta["weights"]["profile"] == profile
    grids = {kind: cache.grid(kind) for kind in ("ego", "exo")}
    assert grids == {"ego": (16, 16), "exo": (9, 16)}
    torch.manual_seed(0)
    matcher = OMaMaMatcher(
        "exo2ego", src_grid=grids["exo"], dst_grid=grids["ego"], backbone=cache.backbone
    )
    matcher_path = save_matcher(matcher, tmp_path / "run" / "best.safetensors")
    out = tmp_path / "artifacts"
    config = ExportConfig(
        out_dir=out,
        backbone_weights=cache_dir / BACKBONE_FILE,
        matcher_weights=matcher_path,
        include_fastsam=False,
        matcher_input="weights",
        parity_sets=3,
        parity_large_n=5,
    )
    lines: list[str] = []
    export_artifacts(config, echo=lines.append, progress=False)
    manifest = check_artifacts(out)
    # The backbone comes from the matcher's metadata, its depth from the file's.
    assert manifest.backbone.name == "dinov2_vits14_reg"
    assert manifest.backbone.architecture_overrides == {"depth": 1}
    assert manifest.backbone.projection == "from the weights file"
    assert manifest.backbone.pos_resize == cache.meta["backbone"]["pos_resize"]
    assert manifest.backbone.weights.sha256 == sha256_file(cache_dir / BACKBONE_FILE)
    assert manifest.backbone.weights.sha256 == cache.meta["weights"]["saved_file"]["sha256"]
    # A random-init cache's backbone stays marked random in the artifacts and at run time.
    assert manifest.backbone.weights.from_random_init is True
    assert manifest.backbone.weights.seed == cache.meta["weights"]["seed"]
    assert manifest.backbone.weights.profile == profile
    from runtime.pipeline import Pipeline

    with Pipeline(out, backend="onnxruntime", device="cpu", threads=1) as pipe:
        assert pipe.describe()["random_weights"] is True
    assert not [line for line in lines if line.startswith("warning")]
    index = ProcessedRoot(root)
    for kind, role in (("exo", "src"), ("ego", "dst")):
        assert manifest.views[role].image_size == cache.image_size(kind)
        take, cam, frame = next(k for k in cache if cam_kind(k.split("/")[1]) == kind).split("/")
        image = preprocess_image(
            read_rgb(index.image_path(take, cam, frame)), cache.image_size(kind)
        )
        with onnxruntime_cpu(out / f"backbone_{kind}.onnx", threads=1) as session:
            (feats,) = session.infer({"image": image[None]}).values()
        cached = cache.get_array(take, cam, int(frame)).astype(np.float32)
        np.testing.assert_allclose(feats[0], cached, rtol=2e-3, atol=2e-3)
        assert np.abs(cached).max() > 0.5


def test_weights_without_projection_get_the_seeded_one_in_both_views(tmp_path):
    from safetensors.torch import save_file

    from export.models import build_models
    from omama_train.features.weights import BackboneWeights
    from omama_train.models.backbones import build_backbone, seeded_projection
    from omama_train.models.matcher import OMaMaMatcher, save_matcher

    torch.manual_seed(3)
    matcher = OMaMaMatcher(
        "exo2ego", src_grid=GRIDS["exo"], dst_grid=GRIDS["ego"], backbone="dinov2_vits14_reg"
    )
    matcher_path = save_matcher(matcher, tmp_path / "matcher.safetensors")
    trunk = build_backbone(SMALL, (518, 518)).trunk.state_dict()
    backbone_path = tmp_path / "vits14.safetensors"
    save_file({k: v.contiguous() for k, v in trunk.items()}, str(backbone_path))
    config = ExportConfig(
        out_dir=tmp_path / "artifacts",
        backbone=SMALL,
        backbone_weights=backbone_path,
        matcher_weights=matcher_path,
        include_fastsam=False,
        matcher_input="weights",
        parity_sets=3,
        parity_large_n=5,
    )
    for seed in (0, 5):
        models = build_models(dataclasses.replace(config, seed=seed), tmp_path)
        want = seeded_projection(SMALL, seed)
        for backbone in models.backbones.values():
            assert torch.equal(backbone.proj.weight, want["proj.weight"])
            assert torch.equal(backbone.proj.bias, want["proj.bias"])
        # What omama features --backbone-weights FILE --seed N computes its cache with.
        features = BackboneWeights.resolve(SMALL, backbone_path, seed=seed).build((70, 70))
        assert torch.equal(features.proj.weight, want["proj.weight"])
        assert models.backbone_record.projection_seed == seed
    lines: list[str] = []
    export_artifacts(config, echo=lines.append, progress=False)
    manifest = check_artifacts(config.out_dir)
    assert manifest.backbone.projection == (
        "seeded 1x1 Conv2d to 768 (seed 0; not in the weights file)"
    )
    warnings = [line for line in lines if line.startswith("warning")]
    assert len(warnings) == 1 and "vits14.safetensors has no 1x1 projection" in warnings[0]
    assert "--seed 0" in warnings[0]


def test_outlier_profile_export_is_recorded_stamped_and_rebuilt_by_torch(tmp_path):
    """--weight-profile outlier: the backbones carry the planted outliers, the manifest and
    every ONNX file say so, the torch backend rebuilds the same weights (its golden replay
    passes), and a manifest edited back to ``plain`` is refused."""
    import json

    from omama_train.models.backbones import random_backbone_state
    from tests.export.helpers import small_config

    out = tmp_path / "artifacts"
    config = small_config(
        out, weight_profile="outlier", include_fastsam=False, parity_sets=5, parity_large_n=8
    )
    lines: list[str] = []
    export_artifacts(config, echo=lines.append, progress=False)
    manifest = check_artifacts(out)
    assert manifest.backbone.weights == WeightsRecord(random=True, seed=0, profile="outlier")
    assert manifest.matcher.weights.profile == "plain"  # the profile shapes backbones only
    assert "random weights, outlier profile" in manifest.backbone.description
    assert any(line.endswith("random weights, outlier profile") for line in lines)
    torch_records = [r for r in manifest.verification.records if r.backend == "torch"]
    assert len(torch_records) == 3 and all(r.passed for r in torch_records)
    assert manifest.verification.passed
    # The torch backend's rebuild is the outlier state, not the plain one.
    from omama_train.torch_backend import _backbones

    built = next(iter(_backbones(manifest, ()).values())).state_dict()
    outlier = random_backbone_state(SMALL, 0, "outlier")
    assert torch.equal(built["trunk.reg_token"], outlier["trunk.reg_token"])
    assert not torch.equal(
        built["trunk.reg_token"], random_backbone_state(SMALL, 0)["trunk.reg_token"]
    )
    data = json.loads((out / "manifest.json").read_text())
    data["backbone"]["weights"]["profile"] = "plain"
    (out / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(
        OmamaError, match=r"backbone\.weights\.profile: manifest\.json says \"plain\""
    ):
        check_artifacts(out)


def _official_models(config, tmp_path, monkeypatch):
    """build_models of ``config`` with the backbones and FastSAM stubbed (ViT-B at 700x700
    is too slow for the suite): what it would build, and the calls that would build it."""
    from types import SimpleNamespace

    import export.models as models_module

    calls: dict = {}

    def backbones(config, spec, pos_resize, views, channels):
        calls["backbone"] = (spec.name, {v.kind: v.image_size for v in views.values()})
        stub = SimpleNamespace(projection_source="none", pos_resize=spec.pos_resize)
        return {view.kind: stub for view in views.values()}

    def fastsam(path, variant, seed):
        calls["fastsam"] = variant
        return path

    monkeypatch.setattr(models_module, "_build_backbones", backbones)
    monkeypatch.setattr("omama_train.models.fastsam.build_random_fastsam", fastsam)
    return models_module.build_models(config, tmp_path), calls


def test_random_shapes_official_builds_the_official_structure(tmp_path, monkeypatch):
    """--random-init --random-shapes official: ViT-B/14-reg at 700x700 (ego) / 532x952 (exo),
    the official matcher's tensors (design/matcher_state_dict.txt), FastSAM-s; the same as
    the hand-built config of benchmarks/bench_export.py (with its FastSAM-x)."""
    from omama_train.models.matcher import OFFICIAL_GRIDS

    config = ExportConfig(out_dir=tmp_path / "a", random_init=True, random_shapes="official")
    models, calls = _official_models(config, tmp_path, monkeypatch)
    assert calls == {
        "backbone": ("dinov2_vitb14_reg", {"exo": (532, 952), "ego": (700, 700)}),
        "fastsam": "s",
    }
    assert models.spec.name == "dinov2_vitb14_reg" and models.direction == "exo2ego"
    assert models.views["src"].feat_grid == (38, 68) and models.views["dst"].feat_grid == (50, 50)
    state = models.matcher.state_dict()
    assert len(state) == 32 and sum(v.numel() for v in state.values()) == 11812994
    assert state["pos_embed_T"].shape == (1, 2500, 768)
    assert state["pos_embed_Q"].shape == (1, 2584, 768)
    assert models.fastsam_record.architecture == "yolov8s-seg"
    assert models.describe(True).endswith("random weights, official shapes")
    assert models.backbone_record.description.endswith("random weights, official shapes")
    bench = ExportConfig(
        out_dir=tmp_path / "b",
        random_init=True,
        backbone="dinov2_vitb14_reg",
        random_grids=dict(OFFICIAL_GRIDS),
        random_fastsam="x",
    )
    by_hand, hand_calls = _official_models(bench, tmp_path, monkeypatch)
    official_x, x_calls = _official_models(
        dataclasses.replace(config, random_fastsam="x"), tmp_path, monkeypatch
    )
    assert hand_calls == x_calls == {**calls, "fastsam": "x"}
    assert by_hand.views == official_x.views and by_hand.spec == official_x.spec
    hand_state = by_hand.matcher.state_dict()
    assert all(torch.equal(hand_state[k], v) for k, v in official_x.matcher.state_dict().items())
    assert by_hand.matcher.backbone == official_x.matcher.backbone == "dinov2_vitb14_reg"
