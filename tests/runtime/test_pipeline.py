"""runtime.pipeline, runtime.tracks and the torch backend's artifact models, on small exports.

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
import json
import shutil
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

from runtime import rle  # noqa: E402
from runtime.candidates import Candidates  # noqa: E402
from runtime.errors import OmamaError  # noqa: E402
from runtime.pipeline import STAGES, Pipeline, sigmoid  # noqa: E402
from runtime.pooling import descriptor_weights, pooling_grid  # noqa: E402
from runtime.preprocess import resize_mask_nearest  # noqa: E402
from runtime.runs.take import take_observations  # noqa: E402
from runtime.sessions import ModelRef, OrtSession  # noqa: E402
from runtime.sizing import aspect_mismatch, working_size  # noqa: E402
from runtime.tracks import load_tracks, read_mask_png  # noqa: E402

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


def _write_weights(folder: Path) -> object:
    """Weights files of a small model set; returns the backbone spec (ViT-B/14, 1 block)."""
    import ultralytics
    from safetensors.torch import save_file
    from ultralytics.nn.tasks import SegmentationModel, yaml_model_load

    from omama_train.models.backbones import BACKBONES, build_backbone
    from omama_train.models.fastsam import preserve_thread_settings
    from omama_train.models.matcher import OMaMaMatcher, save_matcher

    folder.mkdir(parents=True, exist_ok=True)
    spec = dataclasses.replace(BACKBONES["dinov2_vitb14_reg"], timm_overrides={"depth": 1})
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


@pytest.fixture(scope="session")
def assets(tmp_path_factory) -> Assets:
    return build_assets(tmp_path_factory.getbasetemp() / "pipeline_assets")


@pytest.fixture(scope="module")
def frames(assets):
    """(source exo frame, destination ego frame, query masks by object) at frame 2."""
    from runtime.egoexo import ProcessedRoot
    from runtime.video import VideoReader

    with VideoReader(assets.video(EXO)) as src, VideoReader(assets.video(EGO)) as dst:
        src_rgb, dst_rgb = src.read(2), dst.read(2)
    index = ProcessedRoot(assets.root)
    queries = {
        obj: rle.decode(index.mask_rle(assets.take, obj, EXO, 2))
        for obj in index.objects(assets.take)
        if index.mask_rle(assets.take, obj, EXO, 2) is not None
    }
    gt_dst = {
        obj: rle.decode(r)
        for obj in index.objects(assets.take)
        if (r := index.mask_rle(assets.take, obj, EGO, 2)) is not None
    }
    return src_rgb, dst_rgb, queries, gt_dst


@pytest.fixture(scope="module")
def ort_pipe(assets):
    with Pipeline(assets.weights, backend="onnxruntime", device="cpu", threads=1) as pipe:
        yield pipe


# ------------------------------------------------------------------------------ pure rules


def test_working_size_reproduces_the_prepare_then_patch_chain():
    assert working_size((1408, 1408), (700, 700)) == (704, 704)
    assert working_size((2160, 3840), (532, 952)) == (540, 960)
    assert working_size((704, 704), (700, 700)) == (704, 704)
    assert working_size((540, 960), (532, 952)) == (540, 960)
    assert working_size((300, 300), (700, 700)) == (300, 300)  # smaller: no downscale
    assert working_size((448, 448), (70, 70)) == (74, 74)
    assert aspect_mismatch((540, 960), (532, 952)) < 0.01
    assert aspect_mismatch((704, 704), (532, 952)) > 0.5
    assert sigmoid(0.0) == 0.5 and abs(sigmoid(-800.0)) < 1e-300 and sigmoid(800.0) == 1.0


# ------------------------------------------------------------------------------ tracks


def test_tracks_from_png_folders_json_and_annotation(tmp_path, assets):
    import cv2

    one = tmp_path / "mug"
    one.mkdir()
    mask = np.zeros((20, 30), np.uint8)
    mask[5:10, 3:9] = 1
    cv2.imwrite(str(one / "4.png"), mask * 255)
    cv2.imwrite(str(one / "7.png"), np.zeros((20, 30), np.uint8))
    (one / "notes.txt").write_text("ignored")
    tracks = load_tracks([one])
    assert tracks.names == ["mug"] and tracks.frames() == [4, 7]
    np.testing.assert_array_equal(tracks.tracks[0].mask(4), mask)
    assert tracks.tracks[0].mask(5) is None
    # RGBA: the alpha channel is the mask
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[2:4, 2:4, 3] = 255
    cv2.imwrite(str(tmp_path / "a.png"), rgba)
    assert read_mask_png(tmp_path / "a.png").sum() == 4

    several = tmp_path / "objects"
    for name in ("cup", "pan"):
        (several / name).mkdir(parents=True)
        cv2.imwrite(str(several / name / "0.png"), mask * 255)
    assert load_tracks([several]).names == ["cup", "pan"]
    assert load_tracks([several], objects=["pan"]).names == ["pan"]

    per_frame = tmp_path / "knife.json"
    per_frame.write_text(json.dumps({"3": rle.encode(mask)}))
    per_object = tmp_path / "many.json"
    per_object.write_text(json.dumps({"fork": {"1": rle.encode(mask), "2": rle.encode(mask)}}))
    tracks = load_tracks([per_frame, per_object])
    assert tracks.names == ["knife", "fork"] and tracks.frames() == [1, 2, 3]
    np.testing.assert_array_equal(tracks.tracks[1].mask(2), mask)

    ann = load_tracks([assets.annotation], src_cam=EXO)
    assert ann.cams() == [EXO] and ann.takes() == [assets.take]
    assert len(ann) == 4 and ann.frames() == [0, 2, 4]
    assert load_tracks([assets.annotation], objects=["cyan book_2"], src_cam=EXO).names == [
        "cyan book_2"
    ]


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "query track not found"),
        ("empty_dir", "holds no per-frame masks"),
        ("no_cam", "name the source camera with --src-cam"),
        ("bad_cam", "has no masks in camera 'cam09'"),
        ("bad_object", "has no object 'sofa'"),
        ("duplicate", "comes from two tracks"),
        ("not_tracks", "is neither"),
        ("bad_frame", "non-integer frame key"),
        ("bad_json", "not readable JSON"),
    ],
)
def test_track_errors_are_one_clear_line(case, message, tmp_path, assets):
    mask_rle = rle.encode(np.ones((4, 4), np.uint8))
    specs, objects, cam = [tmp_path / "x.json"], (), None
    if case == "missing":
        specs = [tmp_path / "nope"]
    elif case == "empty_dir":
        (tmp_path / "d").mkdir()
        specs = [tmp_path / "d"]
    elif case == "no_cam":
        specs = [assets.annotation]
    elif case == "bad_cam":
        specs, cam = [assets.annotation], "cam09"
    elif case == "bad_object":
        specs, objects, cam = [assets.annotation], ["sofa"], EXO
    elif case == "duplicate":
        (tmp_path / "x.json").write_text(json.dumps({"0": mask_rle}))
        specs = [tmp_path / "x.json", tmp_path / "x.json"]
    elif case == "not_tracks":
        (tmp_path / "x.json").write_text(json.dumps({"a": 1}))
    elif case == "bad_frame":
        (tmp_path / "x.json").write_text(json.dumps({"obj": {"first": mask_rle}}))
    else:
        (tmp_path / "x.json").write_text("{nope")
    with pytest.raises(OmamaError, match=message):
        load_tracks(specs, objects, cam)


def test_unreadable_png_names_the_file(tmp_path):
    bad = tmp_path / "3.png"
    bad.write_bytes(b"not a png")
    track = load_tracks([tmp_path]).tracks[0]
    with pytest.raises(OmamaError, match=f"cannot read mask {bad}"):
        track.mask(3)


# ------------------------------------------------------------------------------ pipeline


def test_match_frame_batches_objects_and_records_every_stage(ort_pipe, frames):
    src_rgb, dst_rgb, queries, _ = frames
    masks = list(queries.values())
    matches = ort_pipe.match_frame(src_rgb, dst_rgb, masks)
    latency = ort_pipe.last_latency_ms
    assert set(latency) == {*STAGES, "total"}
    assert latency["total"] == pytest.approx(sum(latency[s] for s in STAGES))
    assert latency["fastsam"] > 0 and latency["matcher"] > 0
    n = matches[0].n_candidates
    assert n > 1 and all(m.n_candidates == n for m in matches)
    for match in matches:
        assert match.mask.shape == dst_rgb.shape[:2] and match.mask.dtype == np.uint8
        assert match.mask.any()
        assert match.confidence == pytest.approx(sigmoid(match.similarity))
        assert match.visible == (match.confidence > 0.5)
        sims = [s for _, s in match.top]
        assert match.top[0][0] == match.candidate and sims == sorted(sims, reverse=True)
        assert len(match.top) == min(5, n)
    # one object at a time gives the same answers as the batch
    for mask, batched in zip(masks, matches, strict=True):
        (alone,) = ort_pipe.match_frame(src_rgb, dst_rgb, [mask])
        assert alone.candidate == batched.candidate
        assert alone.confidence == pytest.approx(batched.confidence, abs=1e-6)
        np.testing.assert_array_equal(alone.mask, batched.mask)


def test_candidate_descriptors_equal_resizing_twice(ort_pipe, frames):
    """Sampling FastSAM crops through the composed index maps equals O-MaMa's two resizes
    (working size -> model size -> pooling grid) of the dense candidate stack."""
    _, dst_rgb, _, _ = frames
    dst = ort_pipe.encode_destination(dst_rgb)
    cands = dst.candidates
    view = ort_pipe.views["dst"]
    dense = np.stack([cands.mask(i) for i in range(len(cands))])
    resized = Candidates(dense, cands.boxes).resized(view.image_size)
    want = descriptor_weights(resized.masks, resized.boxes, view.image_size, view.feat_grid)
    np.testing.assert_array_equal(dst.matcher_inputs["dst_weights"][0], want)
    assert pooling_grid(view.image_size) == (17, 17)


def test_output_mask_sizes(assets, frames, ort_pipe):
    src_rgb, dst_rgb, queries, _ = frames
    masks = list(queries.values())[:2]
    assert ort_pipe.mask_size == "image"
    at_image = ort_pipe.match_frame(src_rgb, dst_rgb, masks)
    with Pipeline(assets.weights, backend="onnxruntime", device="cpu", threads=1,
                  mask_size="model") as pipe:  # fmt: skip
        at_model = pipe.match_frame(src_rgb, dst_rgb, masks)
        dst = pipe.encode_destination(dst_rgb)
    assert dst.work_hw == (74, 74) and dst.candidates.size_hw == (74, 74)
    for match, big in zip(at_model, at_image, strict=True):
        work = dst.candidates.mask(match.candidate)  # the chosen candidate at the working size
        assert match.mask.shape == (70, 70)
        np.testing.assert_array_equal(match.mask, resize_mask_nearest(work, (70, 70), rule="torch"))
        # the image-size answer is the same candidate's working-size mask, nearest-upsampled
        # with the OpenCV rule to the image (448 = 74 * 6.05), its box scaled alike
        assert big.candidate == match.candidate and big.mask.any()
        up = resize_mask_nearest(work, (448, 448), rule="opencv")
        np.testing.assert_array_equal(big.mask, up)
        x, y, w, h = dst.candidates.boxes[match.candidate] * 448 / 74
        assert big.box_xywh == pytest.approx((x, y, w, h), rel=1e-5)


def test_precomputed_and_zero_candidates(ort_pipe, frames, monkeypatch):
    src_rgb, dst_rgb, queries, gt_dst = frames
    obj = next(o for o in queries if o in gt_dst)
    gt = np.stack([gt_dst[o] for o in gt_dst])  # GT masks (448x448) as candidates
    matches = ort_pipe.match_frame(src_rgb, dst_rgb, [queries[obj]], Candidates.from_masks(gt))
    assert matches[0].n_candidates == len(gt_dst)
    assert matches[0].mask.shape == dst_rgb.shape[:2]
    chosen = matches[0].candidate
    # precomputed masks of another size are resized to the working size (torch rule)
    work = resize_mask_nearest(gt[chosen], (74, 74), rule="torch")
    np.testing.assert_array_equal(matches[0].mask, resize_mask_nearest(work, (448, 448)))
    matcher = ort_pipe.sessions["matcher"]
    calls = []
    monkeypatch.setattr(matcher, "infer", lambda feeds: calls.append(feeds) or {})
    (empty,) = ort_pipe.match_frame(src_rgb, dst_rgb, [queries[obj]], Candidates.empty((74, 74)))
    assert calls == []  # no candidates: no matcher call
    assert (empty.candidate, empty.confidence, empty.similarity, empty.top) == (-1, 0.0, None, [])
    assert empty.mask.shape == dst_rgb.shape[:2] and not empty.mask.any() and not empty.visible


def test_bad_images_and_queries_are_refused_with_one_line(ort_pipe, frames):
    src_rgb, dst_rgb, queries, _ = frames
    query = next(iter(queries.values()))
    with pytest.raises(OmamaError, match="did you swap source and destination"):
        ort_pipe.match_frame(dst_rgb, src_rgb, [query])
    with pytest.raises(OmamaError, match="uint8 RGB"):
        ort_pipe.match_frame(src_rgb[..., 0], dst_rgb, [query])
    assert ort_pipe.query_problem(np.zeros_like(query), src_rgb.shape[:2]) == (
        "the query mask is empty"
    )
    assert "must be drawn on the source image" in ort_pipe.query_problem(
        np.ones((100, 100), np.uint8), src_rgb.shape[:2]
    )
    speck = np.zeros_like(query)
    speck[1, 1] = 1  # 504x896 -> 70x126: row 1 is never sampled
    assert "vanishes at the model's source size" in ort_pipe.query_problem(speck, (504, 896))
    # same aspect ratio, another resolution (e.g. the annotation's full size): accepted
    big = resize_mask_nearest(query, (1008, 1792))
    assert ort_pipe.query_problem(big, src_rgb.shape[:2]) is None
    with pytest.raises(OmamaError, match="query 0: the query mask is empty"):
        ort_pipe.match_frame(src_rgb, dst_rgb, [np.zeros_like(query)])


def test_tampered_or_incomplete_artifacts_are_refused(assets, tmp_path):
    copy = tmp_path / "art"
    shutil.copytree(assets.weights, copy)
    with (copy / "matcher.onnx").open("r+b") as fh:
        fh.seek(-100, 2)
        byte = fh.read(1)
        fh.seek(-100, 2)
        fh.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(OmamaError, match=r"does not match its manifest: matcher.onnx sha256"):
        Pipeline(copy, backend="onnxruntime", device="cpu")
    (copy / "fastsam.onnx").unlink()
    with pytest.raises(OmamaError, match="fastsam.onnx is missing"):
        Pipeline(copy, backend="onnxruntime", device="cpu")
    with pytest.raises(OmamaError, match="artifacts folder not found"):
        Pipeline(tmp_path / "nothing", backend="onnxruntime", device="cpu")
    with pytest.raises(OmamaError, match="mask size must be one of"):
        Pipeline(assets.weights, mask_size="huge")


# ------------------------------------------------------------------------------ torch backend


@pytest.mark.parametrize("which", ["weights", "random"])
def test_torch_modules_match_their_onnx_files(which, assets):
    """Every module the torch backend rebuilds (weights files, or the export's seeded
    random recipe) computes what its ONNX file computes."""
    from omama_train.torch_backend import build_artifact_module
    from runtime.manifest import load_manifest

    manifest = load_manifest(getattr(assets, which))
    rng = np.random.default_rng(0)
    for entry in manifest.files:
        feeds = {}
        for spec in entry.inputs:
            shape = [d if isinstance(d, int) else {"B": 2, "N": 7}.get(d, 1) for d in spec.shape]
            if spec.dtype == "uint8":
                feeds[spec.name] = (rng.random(shape) > 0.6).astype(np.uint8)
            elif spec.name.endswith(("box", "boxes")):
                feeds[spec.name] = (rng.random(shape) * 40).astype(np.float32)
            elif spec.name.endswith("weights"):
                w = rng.random(shape).astype(np.float32)
                feeds[spec.name] = w / w.sum(axis=-1, keepdims=True)
            else:
                feeds[spec.name] = rng.standard_normal(shape).astype(np.float32)
        with OrtSession(manifest.path_of(entry), threads=1) as session:
            want = session.infer(feeds)
        module = build_artifact_module(manifest, entry, [assets.weights_dir]).eval()
        with torch.no_grad():
            got = module(*[torch.from_numpy(feeds[s.name]) for s in entry.inputs])
        got = got if isinstance(got, tuple) else (got,)
        if entry.model == "fastsam" and manifest.fastsam.nms_in_graph:
            # NMS in the graph (the export's default): torch gives the raw outputs, and the
            # runtime's NMS on them with the baked settings gives the graph's rows.
            got = (torch.from_numpy(_nms_rows(got[0].numpy(), manifest.fastsam)), got[1])
            want["output0"] = _graph_rows(want["output0"], manifest.fastsam)
        for spec, value in zip(entry.outputs, got, strict=True):
            ref = want[spec.name]
            err = np.abs(value.numpy() - ref).max() / max(np.abs(ref).max(), 1.0)
            assert err < 1e-4, f"{which} {entry.model} {spec.name}: {err}"


def _graph_rows(output0: np.ndarray, fastsam) -> np.ndarray:
    """Kept rows (K, 4 + 1 + 32) of an in-graph NMS output0 (1, max_det, 38): box, score,
    coefficients (the class column dropped), as the runtime reads them."""
    rows = output0[0][output0[0][:, 4] > np.float32(fastsam.conf)]
    return np.concatenate([rows[:, :5], rows[:, 6:]], axis=1)


def _nms_rows(raw0: np.ndarray, fastsam) -> np.ndarray:
    """The runtime's NMS on raw output0 (1, 37, A) with the manifest's settings, as rows."""
    from runtime.fastsam_post import detections, nms_thresholds

    conf, iou, max_det = nms_thresholds(fastsam)
    boxes, scores, coeffs = detections(raw0[0], 32, conf, iou, max_det)
    return np.concatenate([boxes, scores[:, None], coeffs], axis=1)


def test_torch_backend_pipeline_matches_onnxruntime(assets, frames, ort_pipe):
    src_rgb, dst_rgb, queries, gt_dst = frames
    masks = list(queries.values())
    want = ort_pipe.match_frame(src_rgb, dst_rgb, masks)
    with Pipeline(assets.weights, backend="torch", device="cpu", threads=1,
                  weights_dirs=[assets.weights_dir]) as pipe:  # fmt: skip
        assert {s.backend for s in pipe.sessions.values()} == {"torch"}
        got = pipe.match_frame(src_rgb, dst_rgb, masks)
    for a, b in zip(want, got, strict=True):
        assert a.candidate == b.candidate and a.n_candidates == b.n_candidates
        assert [i for i, _ in a.top] == [i for i, _ in b.top]
        assert abs(a.confidence - b.confidence) < 1e-4
        np.testing.assert_array_equal(a.mask, b.mask)


def test_masks_input_form_matches_between_backends(assets, frames):
    """Random-init artifacts, matcher fed with masks + boxes (the other input form), with
    GT masks as precomputed candidates (the random FastSAM stand-in's are noise)."""
    src_rgb, dst_rgb, queries, gt_dst = frames
    cands = Candidates.from_masks(np.stack(list(gt_dst.values())))
    masks = list(queries.values())
    answers = {}
    for backend in ("onnxruntime", "torch"):
        with Pipeline(assets.random, backend=backend, device="cpu", threads=1) as pipe:
            assert pipe.matcher_input == "masks"
            answers[backend] = pipe.match_frame(src_rgb, dst_rgb, masks, cands)
    for a, b in zip(answers["onnxruntime"], answers["torch"], strict=True):
        assert a.candidate == b.candidate and abs(a.confidence - b.confidence) < 1e-4


def test_torch_backend_says_where_the_weights_are_missing(assets, tmp_path, monkeypatch):
    from omama_train.torch_backend import build_artifact_module
    from runtime.manifest import load_manifest

    monkeypatch.delenv("OMAMA_WEIGHTS", raising=False)
    manifest = load_manifest(assets.weights)
    entry = manifest.select("matcher")
    with pytest.raises(
        OmamaError, match=r"matcher.safetensors \(sha256 .*not found in .*--weights"
    ):
        build_artifact_module(manifest, entry, [tmp_path])
    fake = tmp_path / "matcher.safetensors"
    fake.write_bytes(b"other weights")
    with pytest.raises(OmamaError, match="has another sha256"):
        build_artifact_module(manifest, entry, [tmp_path])
    ref = ModelRef(manifest, entry, (assets.weights_dir,))
    assert ref.entry.model == "matcher"


def test_take_observations_follow_the_pairs_rule(assets):
    from omama_train.data.pairs import all_pairs
    from runtime.egoexo import ProcessedRoot

    index = ProcessedRoot(assets.root)
    got = take_observations(index, assets.take, "exo2ego")
    want = all_pairs(index, [assets.take], "exo2ego")
    assert [(o.obj, o.src_cam, o.frame) for o in got] == [(p.obj, p.exo_cam, p.frame) for p in want]
    assert all(o.dst_cam == EGO for o in got)


# ------------------------------------------------------------------------------ FastSAM NMS


def _same_candidates(a, b) -> None:
    """Two FastSAM results (or candidate sets): same count, boxes within 1e-3 px, masks with
    IoU > 0.999 (pixels on the 0.5 level may flip between backends)."""
    assert len(a) == len(b) > 0
    np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3, rtol=0)
    for i in range(len(a)):
        ma, mb = a.mask(i).astype(bool), b.mask(i).astype(bool)
        assert (ma & mb).sum() / max((ma | mb).sum(), 1) > 0.999


