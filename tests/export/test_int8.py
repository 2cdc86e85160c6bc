"""``omama export --int8``: QDQ backbones with their quantization and calibration records,
verified and gated; ``omama-run verify --precision int8`` and ``omama-run pair --precision
int8`` on the folder."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from export.pipeline import export_artifacts
from export.tensorrt import tensorrt_status
from runtime.manifest import check_artifacts, load_manifest
from runtime.manifest.facts import FACT_PREFIX
from runtime.verification.tolerances import TOLERANCES
from tests.export.helpers import records, small_config

INT8_BACKBONES = ("backbone_exo_int8.onnx", "backbone_ego_int8.onnx")
PIPELINE = "pipeline: backbone_exo_int8.onnx + backbone_ego_int8.onnx + matcher.onnx"


@pytest.fixture(scope="module")
def int8_export(tmp_path_factory):
    """exo2ego with --int8 (synthetic calibration), weights-input matcher, FastSAM stand-in."""
    out = tmp_path_factory.mktemp("int8") / "artifacts"
    lines: list[str] = []
    config = small_config(out, direction="exo2ego", int8=True, matcher_input="weights",
                          parity_sets=60)  # fmt: skip
    result = export_artifacts(config, echo=lines.append, progress=False)
    return result, lines, out


def test_int8_backbones_are_qdq_files_with_their_records(int8_export):
    result, lines, out = int8_export
    manifest = check_artifacts(out)  # hashes, and the stamped facts cross-checked
    int8 = {f.path: f for f in manifest.files if f.precision == "int8"}
    assert set(INT8_BACKBONES) <= set(int8) and "matcher_int8.onnx" not in int8
    for name in INT8_BACKBONES:
        entry = int8[name]
        model = onnx.load(str(out / name), load_external_data=False)
        ops = [n.op_type for n in model.graph.node]
        assert ops.count("QuantizeLinear") >= 4 and ops.count("DequantizeLinear") >= 4
        props = {p.key: p.value for p in model.metadata_props}
        assert json.loads(props[f"{FACT_PREFIX}file.precision"]) == "int8"
        q = entry.quantization
        assert q.tool == "nncf" and q.from_file == name.replace("_int8", "")
        assert "per-channel symmetric weights" in q.method and q.kept_float and q.kept_float_reason
        assert q.smooth_quant_alpha == 0.95 and q.weight_profile == "plain"
        kind = entry.model.removeprefix("backbone_")
        calib = q.calibration
        assert calib.source == "synthetic" and calib.representative is False
        assert calib.frames == {kind: 16} and calib.seed == 0
        assert entry.graph.converter.startswith("nncf") and entry.graph.checker == "ok"
        # Same interface as the fp32 file: the runtime feeds both alike.
        fp32 = manifest.select(entry.model, "onnx", "fp32")
        assert entry.inputs == fp32.inputs and entry.outputs == fp32.outputs
        assert entry.size_bytes < fp32.size_bytes / 2
    # The int8 run's files: int8 backbones, the fp32 matcher.
    assert manifest.run_file("backbone_exo", "onnx", "int8").path == "backbone_exo_int8.onnx"
    assert manifest.run_file("matcher", "onnx", "int8").path == "matcher.onnx"
    warnings = [line for line in lines if "not representative" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: int8 calibrated on 16")


def test_int8_files_are_verified_and_the_pipeline_gated(int8_export):
    result, lines, out = int8_export
    manifest = load_manifest(out)
    assert manifest.verification.passed and not result.failures()
    for name in INT8_BACKBONES:
        (parity,) = records(manifest, name)
        assert parity.precision == "int8" and parity.tolerances == TOLERANCES["int8"]
        assert parity.passed and parity.checks[0].metric == "max err / peak"
        golden = {r.backend for r in records(manifest, name, "golden") if r.passed}
        assert "onnxruntime" in golden and "torch" not in golden
    (gate,) = records(manifest, PIPELINE, "int8 pipeline vs fp32")
    checks = {c.metric: c for c in gate.checks}
    argmax = checks["argmax agreement"]
    assert argmax.gated and argmax.tolerance == 0.99 and argmax.value >= 0.99
    assert "60 picks" in argmax.detail and "3 synthetic image pairs x 60" in checks[
        "max abs err"].detail  # fmt: skip
    assert not checks["max abs err"].gated
    iou = checks["final-mask IoU (mean)"]
    assert iou.gated and iou.tolerance == 0.99 and 0.99 <= iou.value <= 1.0
    assert "strict" in argmax.detail and "within 1e-06 of the best" in argmax.detail
    (golden_gate,) = [r for r in records(manifest, PIPELINE, "golden")
                      if r.backend == "onnxruntime"]  # fmt: skip
    assert golden_gate.passed and "21 picks" in golden_gate.checks[0].detail
    assert any(line.startswith("  int8 pipeline vs fp32: same pick in ") for line in lines)
    table = [line for line in "\n".join(lines).splitlines() if line.startswith(PIPELINE)]
    assert len(table) >= 3  # the summary table shows the int8 rows
    int8_files = sum(f.precision == "int8" for f in manifest.files)
    assert (
        f"; int8: {int8_files} files, argmax agreement {100 * argmax.value:.2f}% with fp32; "
        in (result.summary())
    )


def test_fastsam_int8_is_kept_only_with_passing_checks(int8_export):
    _, lines, out = int8_export
    manifest = load_manifest(out)
    kept = manifest.find("fastsam", "onnx", "int8")
    trial = [r for r in manifest.verification.records if r.file == "fastsam_int8.onnx"
             and r.inputs.startswith("int8 trial")]  # fmt: skip
    if kept is not None:
        assert (out / "fastsam_int8.onnx").is_file() and not trial
        (parity,) = records(manifest, "fastsam_int8.onnx")
        assert parity.passed and kept.quantization.calibration.frames == {"ego": 16}
    else:
        assert not (out / "fastsam_int8.onnx").exists() and len(trial) == 1
        assert all(not c.gated for c in trial[0].checks)
        assert any("FastSAM stays float" in line for line in lines)
        assert manifest.run_file("fastsam", "onnx", "int8").path == "fastsam.onnx"


def test_int8_without_tensorrt_records_why_no_engine(int8_export):
    result, lines, out = int8_export
    if tensorrt_status()[0]:
        pytest.skip("TensorRT and a CUDA GPU are present: engines are built")
    engines = load_manifest(out).engines
    assert engines.built is False and engines.reason == tensorrt_status()[1]
    assert sum(line.startswith("engines: skipped") for line in lines) == 1
    assert not list(out.glob("*.engine"))


def test_omama_run_verify_int8_checks_files_and_pipeline(int8_export, capsys):
    from runtime.cli import app
    from runtime.clikit import run_app

    _, _, out = int8_export
    argv = ["verify", str(out), "--backend", "onnxruntime", "--device", "cpu", "--precision",
            "int8"]  # fmt: skip
    code = run_app(app, argv, prog_name="omama-run")
    captured = capsys.readouterr()
    assert code == 0, captured.err
    document = json.loads((out / "verify_onnxruntime_int8.json").read_text())
    assert document["passed"] is True and document["precision"] == "int8"
    files = {r["file"]: r for r in document["records"]}
    assert set(INT8_BACKBONES) | {"matcher.onnx", PIPELINE} <= set(files)
    gate = files[PIPELINE]
    assert gate["inputs"] == "golden" and gate["model"] == "pipeline"
    metrics = {c["metric"]: c for c in gate["checks"]}
    assert metrics["argmax agreement"]["value"] >= 0.99 and metrics["argmax agreement"]["gated"]


def _pair_inputs(folder, views):
    import cv2

    from runtime.candidates import Candidates, write_candidates
    from runtime.verification.inputs import random_masks, synthetic_scene

    rng = np.random.default_rng(5)
    src_hw = tuple(4 * v for v in views["src"].image_size)
    dst_hw = tuple(4 * v for v in views["dst"].image_size)
    cv2.imwrite(str(folder / "src.png"), synthetic_scene(rng, src_hw)[:, :, ::-1])
    cv2.imwrite(str(folder / "dst.png"), synthetic_scene(rng, dst_hw)[:, :, ::-1])
    queries = []
    for i, mask in enumerate(random_masks(rng, 3, src_hw)):
        cv2.imwrite(str(folder / f"q{i}.png"), mask * 255)
        queries += ["--query", folder / f"q{i}.png"]
    masks = random_masks(rng, 12, dst_hw)
    write_candidates(folder / "0_masks.npz", folder / "0_boxes.npy", Candidates.from_masks(masks))
    return [folder / "src.png", folder / "dst.png", *queries, "--candidates",
            folder / "0_masks.npz"]  # fmt: skip


def test_omama_run_pair_int8_picks_what_fp32_picks(int8_export, tmp_path, capsys):
    from runtime.cli import app
    from runtime.clikit import run_app

    _, _, out = int8_export
    args = _pair_inputs(tmp_path, load_manifest(out).views)
    picks = {}
    for precision in ("fp32", "int8"):
        argv = ["pair", *args, "--artifacts", out, "--backend", "onnxruntime", "--device",
                "cpu", "--precision", precision, "--out", tmp_path / precision]  # fmt: skip
        code = run_app(app, [str(a) for a in argv], prog_name="omama-run")
        assert code == 0, capsys.readouterr().err
        result = json.loads((tmp_path / precision / "result.json").read_text())
        assert result["precision"] == precision
        picks[precision] = [(o["name"], o["candidate"]) for o in result["objects"]]
    assert len(picks["fp32"]) == 3 and picks["int8"] == picks["fp32"]
