"""FastSAM pre/post-processing in numpy against ultralytics' own, on the same raw outputs.

A random-weight FastSAM-s (small input, 320 px, very low confidence so that there are
many detections) gives the raw network outputs; ultralytics' FastSAM predictor and
``runtime.fastsam_post`` both post-process them: same masks, boxes and scores.
"""

from __future__ import annotations

import dataclasses
import os

import cv2
import numpy as np
import pytest

from runtime import fastsam_masks
from runtime import fastsam_post as fp
from runtime.errors import OmamaError

IMGSZ = 320
CONF = 0.0  # random weights score ~0.001-0.01: keep every detection ...
IOU = 0.9
MAX_DET = 120  # ... up to this many (ultralytics' retina masks are slow to compute)


@pytest.fixture(scope="module")
def fastsam(tmp_path_factory):
    torch = pytest.importorskip("torch")
    pytest.importorskip("ultralytics")
    from omama_train.models.fastsam import build_random_fastsam, load_fastsam

    torch.set_num_threads(1)
    path = build_random_fastsam(tmp_path_factory.mktemp("fastsam") / "fastsam_s.pt", "s", seed=0)
    model = load_fastsam(path)
    torch.set_num_threads(1)
    return model


def _image(hw: tuple[int, int], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (hw[0] // 8 + 1, hw[1] // 8 + 1, 3), dtype=np.uint8)
    return cv2.resize(small, (hw[1], hw[0]), interpolation=cv2.INTER_LINEAR)


class _Raw:
    """The FastSAM network as a module returning (output0, output1), remembering them."""

    def __new__(cls, net):
        import torch

        class Raw(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.net = net
                self.last = None

            def forward(self, x):
                (out0, out1), _ = self.net(x)
                self.last = (out0.clone(), out1.clone(), x.clone())
                return out0, out1

        return Raw()


def _ultralytics_post(model, out0, out1, x, image_rgb):
    """Ultralytics' FastSAM post-processing of raw outputs for input ``x`` of ``image_rgb``."""
    import torch

    from omama_train.models.fastsam import preserve_thread_settings

    bgr = np.ascontiguousarray(image_rgb[:, :, ::-1])
    with preserve_thread_settings(), torch.inference_mode():
        if model.predictor is None:  # set the predictor up once
            model.predict(bgr, imgsz=IMGSZ, conf=CONF, iou=IOU, retina_masks=True, verbose=False)
        predictor = model.predictor
        predictor.args.conf, predictor.args.iou, predictor.args.retina_masks = CONF, IOU, True
        predictor.args.max_det = MAX_DET
        return predictor.postprocess([out0, out1], x, [bgr])[0]


def _compare(mine: fp.FastSAMResult, theirs) -> None:
    n = len(theirs)
    assert len(mine) == n > 20
    their_masks = theirs.masks.data.numpy().astype(bool)
    my_masks = mine.masks().astype(bool)
    assert my_masks.shape == their_masks.shape
    inter = (my_masks & their_masks).reshape(n, -1).sum(1)
    union = (my_masks | their_masks).reshape(n, -1).sum(1)
    assert (union > 0).all()
    assert (inter / union).min() > 0.99
    assert (my_masks != their_masks).mean() < 1e-4
    xyxy = theirs.boxes.xyxy.numpy()
    their_xywh = np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], axis=1)
    assert np.abs(mine.boxes - their_xywh).max() <= 1.0
    np.testing.assert_allclose(mine.scores, theirs.boxes.conf.numpy(), rtol=1e-5)


# image sizes covering ultralytics' prototype upsample factor 1, 2 and 4 (the letterbox
# padding falls on whole, half or quarter prototype cells) and portrait / landscape
@pytest.mark.parametrize("image_hw", [(320, 320), (200, 300), (308, 320), (270, 480), (300, 180)])
def test_same_answers_as_ultralytics(fastsam, image_hw):
    torch = pytest.importorskip("torch")
    from omama_train.torch_backend import TorchSession

    image = _image(image_hw, seed=sum(image_hw))
    raw = _Raw(fastsam.model)
    session = TorchSession(
        raw,
        inputs=[("images", (1, 3, IMGSZ, IMGSZ), np.float32)],
        outputs=[("output0", (1, 37, None), np.float32), ("output1", (1, 32, 80, 80), np.float32)],
    )
    mine = fp.segment_everything(session, image, IMGSZ, conf=CONF, iou=IOU, max_det=MAX_DET)
    out0, out1, x = raw.last
    assert tuple(out1.shape) == (1, 32, IMGSZ // 4, IMGSZ // 4)
    with torch.inference_mode():
        theirs = _ultralytics_post(fastsam, out0, out1, x, image)
    _compare(mine, theirs)
    assert mine.image_hw == image_hw


def test_same_answers_as_ultralytics_predict_end_to_end(fastsam):
    """Ultralytics' own predict (its letterbox: the smallest stride multiple) vs ours on the
    raw outputs it produced, with our letterbox checked against its input tensor."""
    torch = pytest.importorskip("torch")
    from omama_train.models.fastsam import preserve_thread_settings

    image = _image((240, 360), seed=7)
    bgr = np.ascontiguousarray(image[:, :, ::-1])
    captured = {}
    with preserve_thread_settings(), torch.inference_mode():
        kwargs = dict(imgsz=IMGSZ, conf=CONF, iou=IOU, max_det=MAX_DET, retina_masks=True)
        fastsam.predict(bgr, verbose=False, **kwargs)
        predictor = fastsam.predictor
        original = predictor.postprocess

        def hook(preds, img, orig_imgs):
            out0, out1 = preds[0] if isinstance(preds[0], tuple) else preds[:2]
            captured.update(out0=out0.numpy().copy(), out1=out1.numpy().copy(), x=img.numpy())
            return original(preds, img, orig_imgs)

        predictor.postprocess = hook
        try:
            theirs = fastsam.predict(bgr, verbose=False, **kwargs)[0]
        finally:
            predictor.postprocess = original
    stride = 32 if captured["x"].shape[2:] != (IMGSZ, IMGSZ) else None
    tensor, geom = fp.letterbox(image, IMGSZ, stride=stride)
    np.testing.assert_allclose(tensor, captured["x"], atol=1e-7, rtol=0)
    mine = fp.postprocess(captured["out0"], captured["out1"], geom, CONF, IOU, MAX_DET)
    _compare(mine, theirs)


@pytest.mark.parametrize(
    "image_hw", [(1, 1), (704, 704), (540, 960), (960, 540), (3, 1000), (999, 777)]
)
@pytest.mark.parametrize("stride", [None, 32])
def test_letterbox_matches_ultralytics(image_hw, stride):
    pytest.importorskip("ultralytics")
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics.data.augment import LetterBox

    image = _image((max(image_hw[0], 8), max(image_hw[1], 8)), seed=1)[: image_hw[0], : image_hw[1]]
    theirs = LetterBox((1024, 1024), auto=stride is not None, stride=stride or 32)(image=image)
    tensor, geom = fp.letterbox(image, 1024, stride=stride)
    assert tensor.shape == (1, 3, *theirs.shape[:2]) and geom.input_hw == theirs.shape[:2]
    np.testing.assert_array_equal(np.rint(tensor[0].transpose(1, 2, 0) * 255), theirs)
    assert geom.image_hw == image_hw


def test_nms_matches_torchvision():
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    rng = np.random.default_rng(0)
    centres = rng.uniform(0, 300, (2000, 2))
    sizes = rng.uniform(5, 120, (2000, 2))
    boxes = np.concatenate([centres, centres + sizes], axis=1).astype(np.float32)
    boxes[1000:1500] = boxes[:500] + rng.uniform(-3, 3, (500, 4)).astype(np.float32)  # near-dups
    scores = rng.permutation(2000).astype(np.float32) / 2000  # no ties
    for thr in (0.1, 0.5, 0.9):
        want = torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), thr).numpy()
        np.testing.assert_array_equal(fp.nms(boxes, scores, thr), want)
        np.testing.assert_array_equal(fp.nms(boxes, scores, thr, max_keep=50), want[:50])
    assert fp.nms(np.zeros((0, 4)), np.zeros(0), 0.5).shape == (0,)


