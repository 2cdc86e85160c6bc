"""The int8 gate: a quantization that breaks the picks fails the export after writing the
manifest, naming the outputs and the blocks whose error grew most; the agreement checks
themselves on known similarities."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from export.pipeline import export_artifacts
from runtime.errors import OmamaError
from runtime.manifest import TensorSpec, check_artifacts, load_manifest
from runtime.sessions import Session
from runtime.verification.agreement import CandidateSet, PairFeatures, pipeline_checks
from runtime.verification.tolerances import TOLERANCES
from tests.export.helpers import small_config


def _absurd_ranges(real):
    """``quantize_onnx`` that quantizes everything, then shrinks every activation scale
    1000x: activations saturate, the features become garbage."""

    def quantize(fp32_path, int8_path, feeds, recipe):
        import onnx
        from onnx import numpy_helper

        made = real(fp32_path, int8_path, feeds, dataclasses.replace(recipe, kept_float=()))
        model = onnx.load(str(int8_path))
        initializers = {i.name: i for i in model.graph.initializer}
        for node in model.graph.node:
            if node.op_type == "QuantizeLinear" and node.input[0] not in initializers:
                scale = initializers[node.input[1]]
                scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale) * 1e-3,
                                                       scale.name))  # fmt: skip
        onnx.save(model, str(int8_path))
        return made

    return quantize


def test_broken_quantization_fails_naming_outputs_and_blocks(tmp_path, monkeypatch):
    import export.int8.stage as stage

    monkeypatch.setattr(stage, "quantize_onnx", _absurd_ranges(stage.quantize_onnx))
    out = tmp_path / "artifacts"
    config = small_config(out, direction="exo2ego", int8=True, include_fastsam=False,
                          matcher_input="weights", parity_sets=20, parity_large_n=4,
                          min_argmax=1.0)  # fmt: skip
    with pytest.raises(OmamaError) as failed:
        export_artifacts(config, echo=lambda line: None, progress=False)
    message = str(failed.value)
    assert message.startswith("verification failed: ")
    assert "backbone_exo_int8.onnx [onnxruntime cpu] output 'feats'" in message
    assert "int8 layers that hurt most (relative error jump): " in message
    named = message.split("hurt most (relative error jump): ")[1].split(";")[0].split(", ")
    assert len(named) == 3 and all(n.split()[0].endswith("_int8.onnx") for n in named)
    assert any(" blocks.0 (+" in n for n in named)  # its jump, signed
    manifest = load_manifest(out)
    assert manifest.verification.passed is False
    gate = [r for r in manifest.verification.records if r.inputs == "int8 pipeline vs fp32"]
    assert len(gate) == 1 and gate[0].checks[0].tolerance == 1.0
    for name in ("backbone_exo_int8.onnx", "backbone_ego_int8.onnx"):
        (layers,) = [r for r in manifest.verification.records
                     if r.file == name and r.inputs == "layer sensitivity"]  # fmt: skip
        assert [c.output for c in layers.checks if not c.gated] == [c.output for c in
                                                                      layers.checks]  # fmt: skip
        assert {c.output for c in layers.checks} == {"blocks.0", "feats"}
        assert layers.checks[0].value >= layers.checks[-1].value  # largest jump first
    with pytest.raises(OmamaError, match="failed its export verification"):
        check_artifacts(out)


def test_a_failed_int8_golden_replay_names_the_blocks_too(tmp_path, monkeypatch):
    import export.pipeline as pipeline

    build = pipeline.build_manifest

    def tightened(run):  # after the int8 stage passed: only the golden replays fail
        monkeypatch.setitem(TOLERANCES["int8"], "feats_rel", 1e-9)
        return build(run)

    monkeypatch.setattr(pipeline, "build_manifest", tightened)
    out = tmp_path / "artifacts"
    config = small_config(out, direction="exo2ego", int8=True, include_fastsam=False,
                          matcher_input="weights", parity_sets=20, parity_large_n=4)  # fmt: skip
    with pytest.raises(OmamaError, match=r"int8 layers that hurt most .*blocks\.0 \(\+"):
        export_artifacts(config, echo=lambda line: None, progress=False)
    records = load_manifest(out).verification.records
    failed = {r.inputs for r in records if not r.passed}
    assert failed == {"golden"}
    assert sum(r.inputs == "layer sensitivity" for r in records) == 2


class _Matcher(Session):
    """A matcher session whose similarities are ``table[id(src_feats)]``."""

    backend = "onnxruntime"

    def __init__(self, table: dict[int, np.ndarray]) -> None:
        self.name, self.device, self.table = "matcher", "cpu", table
        self.inputs = tuple(
            TensorSpec(n, (1, 2, 1, 1), "float32") for n in ("src_feats", "dst_feats")
        )
        self.outputs = (TensorSpec("similarities", ("B", "N"), "float32"),)

    def _run(self, feeds):
        return {"similarities": self.table[id(feeds["src_feats"])]}

    def close(self) -> None:
        pass


def _checks(sims, masks, **gates):
    """pipeline_checks on ``sims`` [(fp32 row, run row)], one candidate set each."""
    ref, got = np.zeros((1, 2, 1, 1), np.float32), np.ones((1, 2, 1, 1), np.float32)
    sets, pairs = [], []
    for index in range(len(sims)):
        a, b = ref.copy(), got.copy()
        pairs.append(PairFeatures({"src": a, "dst": a}, {"src": b, "dst": b}))
        sets.append(CandidateSet(index, {}, masks))
    table = {id(p.reference["src"]): s[0] for p, s in zip(pairs, sims, strict=True)}
    table |= {id(p.got["src"]): s[1] for p, s in zip(pairs, sims, strict=True)}
    return pipeline_checks(_Matcher(table), pairs, sets, TOLERANCES["int8"], "sets", **gates)


def test_pipeline_checks_are_strict_and_forgive_only_float32_exact_ties():
    masks = np.zeros((3, 4, 4), np.uint8)
    masks[0, :2], masks[1, 2:], masks[2, :3] = 1, 1, 1
    f32 = np.float32
    sims = [  # (fp32, int8)
        (np.array([[0.9, 0.1, 0.2]]), np.array([[0.8, 0.1, 0.2]])),  # the same pick
        # fp32's best by 0.02 (inside the 0.05 similarity tolerance), but another candidate:
        # another answer for the user (masks 0 and 2: IoU 2/3).
        (np.array([[0.90, 0.1, 0.88]]), np.array([[0.80, 0.1, 0.85]])),
        (np.array([[0.9, 0.1, 0.2]]), np.array([[0.1, 0.9, 0.2]])),  # another pick (IoU 0)
        # fp32's top two equal to float32 rounding (a random matcher's 6e-8 gaps): argmax
        # could return either, so the int8 pick of candidate 2 agrees, with IoU 1.
        (np.array([[f32(0.73885673), 0.1, f32(0.7388567)]], np.float32),
         np.array([[0.7, 0.1, 0.71]])),
    ]  # fmt: skip
    argmax, sims_err, iou = _checks(sims, masks, min_argmax=0.99, min_mask_iou=0.99)
    assert argmax.metric == "argmax agreement" and argmax.value == pytest.approx(2 / 4)
    assert not argmax.passed and "strict 25.00%, 1 other picks tied within 1e-06" in argmax.detail
    assert sims_err.value == pytest.approx(0.8) and not sims_err.gated
    assert iou.value == pytest.approx((1 + 2 / 3 + 0 + 1) / 4)
    assert iou.gated and iou.tolerance == 0.99 and not iou.passed


def test_pipeline_checks_gate_the_mask_iou_only_when_a_floor_is_given():
    masks = np.zeros((2, 4, 4), np.uint8)
    masks[0, :2], masks[1, :3] = 1, 1
    sims = [(np.array([[0.9, 0.1]]), np.array([[0.1, 0.9]]))] + [
        (np.array([[0.9, 0.1]]), np.array([[0.8, 0.1]]))
    ] * 99
    argmax, _, iou = _checks(sims, masks, min_argmax=0.99)
    assert argmax.value == pytest.approx(0.99) and argmax.passed
    assert iou.value == pytest.approx((99 + 2 / 3) / 100) and not iou.gated
    argmax, _, iou = _checks(sims, masks, min_argmax=0.99, min_mask_iou=0.999)
    assert iou.gated and not iou.passed


def test_the_manifest_records_the_gate_the_export_applied(tmp_path):
    out = tmp_path / "artifacts"
    config = small_config(out, direction="exo2ego", int8=True, include_fastsam=False,
                          matcher_input="weights", parity_sets=20, parity_large_n=4,
                          min_argmax=0.9, min_mask_iou=0.95)  # fmt: skip
    export_artifacts(config, echo=lambda line: None, progress=False)
    manifest = load_manifest(out)
    tolerances = manifest.verification.tolerances["int8"]
    assert tolerances["argmax_agreement"] == 0.9 and tolerances["final_mask_iou_mean"] == 0.95
    assert tolerances["argmax_tie_band"] == 1e-6  # the tie rule verify applies on the target
    (gate,) = [r for r in manifest.verification.records if r.inputs == "int8 pipeline vs fp32"]
    checks = {c.metric: c for c in gate.checks}
    assert checks["argmax agreement"].tolerance == 0.9
    assert (
        checks["final-mask IoU (mean)"].tolerance == 0.95 and checks["final-mask IoU (mean)"].gated
    )


def test_a_recorded_wider_tie_band_counts_close_picks_as_agreeing():
    """Folders exported before the strict gate recorded no band: verify applies the one they
    passed (the similarity tolerance), through ``tie_band``."""
    masks = np.zeros((3, 4, 4), np.uint8)
    masks[0, :2], masks[1, 2:], masks[2, :3] = 1, 1, 1
    sims = [(np.array([[0.90, 0.1, 0.88]]), np.array([[0.80, 0.1, 0.85]]))]
    strict, _, iou = _checks(sims, masks, min_argmax=0.99, min_mask_iou=0.99)
    assert strict.value == 0.0 and iou.value == pytest.approx(2 / 3)
    wide, _, iou = _checks(sims, masks, min_argmax=0.99, min_mask_iou=0.99, tie_band=0.05)
    assert wide.value == 1.0 and iou.value == 1.0