def test_in_graph_nms_gives_the_runtime_nms_candidates_on_every_backend(assets, frames, tmp_path):
    """Both test exports put NMS in the graph (the default, parity held); the runtime on
    that file gives the candidates of a raw-output file of the same weights post-processed
    by the runtime's NMS, and so does the torch backend (raw outputs + the runtime's NMS)."""
    from export.fastsam import export_fastsam_onnx
    from runtime.fastsam_post import segment_everything
    from runtime.manifest import load_manifest
    from runtime.sizing import working_image

    manifest = load_manifest(assets.weights)
    random = load_manifest(assets.random).fastsam
    assert manifest.fastsam.nms_in_graph and manifest.fastsam.conf == 0.4
    assert random.nms_in_graph and random.conf == 0.01  # what random weights need
    work = working_image(frames[1], manifest.views["dst"].image_size)
    raw_path, _ = export_fastsam_onnx(assets.weights_dir / "fastsam.pt", tmp_path, FASTSAM_IMGSZ)
    with OrtSession(raw_path, threads=1) as raw:
        assert raw.outputs[0].shape[1] == 37  # raw head outputs: the runtime runs NMS
        runtime_nms = segment_everything(raw, work, FASTSAM_IMGSZ, conf=0.4, iou=0.9)
    for backend in ("onnxruntime", "torch"):
        with Pipeline(assets.weights, backend=backend, device="cpu", threads=1,
                      weights_dirs=[assets.weights_dir]) as pipe:  # fmt: skip
            assert pipe.fastsam_thresholds() == (0.4, 0.9, 300)
            _same_candidates(pipe.segment(work), runtime_nms)


