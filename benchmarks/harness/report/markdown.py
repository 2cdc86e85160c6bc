"""report.md: summary, stage tables, official metrics, warnings, methods, environment.

:func:`markdown` joins one function per section; each returns its lines.
"""

from __future__ import annotations

from collections.abc import Sequence

from benchmarks.harness.report.summary import SUMMARY_HEADER, fidelity_warnings, summary_cells
from benchmarks.harness.report.tables import (
    STAGE_TITLES,
    fmt,
    markdown_table,
    not_measured,
    ok_rows,
    stage_mean,
)
from benchmarks.harness.stats import END_TO_END
from runtime.pipeline import STAGES

SUMMARY_LEGEND = (
    "*size MB*: the model files the row runs (torch: the fp32 ONNX files, same weights). "
    "*IoU vs torch fp32* (final masks), *argmax agree %*, *max sim err*: fidelity vs the "
    "torch fp32 row (see Methods). *ms/pair*: mean end-to-end latency of one frame pair with "
    "all its objects; *obj-matches/s*: pairs/s x objects per frame. *x reference*: speed-up "
    "over the O-MaMa reference shape measured in this run. *host MB*: peak resident memory "
    "of the row's process; *device MB*: peak GPU memory."
)
STAGES_LEGEND = (
    "*end to end* is timed around the whole pair; it exceeds the sum of the stages by "
    "the glue between them. Pipeline rows: *descriptors* computes the pooling weights of "
    "all masks (numpy), *pooling + matcher* is one matcher-graph call for all objects. "
    "Reference row: every stage runs once per object, *descriptors* is the per-mask "
    "loop on the upsampled map, *pooling + matcher* the matcher alone."
)
CANDIDATES_LEGEND = (
    "*synthetic target found %*: how often the fidelity pass chose the object's own "
    "mask among the fixed candidates of the synthetic pairs (a sanity figure, not a "
    "benchmark of accuracy: see the GT section for that)."
)
REFERENCE_METHOD = (
    "- Reference row: O-MaMa's shape on the same torch models: per object, preprocessing, "
    "FastSAM, both backbones, descriptors by a Python loop over the masks on the "
    "upsampled map, and the matcher with one object (standard attention order)."
)


def _heading(report: dict) -> list[str]:
    art, config = report["artifacts"], report["config"]
    weights = (
        ". **Random weights**: latency and fidelity are meaningful, accuracy is not."
        if art["random_init"]
        else "."
    )
    weights += f" Weight profile: {art['weight_profile']}." if art.get("weight_profile") else ""
    fastsam = f"FastSAM {art.get('fastsam') or 'not exported'}" + (
        f" at {art['fastsam_imgsz']} px" if art.get("fastsam") else ""
    )
    samples = config["num_pairs"] * config["repeats"]
    return [
        "# omama bench",
        "",
        f"Artifacts `{art['path']}`: {art['direction']}, backbone {art.get('backbone')}, "
        f"matcher input `{art.get('matcher_input')}`, {fastsam}{weights}",
        "",
        f"Device `{config['device']}`; {config['num_pairs']} frame pairs x "
        f"{config['objects_per_frame']} objects; warm-up calls per row: {config['warmup']}; "
        f"timed passes: {config['repeats']} ({samples} samples per row; reference row: "
        f"{config.get('reference_repeats', config['repeats'])}); threads: "
        f"{config['threads'] or 'each backend default'}. Inputs: {report['inputs']}.",
    ]


def _summary(report: dict) -> list[str]:
    missing = not_measured(report)
    table = markdown_table(
        SUMMARY_HEADER, [summary_cells(r) for r in report["rows"]], "ll" + "r" * 14
    )
    lines = ["", "## Summary", "", table, "", *[f"- {line}" for line in missing]]
    return lines + ([""] if missing else []) + [SUMMARY_LEGEND]


def _fidelity_notes(report: dict) -> list[str]:
    warnings = fidelity_warnings(report)
    if not warnings and not report.get("fidelity_note"):
        return []
    lines = ["", "## Fidelity notes", ""] + [f"- **Warning**: {w}" for w in warnings]
    if report.get("fidelity_note"):
        lines.append(f"- {report['fidelity_note']}")
    return lines


def _stage_means(good: list[dict]) -> list[str]:
    header = ["row", *(STAGE_TITLES[s] for s in STAGES), "sum of stages", "end to end"]
    matrix = []
    for row in good:
        means = [stage_mean(row, s) for s in STAGES]
        total = sum(m for m in means if m is not None)
        e2e = stage_mean(row, END_TO_END)
        matrix.append([row["label"], *(fmt(m, 2) for m in means), fmt(total, 2), fmt(e2e, 2)])
    return [
        "",
        "## Mean latency per stage (ms)",
        "",
        markdown_table(header, matrix),
        "",
        STAGES_LEGEND,
    ]


