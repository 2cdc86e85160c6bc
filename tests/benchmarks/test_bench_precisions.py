"""``omama bench`` rows of the CPU precisions: ``onnxruntime int8`` and ``openvino fp32 | bf16
| int8`` measured with the same latency and fidelity columns as every row, the rows a
backend cannot run reported with the reason, and int8 rows of a folder without int8 files
pointing at ``omama export --int8``.

The run: the shared small export (conftest.py) plus NNCF int8 backbones
(``tests.runtime.sessions.int8_copy``), 1 pair x 2 objects, one timed pass, CPU.
"""

from __future__ import annotations

import json

import pytest

from benchmarks.harness.plan import BenchConfig, plan_rows
from benchmarks.harness.stats import END_TO_END
from runtime.manifest import load_manifest
from tests.benchmarks.helpers import row_of, run_cli

pytest.importorskip("openvino", reason="openvino not installed (pip install 'omama[openvino]')")
pytest.importorskip("nncf", reason="the int8 copy is made with nncf (the export extra)")

PRECISIONS = ("fp32", "bf16", "int8")


def _bf16_here() -> bool:
    from runtime.sessions import bf16_unsupported

    return bf16_unsupported() is None


@pytest.fixture(scope="module")
def int8_artifacts(artifacts, tmp_path_factory):
    from tests.runtime.sessions.int8_copy import int8_copy

    return int8_copy(artifacts, tmp_path_factory.mktemp("bench_int8") / "artifacts")


@pytest.fixture(scope="module")
def report(int8_artifacts, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_precisions")
    argv = ["bench", "--artifacts", str(int8_artifacts), "--backends", "onnxruntime,openvino",
            "--precisions", ",".join(PRECISIONS), "--device", "cpu", "--num-pairs", "1",
            "--objects-per-frame", "2", "--repeats", "1", "--warmup", "0", "--threads", "1",
            "--no-reference", "--out", str(out)]  # fmt: skip
    code, stdout, stderr = run_cli(argv)
    assert code == 0, stderr
    return json.loads((out / "report.json").read_text()), stdout


def test_cpu_precision_rows_are_measured_with_fidelity(report):
    report, stdout = report
    assert [r["label"] for r in report["rows"]] == [
        f"{b} {p}" for b in ("onnxruntime", "openvino") for p in PRECISIONS
    ]
    assert report["fidelity_reference"] == "torch fp32"
    measured = ["onnxruntime fp32", "onnxruntime int8", "openvino fp32", "openvino int8"]
    measured += ["openvino bf16"] if _bf16_here() else []
    for label in measured:
        row = row_of(report, label)
        assert row["status"] == "ok", (label, row.get("reason"), row.get("log_tail"))
        assert row["stages"][END_TO_END]["mean_ms"] > 0 and row["size_mb"] > 0
        fidelity = row["fidelity"]
        assert fidelity["objects"] == 2 and fidelity["argmax_agreement_pct"] == 100.0
        # fp32 within float rounding of torch; bf16 and int8 measurably off, but close.
        error = fidelity["max_abs_similarity_error"]
        assert error < 1e-4 if label.endswith("fp32") else 1e-4 < error < 5e-2, (label, error)
        assert label in stdout
    # int8 rows run smaller files: the int8 backbones, the matcher and FastSAM in float.
    assert row_of(report, "openvino int8")["size_mb"] < row_of(report, "openvino fp32")["size_mb"]
    refused = row_of(report, "onnxruntime bf16")
    assert refused["status"] == "unavailable"
    assert refused["reason"].startswith(
        "backend onnxruntime does not run bf16: use --backend openvino"
    )


def test_int8_rows_of_a_folder_without_int8_files_say_how_to_make_them(artifacts):
    config = BenchConfig(artifacts=artifacts, backends=["onnxruntime", "openvino", "tensorrt"],
                         precisions=["int8"], reference=False)  # fmt: skip
    rows = {p.label: p for p in plan_rows(config, load_manifest(artifacts), "cpu")}
    for label in ("onnxruntime int8", "openvino int8"):
        assert rows[label].reason == (
            "no int8 ONNX file for backbone_exo, backbone_ego, matcher, fastsam in the "
            "artifacts (export with --int8)"
        )
    assert rows["tensorrt int8"].reason  # no GPU here, or no int8 engines


def test_a_bf16_row_on_a_cpu_without_bfloat16_units_says_so(artifacts, monkeypatch):
    import runtime.sessions

    monkeypatch.setattr(runtime.sessions, "bf16_unsupported", lambda: "this CPU (Old) has none")
    config = BenchConfig(artifacts=artifacts, backends=["openvino"], precisions=["fp32", "bf16"],
                         reference=False)  # fmt: skip
    rows = {p.label: p for p in plan_rows(config, load_manifest(artifacts), "cpu")}
    assert rows["openvino fp32"].reason is None
    assert rows["openvino bf16"].reason == "this CPU (Old) has none"