def test_nms_in_graph_output_gives_the_same_candidates(fastsam):
    """An export with NMS in the graph returns (1, K, 6 + 32) rows: same candidates."""
    torch = pytest.importorskip("torch")
    image = _image((256, 320), seed=5)
    x, geom = fp.letterbox(image, IMGSZ)
    with torch.inference_mode():
        (out0, out1), _ = fastsam.model(torch.from_numpy(x))
    out0, out1 = out0.numpy(), out1.numpy()
    raw = fp.postprocess(out0, out1, geom, CONF, IOU, max_det=100)
    boxes, scores, coeffs = fp.detections(out0[0], 32, CONF, IOU, 100, fp.MAX_NMS)
    rows = np.concatenate([boxes, scores[:, None], np.zeros((len(scores), 1)), coeffs], axis=1)
    below = rows[-1:].copy()
    below[:, 4] = CONF / 2  # a padded row under the threshold: dropped
    in_graph = fp.postprocess(
        np.concatenate([rows, below])[None].astype(np.float32), out1, geom, CONF, IOU
    )
    assert len(in_graph) == len(raw) > 0
    np.testing.assert_array_equal(in_graph.masks(), raw.masks())
    np.testing.assert_array_equal(in_graph.boxes, raw.boxes)


def test_result_views_agree(fastsam):
    torch = pytest.importorskip("torch")
    from runtime.preprocess import nearest_indices

    image = _image((240, 320), seed=9)
    x, geom = fp.letterbox(image, IMGSZ)
    with torch.inference_mode():
        (out0, out1), _ = fastsam.model(torch.from_numpy(x))
    result = fp.postprocess(out0.numpy(), out1.numpy(), geom, CONF, IOU, max_det=40)
    dense = result.masks()
    assert dense.shape == (len(result), 240, 320) and dense.dtype == np.uint8
    assert set(np.unique(dense)) <= {0, 1}
    np.testing.assert_array_equal(result.mask(3), dense[3])
    rows, cols = nearest_indices(240, 60), nearest_indices(320, 75)
    np.testing.assert_array_equal(result.sample(rows, cols), dense[:, rows][:, :, cols])
    # every mask lies inside its crop range, and the boxes are the crop's (x1, y1, w, h)
    r0, r1, c0, c1 = result.ranges.T
    for k, mask in enumerate(dense):
        ys, xs = np.nonzero(mask)
        assert ys.min() >= r0[k] and ys.max() < r1[k] and xs.min() >= c0[k] and xs.max() < c1[k]
    assert (result.boxes[:, 2:] >= 0).all()


