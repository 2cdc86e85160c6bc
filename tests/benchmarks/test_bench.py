"""``omama bench``: reports from a real run on a small random-init export (CPU), fidelity,
unavailable rows, GT metrics, ``--compare``, errors; and the harness's pure parts.

One export (ViT-S/14 with one block, exo 126x224 / ego 70x70 px, FastSAM stand-in at
128 px, fp32 only) and one bench run (2 pairs x 2 objects, 2 timed passes, one synthetic
take as GT) are shared by the tests of this module.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib.util
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.harness import (
    END_TO_END,
    STAGES,
    assemble_blocks,
    fidelity,
    latency_stats,
    mask_iou,
    parse_list,
    synthetic_pairs,
    throughput,
)
from benchmarks.report import compare_reports, format_comparison, load_report
from runtime.clikit import new_app, run_app
from runtime.errors import OmamaError

PAIRS, OBJECTS, REPEATS = 2, 2, 2
GRIDS = {"exo": (9, 16), "ego": (5, 5)}  # exo 126x224 px: the small synthetic takes' shape


def _run_cli(argv: list[str]) -> tuple[int, str, str]:
    from benchmarks.cli import register

    app = new_app("test")
    register(app)
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = run_app(app, argv)
    return code, stdout.getvalue(), stderr.getvalue()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    import torch

    from export.pipeline import ExportConfig, export_artifacts
    from omama_train.models.backbones import BACKBONES

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("bench_export") / "artifacts"
    small = dataclasses.replace(BACKBONES["dinov2_vits14_reg"], timm_overrides={"depth": 1})
    config = ExportConfig(
        out_dir=out,
        backbone=small,
        random_init=True,
        random_grids=dict(GRIDS),
        direction="exo2ego",
        fastsam_imgsz=128,
        matcher_input="weights",
        parity_sets=3,
        parity_large_n=40,
    )
    export_artifacts(config, echo=lambda line: None, progress=False)
    return out


@pytest.fixture(scope="module")
def gt_root(tmp_path_factory) -> Path:
    """One small synthetic take (test split), prepared."""
    from omama_train.data.prepare import prepare
    from omama_train.data.synth import synthesize

    base = tmp_path_factory.mktemp("bench_synth")
    synthesize(base / "raw", 1, small=True, seed=0, frames=4, annotate_every=3)
    root = base / "root"
    prepare(base / "raw/annotations/relations_test.json", base / "raw/takes", root, progress=False)
    return root


@pytest.fixture(scope="module")
def bench(artifacts, gt_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_out")
    argv = [
        "bench",
        "--artifacts",
        str(artifacts),
        "--device",
        "cpu",
        "--pairs",
        str(PAIRS),
        "--objects-per-frame",
        str(OBJECTS),
        "--repeats",
        str(REPEATS),
        "--warmup",
        "1",
        "--threads",
        "1",
        "--out",
        str(out),
        "--gt",
        str(gt_root),
        "--gt-frames",
        "1",
    ]
    code, stdout, stderr = _run_cli(argv)
    report = json.loads((out / "report.json").read_text()) if code == 0 else None
    return code, stdout, stderr, out, report


def _row(report: dict, label: str) -> dict:
    return next(r for r in report["rows"] if r["label"] == label)


# ----------------------------------------------------------------------------- the run


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
        row = _row(report, label)
        assert row["status"] == "ok", row
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
            assert row["stages"][stage]["mean_ms"] > 0, (label, stage)
        e2e = row["stages"][END_TO_END]["mean_ms"]
        assert row["pairs_per_s"] == pytest.approx(1000.0 / e2e)
        assert row["object_matches_per_s"] == pytest.approx(OBJECTS * 1000.0 / e2e)
        assert row["candidates"]["mean"] > 0  # the lowered FastSAM threshold finds some
        assert row["memory"]["peak_host_rss_mb"] > 50
        assert row["size_mb"] > 0
    torch_row, reference = _row(report, "torch fp32"), _row(report, "reference")
    assert reference["speedup_vs_reference"] == pytest.approx(1.0)
    assert torch_row["speedup_vs_reference"] == pytest.approx(
        reference["stages"][END_TO_END]["mean_ms"] / torch_row["stages"][END_TO_END]["mean_ms"]
    )
    # The reference recomputes FastSAM and the backbones for each of the K objects.
    for stage in ("fastsam", "backbone_dst"):
        assert reference["stages"][stage]["mean_ms"] > torch_row["stages"][stage]["mean_ms"]
    assert "torch fp32" in stdout and "onnxruntime fp32" in stdout and "report.md" in stdout


def test_unavailable_rows_name_their_reason(bench):
    report = bench[4]
    trt_missing = importlib.util.find_spec("tensorrt") is None
    for precision in ("fp32", "fp16"):
        row = _row(report, f"tensorrt {precision}")
        assert row["status"] == "unavailable"
        assert ("TensorRT not installed" if trt_missing else "GPU") in row["reason"]
    fp16 = _row(report, "onnxruntime fp16")
    assert fp16["status"] == "unavailable" and "export with --fp16" in fp16["reason"]
    assert "fp32 reference" in _row(report, "torch fp16")["reason"]
    md = (bench[3] / "report.md").read_text()
    assert f"tensorrt fp32: unavailable: {_row(report, 'tensorrt fp32')['reason']}" in md


def test_fidelity_against_torch_fp32(bench):
    report = bench[4]
    assert report["fidelity_reference"] == "torch fp32"
    itself = _row(report, "torch fp32")["fidelity"]
    assert itself["argmax_agreement_pct"] == 100.0 and itself["max_abs_similarity_error"] == 0.0
    assert itself["mean_mask_iou"] == 1.0 and itself["objects"] == PAIRS * OBJECTS
    ort = _row(report, "onnxruntime fp32")["fidelity"]
    assert ort["argmax_agreement_pct"] == 100.0
    assert ort["max_abs_similarity_error"] < 1e-4
    assert ort["mean_mask_iou"] > 0.9
    # The per-mask loop and the separable pooling give the same similarities.
    loop = _row(report, "reference")["fidelity"]
    assert loop["argmax_agreement_pct"] == 100.0 and loop["max_abs_similarity_error"] < 1e-4


def test_gt_adds_the_official_iou_per_backend(bench):
    report = bench[4]
    torch_gt, ort_gt = _row(report, "torch fp32")["gt"], _row(report, "onnxruntime fp32")["gt"]
    for gt in (torch_gt, ort_gt):
        assert gt["takes"] == 1 and gt["observations"] > 0 and gt["protocol"] == "omama"
        assert 0.0 <= gt["iou"] <= 1.0
    assert ort_gt["iou"] == pytest.approx(torch_gt["iou"], abs=0.05)
    assert "gt" not in _row(report, "reference")
    md = (bench[3] / "report.md").read_text()
    assert "Official metrics on the GT" in md and f"{torch_gt['iou']:.4f}" in md


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
        "## Methods",
        "## Environment",
    ):
        assert heading in md
    e2e = _row(report, "onnxruntime fp32")["stages"][END_TO_END]["mean_ms"]
    assert f"{e2e:,.1f}" in md


def test_compare_prints_ratios(bench, tmp_path):
    a_path = bench[3] / "report.json"
    slower = copy.deepcopy(bench[4])
    row = _row(slower, "onnxruntime fp32")
    for stats in row["stages"].values():
        stats["mean_ms"] *= 2
    row["pairs_per_s"] /= 2
    slower["rows"] = [r for r in slower["rows"] if r["label"] != "reference"]
    b_path = tmp_path / "b.json"
    b_path.write_text(json.dumps(slower))
    comparison = compare_reports(load_report(a_path), load_report(b_path))
    by_label = {r["label"]: r for r in comparison["rows"]}
    assert by_label["onnxruntime fp32"]["stages"]["matcher"]["ratio"] == pytest.approx(2.0)
    assert by_label["torch fp32"]["stages"][END_TO_END]["ratio"] == pytest.approx(1.0)
    assert comparison["only_a"] == ["reference"]
    code, stdout, stderr = _run_cli(["bench", "--compare", str(a_path), str(b_path)])
    assert code == 0, stderr
    assert stdout == format_comparison(comparison) + "\n"
    ort_lines = [line for line in stdout.splitlines() if line.startswith("onnxruntime fp32")]
    assert len(ort_lines) == len(STAGES) + 2
    assert all(line.endswith("2.00x") for line in ort_lines[:-1])
    assert ort_lines[-1].endswith("0.50x")  # pairs/s halved


# ----------------------------------------------------------------------------- errors


def _one_error_line(code: int, stderr: str) -> str:
    assert code == 1
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


def test_bad_artifacts_folder_is_one_line(tmp_path, artifacts):
    missing = tmp_path / "nowhere"
    line = _one_error_line(
        *_run_cli(["bench", "--artifacts", str(missing), "--out", str(tmp_path / "o")])[::2]
    )
    assert str(missing) in line
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "manifest.json").write_bytes((artifacts / "manifest.json").read_bytes())
    code, _, stderr = _run_cli(["bench", "--artifacts", str(partial), "--out", str(tmp_path / "o")])
    line = _one_error_line(code, stderr)
    assert "does not match its manifest" in line and "backbone_exo.onnx is missing" in line
    line = _one_error_line(*_run_cli(["bench", "--compare", str(missing), str(missing)])[::2])
    assert "does not exist" in line
    line = _one_error_line(*_run_cli(["bench", "--backends", "onnx"])[::2])
    assert "--artifacts" in line
    line = _one_error_line(
        *_run_cli(["bench", "--artifacts", str(artifacts), "--backends", "onnx"])[::2]
    )
    assert "--backends must be among" in line


def test_cli_module_loads_no_torch():
    code = (
        "import sys\n"
        "from runtime.clikit import new_app\n"
        "from typer.testing import CliRunner\n"
        "from benchmarks.cli import register\n"
        "app = new_app('t'); register(app)\n"
        "r = CliRunner().invoke(app, ['bench', '--help'])\n"
        "assert r.exit_code == 0 and 'Example:' in r.output, r.output\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'ultralytics')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


# ----------------------------------------------------------------------------- pure parts


def test_latency_stats_and_throughput():
    samples = [4.0, 1.0, 3.0, 2.0]
    stats = latency_stats(samples)
    assert stats["n"] == 4 and stats["mean_ms"] == 2.5 and stats["p50_ms"] == 2.5
    assert stats["p90_ms"] == pytest.approx(np.percentile(samples, 90))
    assert stats["p99_ms"] == pytest.approx(3.97) and stats["max_ms"] == 4.0
    assert stats["std_ms"] == pytest.approx(np.std(samples, ddof=1))
    assert latency_stats([])["mean_ms"] is None
    assert throughput(250.0, 3) == {"pairs_per_s": 4.0, "object_matches_per_s": 12.0}
    assert throughput(None, 3)["pairs_per_s"] is None


def test_assemble_blocks_tiles_profile_limited_calls():
    full = np.arange(15, dtype=np.float32).reshape(3, 5)
    blocks = [
        full[0:2, 0:2],
        full[0:2, 2:4],
        full[0:2, 4:5],
        full[2:3, 0:2],
        full[2:3, 2:4],
        full[2:3, 4:5],
    ]
    assert np.array_equal(assemble_blocks(blocks, 3, 5), full)
    assert np.array_equal(assemble_blocks([full], 3, 5), full)
    with pytest.raises(OmamaError, match="only part"):
        assemble_blocks(blocks[:4], 3, 5)
    with pytest.raises(OmamaError, match="do not tile"):
        assemble_blocks([full, full], 3, 5)


def test_mask_iou_and_fidelity():
    a = np.zeros((4, 4), np.uint8)
    b = a.copy()
    assert mask_iou(a, b) == 1.0  # two empty masks
    a[:2, :2], b[:2, :] = 1, 1
    assert mask_iou(a, b) == 0.5
    choice = np.array([[0, 1], [2, 2]])
    sims = np.linspace(-1, 1, 2 * 2 * 3).reshape(2, 2, 3)
    masks = np.stack([np.stack([a, b])] * 2)
    same = fidelity(choice, choice, sims, sims, masks, masks)
    assert same == {
        "objects": 4,
        "argmax_agreement_pct": 100.0,
        "max_abs_similarity_error": 0.0,
        "mean_mask_iou": 1.0,
        "min_mask_iou": 1.0,
    }
    other = choice.copy()
    other[1, 0] = 0
    moved = masks.copy()
    moved[0, 0] = b
    result = fidelity(other, choice, sims + 0.25, sims, moved, masks)
    assert result["argmax_agreement_pct"] == 75.0
    assert result["max_abs_similarity_error"] == pytest.approx(0.25)
    assert result["mean_mask_iou"] == pytest.approx((0.5 + 3) / 4) and result["min_mask_iou"] == 0.5
    with pytest.raises(OmamaError, match="differ in shape"):
        fidelity(choice, choice[:1], sims, sims, masks, masks)


def test_synthetic_pairs_are_deterministic_and_consistent():
    first = synthetic_pairs((30, 50), (40, 40), pairs=2, objects=3, candidates=8, seed=5)
    again = synthetic_pairs((30, 50), (40, 40), pairs=2, objects=3, candidates=8, seed=5)
    for pair, twin in zip(first, again, strict=True):
        assert np.array_equal(pair.src_rgb, twin.src_rgb)
        assert np.array_equal(pair.candidates.masks, twin.candidates.masks)
        assert pair.src_rgb.shape == (30, 50, 3) and pair.dst_rgb.shape == (40, 40, 3)
        assert len(pair.queries) == 3 and all(q.shape == (30, 50) and q.any() for q in pair.queries)
        assert len(pair.candidates) == 8 and pair.candidates.size_hw == (40, 40)
        for k in range(3):
            assert np.array_equal(pair.candidates.masks[pair.target_index[k]], pair.targets[k])
        union = np.sum(pair.queries, axis=0)
        assert union.max() == 1  # objects do not overlap
    other = synthetic_pairs((30, 50), (40, 40), pairs=1, objects=3, candidates=8, seed=6)
    assert not np.array_equal(other[0].dst_rgb, first[0].dst_rgb)


def test_parse_list():
    assert parse_list("torch, onnxruntime,torch", ("torch", "onnxruntime"), "--b") == [
        "torch",
        "onnxruntime",
    ]
    with pytest.raises(OmamaError, match="--b must be among"):
        parse_list("tensorrt", ("torch",), "--b")
    with pytest.raises(OmamaError, match="at least one"):
        parse_list(" , ", ("torch",), "--b")


def test_bench_pair_k1_ceiling_is_the_reference_over_the_two_backbone_passes():
    from benchmarks.bench_pair import k1_ceiling

    stages = {"backbone_src": 9_000.0, "backbone_dst": 11_000.0, "fastsam": 2_000.0}
    ours = {"onnxruntime": {1: {"stages_ms": stages}, 8: {"stages_ms": {}}}}
    row = k1_ceiling(ours, 28_000.0)["onnxruntime"]
    assert row["backbones_ms"] == 20_000.0
    assert row["max_speedup"] == pytest.approx(1.4)
    assert row["backbone_share_of_reference"] == pytest.approx(20 / 28)
