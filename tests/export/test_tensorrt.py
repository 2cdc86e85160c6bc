"""TensorRT: optimisation profiles, why engines are skipped, the per-output comparison of two
sessions, and (with TensorRT and a CUDA GPU) engines built and compared with their ONNX graphs."""

from __future__ import annotations

import numpy as np
import pytest

from export.graphs import onnxruntime_cpu
from export.tensorrt import (
    PROFILE_CANDIDATES,
    comparison_tolerances,
    dynamic_profile,
    skipped_engines,
    tensorrt_status,
)
from export.verify.matcher import MatcherParity, ViewGeometry
from runtime.errors import OmamaError
from runtime.manifest import TensorSpec, load_manifest
from runtime.sessions import OrtSession, select_backend
from tests.tiny_model import reference


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


def test_skipped_engines_say_why():
    assert skipped_engines(fp16=False, engines=True).note.startswith("engines: not requested")
    assert skipped_engines(fp16=True, engines=False).note == "engines: skipped (--no-engines)"
    usable, reason = tensorrt_status()
    if usable:
        assert skipped_engines(fp16=True, engines=True) is None
    else:
        record = skipped_engines(fp16=True, engines=True)
        assert record.built is False and record.reason == reason and reason in record.note


def test_tensorrt_status_says_why_not():
    usable, reason = tensorrt_status()
    if usable:
        pytest.skip(f"TensorRT usable here ({reason})")
    assert "TensorRT" in reason and ("not installed" in reason or "no CUDA GPU" in reason)


def _needs_tensorrt():
    usable, reason = tensorrt_status()
    if not usable:
        pytest.skip(f"TensorRT engine build needs TensorRT and a CUDA GPU: {reason}")


def test_tensorrt_engines_build_and_match(exo2ego, tmp_path):
    _needs_tensorrt()
    from export.graphs import io_specs
    from export.tensorrt import build_engine, compare_sessions
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
            feeds = parity.fixed_feeds()
            with onnxruntime_cpu(out / "matcher.onnx", threads=1) as onnx_session:
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


def test_comparison_tolerances_leave_out_tie_ordered_detection_rows():
    """With NMS in the graph, FastSAM's detection rows are compared by the parity run (they
    may swap on a tie); only the prototypes are compared element-wise."""
    assert comparison_tolerances("fastsam", fastsam_nms_in_graph=True) == {"output1": 0.02}
    assert set(comparison_tolerances("fastsam")) == {"output0", "output1"}
    assert comparison_tolerances("matcher") == {"similarities": 5e-3}
    assert list(comparison_tolerances("backbone_ego")) == ["feats"]


def test_compare_sessions_reports_each_output(tiny_onnx):
    from export.tensorrt import compare_sessions

    class Shifted:
        """Another backend's results: ``y`` off by ``shift``, ``total`` exact."""

        def __init__(self, session, shift):
            self.session, self.shift = session, shift

        def infer(self, feeds):
            out = self.session.infer(feeds)
            return {**out, "y": out["y"] + self.shift}

    rng = np.random.default_rng(3)
    feeds = [{"x": rng.standard_normal((n, 3)).astype(np.float32)} for n in (1, 4)]
    with OrtSession(tiny_onnx) as ort_session:
        peak = max(float(np.abs(reference(f["x"])["y"]).max()) for f in feeds)
        same = compare_sessions(ort_session, ort_session, feeds, {"y": 1e-6, "total": 1e-6})
        assert same["y"]["max_abs_err"] == 0.0 and same["y"]["passed"]
        assert same["y"]["allowed"] == pytest.approx(1e-6 * max(1.0, peak), rel=1e-5)
        assert same["total"]["passed"]
        off = compare_sessions(Shifted(ort_session, 0.5), ort_session, feeds, {"y": 1e-3})
        assert set(off) == {"y"} and not off["y"]["passed"]
        assert off["y"]["max_abs_err"] == pytest.approx(0.5)
        assert off["y"]["allowed"] == pytest.approx(1e-3 * max(1.0, peak), rel=1e-5)
        broken = compare_sessions(Shifted(ort_session, np.nan), ort_session, feeds, {"y": 1.0})
        assert np.isnan(broken["y"]["max_abs_err"]) and not broken["y"]["passed"]