def _stage_tables(good: list[dict]) -> list[str]:
    lines = []
    header = ["row", "mean ms", "p50 ms", "p90 ms", "p99 ms", "max ms", "% of e2e"]
    for stage in (*STAGES, END_TO_END):
        table = []
        for row in good:
            stats = row["stages"][stage]
            e2e = stage_mean(row, END_TO_END)
            mean = stats["mean_ms"]
            share = 100.0 * mean / e2e if e2e and mean is not None else None
            percentiles = (stats[k] for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms"))
            table.append(
                [row["label"], fmt(mean, 2), *(fmt(v, 2) for v in percentiles), fmt(share, 1)]
            )
        lines += ["", f"### {STAGE_TITLES[stage]}", "", markdown_table(header, table)]
    return lines


def _device_times(good: list[dict]) -> list[str]:
    device_rows = [r for r in good if r.get("device_ms")]
    if not device_rows:
        return []
    roles = ("fastsam", "backbone_src", "backbone_dst", "matcher")
    table = [
        [r["label"], *(fmt((r["device_ms"].get(s) or {}).get("mean_ms"), 2) for s in roles)]
        for r in device_rows
    ]
    header = ["row", "FastSAM", "backbone src", "backbone dst", "matcher"]
    return [
        "",
        "### GPU time per model call (CUDA events, mean ms)",
        "",
        markdown_table(header, table),
    ]


def _candidates(good: list[dict]) -> list[str]:
    table = []
    for r in good:
        cands = r["candidates"]
        conf = cands["fastsam_conf"]
        table.append(
            [
                r["label"],
                cands["source"],
                fmt(cands["mean"], 1),
                fmt(conf, 3) if conf is not None else "-",
                fmt(r.get("fidelity_targets_found_pct"), 1),
            ]
        )
    header = ["row", "source", "mean per frame", "FastSAM conf", "synthetic target found %"]
    return ["", "### Candidates", "", markdown_table(header, table), "", CANDIDATES_LEGEND]


def _score(good: list[dict]) -> list[str]:
    scored = [r for r in good if r.get("score")]
    if not scored:
        return []
    first = scored[0]["score"]
    keys = ("iou", "shape_acc", "location_score", "balanced_acc")
    counts = ("observations", "precomputed_frames", "fastsam_frames")
    table = [
        [r["label"], *(fmt(r["score"].get(k), 4) for k in keys)]
        + [str(r["score"].get(k)) for k in counts]
        for r in scored
    ]
    where = (
        f"`{first['root']}`, {first['takes']} takes"
        + (f" of split {first['split']}" if first.get("split") else "")
        + (
            f", at most {first['frames_per_take']} frames each"
            if first.get("frames_per_take")
            else ""
        )
        + f", protocol `{first['protocol']}`."
    )
    header = ["row", "IoU", *keys[1:], "observations", "precomputed cand. frames", "FastSAM frames"]
    return ["", "## Official metrics on the GT", "", where, "", markdown_table(header, table)]


def _failed_and_notes(report: dict) -> list[str]:
    lines = []
    failed = [r for r in report["rows"] if r.get("status") == "failed"]
    if failed:
        lines += ["", "## Failed rows", ""]
        lines += [f"- {r['label']}: {r.get('reason')} (log: `{r.get('log')}`)" for r in failed]
    if report.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report["notes"]]
    return lines


def _loads(values: Sequence[float] | None) -> str:
    return "-" if not values else " / ".join(f"{v:.2f}" for v in values)


def _methods_and_environment(report: dict, good: list[dict]) -> list[str]:
    env = report["environment"]
    versions = ", ".join(f"{k} {v}" for k, v in env.get("versions", {}).items() if v)
    gpus = ", ".join(f"{g['name']} ({g['memory_total']})" for g in env.get("gpus", [])) or "none"
    git = env.get("omama_git") or {}
    torch_cuda = next((r["torch_cuda"] for r in good if r.get("torch_cuda")), None)
    cuda = f"; torch CUDA {torch_cuda['cuda']}, cuDNN {torch_cuda['cudnn']}" if torch_cuda else ""
    providers = ", ".join(env.get("onnxruntime_providers") or []) or "-"
    return [
        "",
        "## Methods",
        "",
        f"- Timing: {report['timing_method']}.",
        f"- Memory: {report['memory_method']}.",
        f"- Fidelity: {report['fidelity_method']}.",
        REFERENCE_METHOD,
        "",
        "## Environment",
        "",
        f"- CPU: {env.get('cpu_model')} ({env.get('cpu_count')} logical CPUs, "
        f"{env.get('cpus_usable')} usable); load average at start "
        f"{_loads(env.get('load_average'))}, at end {_loads(env.get('load_average_end'))}",
        f"- GPU: {gpus}; driver {env.get('driver') or '-'}, CUDA (driver) "
        f"{env.get('cuda_driver') or '-'}{cuda}",
        f"- ONNX Runtime providers: {providers}",
        f"- Python {env.get('python')} on {env.get('platform')}",
        f"- Versions: {versions}",
        f"- omama revision: {git.get('revision') or 'unknown'}"
        + (" (with local changes)" if git.get("dirty") else ""),
        f"- Created {report['created_utc']}",
        "",
    ]


def markdown(report: dict) -> str:
    """report.md of a report dict (see the module docstring for its sections)."""
    good = ok_rows(report)
    parts = _heading(report) + _summary(report) + _fidelity_notes(report)
    if good:
        parts += _stage_means(good) + _stage_tables(good) + _device_times(good)
        parts += _candidates(good)
    parts += _score(good) + _failed_and_notes(report) + _methods_and_environment(report, good)
    return "\n".join(parts)
