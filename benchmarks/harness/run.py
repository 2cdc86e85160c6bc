"""An ``omama bench`` run: plan the rows, run each in its worker, return the report dict.

:func:`run_bench` validates the options and the artifacts, plans every row
(:mod:`.plan`), runs the torch fp32 row first (its outputs are the fidelity reference),
then every other runnable row, each in a fresh process (:mod:`.worker`), and assembles the
report dict that :mod:`.report` writes. :func:`bench_and_report` is the whole command.
"""

from __future__ import annotations

import datetime as dt
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import load_average
from benchmarks.harness.environment import environment
from benchmarks.harness.inputs import FIDELITY_CANDIDATES
from benchmarks.harness.plan import (
    REFERENCE_ROW,
    BenchConfig,
    RowPlan,
    backend_reasons,
    candidate_source,
    fastsam_conf,
    fidelity_reference_plan,
    plan_rows,
    resolve_device,
    validate_config,
)
from benchmarks.harness.stats import END_TO_END
from benchmarks.harness.worker import RowSpec, run_worker
from runtime.errors import OmamaError

REFERENCE_OUTPUTS = "reference_outputs.npz"
WORK_DIR = ".work"
FIDELITY_ONLY = "_fidelity_"  # results key of a torch row run only for its outputs
MEMORY_METHOD = (
    "host: peak resident set (ru_maxrss) of a fresh worker process per row, including "
    "imports and model loading; device: torch.cuda.max_memory_allocated for torch rows, "
    "nvidia-smi device-wide used memory above its pre-run value for the others"
)
FIDELITY_METHOD = (
    "vs the torch fp32 row on the same inputs: argmax agreement and max |similarity "
    f"difference| on {FIDELITY_CANDIDATES} fixed candidates per frame (FastSAM "
    "excluded, so candidate indices mean the same), mean IoU of the final masks of the "
    "end-to-end run (FastSAM included; two empty masks count as 1)"
)


def timing_method(device: str) -> str:
    """How the report's latencies were taken on ``device``."""
    if device.startswith("cuda"):
        return (
            "time.perf_counter around each stage and around each whole pair, after warm-up; "
            "every model call returns host arrays, so its GPU work is complete when the clock "
            "stops (torch copies outputs to the host, TensorRT synchronises its CUDA stream, "
            "ONNX Runtime's run() is synchronous); the torch backend also records CUDA events "
            "around each model call (device_ms)"
        )
    return (
        "time.perf_counter (host wall clock) around each stage and around each whole pair, "
        "after warm-up"
    )


class _Run:
    """The settings every row of one run shares: what :func:`run_bench` resolved once."""

    def __init__(self, config: BenchConfig, device: str, source: str, conf: float | None):
        self.config, self.device, self.source, self.conf = config, device, source, conf
        self.work = Path(config.out_dir) / WORK_DIR
        self.ref_path = self.work / REFERENCE_OUTPUTS

    def spec(self, plan: RowPlan, **overrides: Any) -> RowSpec:
        """The worker spec of ``plan``; ``overrides`` replace fields."""
        config, name = self.config, plan.label.replace(" ", "_")
        base: dict[str, Any] = dict(
            artifacts=str(config.artifacts),
            backend=plan.backend,
            precision=plan.precision,
            device=self.device,
            kind=plan.kind,
            threads=config.threads,
            num_pairs=config.num_pairs,
            objects_per_frame=config.objects_per_frame,
            repeats=config.repeats,
            warmup=config.warmup,
            seed=config.seed,
            candidate_source=self.source,
            fastsam_conf=self.conf,
            weights_dirs=[str(d) for d in config.weights_dirs],
            work_dir=str(self.work),
            result_path=str(self.work / f"{name}.result.json"),
        )
        if plan.kind == "reference":
            base["repeats"] = config.reference_repeats
        if config.score_root is not None and plan.kind == "pipeline":
            base.update(
                score_root=str(config.score_root),
                score_split=config.score_split,
                score_frames=config.score_frames,
            )
        return RowSpec(**(base | overrides))


