"""FastSAM's NMS in the graph or in the runtime (``--fastsam-nms``), verified either way."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from export.fastsam import nms_choice
from export.graphs import onnxruntime_cpu
from export.pipeline import export_artifacts
from export.verify.fastsam import FastSAMParity
from runtime.manifest import (
    CheckRecord,
    NmsSettings,
    check_artifacts,
    describe_check,
    load_manifest,
)
from tests.export.helpers import records, small_config


def test_fastsam_nms_is_in_the_graph_by_default_and_verified(exo2ego):
    from export.fastsam import nms_graph_params

    result, lines, out = exo2ego
    fastsam = load_manifest(out).fastsam
    decision = fastsam.nms_decision
    assert fastsam.nms_in_graph is True and fastsam.max_det == 300
    assert decision.requested == "auto" and decision.reason == "in-graph NMS parity holds"
    # Random-init exports bake the conf their random weights need (they score ~0.012).
    assert decision.settings == NmsSettings(conf=0.01, iou=0.9, max_det=300)
    assert decision.baked.conf == pytest.approx(0.01) and decision.baked.max_det == 300
    baked = nms_graph_params(out / "fastsam.onnx")  # read from the graph itself
    assert (np.float32(baked.conf), np.float32(baked.iou), baked.max_det) == (
        np.float32(0.01),
        np.float32(0.9),
        300,
    )
    parity = {c.metric: c for c in decision.checks}
    assert parity["detection agreement"].value == 1.0
    assert parity["box max err px"].value <= 1.0 and parity["mask IoU (min)"].value > 0.99
    assert all(c.passed for c in decision.checks)
    # The same checks gate the file and its fp16 variant, whose NMS stays float32.
    for name in ("fastsam.onnx", "fastsam_fp16.onnx"):
        (record,) = records(result, name)
        checks = {c.metric: c for c in record.checks}
        assert checks["detection agreement"].gated and checks["detection agreement"].passed
        assert "kept: reference 32, other 32, both 32" in checks["detection agreement"].detail
    fp16 = load_manifest(out).select("fastsam", precision="fp16")
    assert fp16.graph.fp32_ops["NonMaxSuppression"] == 1
    assert fp16.graph.fp32_nodes_by_prefix > 10
    assert any("NMS in the graph (conf 0.01, iou 0.9, max_det 300" in line for line in lines)
    with onnxruntime_cpu(out / "fastsam.onnx", threads=1) as session:
        rows = session.infer({"images": np.zeros((1, 3, 128, 128), np.float32)})
    assert rows["output0"].shape == (1, 300, 38) and (rows["output0"][0, :, 4] > 0).sum() == 16


def _fastsam_step(tmp_path, echo, **overrides):
    """Only the FastSAM step of an export (YOLOv8n-seg stand-in, 128 px): the run object."""
    from export.fastsam import build_standin_fastsam
    from export.models import ExportModels
    from export.pipeline import _Export
    from runtime.manifest import ViewSpec

    out = tmp_path / "artifacts"
    out.mkdir()
    weights = build_standin_fastsam(tmp_path / "standin.pt")
    views = {
        "src": ViewSpec("exo", (56, 84), (4, 6)),
        "dst": ViewSpec("ego", (70, 70), (5, 5)),
    }
    models = ExportModels(None, "exo2ego", views, {}, None, weights, None, None, None)
    config = small_config(out, **overrides)
    run = _Export(config, models, tmp_path, echo, lambda label: None)
    run.fastsam()
    return run, out


def test_fastsam_nms_runtime_keeps_raw_outputs(tmp_path):
    lines: list[str] = []
    run, out = _fastsam_step(tmp_path, lines.append, fastsam_nms="runtime")
    assert run.fastsam_in_graph is False
    assert run.nms_decision.reason == "requested (--fastsam-nms runtime)"
    ops = {n.op_type for n in onnx.load(out / "fastsam.onnx").graph.node}
    assert "NonMaxSuppression" not in ops
    with onnxruntime_cpu(out / "fastsam.onnx", threads=1) as session:
        got = session.infer({"images": np.zeros((1, 3, 128, 128), np.float32)})
    assert got["output0"].shape == (1, 37, 336)  # raw: xywh, score, 32 coefficients per anchor
    (record,) = run.records
    assert {c.metric for c in record.checks} == {
        "max err / max(1, peak)",
        "NMS detection agreement",
    }
    assert record.passed and not any("NMS in the graph" in x for x in lines)


class _ShiftedRows:
    """A session whose in-graph detection rows come out moved by ``shift_px`` (a real error)."""

    def __init__(self, inner, shift_px: float) -> None:
        self.inner, self.shift_px = inner, shift_px

    def infer(self, feeds):
        outputs = dict(self.inner.infer(feeds))
        rows = outputs["output0"].copy()
        rows[..., :4] += np.where(rows[..., 4:5] > 0, np.float32(self.shift_px), 0)
        return outputs | {"output0": rows}


def _shift_graph_boxes(monkeypatch, shift_px: float) -> None:
    """Make the export's in-graph FastSAM parity see the graph's boxes moved by ``shift_px``."""
    real = FastSAMParity.run

    def shifted(self, session, precision, nms_in_graph):
        use = _ShiftedRows(session, shift_px) if nms_in_graph else session
        return real(self, use, precision, nms_in_graph)

    monkeypatch.setattr(FastSAMParity, "run", shifted)


def test_fastsam_nms_graph_fails_with_the_offending_numbers(tmp_path, monkeypatch):
    _shift_graph_boxes(monkeypatch, 2.0)
    run, out = _fastsam_step(tmp_path, lambda line: None, fastsam_nms="graph")
    assert run.fastsam_in_graph is True  # kept: the export fails on these checks
    (record,) = run.records
    failed = [c for c in record.checks if not c.passed]
    assert [c.metric for c in failed] == ["box max err px"]
    assert "box max err px 2.00e+00 (needs <= 1.00e+00)" in describe_check(record, failed[0])


def test_fastsam_nms_auto_falls_back_to_runtime_and_says_why(tmp_path, monkeypatch):
    _shift_graph_boxes(monkeypatch, 6.0)  # beyond the 4 px match radius: no detection maps
    out = tmp_path / "artifacts"
    lines: list[str] = []
    config = small_config(
        out, direction="exo2ego", matcher_input="weights", parity_sets=2, parity_large_n=4
    )
    export_artifacts(config, echo=lines.append, progress=False)
    manifest = check_artifacts(out)
    fastsam = manifest.fastsam
    reason = fastsam.nms_decision.reason
    assert fastsam.nms_in_graph is False and reason.startswith("in-graph NMS parity failed")
    assert "detection agreement 0 (tolerance 1)" in reason
    assert "graph row 0 (score 0.0123361) matches no anchor (6 px)" in reason
    assert any(line.startswith("  fastsam.onnx: NMS kept out of the graph") for line in lines)
    failed = {c.metric for c in fastsam.nms_decision.checks if not c.passed}
    assert failed == {"detection agreement"}
    assert manifest.select("fastsam").outputs[0].shape == (1, 37, 336)
    assert all(r.passed for r in manifest.verification.records)  # the raw file verified


def test_nms_choice_falls_back_only_in_auto():
    ok = CheckRecord("output0", "detection agreement", 1.0, 1.0, True, detail="kept 3")
    bad = CheckRecord("output0", "detection agreement", 0.5, 1.0, True, detail="kept 1")
    assert ok.passed and not bad.passed
    assert nms_choice("auto", [ok]) == (True, "in-graph NMS parity holds")
    assert nms_choice("graph", [bad]) == (True, "requested (--fastsam-nms graph)")
    assert nms_choice("auto", [ok, bad]) == (
        False,
        "in-graph NMS parity failed: output0: detection agreement 0.5 (tolerance 1) [kept 1]",
    )
