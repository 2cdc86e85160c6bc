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

from export.pipeline import ExportConfig, export_artifacts, missing_weights
from export.tensorrt import PROFILE_CANDIDATES, dynamic_profile, tensorrt_status
from export.verify import FastSAMParity, MatcherCase, MatcherParity, ViewGeometry
from omama_train.models.artifact_modules import GraphDescriptorWeights
from omama_train.models.backbones import BACKBONES
from omama_train.models.descriptors import descriptor_weights as torch_descriptor_weights
from runtime.clikit import new_app, run_app
from runtime.errors import OmamaError
from runtime.manifest import (
    FastSAMSpec,
    NmsSettings,
    TensorSpec,
    WeightsRecord,
    check_artifacts,
    describe_check,
    load_manifest,
)
from runtime.pooling import mask_boxes
from runtime.sessions import Session, select_backend
from runtime.verification.inputs import candidate_boxes, random_images, random_masks
from runtime.verification.tolerances import TOLERANCES

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


def _ort(path) -> Session:
    """An ONNX file on ONNX Runtime's CPU provider, opened as omama-run opens it."""
    return select_backend("onnxruntime", "cpu").open(path, threads=1)


def _parity(manifest, matcher) -> MatcherParity:
    views = manifest.views
    src = ViewGeometry(views["src"].image_size, views["src"].feat_grid)
    dst = ViewGeometry(views["dst"].image_size, views["dst"].feat_grid)
    # Only its feeds are used here: the references below come from the training code.
    return MatcherParity(None, matcher.dim, src, dst, manifest.matcher.input)


def _training_similarities(matcher, parity: MatcherParity, case: MatcherCase) -> np.ndarray:
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


def _records(result_or_manifest, file: str, inputs: str = "export parity"):
    records = getattr(result_or_manifest, "records", None)
    if records is None:
        records = result_or_manifest.verification.records
    return [r for r in records if r.file == file and r.inputs == inputs]


# ------------------------------------------------------------------------------ folder


def test_exo2ego_folder_is_complete_verified_and_described(exo2ego):
    result, lines, out = exo2ego
    manifest = check_artifacts(out)
    names = sorted(f.path for f in manifest.files)
    assert names == sorted(
        f"{m}{suffix}.onnx"
        for m in ("backbone_exo", "backbone_ego", "matcher", "fastsam")
        for suffix in ("", "_fp16")
    )
    assert not list(out.glob("*.engine")) and not list(out.glob(".omama-export-*"))
    assert manifest.direction == "exo2ego" and manifest.random_init is True
    assert manifest.views["src"].kind == "exo"
    assert manifest.views["src"].image_size == (56, 84)
    assert manifest.views["dst"].feat_grid == (5, 5)
    assert manifest.preprocess.patch_size == 14
    assert manifest.preprocess.mean == (0.485, 0.456, 0.406)
    assert (manifest.descriptor.reduction, manifest.descriptor.context_px) == (4, 100)
    assert manifest.matcher.input == "masks" and manifest.matcher.attention == "folded"
    assert manifest.fastsam.imgsz == FASTSAM_IMGSZ and manifest.fastsam.nms_in_graph is True
    assert manifest.fastsam.conf == 0.01 and manifest.fastsam.iou == 0.9
    assert manifest.backbone.projection == "1x1 Conv2d to 768 (random init)"
    assert manifest.backbone.weights == WeightsRecord(random=True, seed=0)
    assert manifest.matcher.weights == WeightsRecord(random=True, seed=0)
    assert manifest.fastsam.weights == WeightsRecord(random=True, seed=0,
                                                     architecture="yolov8n-seg")  # fmt: skip
    assert manifest.tools.opset == 17 and manifest.tools.versions["onnx"] == onnx.__version__
    assert manifest.tools.versions["torch"].split("+")[0] == torch.__version__.split("+")[0]
    # Verification: every file has a passing parity record and a passing golden record on
    # ONNX Runtime; the fp32 files also on the torch backend rebuilt from the manifest.
    verification = manifest.verification
    assert verification.verified and verification.passed and not verification.failures
    for entry in manifest.files:
        (parity,) = _records(manifest, entry.path)
        assert parity.passed and parity.checks and parity.backend == "onnxruntime"
        assert parity.providers == ("CPUExecutionProvider",) and parity.device == "cpu"
        assert parity.tolerances == TOLERANCES[entry.precision]
        golden = {r.backend: r for r in _records(manifest, entry.path, "golden")}
        want = {"onnxruntime", "torch"} if entry.precision == "fp32" else {"onnxruntime"}
        assert set(golden) == want and all(r.passed for r in golden.values())
    assert {g.model for g in verification.golden} == set(manifest.models())
    assert all((out / g.path).is_file() for g in verification.golden)
    assert all(f.graph for f in manifest.files)
    assert any(line.startswith("file ") and "tolerance" in line for line in lines)
    # No TensorRT here: one line says so and why; no engine is pretended.
    if not tensorrt_status()[0]:
        assert manifest.engines.built is False
        skipped = [line for line in lines if line.startswith("engines: skipped")]
        assert len(skipped) == 1 and manifest.engines.reason in skipped[0]


