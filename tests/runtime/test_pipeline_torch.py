"""The pipeline on the torch backend: its modules rebuilt from the manifest equal the ONNX
files, and its answers equal ONNX Runtime's."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

from runtime.candidates import Candidates  # noqa: E402
from runtime.errors import OmamaError  # noqa: E402
from runtime.pipeline import Pipeline  # noqa: E402
from runtime.sessions import ModelRef, OrtSession  # noqa: E402


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
        OmamaError, match=r"matcher.safetensors \(sha256 .*not found in .*--weights-dir DIR"
    ):
        build_artifact_module(manifest, entry, [tmp_path])
    fake = tmp_path / "matcher.safetensors"
    fake.write_bytes(b"other weights")
    with pytest.raises(OmamaError, match="has another sha256"):
        build_artifact_module(manifest, entry, [tmp_path])
    ref = ModelRef(manifest, entry, (assets.weights_dir,))
    assert ref.entry.model == "matcher"
