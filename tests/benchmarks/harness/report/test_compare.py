"""``omama bench --compare``: ratios between two reports, also of reports kept in
benchmarks/results (written before the config keys were renamed)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from benchmarks.harness.report.compare import compare_reports, format_comparison
from benchmarks.harness.report.files import load_report
from benchmarks.harness.stats import END_TO_END
from runtime.errors import OmamaError
from runtime.pipeline import STAGES
from tests.benchmarks.helpers import row_of, run_cli

KEPT_REPORT = Path(__file__).resolve().parents[4] / "benchmarks/results/omama_bench_cpu"


def test_compare_prints_ratios(bench, tmp_path):
    a_path = bench[3] / "report.json"
    slower = copy.deepcopy(bench[4])
    row = row_of(slower, "onnxruntime fp32")
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
    code, stdout, stderr = run_cli(["bench", "--compare", str(a_path), str(b_path)])
    assert code == 0, stderr
    assert stdout == format_comparison(comparison) + "\n"
    ort_lines = [line for line in stdout.splitlines() if line.startswith("onnxruntime fp32")]
    assert len(ort_lines) == len(STAGES) + 2
    assert all(line.endswith("2.00x") for line in ort_lines[:-1])
    assert ort_lines[-1].endswith("0.50x")  # pairs/s halved


def test_kept_report_still_compares(bench):
    kept = load_report(KEPT_REPORT)  # the folder: its report.json
    assert kept["config"].get("pairs") is not None  # the old key, not num_pairs
    comparison = compare_reports(kept, bench[4])
    assert {r["label"] for r in comparison["rows"]} >= {"torch fp32", "onnxruntime fp32"}
    for row in comparison["rows"]:
        ratio = row["stages"][END_TO_END]["ratio"]
        assert ratio == pytest.approx(
            row["stages"][END_TO_END]["b_ms"] / row["stages"][END_TO_END]["a_ms"]
        )
    assert "B/A below 1" in format_comparison(comparison)


def test_load_report_refuses_other_json(tmp_path):
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(OmamaError, match="is not an omama bench report"):
        load_report(other)
    with pytest.raises(OmamaError, match="not found"):
        load_report(tmp_path / "missing.json")