def test_manifest_shapes_and_dtypes(exo2ego):
    manifest = load_manifest(exo2ego[2])
    backbone = manifest.select("backbone_exo")
    assert backbone.inputs == (TensorSpec("image", ("batch", 3, 56, 84), "float32"),)
    assert backbone.outputs == (TensorSpec("feats", ("batch", 768, 4, 6), "float32"),)
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
    assert specs["src_feats"].shape == (1, 768, 4, 6)
    assert specs["src_mask"] == TensorSpec("src_mask", ("B", 1, 56, 84), "uint8")
    assert specs["dst_masks"] == TensorSpec("dst_masks", (1, "N", 70, 70), "uint8")
    assert specs["dst_boxes"] == TensorSpec("dst_boxes", (1, "N", 4), "float32")
    assert matcher.outputs == (TensorSpec("similarities", ("B", "N"), "float32"),)
    fastsam = manifest.select("fastsam")
    assert [t.shape for t in fastsam.outputs] == [(1, 300, 38), (1, 32, 32, 32)]
    # fp16 variants keep float32 inputs and outputs.
    for entry in manifest.files:
        if entry.precision == "fp16":
            fp32 = manifest.select(entry.model)
            assert entry.inputs == fp32.inputs and entry.outputs == fp32.outputs


def test_graphs_are_folded_checked_and_free_of_interpolation(exo2ego):
    manifest = load_manifest(exo2ego[2])
    for entry in manifest.files:
        if entry.precision == "fp32":
            assert entry.graph.checker == "ok" and entry.graph.shape_inference == "ok"
            assert entry.graph.nodes_final <= entry.graph.nodes_exported
    graph = manifest.select("backbone_ego").graph
    assert graph.nodes_final < graph.nodes_exported  # constant folding did something
    ops = {n.op_type for n in onnx.load(exo2ego[2] / "backbone_ego.onnx").graph.node}
    assert not ops & {"Resize", "Upsample", "If", "Loop"}  # baked positional table


def test_fp16_variant_holds_fp16_weights_and_meets_fp16_tolerances(exo2ego):
    result, _, out = exo2ego
    model = onnx.load(out / "matcher_fp16.onnx")
    types = {init.data_type for init in model.graph.initializer if len(init.dims) >= 2}
    assert onnx.TensorProto.FLOAT16 in types
    assert (out / "matcher_fp16.onnx").stat().st_size < 0.6 * (out / "matcher.onnx").stat().st_size
    (record,) = _records(result, "matcher_fp16.onnx")
    by_metric = {c.metric: c for c in record.checks if c.gated}
    assert by_metric["max abs err"].value <= TOLERANCES["fp16"]["similarities_max_abs"] == 5e-3
    assert by_metric["argmax agreement"].value >= 0.99
    assert by_metric["argmax agreement"].detail.startswith("200 picks")
    # And independently of the export's own check: a few fresh sets, fp16 ORT vs the
    # training code's descriptors and matcher.
    manifest = load_manifest(out)
    matcher = _rebuilt_matcher(manifest)
    parity = _parity(manifest, matcher)
    with _ort(out / "matcher_fp16.onnx") as session:
        for seed in range(5):
            case = _reference_case(matcher, parity.src, parity.dst, 2, 16, seed=100 + seed)
            got = session.infer(parity.feeds(case))["similarities"]
            expected = _training_similarities(matcher, parity, case)
            np.testing.assert_allclose(got, expected, rtol=0, atol=5e-3)