def _row_order(
    run: _Run, plans: list[RowPlan], reference_plan: RowPlan | None
) -> list[tuple[RowPlan, RowSpec]]:
    """The fidelity reference first (untimed when torch fp32 was not asked for), then
    every other runnable row."""
    order: list[tuple[RowPlan, RowSpec]] = []
    if reference_plan is not None:
        asked = any(reference_plan is p for p in plans)
        extra = {} if asked else {"repeats": 0, "warmup": 0, "score_root": None}
        ref = str(run.ref_path)
        order.append(
            (
                reference_plan,
                run.spec(reference_plan, save_outputs=ref, reference_outputs=ref, **extra),
            )
        )
    for plan in plans:
        if plan.reason is None and plan is not reference_plan:
            order.append((plan, run.spec(plan)))
    return order


def _run_rows(
    run: _Run,
    order: list[tuple[RowPlan, RowSpec]],
    plans: list[RowPlan],
    reference_plan: RowPlan | None,
    progress: bool,
) -> tuple[dict[str, dict], str | None]:
    """Each row in its worker: results by label, and the note when the reference failed."""
    from tqdm import tqdm

    results: dict[str, dict] = {}
    fidelity_note = None
    bar = tqdm(total=len(order), desc="bench", unit="row", disable=not progress, file=sys.stderr)
    try:
        for plan, spec in order:
            bar.set_postfix_str(plan.label)
            if spec.reference_outputs is None and run.ref_path.is_file():
                spec.reference_outputs = str(run.ref_path)
            result = run_worker(spec, timeout_s=run.config.timeout_s)
            if plan is reference_plan and result.get("status") != "ok":
                fidelity_note = f"the torch fp32 reference run failed: {result.get('reason')}"
            results[plan.label if any(plan is p for p in plans) else FIDELITY_ONLY] = result
            bar.update(1)
    finally:
        bar.close()
    return results, fidelity_note


def _report_rows(
    plans: list[RowPlan], results: dict[str, dict], fidelity_note: str | None
) -> list[dict[str, Any]]:
    """One row per plan: its result, or why it did not run; speed-ups vs the reference."""
    rows = []
    for plan in plans:
        row: dict[str, Any] = {
            "label": plan.label,
            "kind": plan.kind,
            "backend": plan.backend,
            "precision": plan.precision,
            "size_mb": plan.size_mb,
            "files": plan.files,
        }
        if plan.reason is not None:
            row.update(status="unavailable", reason=plan.reason)
        else:
            row.update(results.get(plan.label, {"status": "failed", "reason": "not run"}))
            row["size_mb"], row["files"] = plan.size_mb, plan.files
            if row.get("status") == "ok" and "fidelity" not in row:
                row["fidelity_note"] = fidelity_note or "n/a"
        rows.append(row)
    ref_row = next(
        (r for r in rows if r["label"] == REFERENCE_ROW and r.get("status") == "ok"), None
    )
    if ref_row is not None:
        ref_mean = ref_row["stages"][END_TO_END]["mean_ms"]
        for row in rows:
            if row.get("status") == "ok" and ref_mean:
                row["speedup_vs_reference"] = ref_mean / row["stages"][END_TO_END]["mean_ms"]
    return rows


def _artifacts_record(config: BenchConfig, manifest: Any) -> dict[str, Any]:
    return {
        "path": str(config.artifacts),
        "direction": manifest.direction,
        "random_init": manifest.random_init,
        "weight_profile": manifest.backbone.weights.profile if manifest.random_weights else None,
        "views": {role: view.to_dict() for role, view in manifest.views.items()},
        "matcher_input": manifest.matcher.input,
        "attention": manifest.matcher.attention,
        "backbone": manifest.backbone.name,
        "fastsam": manifest.fastsam.variant if manifest.fastsam.included else None,
        "fastsam_imgsz": manifest.fastsam.imgsz,
        "engines": manifest.engines.note,
    }


def _config_record(run: _Run) -> dict[str, Any]:
    config = run.config
    return {
        "backends": config.backends,
        "precisions": config.precisions,
        "device": run.device,
        "device_asked": config.device,
        "num_pairs": config.num_pairs,
        "objects_per_frame": config.objects_per_frame,
        "repeats": config.repeats,
        "reference_repeats": config.reference_repeats,
        "warmup": config.warmup,
        "threads": config.threads,
        "seed": config.seed,
        "candidate_source": run.source,
        "fastsam_conf": run.conf,
        "fidelity_candidates": FIDELITY_CANDIDATES,
        "reference": config.reference,
        "score_root": str(config.score_root) if config.score_root else None,
        "score_split": config.score_split,
        "score_frames": config.score_frames,
    }


