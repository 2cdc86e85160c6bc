"""The ``int8`` stage of an export (``--int8``): calibrate, quantize, verify, gate.

1. calibration frames (``export.int8.calibration``), one line per note (the synthetic
   warning, skipped files);
2. ``backbone_<kind>_int8.onnx`` per view from the fp32 file (``export.int8.quantize``),
   checked (ONNX checker, shape inference) and compared with the torch backend under
   ``TOLERANCES["int8"]`` like every file;
3. the gate (``export.verify.int8``): the int8 pipeline against fp32 on ``--parity-sets``
   candidate sets, argmax agreement at ``--min-argmax`` and mean final-mask IoU. It runs
   with ``--no-verify`` too: it decides whether the int8 files are fit to ship. When it, a
   backbone's parity or (after the golden replay, :meth:`Int8Stage.explain`) an int8 file's
   golden record fails, the per-block error growth of each int8 backbone
   (``export.int8.sensitivity``) is recorded and the blocks that hurt most are named in the
   export's error line;
4. FastSAM: quantized and kept only when its checks against the torch backend pass
   (detections and masks under the int8 tolerances); otherwise the file is dropped and one
   line and a reported record say why it stays float.

The matcher stays float: int8 runs use ``matcher.onnx`` (``Manifest.run_file``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from export.config import fastsam_settings
from export.graphs import onnx_opset, onnxruntime_cpu
from export.int8.calibration import Calibration, calibration
from export.int8.quantize import (
    BACKBONE_RECIPE,
    FASTSAM_RECIPE,
    Quantized,
    Recipe,
    quantization_record,
    quantize_onnx,
)
from export.int8.sensitivity import SENSITIVITY_INPUTS, block_errors, sensitivity_checks
from export.verify.fastsam import FastSAMParity
from export.verify.graph import check_onnx
from export.verify.int8 import AGREEMENT_INPUTS, PipelineAgreement, int8_tolerances
from export.verify.matcher import ViewGeometry
from runtime.manifest import GraphRecord, VerificationRecord
from runtime.verification.agreement import PIPELINE_MODEL, pipeline_file
from runtime.verification.replay import session_record

if TYPE_CHECKING:
    from export.pipeline import _Export

INT8 = "int8"
TOP_LAYERS = 3  # blocks named in the error line (all are in the manifest)


class Int8Stage:
    """The int8 files of one export run (``run``: the :class:`export.pipeline._Export`)."""

    def __init__(self, run: _Export) -> None:
        self.run = run
        self.config = run.config
        self.int8_files: dict[str, str] = {}  # model -> int8 file name
        self.hints: list[str] = []  # what the export's error line adds when a check fails
        self.agreement: PipelineAgreement | None = None  # the gate's images and sets
        self.models: dict[str, str] = {}  # role -> backbone model

    def __call__(self) -> None:
        run = self.run
        sizes = {view.kind: view.image_size for view in run.models.views.values()}
        calib = calibration(self.config.calib, self.config.calib_frames, sizes, self.config.seed)
        for note in calib.notes:
            run.echo(note)
        for kind, backbone in run.models.backbones.items():
            model = f"backbone_{kind}"
            feeds = calib.backbone_feeds(kind, backbone.image_size)
            self._quantize(model, feeds, BACKBONE_RECIPE, calib.record(kind))
        self._gate()
        if self.config.include_fastsam and "fastsam" in run.fp32_files:
            self._fastsam(calib)

    # -- one file ---------------------------------------------------------------------------
    def _quantize(self, model: str, feeds, recipe: Recipe, calib_record) -> VerificationRecord:
        run = self.run
        name = f"{model}_{INT8}.onnx"
        with run.timed(name, "export_s"):
            made = quantize_onnx(run.out / run.fp32_files[model], run.out / name, feeds, recipe)
            if self.config.verify:
                check_onnx(run.out / name)
        record = None
        with run.timed(name, "verify_s"), onnxruntime_cpu(run.out / name, model) as session:
            if self.config.verify or model == "fastsam":  # FastSAM's checks decide if it stays
                record = run.parity_record(model, session, name, INT8)
        quantization = quantization_record(run.fp32_files[model], made, recipe, calib_record,
                                           self.config.weight_profile)  # fmt: skip
        if model == "fastsam" and not record.passed:
            return record
        run.add_file(name, model, "onnx", INT8, record, graph=self._graph(made),
                     external_data=made.external_data, quantization=quantization)  # fmt: skip
        self.int8_files[model] = name
        run.step(name)
        return record

    def _graph(self, made: Quantized) -> GraphRecord:
        import onnx

        model = onnx.load(str(made.path), load_external_data=False)
        checked = "ok" if self.config.verify else "skipped"
        return GraphRecord(
            opset=onnx_opset(model),
            nodes_final=len(model.graph.node),
            checker=checked,
            shape_inference=checked,
            converter=f"nncf {made.tool_version} (QDQ, {made.quantize_nodes} QuantizeLinear)",
        )

    # -- the gate ---------------------------------------------------------------------------
    def _gate(self) -> None:
        run, config = self.run, self.config
        views = {role: run.models.views[role] for role in ("src", "dst")}
        agreement = PipelineAgreement(
            ViewGeometry(views["src"].image_size, views["src"].feat_grid),
            ViewGeometry(views["dst"].image_size, views["dst"].feat_grid),
            run.form,
            run.models.matcher.dim,
            config.parity_sets,
            seed=config.seed,
        )
        models = {role: f"backbone_{views[role].kind}" for role in views}
        self.agreement, self.models = agreement, models
        files = [self.int8_files[models["src"]], self.int8_files[models["dst"]], "matcher.onnx"]
        tolerances = int8_tolerances(config)
        with run.timed(pipeline_file(files), "verify_s"):
            sessions = {
                name: onnxruntime_cpu(run.out / name, name.removesuffix(".onnx"))
                for name in dict.fromkeys([run.fp32_files[m] for m in models.values()] + files)
            }
            try:
                checks = agreement.run(
                    {role: sessions[run.fp32_files[m]] for role, m in models.items()},
                    {role: sessions[self.int8_files[m]] for role, m in models.items()},
                    sessions["matcher.onnx"],
                    tolerances,
                    config.min_argmax,
                    config.min_mask_iou,
                )
                record = session_record(sessions["matcher.onnx"], pipeline_file(files),
                                        PIPELINE_MODEL, INT8, AGREEMENT_INPUTS, tolerances,
                                        checks)  # fmt: skip
            finally:
                for session in sessions.values():
                    session.close()
        run.records.append(record)
        status = "ok" if record.passed else "FAILED"
        found = {c.metric: c.value for c in record.checks}
        iou = found.get("final-mask IoU (mean)")
        iou_text = "" if iou is None else f", mean mask IoU {iou:.4f}"
        run.echo(f"  int8 pipeline vs fp32: same pick in {100 * found['argmax agreement']:.2f}% "
                 f"of {config.parity_sets} candidate sets{iou_text}, {status}")  # fmt: skip
        run.records += self.explain(run.records)

    def explain(self, records: list[VerificationRecord]) -> list[VerificationRecord]:
        """When an int8 check in ``records`` failed (the gate, a parity, a golden replay):
        the per-block error growth of each int8 backbone on the gate's images, one record
        per file, and the :data:`TOP_LAYERS` largest jumps for the error line. Measured
        once; nothing when every int8 check passed."""
        if self.hints or all(r.passed for r in records if r.precision == INT8):
            return []
        run = self.run
        worst, found = [], []
        for role, model in self.models.items():
            feeds = [{"image": image[None]} for image in self.agreement.images(role)]
            fp32, int8 = run.out / run.fp32_files[model], run.out / self.int8_files[model]
            errors = block_errors(fp32, int8, feeds, run.work)
            with onnxruntime_cpu(int8, model) as session:
                found.append(session_record(session, int8.name, model, INT8,
                                            SENSITIVITY_INPUTS, {},
                                            sensitivity_checks(errors)))  # fmt: skip
            worst += [(e, int8.name) for e in errors]
        top = sorted(worst, key=lambda pair: pair[0].jump, reverse=True)[:TOP_LAYERS]
        named = [f"{file} {e.block} ({e.jump:+.3f})" for e, file in top]
        self.hints.append("int8 layers that hurt most (relative error jump): " + ", ".join(named))
        return found

    # -- FastSAM ----------------------------------------------------------------------------
    def _fastsam(self, calib: Calibration) -> None:
        run = self.run
        dst = run.models.views["dst"]
        feeds = calib.fastsam_feeds(dst.kind, dst.image_size, self.config.fastsam_imgsz)
        if run.fastsam_check is None:  # --no-verify with --fastsam-nms runtime
            run.fastsam_check = FastSAMParity(run.reference("fastsam"), self.config.fastsam_imgsz,
                                              fastsam_settings(self.config),
                                              seed=self.config.seed)  # fmt: skip
        record = self._quantize("fastsam", feeds, FASTSAM_RECIPE, calib.record(dst.kind))
        if "fastsam" in self.int8_files:
            return
        name = f"fastsam_{INT8}.onnx"
        (run.out / name).unlink(missing_ok=True)
        for data in Path(run.out).glob(f"{name}.data"):
            data.unlink()
        failed = "; ".join(f"{c.metric} of {c.output!r}" for c in record.checks if not c.passed)
        reason = f"not kept, FastSAM stays float: its int8 checks failed ({failed})"
        run.echo(f"  {name}: {reason}")
        reported = tuple(dataclasses.replace(c, gated=False) for c in record.checks)
        run.records.append(dataclasses.replace(record, inputs=f"int8 trial ({reason})",
                                               checks=reported))  # fmt: skip