@pytest.mark.parametrize("count", [1, 7, 300])
@pytest.mark.parametrize("batch", [1, 3])
def test_dynamic_candidates_and_objects(exo2ego, ego2exo, count, batch):
    for out in (exo2ego[2], ego2exo[3]):
        manifest = load_manifest(out)
        matcher = _rebuilt_matcher(manifest)
        parity = _parity(manifest, matcher)
        case = _reference_case(matcher, parity.src, parity.dst, batch, count, count + 10 * batch)
        with _ort(out / "matcher.onnx") as session:
            got = session.infer(parity.feeds(case))["similarities"]
        expected = _training_similarities(matcher, parity, case)
        assert got.shape == (batch, count)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_backbone_runs_at_other_batch_sizes(exo2ego):
    from export.pipeline import build_models

    out = exo2ego[2]
    config = _config(out, direction="exo2ego", include_fastsam=False)
    backbone = build_models(config, out).backbones["ego"]
    images = random_images(np.random.default_rng(3), 3, backbone.image_size)
    with _ort(out / "backbone_ego.onnx") as session:
        got = session.infer({"image": images})["feats"]
    with torch.no_grad():
        expected = backbone(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


def test_tampered_artifact_is_refused(exo2ego, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(exo2ego[2], copy)
    check_artifacts(copy)
    path = copy / "matcher.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(OmamaError, match=r"matcher\.onnx sha256 .* differs"):
        check_artifacts(copy)
    (copy / "fastsam_fp16.onnx").unlink()
    with pytest.raises(OmamaError, match="fastsam_fp16.onnx is missing"):
        check_artifacts(copy)


# ------------------------------------------------------------------------------ CLI


def test_cli_export_ego2exo_with_measured_matcher_input(ego2exo):
    code, stdout, stderr, out = ego2exo
    assert code == 0, stderr
    manifest = check_artifacts(out)
    assert manifest.direction == "ego2exo"
    assert manifest.views["src"].kind == "ego" and manifest.views["src"].feat_grid == (5, 5)
    assert manifest.fastsam == FastSAMSpec(included=False)
    assert sorted(f.path for f in manifest.files) == [
        "backbone_ego.onnx",
        "backbone_exo.onnx",
        "matcher.onnx",
    ]
    decision = manifest.matcher.input_decision
    assert decision.chosen == manifest.matcher.input in ("weights", "masks")
    assert decision.weights_ms > 0 and decision.masks_ms > 0
    assert decision.masks_input_bytes > decision.weights_input_bytes
    assert f"matcher input: {decision.chosen}" in stdout
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
    assert manifest.verification.passed is False
    assert any("'feats'" in f for f in manifest.verification.failures)
    with pytest.raises(OmamaError, match="failed its export verification"):
        check_artifacts(out)


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
    from export.tensorrt import build_engine, compare_sessions
    from export.verify import io_specs
    from runtime.sessions import open_artifact

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
    views = manifest.views
    src = ViewGeometry(views["src"].image_size, views["src"].feat_grid)
    dst = ViewGeometry(views["dst"].image_size, views["dst"].feat_grid)
    torch_backend = select_backend("torch", "cpu")
    with open_artifact(torch_backend, manifest, manifest.select("matcher")) as reference:
        parity = MatcherParity(reference, 768, src, dst, "masks", random_sets=200, large_n=256)
        with select_backend("tensorrt", "cuda").open(engine) as session:
            checks = parity.run(session, "fp16")
            assert all(c.passed for c in checks), [c for c in checks if not c.passed]
            feeds = [parity.feeds(parity.case(i)) for i in range(3)]
            with _ort(out / "matcher.onnx") as onnx_session:
                report = compare_sessions(session, onnx_session, feeds, {"similarities": 5e-3})
    assert report["similarities"]["passed"]
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


def test_a_nan_output_fails_its_check():
    from runtime.manifest import VerificationRecord
    from runtime.verification.compare import compare_backbone, feats_reference

    feats = np.random.default_rng(0).standard_normal((1, 768, 2, 2)).astype(np.float32)
    broken = np.full_like(feats, np.nan)
    (check,) = compare_backbone(
        [(feats_reference(feats), broken)], "fp32", TOLERANCES["fp32"], "a NaN output"
    )
    assert np.isnan(check.value) and not check.passed
    record = VerificationRecord("b.onnx", "backbone_ego", "test", "cpu", (), "fp32", "test", {},
                                (check,))  # fmt: skip
    assert "max abs err nan" in describe_check(record, check) and not record.passed


# ------------------------------------------------------------------ backbone weights of a cache


def _cache_of_small_takes(base):
    """Two synthetic takes (ego 224x224 -> 16x16 tokens, exo 126x224 -> 9x16) cached with a
    seeded random 1-block ViT-S; returns (root, cache)."""
    from omama_train.data.pairs import make_pairs
    from omama_train.data.prepare import prepare
    from omama_train.data.synth import synthesize
    from omama_train.features import build_cache
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
    build_cache(base / "root", cache, files, SMALL, random_init=True, device="cpu", progress=False)
    return base / "root", cache


def test_export_from_a_cache_reproduces_its_features(tmp_path):
    """THE check that the deployed backbone sees what training saw: a random-init cache's
    backbone.safetensors plus a matcher of the cache's grids, exported; the ONNX backbones
    on ONNX Runtime give the cached features of an image of each view."""
    from omama_train.features import BACKBONE_FILE, FeatureCache, read_rgb, view_of
    from omama_train.models.matcher import OMaMaMatcher, save_matcher
    from runtime.egoexo import ProcessedRoot
    from runtime.manifest import sha256_file
    from runtime.preprocess import preprocess_image

    root, cache_dir = _cache_of_small_takes(tmp_path)
    cache = FeatureCache(cache_dir)
    grids = {view: cache.grid(view) for view in ("ego", "exo")}
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
    from runtime.pipeline import Pipeline

    with Pipeline(out, backend="onnxruntime", device="cpu", threads=1) as pipe:
        assert pipe.describe()["random_weights"] is True
    assert not [line for line in lines if line.startswith("warning")]
    index = ProcessedRoot(root)
    for view, role in (("exo", "src"), ("ego", "dst")):
        assert manifest.views[role].image_size == cache.image_size(view)
        take, cam, frame = next(k for k in cache if view_of(k.split("/")[1]) == view).split("/")
        image = preprocess_image(
            read_rgb(index.image_path(take, cam, frame)), cache.image_size(view)
        )
        with _ort(out / f"backbone_{view}.onnx") as session:
            (feats,) = session.infer({"image": image[None]}).values()
        cached = cache.get_array(take, cam, int(frame)).astype(np.float32)
        np.testing.assert_allclose(feats[0], cached, rtol=2e-3, atol=2e-3)
        assert np.abs(cached).max() > 0.5


def test_weights_without_projection_get_the_seeded_one_in_both_views(tmp_path):
    from safetensors.torch import save_file

    from export.pipeline import build_models
    from omama_train.features import BackboneWeights
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
        # What omama features --weights FILE --seed N computes its cache with.
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


# ------------------------------------------------------------------------------ FastSAM NMS


def test_fastsam_nms_is_in_the_graph_by_default_and_verified(exo2ego):
    from export.fastsam import nms_graph_params

    result, lines, out = exo2ego
    fastsam = load_manifest(out).fastsam
    decision = fastsam.nms_decision
    assert fastsam.nms_in_graph is True and fastsam.max_det == 300
    assert decision.requested == "auto" and decision.reason == "in-graph NMS parity holds"
    # Random-init exports bake the conf their random weights need (they score ~0.012).
    assert decision.settings == NmsSettings(conf=0.01, iou=0.9, max_det=300)
    assert decision.baked.conf == pytest.approx(0.01) and decision.baked.max_det == 300
    baked = nms_graph_params(out / "fastsam.onnx")  # read from the graph itself
    assert (np.float32(baked.conf), np.float32(baked.iou), baked.max_det) == (
        np.float32(0.01),
        np.float32(0.9),
        300,
    )
    parity = {c.metric: c for c in decision.checks}
    assert parity["detection agreement"].value == 1.0
    assert parity["box max err px"].value <= 1.0 and parity["mask IoU (min)"].value > 0.99
    assert all(c.passed for c in decision.checks)
    # The same checks gate the file and its fp16 variant, whose NMS stays float32.
    for name in ("fastsam.onnx", "fastsam_fp16.onnx"):
        (record,) = _records(result, name)
        checks = {c.metric: c for c in record.checks}
        assert checks["detection agreement"].gated and checks["detection agreement"].passed
        assert "kept: reference 32, other 32, both 32" in checks["detection agreement"].detail
    fp16 = load_manifest(out).select("fastsam", precision="fp16")
    assert fp16.graph.fp32_ops["NonMaxSuppression"] == 1
    assert fp16.graph.fp32_nodes_by_prefix > 10
    assert any("NMS in the graph (conf 0.01, iou 0.9, max_det 300" in line for line in lines)
    with _ort(out / "fastsam.onnx") as session:
        rows = session.infer({"images": np.zeros((1, 3, 128, 128), np.float32)})
    assert rows["output0"].shape == (1, 300, 38) and (rows["output0"][0, :, 4] > 0).sum() == 16


def _fastsam_step(tmp_path, echo, **overrides):
    """Only the FastSAM step of an export (YOLOv8n-seg stand-in, 128 px): the run object."""
    from export.fastsam import build_standin_fastsam
    from export.pipeline import _Export, _Models
    from runtime.manifest import ViewSpec

    out = tmp_path / "artifacts"
    out.mkdir()
    weights = build_standin_fastsam(tmp_path / "standin.pt")
    views = {
        "src": ViewSpec("exo", (56, 84), (4, 6)),
        "dst": ViewSpec("ego", (70, 70), (5, 5)),
    }
    models = _Models(None, "exo2ego", views, {}, None, weights, None, None, None)
    config = _config(out, **overrides)
    run = _Export(config, models, tmp_path, echo, lambda label: None)
    run.fastsam()
    return run, out


def test_fastsam_nms_runtime_keeps_raw_outputs(tmp_path):
    lines: list[str] = []
    run, out = _fastsam_step(tmp_path, lines.append, fastsam_nms="runtime")
    assert run.fastsam_in_graph is False
    assert run.nms_decision.reason == "requested (--fastsam-nms runtime)"
    ops = {n.op_type for n in onnx.load(out / "fastsam.onnx").graph.node}
    assert "NonMaxSuppression" not in ops
    with _ort(out / "fastsam.onnx") as session:
        got = session.infer({"images": np.zeros((1, 3, 128, 128), np.float32)})
    assert got["output0"].shape == (1, 37, 336)  # raw: xywh, score, 32 coefficients per anchor
    (record,) = run.records
    assert {c.metric for c in record.checks} == {
        "max err / max(1, peak)",
        "NMS detection agreement",
    }
    assert record.passed and not any("NMS in the graph" in x for x in lines)


class _ShiftedRows:
    """A session whose in-graph detection rows come out moved by ``shift_px`` (a real error)."""

    def __init__(self, inner, shift_px: float) -> None:
        self.inner, self.shift_px = inner, shift_px

    def infer(self, feeds):
        outputs = dict(self.inner.infer(feeds))
        rows = outputs["output0"].copy()
        rows[..., :4] += np.where(rows[..., 4:5] > 0, np.float32(self.shift_px), 0)
        return outputs | {"output0": rows}


def _shift_graph_boxes(monkeypatch, shift_px: float) -> None:
    """Make the export's in-graph FastSAM parity see the graph's boxes moved by ``shift_px``."""
    real = FastSAMParity.run

    def shifted(self, session, precision, nms_in_graph):
        use = _ShiftedRows(session, shift_px) if nms_in_graph else session
        return real(self, use, precision, nms_in_graph)

    monkeypatch.setattr(FastSAMParity, "run", shifted)


def test_fastsam_nms_graph_fails_with_the_offending_numbers(tmp_path, monkeypatch):
    _shift_graph_boxes(monkeypatch, 2.0)
    run, out = _fastsam_step(tmp_path, lambda line: None, fastsam_nms="graph")
    assert run.fastsam_in_graph is True  # kept: the export fails on these checks
    (record,) = run.records
    failed = [c for c in record.checks if not c.passed]
    assert [c.metric for c in failed] == ["box max err px"]
    assert "box max err px 2.00e+00 (needs <= 1.00e+00)" in describe_check(record, failed[0])


def test_fastsam_nms_auto_falls_back_to_runtime_and_says_why(tmp_path, monkeypatch):
    _shift_graph_boxes(monkeypatch, 6.0)  # beyond the 4 px match radius: no detection maps
    out = tmp_path / "artifacts"
    lines: list[str] = []
    config = _config(
        out, direction="exo2ego", matcher_input="weights", parity_sets=2, parity_large_n=4
    )
    export_artifacts(config, echo=lines.append, progress=False)
    manifest = check_artifacts(out)
    fastsam = manifest.fastsam
    reason = fastsam.nms_decision.reason
    assert fastsam.nms_in_graph is False and reason.startswith("in-graph NMS parity failed")
    assert "detection agreement 0 (tolerance 1)" in reason
    assert "graph row 0 (score 0.0123361) matches no anchor (6 px)" in reason
    assert any(line.startswith("  fastsam.onnx: NMS kept out of the graph") for line in lines)
    failed = {c.metric for c in fastsam.nms_decision.checks if not c.passed}
    assert failed == {"detection agreement"}
    assert manifest.select("fastsam").outputs[0].shape == (1, 37, 336)
    assert all(r.passed for r in manifest.verification.records)  # the raw file verified


def test_kept_comparison_tolerates_ties_but_not_disagreements():
    from runtime.verification.nms_agreement import compare_kept

    # 14 boxes in a row, none overlapping, except 12 and 13 (IoU 0.95).
    boxes = np.array([[20 * i, 0, 20 * i + 10, 10] for i in range(14)], np.float32)
    boxes[13] = boxes[12] + np.array([0, 0, 0, 0.5], np.float32)
    scores = np.array([0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5, 0.5, 0.5, 0.3, 0.7, 0.7])
    ref = [0, 1, 2, 3, 4, 12, 5, 6, 7, 8, 9]  # max_det 11: cut inside the 0.5 tie (8, 9, 10)
    tie = dict(conf=0.2, iou=0.9, max_det=11, score_tie=1e-6, iou_tie=1e-5)
    # 10 for 9 at the cut, and 13 for 12 (same score, IoU > 0.9): either may be kept.
    other = [0, 1, 2, 3, 4, 13, 5, 6, 7, 8, 10]
    result = compare_kept(ref, other, boxes, scores, **tie)
    assert result.agreement == 1.0 and result.both == 9 and not result.unexplained
    assert result.reasons == {"threshold": 0, "cut": 2, "suppression": 2}
    # A real disagreement: anchor 11 (0.3) kept instead of 9 (0.5), which beats the cut.
    wrong = [0, 1, 2, 3, 4, 12, 5, 6, 7, 8, 11]
    result = compare_kept(ref, wrong, boxes, scores, **tie)
    assert result.agreement == 11 / 12 and result.unexplained == [
        "anchor 9 (score 0.5) kept by reference only"
    ]
    # Without the cap, the same tie at 9/10 is no longer explained by the cut.
    result = compare_kept(ref, other, boxes, scores, **(tie | {"max_det": None}))
    assert result.agreement < 1.0 and result.reasons["cut"] == 0
    # A tie with the score threshold: an anchor at conf itself may be in or out.
    result = compare_kept([0], [0, 11], boxes, scores, **(tie | {"conf": 0.3}))
    assert result.agreement == 1.0 and result.reasons["threshold"] == 1
    # Detections that map to no anchor always count against.
    result = compare_kept([0], [0], boxes, scores, **tie, unmapped=["graph row 1"])
    assert result.agreement == 0.5 and result.unexplained == ["graph row 1"]
