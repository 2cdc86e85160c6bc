"""``omama export``: small random-weight configurations end to end, ONNX Runtime CPU parity,
the manifest against the files, dynamic N and B, fp16 variants; TensorRT where available.

ViT-S/14 with 1 block (the export path is the same for every depth) at a few tokens per
view keeps each export to seconds; the matcher keeps its official width (768, 4 heads).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import shutil

import numpy as np
import onnx
import pytest
import torch

from export.onnx_models import GraphDescriptorWeights
from export.pipeline import ExportConfig, export_artifacts, missing_weights
from export.tensorrt import PROFILE_CANDIDATES, dynamic_profile, tensorrt_status
from export.verify import (
    TOLERANCES,
    MatcherCase,
    MatcherParity,
    OrtRunner,
    ViewGeometry,
    candidate_boxes,
    random_masks,
)
from omama_train.models.backbones import BACKBONES
from omama_train.models.descriptors import descriptor_weights as torch_descriptor_weights
from runtime.clikit import new_app, run_app
from runtime.errors import OmamaError
from runtime.manifest import TensorSpec, load_manifest, verify_artifacts
from runtime.pooling import mask_boxes

torch.set_num_threads(1)

SMALL = dataclasses.replace(BACKBONES["dinov2_vits14_reg"], timm_overrides={"depth": 1})
GRIDS = {"exo": (4, 6), "ego": (5, 5)}  # exo 56x84 px, ego 70x70 px
FASTSAM_IMGSZ = 128


def _config(out, **overrides) -> ExportConfig:
    base = dict(
        out_dir=out,
        backbone=SMALL,
        random_init=True,
        random_grids=dict(GRIDS),
        fastsam_imgsz=FASTSAM_IMGSZ,
        parity_large_n=300,
    )
    return ExportConfig(**(base | overrides))


@pytest.fixture(scope="module")
def exo2ego(tmp_path_factory):
    """exo2ego, --fp16, masks-input matcher, FastSAM stand-in, 200 random candidate sets."""
    out = tmp_path_factory.mktemp("exo2ego") / "artifacts"
    lines: list[str] = []
    config = _config(out, direction="exo2ego", fp16=True, matcher_input="masks")
    result = export_artifacts(config, echo=lines.append, progress=False)
    return result, lines, out


@pytest.fixture(scope="module")
def ego2exo(tmp_path_factory):
    """ego2exo through the CLI: fp32, matcher input chosen by measurement, no FastSAM."""
    out = tmp_path_factory.mktemp("ego2exo") / "artifacts"
    from export.cli import register

    app = new_app("test")
    register(app)
    with pytest.MonkeyPatch.context() as mp:
        # The CLI's random-init configuration, made small: 1-block ViT-S and tiny grids.
        mp.setitem(BACKBONES, "dinov2_vits14_reg", SMALL)
        mp.setattr("export.pipeline.RANDOM_GRIDS", dict(GRIDS))
        argv = [
            "export",
            "--random-init",
            "--direction",
            "ego2exo",
            "--out",
            str(out),
            "--no-fastsam-export",
            "--parity-sets",
            "20",
        ]
        stdout, stderr = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = run_app(app, argv)
    return code, stdout.getvalue(), stderr.getvalue(), out


def _reference_case(matcher, src, dst, batch, count, seed) -> MatcherCase:
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


def _rebuilt_matcher(manifest):
    """The random-init matcher of an export, rebuilt from its seed (the export's recipe)."""
    from export.pipeline import build_models

    config = _config(manifest.root, direction=manifest.direction, include_fastsam=False)
    return build_models(config, manifest.root).matcher


# ------------------------------------------------------------------------------ folder


def test_exo2ego_folder_is_complete_verified_and_described(exo2ego):
    result, lines, out = exo2ego
    manifest = verify_artifacts(out)
    names = sorted(f.path for f in manifest.files)
    assert names == sorted(
        f"{m}{suffix}.onnx"
        for m in ("backbone_exo", "backbone_ego", "matcher", "fastsam")
        for suffix in ("", "_fp16")
    )
    assert not list(out.glob("*.engine")) and not list(out.glob(".omama-export-*"))
    assert manifest.direction == "exo2ego" and manifest.random_init is True
    assert manifest.views["source"].camera == "exo"
    assert manifest.views["source"].image_size == (56, 84)
    assert manifest.views["destination"].feat_grid == (5, 5)
    assert manifest.preprocess["patch_size"] == 14
    assert manifest.preprocess["mean"] == [0.485, 0.456, 0.406]
    assert manifest.descriptor == manifest.descriptor | {"reduction": 4, "context_px": 100}
    assert manifest.matcher["input"] == "masks" and manifest.matcher["attention"] == "folded"
    assert manifest.fastsam["imgsz"] == FASTSAM_IMGSZ and manifest.fastsam["nms_in_graph"] is False
    assert manifest.fastsam["conf"] == 0.4 and manifest.fastsam["iou"] == 0.9
    assert manifest.backbone["projection"] == "1x1 Conv2d to 768"
    assert manifest.backbone["weights"] == {"random": True}
    assert manifest.tools["opset"] == 17 and manifest.tools["onnx"] == onnx.__version__
    assert manifest.tools["torch"].split("+")[0] == torch.__version__.split("+")[0]
    # Verification: every file has passing parity, and the table was printed.
    assert manifest.verification["verified"] and manifest.verification["passed"]
    assert all(f.parity["passed"] and f.parity["checks"] for f in manifest.files)
    assert all(f.graph for f in manifest.files)
    assert any(line.startswith("file ") and "tolerance" in line for line in lines)
    # No TensorRT here: one line says so and why; no engine is pretended.
    if not tensorrt_status()[0]:
        assert manifest.engines["built"] is False
        skipped = [line for line in lines if line.startswith("engines: skipped")]
        assert len(skipped) == 1 and manifest.engines["reason"] in skipped[0]


def test_manifest_shapes_and_dtypes(exo2ego):
    manifest = load_manifest(exo2ego[2])
    backbone = manifest.select("backbone_exo")
    assert backbone.inputs == [TensorSpec("image", ["batch", 3, 56, 84], "float32")]
    assert backbone.outputs == [TensorSpec("feats", ["batch", 768, 4, 6], "float32")]
    matcher = manifest.select("matcher")
    specs = {t.name: t for t in matcher.inputs}
    assert list(specs) == [
        "src_feats",
        "dst_feats",
        "src_mask",
        "src_box",
        "dst_masks",
        "dst_boxes",
    ]
    assert specs["src_feats"].shape == [1, 768, 4, 6]
    assert specs["src_mask"] == TensorSpec("src_mask", ["B", 1, 56, 84], "uint8")
    assert specs["dst_masks"] == TensorSpec("dst_masks", [1, "N", 70, 70], "uint8")
    assert specs["dst_boxes"] == TensorSpec("dst_boxes", [1, "N", 4], "float32")
    assert matcher.outputs == [TensorSpec("similarities", ["B", "N"], "float32")]
    fastsam = manifest.select("fastsam")
    assert [t.shape for t in fastsam.outputs] == [[1, 37, 336], [1, 32, 32, 32]]
    # fp16 variants keep float32 inputs and outputs.
    for entry in manifest.files:
        if entry.precision == "fp16":
            fp32 = manifest.select(entry.model)
            assert entry.inputs == fp32.inputs and entry.outputs == fp32.outputs


def test_graphs_are_folded_checked_and_free_of_interpolation(exo2ego):
    manifest = load_manifest(exo2ego[2])
    for entry in manifest.files:
        if entry.precision == "fp32":
            assert entry.graph["checker"] == "ok" and entry.graph["shape_inference"] == "ok"
            assert entry.graph["nodes_final"] <= entry.graph["nodes_exported"]
    graph = manifest.select("backbone_ego").graph
    assert graph["nodes_final"] < graph["nodes_exported"]  # constant folding did something
    ops = {n.op_type for n in onnx.load(exo2ego[2] / "backbone_ego.onnx").graph.node}
    assert not ops & {"Resize", "Upsample", "If", "Loop"}  # baked positional table


def test_fp16_variant_holds_fp16_weights_and_meets_fp16_tolerances(exo2ego):
    result, _, out = exo2ego
    model = onnx.load(out / "matcher_fp16.onnx")
    types = {init.data_type for init in model.graph.initializer if len(init.dims) >= 2}
    assert onnx.TensorProto.FLOAT16 in types
    assert (out / "matcher_fp16.onnx").stat().st_size < 0.6 * (out / "matcher.onnx").stat().st_size
    checks = [c for c in result.checks if c.file == "matcher_fp16.onnx" and c.gated]
    by_metric = {c.metric: c for c in checks}
    assert by_metric["max abs err"].value <= TOLERANCES["fp16"]["similarities_max_abs"] == 5e-3
    assert by_metric["argmax agreement"].value >= 0.99
    assert by_metric["argmax agreement"].detail.startswith("200 picks")
    # And independently of the export's own check: a few fresh sets, fp16 ORT vs PyTorch.
    manifest = load_manifest(out)
    matcher = _rebuilt_matcher(manifest)
    src = ViewGeometry(manifest.views["source"].image_size, manifest.views["source"].feat_grid)
    dst = ViewGeometry(
        manifest.views["destination"].image_size, manifest.views["destination"].feat_grid
    )
    parity = MatcherParity(matcher, src, dst, "masks")
    runner = OrtRunner(out / "matcher_fp16.onnx")
    for seed in range(5):
        case = _reference_case(matcher, src, dst, batch=2, count=16, seed=100 + seed)
        got = runner(parity.feeds(case))["similarities"]
        np.testing.assert_allclose(got, parity.reference(case), rtol=0, atol=5e-3)


@pytest.mark.parametrize("count", [1, 7, 300])
@pytest.mark.parametrize("batch", [1, 3])
def test_dynamic_candidates_and_objects(exo2ego, ego2exo, count, batch):
    for out in (exo2ego[2], ego2exo[3]):
        manifest = load_manifest(out)
        matcher = _rebuilt_matcher(manifest)
        views = manifest.views
        src = ViewGeometry(views["source"].image_size, views["source"].feat_grid)
        dst = ViewGeometry(views["destination"].image_size, views["destination"].feat_grid)
        parity = MatcherParity(matcher, src, dst, manifest.matcher["input"])
        case = _reference_case(matcher, src, dst, batch, count, seed=count + 10 * batch)
        got = OrtRunner(out / "matcher.onnx")(parity.feeds(case))["similarities"]
        expected = parity.reference(case)
        assert got.shape == (batch, count)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_backbone_runs_at_other_batch_sizes(exo2ego):
    from export.pipeline import build_models
    from export.verify import random_images

    out = exo2ego[2]
    config = _config(out, direction="exo2ego", include_fastsam=False)
    backbone = build_models(config, out).backbones["ego"]
    images = random_images(np.random.default_rng(3), 3, backbone.image_size)
    got = OrtRunner(out / "backbone_ego.onnx")({"image": images})["feats"]
    with torch.no_grad():
        expected = backbone(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


def test_tampered_artifact_is_refused(exo2ego, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(exo2ego[2], copy)
    verify_artifacts(copy)
    path = copy / "matcher.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(OmamaError, match=r"matcher\.onnx sha256 .* differs"):
        verify_artifacts(copy)
    (copy / "fastsam_fp16.onnx").unlink()
    with pytest.raises(OmamaError, match="fastsam_fp16.onnx is missing"):
        verify_artifacts(copy)


# ------------------------------------------------------------------------------ CLI


def test_cli_export_ego2exo_with_measured_matcher_input(ego2exo):
    code, stdout, stderr, out = ego2exo
    assert code == 0, stderr
    manifest = verify_artifacts(out)
    assert manifest.direction == "ego2exo"
    assert manifest.views["source"].camera == "ego" and manifest.views["source"].feat_grid == (5, 5)
    assert manifest.fastsam == {"included": False}
    assert sorted(f.path for f in manifest.files) == [
        "backbone_ego.onnx",
        "backbone_exo.onnx",
        "matcher.onnx",
    ]
    decision = manifest.matcher["input_decision"]
    assert decision["chosen"] == manifest.matcher["input"] in ("weights", "masks")
    assert decision["weights_ms"] > 0 and decision["masks_ms"] > 0
    assert decision["masks_input_bytes"] > decision["weights_input_bytes"]
    assert f"matcher input: {decision['chosen']}" in stdout
    assert "engines: not requested" in stdout and "artifacts:" in stdout.splitlines()[-1]


def _run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    from export.cli import register

    app = new_app("test")
    register(app)
    code = run_app(app, args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_without_weights_names_each_and_its_source(tmp_path, capsys):
    code, _, err = _run_cli(["export", "--out", str(tmp_path / "a")], capsys)
    assert code == 1
    line = err.strip()
    assert line.startswith("error: cannot export without weights") and "\n" not in line
    for needle in (
        "--backbone-weights",
        "dinov2_vitb14_reg4_pretrain.pth",
        "--matcher",
        "official O-MaMa",
        "--fastsam",
        "FastSAM-x.pt",
        "--random-init",
    ):
        assert needle in line
    assert not (tmp_path / "a").exists()
    matcher = tmp_path / "m.pt"
    code, _, err = _run_cli(
        [
            "export",
            "--matcher",
            str(matcher),
            "--no-fastsam-export",
            "--backbone-weights",
            str(tmp_path / "b.pth"),
        ],
        capsys,
    )
    assert code == 1 and f"no file at {matcher}" in err and "FastSAM" not in err


def test_cli_int8_is_out_of_scope(capsys):
    code, _, err = _run_cli(["export", "--random-init", "--int8"], capsys)
    assert code == 1 and "calibration data" in err
    code, out, _ = _run_cli(["export", "--help"], capsys)
    assert code == 0
    assert "INT8" in out and "out of scope" in out and "Example:" in out


def test_missing_weights_is_empty_for_random_init(tmp_path):
    assert missing_weights(ExportConfig(random_init=True)) == []
    assert len(missing_weights(ExportConfig())) == 3
    with pytest.raises(OmamaError, match="drop --matcher or --random-init"):
        export_artifacts(
            ExportConfig(out_dir=tmp_path, random_init=True, matcher_weights=tmp_path / "m.pt"),
            progress=False,
        )


def test_failed_parity_writes_the_manifest_and_names_the_output(tmp_path, monkeypatch):
    out = tmp_path / "artifacts"
    monkeypatch.setitem(TOLERANCES["fp32"], "feats_max_abs", 0.0)
    config = _config(
        out,
        direction="exo2ego",
        include_fastsam=False,
        matcher_input="weights",
        parity_sets=2,
        parity_large_n=4,
    )
    with pytest.raises(OmamaError, match=r"verification failed: backbone_exo\.onnx .*'feats'"):
        export_artifacts(config, echo=lambda line: None, progress=False)
    manifest = load_manifest(out)
    assert manifest.verification["passed"] is False
    assert any("'feats'" in f for f in manifest.verification["failures"])
    with pytest.raises(OmamaError, match="failed its export verification"):
        verify_artifacts(out)


# ------------------------------------------------------------------------------ pieces


@pytest.mark.parametrize("image_size", [(42, 70), (56, 84)])
def test_graph_descriptor_weights_equal_the_training_code(image_size):
    """The engine-friendly weights (float32, integer box math) equal the reference's, also
    when the pooling grid is not an integer fraction of the image (42 -> 10 rows)."""
    grid = (image_size[0] // 14, image_size[1] // 14)
    rng = np.random.default_rng(5)
    masks = random_masks(rng, 9, image_size, empty=(4,))
    boxes = candidate_boxes(rng, masks)
    boxes[0] = [0.0, 0.0, image_size[1] + 50.0, image_size[0] + 50.0]  # clamped on all sides
    module = GraphDescriptorWeights(image_size, grid)
    masks_t, boxes_t = torch.from_numpy(masks)[None], torch.from_numpy(boxes)[None]
    got = module(masks_t, boxes_t)
    expected = torch_descriptor_weights(masks_t, boxes_t, image_size, grid)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert torch.all(got[0, 4, 0] == 0)  # the empty mask has no mask weights


def test_dynamic_profile_follows_the_issue_ranges():
    specs = [
        TensorSpec("src_feats", [1, 768, 38, 68], "float32"),
        TensorSpec("src_weights", ["B", 1, 2, 2584], "float32"),
        TensorSpec("dst_weights", [1, "N", 2, 2500], "float32"),
        TensorSpec("image", ["batch", 3, 700, 700], "float32"),
    ]
    profile = dynamic_profile(specs)
    assert "src_feats" not in profile
    assert profile["src_weights"].min == (1, 1, 2, 2584)
    assert profile["src_weights"].opt == (1, 1, 2, 2584)
    assert profile["src_weights"].max == (16, 1, 2, 2584)
    assert (
        [
            profile["dst_weights"].min[1],
            profile["dst_weights"].opt[1],
            profile["dst_weights"].max[1],
        ]
        == list(PROFILE_CANDIDATES)
        == [1, 64, 256]
    )
    assert profile["image"].max[0] == 4
    with pytest.raises(OmamaError, match="no profile"):
        dynamic_profile([TensorSpec("x", ["T", 3], "float32")])


def test_tensorrt_status_says_why_not():
    usable, reason = tensorrt_status()
    if usable:
        pytest.skip(f"TensorRT usable here ({reason})")
    assert "TensorRT" in reason and ("not installed" in reason or "no CUDA GPU" in reason)


# ------------------------------------------------------------------------------ TensorRT


def _needs_tensorrt():
    usable, reason = tensorrt_status()
    if not usable:
        pytest.skip(f"TensorRT engine build needs TensorRT and a CUDA GPU: {reason}")


def test_tensorrt_engines_build_and_match(exo2ego, tmp_path):
    _needs_tensorrt()
    from export.tensorrt import TrtEngineRunner, build_engine, compare_with_onnxruntime
    from export.verify import io_specs

    out = exo2ego[2]
    manifest = load_manifest(out)
    inputs, _ = io_specs(out / "matcher.onnx")
    cache = tmp_path / "timing.cache"
    engine = tmp_path / "matcher_fp16.engine"
    record = build_engine(
        out / "matcher.onnx",
        engine,
        dynamic_profile(inputs),
        fp16=True,
        timing_cache=cache,
        fp32_layer_prefixes=("/src_weights/", "/dst_weights/"),
    )
    assert engine.stat().st_size > 0 and cache.is_file()
    assert record["profiles"][0]["dst_masks"]["opt"][1] == 64 and record["gpu_name"]
    matcher = _rebuilt_matcher(manifest)
    views = manifest.views
    src = ViewGeometry(views["source"].image_size, views["source"].feat_grid)
    dst = ViewGeometry(views["destination"].image_size, views["destination"].feat_grid)
    parity = MatcherParity(matcher, src, dst, "masks", random_sets=200, large_n=256)
    with TrtEngineRunner(engine) as runner:
        checks = parity.run(runner, engine.name, "fp16", "tensorrt")
    assert all(c.passed for c in checks), [c.describe() for c in checks]
    feeds = [parity.feeds(parity.case(i)) for i in range(3)]
    report = compare_with_onnxruntime(engine, out / "matcher.onnx", feeds, {"similarities": 5e-3})
    assert report["similarities"]["polygraphy_passed"]
    # A second build reuses the timing cache.
    again = build_engine(
        out / "backbone_ego.onnx",
        tmp_path / "b.engine",
        dynamic_profile(io_specs(out / "backbone_ego.onnx")[0]),
        timing_cache=cache,
    )
    assert again["timing_cache"] == cache.name


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
    manifest = verify_artifacts(out)
    assert manifest.direction == "ego2exo" and manifest.random_init is False
    assert manifest.views["source"] == manifest.views["source"].__class__("ego", (70, 70), (5, 5))
    assert manifest.backbone["weights"] == {
        "file": "vits14.safetensors",
        "sha256": sha256_file(backbone_path),
        "random": False,
    }
    assert manifest.matcher["weights"]["sha256"] == sha256_file(matcher_path)
    assert manifest.fastsam["weights"]["file"] == "FastSAM-n.pt"
    assert manifest.matcher["input_decision"]["rule"].startswith("given")
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
    verify_artifacts(out)  # a refused re-export leaves the previous folder intact


def test_a_nan_output_fails_its_check():
    from export.verify import backbone_parity
    from omama_train.models.backbones import build_backbone

    backbone = build_backbone(SMALL, (28, 28))

    def broken(feeds):
        return {"feats": np.full((len(feeds["image"]), 768, 2, 2), np.nan, np.float32)}

    (check,) = backbone_parity(backbone, broken, "b.onnx", "backbone_ego", "fp32", "test")
    assert np.isnan(check.value) and not check.passed
    assert "nan" in check.describe()