def test_box_pixel_ranges_rule():
    boxes = np.array([[0.0, 0.0, 10.0, 5.0], [2.5, 1.2, 7.5, 3.0], [3.0, 3.0, 3.0, 9.0]])
    ranges = fastsam_masks.box_pixel_ranges(boxes, (8, 12))
    # pixel c is inside when x1 <= c < x2; clipped to the image; empty boxes stay empty
    np.testing.assert_array_equal(ranges, [[0, 5, 0, 10], [2, 3, 3, 8], [3, 8, 3, 3]])


def test_border_adjustment():
    boxes = np.array([[10, 15, 200, 100], [30, 30, 290, 185], [5, 2, 299, 199]], np.float32)
    out = fp.adjust_boxes_to_border(boxes, (200, 300))
    np.testing.assert_array_equal(out[0], [0, 0, 200, 100])  # x1, y1 within 20 px: snapped
    np.testing.assert_array_equal(out[1], [30, 30, 300, 200])  # x2, y2 snapped
    np.testing.assert_array_equal(out[2], [0, 0, 300, 200])  # ~ the whole image: it
    np.testing.assert_array_equal(boxes[0], [10, 15, 200, 100])  # input untouched


def test_bad_outputs_are_clear_errors():
    geom = fp.letterbox_geometry((100, 100), 320)
    with pytest.raises(OmamaError, match="one image each"):
        fp.postprocess(np.zeros((2, 37, 10)), np.zeros((2, 32, 8, 8)), geom)
    with pytest.raises(OmamaError, match=r"expected \(37, anchors\) or \(detections, 38\)"):
        fp.postprocess(np.zeros((1, 20, 10)), np.zeros((1, 32, 80, 80)), geom)
    with pytest.raises(OmamaError, match="uint8 RGB"):
        fp.letterbox(np.zeros((10, 10), np.uint8))
    empty = fp.postprocess(np.zeros((1, 37, 50), np.float32), np.zeros((1, 32, 80, 80)), geom)
    assert len(empty) == 0 and empty.masks().shape == (0, 100, 100)
    assert empty.boxes.shape == (0, 4)


