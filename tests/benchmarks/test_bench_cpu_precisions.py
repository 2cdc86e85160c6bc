"""``benchmarks.bench_cpu_precisions``: its engine names, the rows and target it composes from
measured numbers, and the printed report (no timing here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.bench_cpu_precisions import (
    Engine,
    compose,
    export_argv,
    format_report,
    parse_engine,
    verdict,
)
from runtime.errors import OmamaError


def test_engine_names_parse_into_backend_precision_and_the_float_layers_arithmetic():
    assert parse_engine("onnxruntime:fp32") == Engine("onnxruntime", "fp32")
    engine = parse_engine("openvino:int8+bf16")
    assert engine == Engine("openvino", "int8", "bf16")
    assert (engine.label, engine.spec) == ("openvino int8+bf16", "openvino:int8+bf16")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("openvino", "expected BACKEND:PRECISION"),
        ("onnx:fp32", "expected BACKEND:PRECISION"),
        ("openvino:int4", "precision must be one of fp32, fp16, bf16, int8"),
        ("onnxruntime:int8+bf16", r"openvino:int8\+bf16 only"),
        ("openvino:fp32+bf16", r"openvino:int8\+bf16 only"),
    ],
)
def test_a_bad_engine_name_is_one_clear_error(text, message):
    with pytest.raises(OmamaError, match=message):
        parse_engine(text)


def test_the_export_is_the_official_random_structure_with_int8_and_fp16_files():
    argv = export_argv("outlier", Path("/w/a"))
    joined = " ".join(argv)
    assert joined.startswith(
        "export --random-init --random-shapes official --weight-profile outlier"
    )
    for flag in ("--int8", "--fp16", "--no-fastsam-export"):
        assert flag in argv
    assert argv[-2:] == ["--out", "/w/a"]


def _fidelity(agree: float, iou: float) -> dict:
    return {"status": "ok", "argmax_agreement": agree, "argmax_agreement_with_ties": 1.0,
            "mask_iou_mean": iou, "similarity_max_abs_error": 1e-3, "picks": 200}  # fmt: skip


CONTROL_ROW = {**_fidelity(0.965, 0.97), "similarity_max_abs_error": 0.03,
               "feature_cosine_min": 0.995}  # fmt: skip
LATENCY = {
    "onnxruntime fp32": {"status": "ok", "ms": 3000.0},
    "onnxruntime int8": {"status": "ok", "ms": 1500.0},
    "openvino bf16": {"status": "ok", "ms": 750.0},
    "openvino int8": {"status": "ok", "ms": 600.0},
    "openvino fp16": {"status": "unavailable", "reason": "backend openvino does not run fp16"},
}
FIDELITY = {
    "onnxruntime fp32": _fidelity(1.0, 1.0),
    "onnxruntime int8": _fidelity(0.995, 0.995),
    "openvino bf16": _fidelity(1.0, 1.0),
    "openvino int8": _fidelity(0.97, 0.975),
}


def test_rows_carry_the_speedup_and_a_verdict_per_criterion_for_int8_and_bf16():
    rows = compose(LATENCY, FIDELITY, "onnxruntime fp32")
    assert rows["openvino bf16"]["speedup"] == pytest.approx(4.0)
    assert rows["openvino bf16"]["target"] == {
        "speedup": True, "argmax_agreement": True, "mask_iou": True, "all": True
    }  # fmt: skip
    assert rows["onnxruntime int8"]["target"]["speedup"] is False  # 2.0x
    assert rows["openvino int8"]["target"] == {
        "speedup": True, "argmax_agreement": False, "mask_iou": False, "all": False
    }  # fmt: skip
    assert "target" not in rows["onnxruntime fp32"]  # the baseline is no candidate
    assert rows["openvino fp16"]["status"] == "unavailable"


def test_the_target_is_judged_on_the_fastest_int8_or_bf16_engine():
    result = verdict(compose(LATENCY, FIDELITY, "onnxruntime fp32"))
    assert result["fastest"] == "openvino int8"
    assert result["speedup"] == pytest.approx(5.0)
    assert result["met"] is False
    assert result["failed"] == ["argmax_agreement", "mask_iou"]
    assert result["passing"] == ["openvino bf16"]
    fine = dict(FIDELITY, **{"openvino int8": _fidelity(0.995, 0.992)})
    assert verdict(compose(LATENCY, fine, "onnxruntime fp32"))["met"] is True


def test_no_int8_or_bf16_engine_is_a_target_not_met():
    latency = {k: v for k, v in LATENCY.items() if k == "onnxruntime fp32"}
    result = verdict(compose(latency, FIDELITY, "onnxruntime fp32"))
    assert result == {"met": False, "fastest": None, "passing": [],
                      "why": "no int8 or bf16 engine ran"}  # fmt: skip


def test_the_report_prints_pass_or_fail_next_to_each_number_of_the_target():
    rows = compose(LATENCY, FIDELITY, "onnxruntime fp32")
    report = {
        "machine": {"cpu_model": "Test CPU", "load_average_at_start": [0.5, 0, 0],
                    "load_average_at_end": [0.7, 0, 0]},
        "settings": {"threads": 2, "sets": 200},
        "profiles": {"outlier": {"image_size": [700, 700], "rows": rows,
                                 "verdict": verdict(rows), "control": CONTROL_ROW}},
    }  # fmt: skip
    text = format_report(report)
    lines = {line.split()[0] + " " + line.split()[1]: line for line in text.splitlines()
             if line.startswith("  ") and len(line.split()) > 2}  # fmt: skip
    assert "0.5 at start, 0.7 at end" in text and "700x700" in text
    assert "5.00x PASS" in lines["openvino int8"] and "97.0% FAIL" in lines["openvino int8"]
    assert "0.9750 FAIL" in lines["openvino int8"]
    assert "4.00x PASS" in lines["openvino bf16"] and "100.0% PASS" in lines["openvino bf16"]
    assert "PASS" not in lines["onnxruntime fp32"] and "FAIL" not in lines["onnxruntime fp32"]
    assert "does not run fp16" in lines["openvino fp16"]
    assert "NOT MET (fails argmax_agreement, mask_iou): openvino int8 5.00x" in text
    assert "passing: openvino bf16" in text
    assert "control: fp32 + 10% noise: argmax 96.5%, mask IoU 0.9700, sim err 3.0e-02" in text


def test_feature_drift_is_the_worst_cosine_and_relative_error_over_pairs_and_roles():
    import numpy as np

    from benchmarks.bench_cpu_precisions import feature_drift

    ref = {"src": np.array([[3.0, 4.0]]), "dst": np.array([[1.0, 0.0]])}
    got = {"src": np.array([[3.0, 4.0]]), "dst": np.array([[1.0, 1.0]])}
    drift = feature_drift([ref, ref], [ref, got])
    assert drift["feature_cosine_min"] == pytest.approx(2**-0.5)
    assert drift["feature_max_err_over_peak"] == pytest.approx(1.0)


def test_the_control_adds_seeded_noise_of_the_asked_share_of_each_maps_spread():
    import numpy as np

    from benchmarks.bench_cpu_precisions import noisy

    rng = np.random.default_rng(0)
    pair = {"src": rng.standard_normal((1, 8, 40, 40)).astype(np.float32) * 3.0,
            "dst": rng.standard_normal((1, 8, 30, 30)).astype(np.float32)}  # fmt: skip
    (once,), (again,) = noisy([pair], 0.1), noisy([pair], 0.1)
    assert np.array_equal(once["src"], again["src"]) and once["src"].dtype == np.float32
    for role in pair:
        spread = (once[role] - pair[role]).std() / pair[role].std()
        assert spread == pytest.approx(0.1, rel=0.05)
