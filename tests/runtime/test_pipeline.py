"""The pipeline on one frame pair (ONNX Runtime): batching, latency stages, descriptor inputs,
output mask sizes, precomputed and zero candidates, refusals, and FastSAM's NMS in the graph."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

from runtime.candidates import Candidates  # noqa: E402
from runtime.errors import OmamaError  # noqa: E402
from runtime.pipeline import STAGES, Pipeline, sigmoid  # noqa: E402
from runtime.pooling import descriptor_weights, pooling_grid  # noqa: E402
from runtime.preprocess import resize_mask_nearest  # noqa: E402
from runtime.sessions import OrtSession  # noqa: E402
from tests.runtime.assets import FASTSAM_IMGSZ  # noqa: E402


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
    dst = ort_pipe.encode_dst(dst_rgb)
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
        dst = pipe.encode_dst(dst_rgb)
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