def test_in_graph_nms_conf_may_rise_but_not_fall(ort_pipe, frames):
    from runtime.fastsam_post import segment_everything
    from runtime.sizing import working_image

    work = working_image(frames[1], ort_pipe.views["dst"].image_size)
    base = segment_everything(ort_pipe.sessions["fastsam"], work, FASTSAM_IMGSZ, 0.4, 0.9)
    higher = float(np.median(base.scores))
    keep = base.scores > np.float32(higher)
    try:
        ort_pipe.set_fastsam_thresholds(conf=higher)
        fewer = ort_pipe.segment(work)  # the graph's rows, filtered again at the higher conf
        assert 0 < len(fewer) == keep.sum() < len(base)
        np.testing.assert_array_equal(fewer.boxes, base.boxes[keep])
        for conf, iou in ((0.2, None), (None, 0.7)):
            with pytest.raises(OmamaError, match="re-export with --fastsam-nms runtime"):
                ort_pipe.set_fastsam_thresholds(conf=conf, iou=iou)
        # A direct edit of the attribute is checked when segmenting.
        ort_pipe.fastsam_conf = 0.2
        with pytest.raises(OmamaError, match=r"conf 0.2 cannot be applied: .* conf 0.4"):
            ort_pipe.segment(work)
    finally:
        ort_pipe.fastsam_conf, ort_pipe.fastsam_iou = 0.4, 0.9
