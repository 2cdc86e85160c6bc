"""``export_artifacts``: PyTorch models -> a verified artifacts folder (``omama export``).

The stages of :class:`_Export`, in the order they run, each file written atomically and
``manifest.json`` last:

1. ``build_models`` (``export.models``): the matcher, one backbone per view, FastSAM;
2. ``backbones``, ``matcher``, ``fastsam``: ``backbone_<kind>.onnx`` per view (dynamic
   batch, positional table baked in, projection included), ``matcher.onnx`` (descriptor
   pooling + matcher, dynamic B and N; its input form measured unless given,
   ``export.matcher_input``), ``fastsam.onnx`` (ultralytics' exporter, NMS in the graph
   when its parity holds); every graph folded and checked (``export.graphs``), and its
   parity with the torch backend checked (``export.verify``) on the file opened through
   ``runtime.sessions`` as ``omama-run`` opens it;
3. ``fp16``: with ``fp16``, the ``*_fp16.onnx`` variants (``export.fp16``);
4. ``int8``: with ``int8``, the ``*_int8.onnx`` files of the backbones (and FastSAM when
   its checks hold), calibrated, verified and gated by the int8 pipeline's agreement with
   fp32 (``export.int8.stage``);
5. ``tensorrt``: TensorRT engines (fp16; int8 from the QDQ files) when TensorRT and a CUDA
   GPU are present, else one line saying why they were skipped (``export.tensorrt``);
6. ``write_golden``: ``golden/<model>.npz``, golden inputs at the real sizes and the torch
   fp32 records (``export.golden``);
7. the manifest (``export.manifest_writer``) with hashes, shapes, tools and the verification
   records: the parity runs, and (``replay``) the golden files replayed through the same
   code ``omama-run verify`` runs on every file and on the torch backend rebuilt from the
   manifest, and with int8 the pipeline agreement on the golden files (what ``omama-run
   verify --precision int8`` checks). Before the replay, the manifest's facts are stamped
   into each ONNX file's metadata (``export.stamp``), which the runtime cross-checks.

A failed check still writes the manifest (it records the failure, and the runtime refuses
the folder) and then raises an OmamaError naming the offending outputs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from export.config import ExportConfig, fastsam_settings, validate
from export.folder import clear_previous, temporary_dir
from export.golden import (
    golden_cases,
    int8_plans,
    replay_runs,
    weights_dirs,
    write_golden_file,
)
from export.graphs import (
    MATCHER_POOLING_PREFIXES,
    FinalGraph,
    export_backbone,
    export_matcher,
    finalize_onnx,
    io_specs,
    onnxruntime_cpu,
)
from export.manifest_writer import build_manifest, verification_section
from export.matcher_input import measure_matcher_inputs
from export.models import ExportModels, build_models, torch_reference
from export.result import ExportResult
from export.stamp import stamp_facts
from export.verify.backbone import BackboneParity
from export.verify.fastsam import FastSAMParity
from export.verify.matcher import MatcherParity, ViewGeometry
from runtime.errors import OmamaError
from runtime.locks import folder_lock
from runtime.manifest import (
    MANIFEST_NAME,
    ArtifactFile,
    CheckRecord,
    EngineRecord,
    EnginesRecord,
    GoldenFile,
    GraphRecord,
    InputDecision,
    Manifest,
    NmsDecision,
    NmsSettings,
    QuantizationRecord,
    VerificationRecord,
    file_entry,
    write_manifest,
)
from runtime.manifest.signing import sign_folder
from runtime.sessions import Session, open_artifact
from runtime.verification import golden as golden_io
from runtime.verification.agreement import golden_agreement
from runtime.verification.replay import replay_model, session_record
from runtime.verification.tolerances import TOLERANCES, format_table

PARITY_INPUTS = "export parity"


class _Export:
    """One export run: the models, their torch reference sessions, the files written so
    far and their verification records. The stages (``backbones`` ... ``replay``) run in
    the order they are written here."""

    def __init__(self, config: ExportConfig, models: ExportModels, work: Path, echo, step) -> None:
        self.config = config
        self.models = models
        self.work = work
        self.echo = echo
        self.step = step
        self.out = Path(config.out_dir)
        self.files: list[ArtifactFile] = []
        self.records: list[VerificationRecord] = []
        self.graphs: dict[str, GraphRecord] = {}
        self.fp32_files: dict[str, str] = {}  # model -> fp32 ONNX file name
        self.src, self.dst = models.views["src"], models.views["dst"]
        self.decision: InputDecision | None = None
        self.form = config.matcher_input
        self.references: dict[str, Session] = {}  # model -> torch backend session
        self.matcher_parity: MatcherParity | None = None
        self.backbone_parity: dict[str, BackboneParity] = {}
        self.fastsam_check: FastSAMParity | None = None
        self.nms_decision: NmsDecision | None = None
        self.fastsam_in_graph = False
        self.ultralytics_version: str | None = None
        self.engines = EnginesRecord(built=False, note="")
        self.golden: list[GoldenFile] = []
        self.int8_stage = None  # export.int8.stage.Int8Stage with --int8
        self.timings: dict[str, dict[str, float]] = {}

    @contextlib.contextmanager
    def timed(self, name: str, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.timings.setdefault(name, {})[phase] = round(time.perf_counter() - start, 3)

    # -- torch reference and bookkeeping -----------------------------------------------------
    def reference(self, model: str) -> Session:
        """The torch backend's session of ``model`` (built once)."""
        if model not in self.references:
            if model == "fastsam":
                from export.fastsam import raw_io_specs

                io = raw_io_specs(self.config.fastsam_imgsz)
            else:
                io = io_specs(self.out / self.fp32_files[model])
            self.references[model] = torch_reference(self.models, model, self.form, io)
        return self.references[model]

    def add_file(
        self,
        path: str,
        model: str,
        fmt: str,
        precision: str,
        record: VerificationRecord | None,
        io_from: Path | None = None,
        graph: GraphRecord | None = None,
        engine: EngineRecord | None = None,
        external_data: list[str] = (),
        quantization: QuantizationRecord | None = None,
    ) -> ArtifactFile:
        inputs, outputs = io_specs(io_from or self.out / path)
        entry = file_entry(self.out, path, model, fmt, precision, inputs, outputs,
                           external_data=external_data, graph=graph, engine=engine)  # fmt: skip
        entry = dataclasses.replace(entry, quantization=quantization)
        self.files.append(entry)
        status = ""
        if record is not None:
            self.records.append(record)
            status = " verified" if record.passed else " FAILED"
        self.echo(f"  {path}: {entry.size_bytes / 1e6:.1f} MB, {precision}{status}")
        return entry

    def finalize(self, raw: Path, target: Path) -> FinalGraph:
        final = finalize_onnx(raw, target, check=self.config.verify)
        self.echo_nodes(target.name, final)
        return final

    def echo_nodes(self, name: str, final: FinalGraph) -> None:
        graph = final.record
        self.echo(
            f"  {name}: {graph.nodes_exported} -> {graph.nodes_final} nodes ({graph.folded_with})"
        )

    def add_fp32(self, model: str, final: FinalGraph, record: VerificationRecord | None) -> None:
        name = f"{model}.onnx"
        self.graphs[name] = final.record
        self.add_file(name, model, "onnx", "fp32", record, graph=final.record,
                      external_data=final.external_data)  # fmt: skip
        self.fp32_files[model] = name
        self.step(model)

    def checks(self, model: str, session: Session, precision: str) -> list[CheckRecord]:
        """The parity checks of ``model`` for a session of any backend and precision."""
        if model == "matcher":
            return self.matcher_parity.run(session, precision)
        if model == "fastsam":
            return self.fastsam_check.run(session, precision, self.fastsam_in_graph)
        return self.backbone_parity[model].run(session, precision)

    def parity(self, model: str, session: Session, file: str, precision: str):
        """The parity record of ``file`` on ``session`` (None without ``--verify``)."""
        if not self.config.verify:
            return None
        return self.parity_record(model, session, file, precision)

    def parity_record(self, model: str, session: Session, file: str, precision: str):
        checks = self.checks(model, session, precision)
        return session_record(session, file, model, precision, PARITY_INPUTS,
                              TOLERANCES[precision], checks)  # fmt: skip

    # -- stages ---------------------------------------------------------------------------
    def backbones(self) -> None:
        for kind, backbone in self.models.backbones.items():
            model = f"backbone_{kind}"
            name = f"{model}.onnx"
            with self.timed(name, "export_s"):
                raw = self.work / f"{model}.raw.onnx"
                export_backbone(backbone, raw, self.config.opset)
                graph = self.finalize(raw, self.out / name)
            self.fp32_files[model] = name
            record = None
            with self.timed(name, "verify_s"):
                if self.config.verify:
                    self.backbone_parity[model] = BackboneParity(
                        self.reference(model), backbone.image_size, seed=self.config.seed
                    )
                    with onnxruntime_cpu(self.out / name, model) as session:
                        record = self.parity(model, session, name, "fp32")
            self.add_fp32(model, graph, record)

    def matcher(self) -> None:
        config = self.config
        forms = ["weights", "masks"] if config.matcher_input == "auto" else [config.matcher_input]
        finals: dict[str, Path] = {}
        graphs: dict[str, FinalGraph] = {}
        for form in forms:
            with self.timed("matcher.onnx", f"export_{form}_s"):
                raw = self.work / f"matcher_{form}.raw.onnx"
                export_matcher(self.models.matcher, self.src, self.dst, form, raw, config.opset)
                finals[form] = self.work / f"matcher_{form}.onnx"
                graphs[form] = finalize_onnx(raw, finals[form], check=config.verify)
        self.decision = self._matcher_input(finals)
        self.form = self.decision.chosen
        shutil.move(str(finals[self.form]), str(self.out / "matcher.onnx"))
        self.fp32_files["matcher"] = "matcher.onnx"
        self.echo_nodes("matcher.onnx", graphs[self.form])
        record = None
        with self.timed("matcher.onnx", "verify_s"):
            if config.verify:
                self.matcher_parity = MatcherParity(
                    self.reference("matcher"),
                    self.models.matcher.dim,
                    ViewGeometry(self.src.image_size, self.src.feat_grid),
                    ViewGeometry(self.dst.image_size, self.dst.feat_grid),
                    self.form,
                    random_sets=config.parity_sets,
                    large_n=config.parity_large_n,
                    seed=config.seed,
                )
                with onnxruntime_cpu(self.out / "matcher.onnx", "matcher") as session:
                    record = self.parity("matcher", session, "matcher.onnx", "fp32")
        self.add_fp32("matcher", graphs[self.form], record)

    def _matcher_input(self, finals: dict[str, Path]) -> InputDecision:
        """The matcher's input form: given (``--matcher-input``) or measured on ``finals``."""
        if self.config.matcher_input != "auto":
            return InputDecision(self.config.matcher_input, "given (--matcher-input)")
        with self.timed("matcher.onnx", "decide_s"):
            d = measure_matcher_inputs(finals, self.src, self.dst, self.models.matcher.dim)
        self.echo(
            f"  matcher input: {d.chosen} (N={d.candidates}: weights "
            f"{d.weights_ms:.1f} ms, masks {d.masks_ms:.1f} ms on ONNX Runtime CPU)"
        )
        return d

    def fastsam(self) -> None:
        """``fastsam.onnx`` with NMS in the graph or not (``--fastsam-nms``).

        ``graph`` / ``auto`` export ultralytics' in-graph NMS with this export's conf, iou
        and max_det (read back from the file and compared), then check it against the
        runtime's NMS on the torch backend's outputs. ``auto`` runs that check even with
        ``--no-verify`` (it decides the form) and, when it fails, exports the raw outputs
        instead and says why; ``graph`` keeps the file and its failing checks (the export
        then fails with their numbers).
        """
        from export.fastsam import nms_choice

        config, mode = self.config, self.config.fastsam_nms
        settings = fastsam_settings(config)
        if config.verify or mode == "auto":
            self.fastsam_check = FastSAMParity(
                self.reference("fastsam"), config.fastsam_imgsz, settings, seed=config.seed
            )
        checks, baked, record = [], None, None
        reason = "requested (--fastsam-nms runtime)"
        if mode != "runtime":
            graph, baked, checks, record = self._fastsam_with_nms(settings)
            self.fastsam_in_graph, reason = nms_choice(mode, checks)
            if not self.fastsam_in_graph:
                self.echo(f"  fastsam.onnx: NMS kept out of the graph (the runtime runs it): "
                          f"{reason}")  # fmt: skip
                (self.out / "fastsam.onnx").unlink()
        if not self.fastsam_in_graph:
            phase = "export_s" if mode == "runtime" else "export_without_nms_s"
            graph, record = self._fastsam_raw(phase)
        self.nms_decision = NmsDecision(
            requested=mode, settings=settings, reason=reason, baked=baked, checks=tuple(checks)
        )
        if self.fastsam_in_graph:
            self.echo(
                f"  fastsam.onnx: NMS in the graph (conf {settings.conf:g}, iou "
                f"{settings.iou:g}, max_det {settings.max_det}; {reason})"
            )
        self.add_fp32("fastsam", graph, record if config.verify else None)

    def _fastsam_with_nms(self, settings: NmsSettings):
        """``fastsam.onnx`` with ultralytics' NMS in the graph, its baked settings read back,
        and (when a parity check is set up) its checks and their record."""
        from export.fastsam import check_baked_nms

        with self.timed("fastsam.onnx", "export_s"):
            graph = self._fastsam_onnx(settings)
            baked = check_baked_nms(self.out / "fastsam.onnx", settings)
        self.fastsam_in_graph = True
        checks: list[CheckRecord] = []
        record = None
        if self.fastsam_check is not None:
            with (
                self.timed("fastsam.onnx", "verify_s"),
                onnxruntime_cpu(self.out / "fastsam.onnx", "fastsam") as session,
            ):
                record = self.parity_record("fastsam", session, "fastsam.onnx", "fp32")
                checks = list(record.checks)
        return graph, baked, checks, record

    def _fastsam_raw(self, phase: str) -> tuple[FinalGraph, VerificationRecord | None]:
        """``fastsam.onnx`` with the raw outputs (the runtime runs NMS), and its parity."""
        with self.timed("fastsam.onnx", phase):
            graph = self._fastsam_onnx(None)
        record = None
        if self.config.verify:
            with (
                self.timed("fastsam.onnx", "verify_s"),
                onnxruntime_cpu(self.out / "fastsam.onnx", "fastsam") as session,
            ):
                record = self.parity("fastsam", session, "fastsam.onnx", "fp32")
        return graph, record

    def _fastsam_onnx(self, settings: NmsSettings | None) -> FinalGraph:
        """Export ``fastsam.onnx`` with ultralytics: NMS in the graph with ``settings``, or
        raw outputs for None."""
        from export.fastsam import export_fastsam_onnx

        workdir = self.work / ("fastsam_nms" if settings is not None else "fastsam")
        produced, self.ultralytics_version = export_fastsam_onnx(
            self.models.fastsam_weights,
            workdir,
            self.config.fastsam_imgsz,
            self.config.opset,
            nms=settings,
        )
        return self.finalize(produced, self.out / "fastsam.onnx")

    def fp32_prefixes(self, model: str) -> tuple[str, ...]:
        """Subgraphs kept fp32 in half-precision variants: the in-graph pooling weights, and
        FastSAM's in-graph NMS (by node name: every node outside the network)."""
        if model == "fastsam" and self.fastsam_in_graph:
            from export.fastsam import nms_tail_nodes

            return nms_tail_nodes(self.out / self.fp32_files["fastsam"])
        return MATCHER_POOLING_PREFIXES if model == "matcher" and self.form == "masks" else ()

    def fp16(self) -> None:
        from export.fp16 import convert_fp16, describe_kept, fp16_graph_record

        for model, fp32_name in self.fp32_files.items():
            name = f"{model}_fp16.onnx"
            with self.timed(name, "export_s"):
                report = convert_fp16(
                    self.out / fp32_name,
                    self.out / name,
                    fp32_node_prefixes=self.fp32_prefixes(model),
                    check=self.config.verify,
                )
            self.echo(f"  {name}: fp16 weights, fp32 I/O; kept fp32: {describe_kept(report)}")
            record = None
            with self.timed(name, "verify_s"):
                if self.config.verify:
                    with onnxruntime_cpu(self.out / name, model) as session:
                        record = self.parity(model, session, name, "fp16")
            graph = fp16_graph_record(report, self.graphs[fp32_name].opset)
            self.add_file(name, model, "onnx", "fp16", record, graph=graph,
                          external_data=report["external_data"])  # fmt: skip
            self.step(name)

    def int8(self) -> None:
        """The ``*_int8.onnx`` files, verified and gated (``export.int8.stage``)."""
        from export.int8.stage import Int8Stage

        self.int8_stage = Int8Stage(self)
        self.int8_stage()

    def tensorrt(self) -> None:
        """TensorRT engines when possible (``export.engines``); fills ``self.engines``."""
        from export.engines import EngineStage

        self.engines = EngineStage(self)()

    def write_golden(self) -> None:
        """``golden/<model>.npz`` of every model: golden inputs at the real sizes and the
        torch backend's fp32 records (what ``omama-run verify`` replays)."""
        settings = fastsam_settings(self.config)
        for model in self.fp32_files:
            with self.timed(f"golden/{model}.npz", "export_s"):
                cases = golden_cases(model, self.models, self.form, self.config)
                self.golden.append(
                    write_golden_file(self.out, model, cases, self.reference(model), settings)
                )
        total = sum(g.size_bytes for g in self.golden) / 1e6
        self.echo(f"  {golden_io.GOLDEN_DIR}/: {len(self.golden)} files, {total:.2f} MB")

    def replay(self, manifest: Manifest) -> list[VerificationRecord]:
        """The golden files replayed on every file as ``omama-run verify`` replays them
        (``runtime.sessions.open_artifact`` + ``runtime.verification.replay``), and on the
        torch backend rebuilt from ``manifest`` and the weights files."""
        dirs = weights_dirs(self.config)
        records = []
        for choice, entry in replay_runs(manifest):
            with (
                self.timed(entry.path, f"golden_{choice.name}_s"),
                open_artifact(choice, manifest, entry, weights_dirs=dirs) as session,
            ):
                records.append(replay_model(session, manifest, entry.path, entry.model,
                                            entry.precision))  # fmt: skip
        for plan in int8_plans(manifest):
            with self.timed(f"int8 pipeline ({plan.backend})", "golden_s"):
                records.append(golden_agreement(manifest, plan))
        return records


