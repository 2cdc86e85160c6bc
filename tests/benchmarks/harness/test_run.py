"""``omama bench`` end to end on a small random-init export (CPU): measured rows,
unavailable rows, fidelity against torch fp32, the official metrics, methods and machine."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from benchmarks.harness.stats import END_TO_END
from runtime.pipeline import STAGES
from tests.benchmarks.helpers import OBJECTS, PAIRS, REPEATS, row_of


def test_bench_writes_three_files_with_measured_rows(bench):
    code, stdout, stderr, out, report = bench
    assert code == 0, stderr
    assert (out / "report.md").is_file() and (out / "report.json").is_file()
    assert (out / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    labels = [r["label"] for r in report["rows"]]
    assert labels == [
        f"{b} {p}" for b in ("torch", "onnxruntime", "tensorrt") for p in ("fp32", "fp16")
    ] + ["reference"]
    for label in ("torch fp32", "onnxruntime fp32", "reference"):
        row = row_of(report, label)
        assert row["status"] == "ok", (row.get("reason"), row.get("log_tail"))
        samples = row["samples_ms"]
        passes = 1 if label == "reference" else REPEATS  # --reference-repeats defaults to 1
        assert all(len(samples[s]) == PAIRS * passes for s in (*STAGES, END_TO_END))
        for stage in (*STAGES, END_TO_END):
            stats = row["stages"][stage]
            assert stats["mean_ms"] == pytest.approx(np.mean(samples[stage]))
            assert stats["p50_ms"] <= stats["p90_ms"] <= stats["p99_ms"] <= stats["max_ms"]
        # The pair's clock encloses the stage clocks of that pair.
        stage_sums = np.sum([samples[s] for s in STAGES], axis=0)
        assert np.all(np.asarray(samples[END_TO_END]) >= stage_sums - 1e-6)
        for stage in ("fastsam", "backbone_src", "backbone_dst", "matcher"):
            assert row["stages"][stage]["mean_ms"] > 0, (label, stage)  # the stage was clocked
        e2e = row["stages"][END_TO_END]["mean_ms"]
        assert row["pairs_per_s"] == pytest.approx(1000.0 / e2e)
        assert row["object_matches_per_s"] == pytest.approx(OBJECTS * 1000.0 / e2e)
        assert row["candidates"]["source"] == "fastsam"  # auto: the artifacts hold FastSAM
        assert row["candidates"]["mean"] > 0  # the lowered FastSAM threshold finds some
        assert row["memory"]["peak_host_rss_mb"] > 50
        assert row["size_mb"] > 0
    torch_row, reference = row_of(report, "torch fp32"), row_of(report, "reference")
    assert reference["speedup_vs_reference"] == pytest.approx(1.0)
    assert torch_row["speedup_vs_reference"] == pytest.approx(
        reference["stages"][END_TO_END]["mean_ms"] / torch_row["stages"][END_TO_END]["mean_ms"]
    )
    config = report["config"]
    assert (config["num_pairs"], config["objects_per_frame"]) == (PAIRS, OBJECTS)
    assert config["candidate_source"] == "fastsam" and config["score_frames"] == 1
    assert "torch fp32" in stdout and "onnxruntime fp32" in stdout and "report.md" in stdout


def test_unavailable_rows_name_their_reason(bench):
    report = bench[4]
    trt_missing = importlib.util.find_spec("tensorrt") is None
    for precision in ("fp32", "fp16"):
        row = row_of(report, f"tensorrt {precision}")
        assert row["status"] == "unavailable"
        assert ("TensorRT not installed" if trt_missing else "GPU") in row["reason"]
    fp16 = row_of(report, "onnxruntime fp16")
    assert fp16["status"] == "unavailable" and "export with --fp16" in fp16["reason"]
    assert "fp32 reference" in row_of(report, "torch fp16")["reason"]
    md = (bench[3] / "report.md").read_text()
    assert f"tensorrt fp32: unavailable: {row_of(report, 'tensorrt fp32')['reason']}" in md


def test_fidelity_against_torch_fp32(bench):
    report = bench[4]
    assert report["fidelity_reference"] == "torch fp32"
    itself = row_of(report, "torch fp32")["fidelity"]
    assert itself["argmax_agreement_pct"] == 100.0 and itself["max_abs_similarity_error"] == 0.0
    assert itself["mean_mask_iou"] == 1.0
    assert itself["objects"] == PAIRS * OBJECTS
    ort = row_of(report, "onnxruntime fp32")["fidelity"]
    assert ort["argmax_agreement_pct"] == 100.0
    assert ort["max_abs_similarity_error"] < 1e-4
    assert ort["mean_mask_iou"] > 0.9
    # The per-mask loop and the separable pooling give the same similarities.
    loop = row_of(report, "reference")["fidelity"]
    assert loop["argmax_agreement_pct"] == 100.0 and loop["max_abs_similarity_error"] < 1e-4


def test_score_root_adds_the_official_iou_per_backend(bench):
    report = bench[4]
    torch_score = row_of(report, "torch fp32")["score"]
    ort_score = row_of(report, "onnxruntime fp32")["score"]
    for score in (torch_score, ort_score):
        assert score["takes"] == 1 and score["observations"] > 0 and score["protocol"] == "omama"
        assert score["frames_per_take"] == 1
        assert 0.0 <= score["iou"] <= 1.0
    assert ort_score["iou"] == pytest.approx(torch_score["iou"], abs=0.05)
    assert "score" not in row_of(report, "reference")
    md = (bench[3] / "report.md").read_text()
    assert "Official metrics on the GT" in md and f"{torch_score['iou']:.4f}" in md


def test_report_states_method_and_environment(bench):
    report, md = bench[4], (bench[3] / "report.md").read_text()
    assert "perf_counter" in report["timing_method"] and "perf_counter" in md
    assert "ru_maxrss" in report["memory_method"]
    env = report["environment"]
    assert env["cpu_count"] >= 1 and env["versions"]["onnxruntime"]
    assert "revision" in env["omama_git"] and "gpus" in env and "cuda_driver" in env
    for heading in (
        "## Summary",
        "## Mean latency per stage (ms)",
        "### FastSAM",
        "### end to end",
        "### Candidates",
        "## Methods",
        "## Environment",
    ):
        assert heading in md
    e2e = row_of(report, "onnxruntime fp32")["stages"][END_TO_END]["mean_ms"]
    assert f"{e2e:,.1f}" in md
    assert f"{PAIRS} frame pairs x {OBJECTS} objects" in md
