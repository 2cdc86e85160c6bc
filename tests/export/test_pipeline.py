"""``export_artifacts`` end to end: the folder, its manifest and verification records, a
failed check, a tampered file."""

from __future__ import annotations

import shutil

import onnx
import pytest
import torch

from export.tensorrt import tensorrt_status
from runtime.errors import OmamaError
from runtime.manifest import WeightsRecord, check_artifacts, load_manifest
from runtime.verification.tolerances import TOLERANCES
from tests.export.helpers import FASTSAM_IMGSZ, records, small_config


def test_exo2ego_folder_is_complete_verified_and_described(exo2ego):
    result, lines, out = exo2ego
    manifest = check_artifacts(out)
    names = sorted(f.path for f in manifest.files)
    assert names == sorted(
        f"{m}{suffix}.onnx"
        for m in ("backbone_exo", "backbone_ego", "matcher", "fastsam")
        for suffix in ("", "_fp16")
    )
    assert not list(out.glob("*.engine")) and not list(out.glob(".omama-export-*"))
    assert manifest.direction == "exo2ego" and manifest.random_init is True
    assert manifest.views["src"].kind == "exo"
    assert manifest.views["src"].image_size == (56, 84)
    assert manifest.views["dst"].feat_grid == (5, 5)
    assert manifest.preprocess.patch_size == 14
    assert manifest.preprocess.mean == (0.485, 0.456, 0.406)
    assert (manifest.descriptor.reduction, manifest.descriptor.context_px) == (4, 100)
    assert manifest.matcher.input == "masks" and manifest.matcher.attention == "folded"
    assert manifest.fastsam.imgsz == FASTSAM_IMGSZ and manifest.fastsam.nms_in_graph is True
    assert manifest.fastsam.conf == 0.01 and manifest.fastsam.iou == 0.9
    assert manifest.backbone.projection == "1x1 Conv2d to 768 (random init)"
    assert manifest.backbone.weights == WeightsRecord(random=True, seed=0)
    assert manifest.matcher.weights == WeightsRecord(random=True, seed=0)
    assert manifest.fastsam.weights == WeightsRecord(random=True, seed=0,
                                                     architecture="yolov8n-seg")  # fmt: skip
    assert manifest.tools.opset == 17 and manifest.tools.versions["onnx"] == onnx.__version__
    assert manifest.tools.versions["torch"].split("+")[0] == torch.__version__.split("+")[0]
    # Verification: every file has a passing parity record and a passing golden record on
    # ONNX Runtime; the fp32 files also on the torch backend rebuilt from the manifest.
    verification = manifest.verification
    assert verification.verified and verification.passed and not verification.failures
    for entry in manifest.files:
        (parity,) = records(manifest, entry.path)
        assert parity.passed and parity.checks and parity.backend == "onnxruntime"
        assert parity.providers == ("CPUExecutionProvider",) and parity.device == "cpu"
        assert parity.tolerances == TOLERANCES[entry.precision]
        golden = {r.backend: r for r in records(manifest, entry.path, "golden")}
        want = {"onnxruntime", "torch"} if entry.precision == "fp32" else {"onnxruntime"}
        assert set(golden) == want and all(r.passed for r in golden.values())
    assert {g.model for g in verification.golden} == set(manifest.models())
    assert all((out / g.path).is_file() for g in verification.golden)
    assert all(f.graph for f in manifest.files)
    assert any(line.startswith("file ") and "tolerance" in line for line in lines)
    # No TensorRT here: one line says so and why; no engine is pretended.
    if not tensorrt_status()[0]:
        assert manifest.engines.built is False
        skipped = [line for line in lines if line.startswith("engines: skipped")]
        assert len(skipped) == 1 and manifest.engines.reason in skipped[0]


def test_result_summary_names_the_folder_its_size_and_checks(exo2ego):
    result, _, out = exo2ego
    summary = result.summary()
    size_mb = sum(ref.size_bytes for f in result.manifest.files for ref in f.file_refs()) / 1e6
    gated = sum(1 for r in result.records for c in r.checks if c.gated)
    assert summary.startswith(f"artifacts: {out} (8 files, {size_mb:.1f} MB), verified ({gated} ")
    assert summary.endswith(result.engines_note) and gated > 8


def test_tampered_artifact_is_refused(exo2ego, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(exo2ego[2], copy)
    check_artifacts(copy)
    path = copy / "matcher.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(OmamaError, match=r"matcher\.onnx sha256 .* differs"):
        check_artifacts(copy)
    (copy / "fastsam_fp16.onnx").unlink()
    with pytest.raises(OmamaError, match="fastsam_fp16.onnx is missing"):
        check_artifacts(copy)


def test_failed_parity_writes_the_manifest_and_names_the_output(tmp_path, monkeypatch):
    out = tmp_path / "artifacts"
    monkeypatch.setitem(TOLERANCES["fp32"], "feats_max_abs", 0.0)
    config = small_config(
        out,
        direction="exo2ego",
        include_fastsam=False,
        matcher_input="weights",
        parity_sets=2,
        parity_large_n=4,
    )
    from export.pipeline import export_artifacts

    with pytest.raises(OmamaError, match=r"verification failed: backbone_exo\.onnx .*'feats'"):
        export_artifacts(config, echo=lambda line: None, progress=False)
    manifest = load_manifest(out)
    assert manifest.verification.passed is False
    assert any("'feats'" in f for f in manifest.verification.failures)
    with pytest.raises(OmamaError, match="failed its export verification"):
        check_artifacts(out)