def export_artifacts(
    config: ExportConfig, echo: Callable[[str], None] = print, progress: bool = True
) -> ExportResult:
    """Run the export described by ``config``; returns the manifest and every record. The
    artifacts folder is locked while it is written (:func:`runtime.locks.folder_lock`).

    Raises OmamaError for missing weights (naming each and where it comes from), for a
    graph that fails the checker, and, after writing the manifest, for failed checks
    (naming the file, backend and output).
    """
    import torch
    from tqdm import tqdm

    validate(config)
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with folder_lock(out, "omama export"):
        models_count = 3 + int(config.include_fastsam)
        total = 5 + models_count * (1 + int(config.fp16)) + int(config.int8) * (models_count - 1)
        bar = tqdm(total=total, desc="export", unit="step", disable=not progress, leave=False)

        def step(label: str) -> None:
            bar.set_postfix_str(label)
            bar.update(1)

        try:
            with temporary_dir(out) as work, torch.no_grad():
                models = build_models(config, work)
                # Only now that the inputs are known to load: the old export goes.
                clear_previous(out)
                step("models")
                run = _Export(config, models, work, echo, step)
                echo(models.describe(config.random_init))
                for note in models.notes:
                    echo(note)
                run.backbones()
                run.matcher()
                if config.include_fastsam:
                    run.fastsam()
                if config.fp16:
                    run.fp16()
                if config.int8:
                    run.int8()
                run.tensorrt()
                step("engines")
                run.write_golden()
                step("golden")
                manifest = build_manifest(run)
                manifest.root = out
                stamp_facts(manifest)  # before the replay: it runs the stamped files
                if config.verify:
                    records = [*run.records, *run.replay(manifest)]
                    if run.int8_stage is not None:  # an int8 replay failed: which layers?
                        records += run.int8_stage.explain(records)
                    manifest.verification = verification_section(config, records, run.golden)
                step("golden replay")
                write_manifest(out, manifest)
                step("manifest")
        finally:
            bar.close()

        records = list(manifest.verification.records)
        result = ExportResult(manifest, records, run.engines.note, run.timings)
        if config.verify:
            echo(format_table(records))
        failures = result.failures()
        if failures:
            named = "; ".join(failures[:3])
            more = f" (+{len(failures) - 3} more)" if len(failures) > 3 else ""
            hints = "".join(f"{h}; " for h in (run.int8_stage.hints if run.int8_stage else ()))
            raise OmamaError(
                f"verification failed: {named}{more}; {hints}{out / MANIFEST_NAME} records "
                "every result"
            )
        if config.sign_key is not None:  # the finished folder, as it is now, and nothing else
            result.signature = sign_folder(out, config.sign_key)
        return result