def _inputs_text(run: _Run, manifest: Any) -> str:
    config = run.config
    src_h, src_w = manifest.views["src"].image_size
    dst_h, dst_w = manifest.views["dst"].image_size
    candidates = (
        "FastSAM on the destination image"
        if run.source == "fastsam"
        else f"{FIDELITY_CANDIDATES} fixed synthetic masks per frame"
    )
    return (
        f"{config.num_pairs} synthetic frame pairs at the model sizes (source {src_w}x{src_h}, "
        f"destination {dst_w}x{dst_h} px), {config.objects_per_frame} objects each "
        f"(seed {config.seed}); candidates: {candidates}"
    )


def run_bench(config: BenchConfig, progress: bool = True) -> dict[str, Any]:
    """Measure every row of ``config`` (one worker process each) and return the report
    dict (:mod:`benchmarks.harness.report` writes it). Raises OmamaError for a bad
    artifacts folder, bad options or a ``--score-root`` without takes."""
    from runtime.manifest import check_artifacts

    validate_config(config)
    manifest = check_artifacts(config.artifacts)
    device = resolve_device(config.device)
    source = candidate_source(config, manifest)
    conf, conf_note = fastsam_conf(config, manifest, source)
    if config.score_root is not None:
        from benchmarks.harness.score import score_takes
        from runtime.egoexo import ProcessedRoot

        score_takes(ProcessedRoot(config.score_root), config.score_split)
    run = _Run(config, device, source, conf)
    run.work.mkdir(parents=True, exist_ok=True)
    env_start = environment()
    plans = plan_rows(config, manifest, device)
    if run.ref_path.exists():
        run.ref_path.unlink()
    reference_plan = fidelity_reference_plan(plans, config, manifest, device)
    order = _row_order(run, plans, reference_plan)
    results, fidelity_note = _run_rows(run, order, plans, reference_plan, progress)
    if reference_plan is None:
        fidelity_note = "no torch fp32 reference: " + (
            backend_reasons(device)["torch"] or "not run"
        )
    notes = [conf_note] if conf_note else []
    if reference_plan is not None and not any(reference_plan is p for p in plans):
        notes.append("torch fp32 was not asked for: it ran untimed, as the fidelity reference")
    if results and all(r.get("status") == "ok" for r in results.values()):
        shutil.rmtree(run.work, ignore_errors=True)  # specs, logs, outputs: only kept for failures
    if manifest.random_init:
        notes.append(
            "the artifacts hold random weights: latency and fidelity are meaningful, "
            "accuracy is not"
        )
    return {
        "format": "omama.bench",
        "schema_version": 2,
        "created_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "artifacts": _artifacts_record(config, manifest),
        "config": _config_record(run),
        "inputs": _inputs_text(run, manifest),
        "timing_method": timing_method(device),
        "memory_method": MEMORY_METHOD,
        "fidelity_method": FIDELITY_METHOD,
        "fidelity_reference": None if fidelity_note else "torch fp32",
        "fidelity_note": fidelity_note,
        "environment": env_start | {"load_average_end": load_average()},
        "rows": _report_rows(plans, results, fidelity_note),
        "notes": notes,
    }


def bench_and_report(config: BenchConfig, echo: Callable[[str], None]) -> dict[str, Any]:
    """The whole ``omama bench``: run, write report.md/json and latency.png to
    ``config.out_dir``, echo the summary; an OmamaError (after writing) when no row ran."""
    from benchmarks.harness.report.files import write_reports
    from benchmarks.harness.report.summary import format_summary
    from benchmarks.harness.report.tables import ok_rows

    report = run_bench(config)
    paths = write_reports(report, config.out_dir)
    echo(format_summary(report))
    written = [str(p) for p in (paths["md"], paths["json"], paths["png"]) if p is not None]
    echo(f"report: {', '.join(written)}")
    if not ok_rows(report):
        raise OmamaError(
            f"no row could be measured (see {paths['md']}): "
            + "; ".join(f"{r['label']}: {r.get('reason')}" for r in report["rows"])
        )
    return report