def test_nms_thresholds_respect_nms_baked_into_the_graph():
    from runtime.manifest import FastSAMSpec

    runtime_nms = FastSAMSpec(included=True, conf=0.4, iou=0.9, max_det=300, nms_in_graph=False)
    assert fp.nms_thresholds(runtime_nms) == (0.4, 0.9, 300)
    assert fp.nms_thresholds(runtime_nms, conf=0.1, iou=0.5) == (0.1, 0.5, 300)
    in_graph = dataclasses.replace(runtime_nms, nms_in_graph=True)
    assert fp.nms_thresholds(in_graph) == (0.4, 0.9, 300)
    assert fp.nms_thresholds(in_graph, conf=0.55, iou=0.9) == (0.55, 0.9, 300)  # raise: fine
    with pytest.raises(OmamaError, match=r"conf 0.1 cannot be applied.*--fastsam-nms runtime"):
        fp.nms_thresholds(in_graph, conf=0.1)
    with pytest.raises(OmamaError, match=r"iou 0.7 cannot be applied: .*conf 0.4 and iou 0.9"):
        fp.nms_thresholds(in_graph, iou=0.7)
    with pytest.raises(OmamaError, match=r"conf must lie in \[0, 1\)"):
        fp.nms_thresholds(runtime_nms, conf=1.5)


def test_in_graph_nms_file_gives_the_runtime_nms_candidates_even_on_exact_ties(tmp_path):
    """The random YOLOv8n-seg stand-in scores every anchor of a level alike (its class
    bias): at conf 0, max_det 300 cuts inside a level of 400 exactly tied anchors. ONNX
    Runtime keeps ties in anchor order, as the runtime's NMS does: the same 300 candidates
    from the in-graph file as from the raw file post-processed by the runtime."""
    pytest.importorskip("torch")
    from export.fastsam import (
        NmsSettings,
        build_standin_fastsam,
        export_fastsam_onnx,
        nms_graph_params,
    )
    from runtime.sessions import OrtSession

    weights = build_standin_fastsam(tmp_path / "standin.pt", seed=1)
    nms = NmsSettings(conf=0.0, iou=IOU, max_det=300)
    graph, _ = export_fastsam_onnx(weights, tmp_path / "graph", IMGSZ, nms=nms)
    raw, _ = export_fastsam_onnx(weights, tmp_path / "raw", IMGSZ)
    assert nms_graph_params(graph) == NmsSettings(0.0, np.float32(IOU).item(), 300)
    image = _image((240, 320), seed=3)
    results = []
    for path in (graph, raw):
        with OrtSession(path, threads=1) as session:
            results.append(fp.segment_everything(session, image, IMGSZ, 0.0, IOU, 300))
    in_graph, runtime = results
    # 300 kept: 100 coarse anchors, then 200 of 400 tied; those whose box lies in the
    # letterbox padding have empty masks and are dropped by both.
    assert len(in_graph) == len(runtime) > 150
    assert len(np.unique(runtime.scores)) == 2
    np.testing.assert_array_equal(in_graph.masks(), runtime.masks())
    np.testing.assert_allclose(in_graph.boxes, runtime.boxes, atol=1e-3, rtol=0)
    np.testing.assert_allclose(in_graph.scores, runtime.scores, atol=1e-6, rtol=0)
