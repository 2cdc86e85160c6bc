"""``omama bench`` reports: report.json, report.md, latency.png, and ``--compare``.

``report.md`` opens with a summary table in the shape of ``yolo benchmark`` (one row per
backend x precision: status, size, fidelity, latency, throughput, memory), then the mean
latency of every stage per row, one table per stage with its percentiles, the official
metrics when ``--gt`` was given, warnings where a precision changes the answers (as
NanoSAM's table notes where fp16 broke a model), how everything was measured, and the
machine. ``report.json`` holds the same and every raw sample. ``latency.png`` stacks the
mean stage latencies of each row.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.harness import END_TO_END, STAGES
from runtime.atomic import atomic_path, write_json
from runtime.errors import OmamaError

STAGE_TITLES = {
    "preprocess": "preprocess",
    "fastsam": "FastSAM",
    "backbone_src": "backbone src",
    "backbone_dst": "backbone dst",
    "descriptors": "descriptors",
    "matcher": "pooling + matcher",
    "postprocess": "postprocess",
    END_TO_END: "end to end",
}
# Below these a precision is said to change the answers (the report's warnings).
AGREEMENT_WARN_PCT = 99.0
MASK_IOU_WARN = 0.99
REPORT_JSON, REPORT_MD, LATENCY_PNG = "report.json", "report.md", "latency.png"
_COLOURS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3")


# ----------------------------------------------------------------------------- helpers


def _fmt(value: float | None, digits: int = 1, suffix: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}{suffix}"


def _sig(value: float | None) -> str:
    """Small errors in scientific notation, exact zero as 0."""
    if value is None:
        return "-"
    return "0" if value == 0 else f"{value:.2e}"


def ok_rows(report: dict) -> list[dict]:
    return [r for r in report["rows"] if r.get("status") == "ok"]


def _status(row: dict) -> str:
    return str(row.get("status", "?"))


def not_measured(report: dict) -> list[str]:
    """``label: status: reason`` of every row that did not run."""
    return [
        f"{r['label']}: {r.get('status')}: {r.get('reason') or 'no reason recorded'}"
        for r in report["rows"]
        if r.get("status") != "ok"
    ]


def _stage_mean(row: dict, stage: str) -> float | None:
    return (row.get("stages") or {}).get(stage, {}).get("mean_ms")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str = "") -> str:
    """A markdown table; ``align`` holds one of l/r per column (default: first l, rest r)."""
    align = align or "l" + "r" * (len(header) - 1)
    rule = ["---:" if a == "r" else ":---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table for the terminal (first column left-aligned)."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    out = []
    for line in (header, *rows):
        cells = [
            str(c).ljust(w) if i == 0 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        ]
        out.append("  ".join(cells))
    return "\n".join(out)


# ----------------------------------------------------------------------------- summary


SUMMARY_HEADER = (
    "row",
    "status",
    "size MB",
    "IoU vs torch fp32",
    "argmax agree %",
    "max sim err",
    "GT IoU",
    "ms/pair",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "pairs/s",
    "obj-matches/s",
    "x reference",
    "host MB",
    "device MB",
)


def summary_cells(row: dict) -> list[str]:
    """One summary-table row (see :data:`SUMMARY_HEADER`)."""
    cells = [row["label"], _status(row), _fmt(row.get("size_mb"))]
    if row.get("status") != "ok":
        return cells + ["-"] * (len(SUMMARY_HEADER) - len(cells))
    fid = row.get("fidelity")
    e2e = row["stages"][END_TO_END]
    gt = row.get("gt") or {}
    memory = row.get("memory") or {}
    cells += [
        _fmt(fid["mean_mask_iou"], 4) if fid else "n/a",
        _fmt(fid["argmax_agreement_pct"], 1) if fid else "n/a",
        _sig(fid["max_abs_similarity_error"]) if fid else "n/a",
        _fmt(gt.get("iou"), 4) if gt else "-",
        _fmt(e2e["mean_ms"]),
        _fmt(e2e["p50_ms"]),
        _fmt(e2e["p90_ms"]),
        _fmt(e2e["p99_ms"]),
        _fmt(row.get("pairs_per_s"), 2),
        _fmt(row.get("object_matches_per_s"), 2),
        _fmt(row.get("speedup_vs_reference"), 1, "x"),
        _fmt(memory.get("peak_host_rss_mb"), 0),
        _fmt(memory.get("peak_device_mb"), 0) if "peak_device_mb" in memory else "-",
    ]
    return cells


def format_summary(report: dict) -> str:
    """The summary table as plain text (what ``omama bench`` prints)."""
    config = report["config"]
    lines = [
        f"omama bench: {report['artifacts']['path']} ({report['artifacts']['direction']}"
        + (", random weights" if report["artifacts"]["random_init"] else "")
        + f") on {config['device']}, {config['pairs']} pairs x {config['objects_per_frame']} "
        f"objects, {config['repeats']} repeats",
        _text_table(SUMMARY_HEADER, [summary_cells(r) for r in report["rows"]]),
    ]
    lines += [f"  {line}" for line in not_measured(report)]
    if report.get("fidelity_note"):
        lines.append(f"fidelity: {report['fidelity_note']}")
    lines += [f"warning: {w}" for w in fidelity_warnings(report)]
    return "\n".join(lines)


def fidelity_warnings(report: dict) -> list[str]:
    """Rows whose answers differ from the torch fp32 reference beyond the thresholds."""
    out = []
    for row in ok_rows(report):
        fid = row.get("fidelity")
        if not fid:
            continue
        if fid["argmax_agreement_pct"] < AGREEMENT_WARN_PCT or fid["mean_mask_iou"] < MASK_IOU_WARN:
            out.append(
                f"{row['label']} changes the answers: {fid['argmax_agreement_pct']:.1f}% argmax "
                f"agreement, mean mask IoU {fid['mean_mask_iou']:.4f} vs torch fp32 (max "
                f"similarity error {fid['max_abs_similarity_error']:.2e})"
            )
    return out


# ----------------------------------------------------------------------------- markdown


def markdown(report: dict) -> str:
    """report.md: summary, stage tables, GT, warnings, methods, environment."""
    art, config, env = report["artifacts"], report["config"], report["environment"]
    rows, good = report["rows"], ok_rows(report)
    parts = [
        "# omama bench",
        "",
        f"Artifacts `{art['path']}`: {art['direction']}, backbone {art.get('backbone')}, "
        f"matcher input `{art.get('matcher_input')}`, "
        f"FastSAM {art.get('fastsam') or 'not exported'}"
        + (f" at {art['fastsam_imgsz']} px" if art.get("fastsam") else "")
        + (
            ". **Random weights**: latency and fidelity are meaningful, accuracy is not."
            if art["random_init"]
            else "."
        ),
        "",
        f"Device `{config['device']}`; {config['pairs']} frame pairs x "
        f"{config['objects_per_frame']} objects; warm-up calls per row: {config['warmup']}; "
        f"timed passes: {config['repeats']} ({config['pairs'] * config['repeats']} samples per "
        f"row; reference row: {config.get('reference_repeats', config['repeats'])}); threads: "
        f"{config['threads'] or 'each backend default'}. "
        f"Inputs: {report['inputs']}.",
        "",
        "## Summary",
        "",
        _table(SUMMARY_HEADER, [summary_cells(r) for r in rows], "ll" + "r" * 14),
        "",
        *[f"- {line}" for line in not_measured(report)],
        *([""] if not_measured(report) else []),
        "*size MB*: the model files the row runs (torch: the fp32 ONNX files, same weights). "
        "*IoU vs torch fp32* (final masks), *argmax agree %*, *max sim err*: fidelity vs the "
        "torch fp32 row "
        "(see Methods). *ms/pair*: mean end-to-end latency of one frame pair with all its "
        "objects; *obj-matches/s*: pairs/s x objects per frame. *x reference*: speed-up over "
        "the O-MaMa reference shape measured in this run. *host MB*: peak resident memory of "
        "the row's process; *device MB*: peak GPU memory.",
    ]
    warnings = fidelity_warnings(report)
    if warnings or report.get("fidelity_note"):
        parts += ["", "## Fidelity notes", ""]
        parts += [f"- **Warning**: {w}" for w in warnings]
        if report.get("fidelity_note"):
            parts.append(f"- {report['fidelity_note']}")
    if good:
        header = ["row", *(STAGE_TITLES[s] for s in STAGES), "sum of stages", "end to end"]
        matrix = []
        for row in good:
            means = [_stage_mean(row, s) for s in STAGES]
            total = sum(m for m in means if m is not None)
            matrix.append(
                [
                    row["label"],
                    *(_fmt(m, 2) for m in means),
                    _fmt(total, 2),
                    _fmt(_stage_mean(row, END_TO_END), 2),
                ]
            )
        parts += [
            "",
            "## Mean latency per stage (ms)",
            "",
            _table(header, matrix),
            "",
            "*end to end* is timed around the whole pair; it exceeds the sum of the stages by "
            "the glue between them. Pipeline rows: *descriptors* computes the pooling weights of "
            "all masks (numpy), *pooling + matcher* is one matcher-graph call for all objects. "
            "Reference row: every stage runs once per object, *descriptors* is the per-mask "
            "loop on the upsampled map, *pooling + matcher* the matcher alone.",
        ]
        for stage in (*STAGES, END_TO_END):
            table = []
            for row in good:
                stats = row["stages"][stage]
                e2e = _stage_mean(row, END_TO_END)
                share = (
                    100.0 * stats["mean_ms"] / e2e if e2e and stats["mean_ms"] is not None else None
                )
                table.append(
                    [
                        row["label"],
                        _fmt(stats["mean_ms"], 2),
                        _fmt(stats["p50_ms"], 2),
                        _fmt(stats["p90_ms"], 2),
                        _fmt(stats["p99_ms"], 2),
                        _fmt(stats["max_ms"], 2),
                        _fmt(share, 1),
                    ]
                )
            parts += [
                "",
                f"### {STAGE_TITLES[stage]}",
                "",
                _table(
                    ["row", "mean ms", "p50 ms", "p90 ms", "p99 ms", "max ms", "% of e2e"], table
                ),
            ]
        device_rows = [r for r in good if r.get("device_ms")]
        if device_rows:
            table = [
                [
                    r["label"],
                    *(
                        _fmt((r["device_ms"].get(s) or {}).get("mean_ms"), 2)
                        for s in ("fastsam", "backbone_src", "backbone_dst", "matcher")
                    ),
                ]
                for r in device_rows
            ]
            parts += [
                "",
                "### GPU time per model call (CUDA events, mean ms)",
                "",
                _table(["row", "FastSAM", "backbone src", "backbone dst", "matcher"], table),
            ]
        cand = [
            [
                r["label"],
                r["candidates"]["source"],
                _fmt(r["candidates"]["mean"], 1),
                _fmt(r["candidates"]["fastsam_conf"], 3)
                if r["candidates"]["fastsam_conf"] is not None
                else "-",
                _fmt(r.get("fidelity_targets_found_pct"), 1),
            ]
            for r in good
        ]
        parts += [
            "",
            "### Candidates",
            "",
            _table(
                ["row", "source", "mean per frame", "FastSAM conf", "synthetic target found %"],
                cand,
            ),
            "",
            "*synthetic target found %*: how often the fidelity pass chose the object's own "
            "mask among the fixed candidates of the synthetic pairs (a sanity figure, not a "
            "benchmark of accuracy: see the GT section for that).",
        ]
    gt_rows = [r for r in good if r.get("gt")]
    if gt_rows:
        first = gt_rows[0]["gt"]
        table = [
            [
                r["label"],
                _fmt(r["gt"].get("iou"), 4),
                _fmt(r["gt"].get("shape_acc"), 4),
                _fmt(r["gt"].get("location_score"), 4),
                _fmt(r["gt"].get("balanced_acc"), 4),
                str(r["gt"].get("observations")),
                str(r["gt"].get("precomputed_frames")),
                str(r["gt"].get("fastsam_frames")),
            ]
            for r in gt_rows
        ]
        parts += [
            "",
            "## Official metrics on the GT",
            "",
            f"`{first['root']}`, {first['takes']} takes"
            + (f" of split {first['split']}" if first.get("split") else "")
            + (
                f", at most {first['frames_per_take']} frames each"
                if first.get("frames_per_take")
                else ""
            )
            + f", protocol `{first['protocol']}`.",
            "",
            _table(
                [
                    "row",
                    "IoU",
                    "shape_acc",
                    "location_score",
                    "balanced_acc",
                    "observations",
                    "precomputed cand. frames",
                    "FastSAM frames",
                ],
                table,
            ),
        ]
    failed = [r for r in rows if r.get("status") == "failed"]
    if failed:
        parts += ["", "## Failed rows", ""]
        for row in failed:
            parts.append(f"- {row['label']}: {row.get('reason')} (log: `{row.get('log')}`)")
    if report.get("notes"):
        parts += ["", "## Notes", ""] + [f"- {n}" for n in report["notes"]]
    versions = ", ".join(f"{k} {v}" for k, v in env.get("versions", {}).items() if v)
    gpus = ", ".join(f"{g['name']} ({g['memory_total']})" for g in env.get("gpus", [])) or "none"
    git = env.get("omama_git") or {}
    torch_cuda = next((r["torch_cuda"] for r in good if r.get("torch_cuda")), None)
    parts += [
        "",
        "## Methods",
        "",
        f"- Timing: {report['timing_method']}.",
        f"- Memory: {report['memory_method']}.",
        f"- Fidelity: {report['fidelity_method']}.",
        "- Reference row: O-MaMa's shape on the same torch models: per object, preprocessing, "
        "FastSAM, both backbones, descriptors by a Python loop over the masks on the "
        "upsampled map, and the matcher with one object (standard attention order).",
        "",
        "## Environment",
        "",
        f"- CPU: {env.get('cpu_model')} ({env.get('cpu_count')} logical CPUs, "
        f"{env.get('cpus_usable')} usable); load average at start "
        f"{_loads(env.get('load_average'))}, at end {_loads(env.get('load_average_end'))}",
        f"- GPU: {gpus}; driver {env.get('driver') or '-'}, CUDA (driver) "
        f"{env.get('cuda_driver') or '-'}"
        + (f"; torch CUDA {torch_cuda['cuda']}, cuDNN {torch_cuda['cudnn']}" if torch_cuda else ""),
        f"- ONNX Runtime providers: {', '.join(env.get('onnxruntime_providers') or []) or '-'}",
        f"- Python {env.get('python')} on {env.get('platform')}",
        f"- Versions: {versions}",
        f"- omama revision: {git.get('revision') or 'unknown'}"
        + (" (with local changes)" if git.get("dirty") else ""),
        f"- Created {report['created_utc']}",
        "",
    ]
    return "\n".join(parts)


def _loads(values: Sequence[float] | None) -> str:
    return "-" if not values else " / ".join(f"{v:.2f}" for v in values)


# ----------------------------------------------------------------------------- plot


def plot_latency(report: dict, path: str | os.PathLike) -> Path | None:
    """Stacked bars of the mean stage latencies per row; None (and nothing written) when
    matplotlib is missing or no row ran."""
    good = ok_rows(report)
    if not good:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    labels = [r["label"] for r in good]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.4 * len(good) + 3.0), 4.8), dpi=120)
    bottoms = [0.0] * len(good)
    for stage, colour in zip(STAGES, _COLOURS, strict=True):
        values = [_stage_mean(r, stage) or 0.0 for r in good]
        ax.bar(labels, values, bottom=bottoms, label=STAGE_TITLES[stage], color=colour)
        bottoms = [b + v for b, v in zip(bottoms, values, strict=True)]
    for i, row in enumerate(good):
        e2e = _stage_mean(row, END_TO_END)
        ax.annotate(
            f"{e2e:,.1f} ms",
            (i, bottoms[i]),
            ha="center",
            va="bottom",
            fontsize=8,
            xytext=(0, 2),
            textcoords="offset points",
        )
    config = report["config"]
    ax.set_ylabel("mean latency per frame pair (ms)")
    ax.set_title(
        f"omama bench: {config['objects_per_frame']} objects per pair on {config['device']}"
        + (" (random weights)" if report["artifacts"]["random_init"] else "")
    )
    ax.tick_params(axis="x", labelrotation=20)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_ylim(0, max(bottoms) * 1.12 or 1.0)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)


# ----------------------------------------------------------------------------- files


def write_reports(report: dict, out_dir: str | os.PathLike) -> dict[str, Path | None]:
    """report.json, report.md and latency.png in ``out_dir``; their paths (png: None when
    it could not be drawn, which report.md then says)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png = plot_latency(report, out / LATENCY_PNG)
    if png is None:
        why = "no row ran" if not ok_rows(report) else "matplotlib is not installed"
        report.setdefault("notes", []).append(f"latency.png not written: {why}")
    write_json(out / REPORT_JSON, report, indent=2)
    with atomic_path(out / REPORT_MD, suffix=".md") as tmp:
        tmp.write_text(markdown(report), encoding="utf-8")
    return {"json": out / REPORT_JSON, "md": out / REPORT_MD, "png": png}


def load_report(path: str | os.PathLike) -> dict:
    """A report.json written by ``omama bench``, or an OmamaError naming the file."""
    path = Path(path)
    if path.is_dir():
        path = path / REPORT_JSON
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise OmamaError(f"bench report {path} does not exist") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OmamaError(f"bench report {path} is not readable JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != "omama.bench":
        raise OmamaError(f"{path} is not an omama bench report (report.json of `omama bench`)")
    return data


# ----------------------------------------------------------------------------- compare


def compare_reports(a: dict, b: dict) -> dict[str, Any]:
    """Ratios B / A of the mean latencies of every stage for the rows both reports ran,
    and of their throughput; rows only one report has are listed by name."""
    rows_a = {r["label"]: r for r in ok_rows(a)}
    rows_b = {r["label"]: r for r in ok_rows(b)}
    common = [label for label in rows_a if label in rows_b]
    rows = []
    for label in common:
        ra, rb = rows_a[label], rows_b[label]
        stages = {}
        for stage in (*STAGES, END_TO_END):
            ma, mb = _stage_mean(ra, stage), _stage_mean(rb, stage)
            ratio = mb / ma if ma and mb is not None else None
            stages[stage] = {"a_ms": ma, "b_ms": mb, "ratio": ratio}
        pa, pb = ra.get("pairs_per_s"), rb.get("pairs_per_s")
        rows.append(
            {
                "label": label,
                "stages": stages,
                "pairs_per_s": {"a": pa, "b": pb, "ratio": pb / pa if pa and pb else None},
            }
        )
    return {
        "a": _describe(a),
        "b": _describe(b),
        "rows": rows,
        "only_a": [label for label in rows_a if label not in rows_b],
        "only_b": [label for label in rows_b if label not in rows_a],
    }


def _describe(report: dict) -> str:
    env = report.get("environment", {})
    gpus = ", ".join(g["name"] for g in env.get("gpus", [])) or "no GPU"
    rev = ((env.get("omama_git") or {}).get("revision") or "unknown")[:10]
    return (
        f"{report['artifacts']['path']} on {report['config']['device']} ({env.get('cpu_model')}, "
        f"{gpus}), omama {rev}, {report['created_utc']}"
    )


def format_comparison(comparison: dict) -> str:
    """The comparison as text: per row and stage A ms, B ms and B/A (below 1: B faster)."""
    lines = [f"A: {comparison['a']}", f"B: {comparison['b']}", ""]
    table = []
    for row in comparison["rows"]:
        for stage, values in row["stages"].items():
            table.append(
                [
                    row["label"],
                    STAGE_TITLES[stage],
                    _fmt(values["a_ms"], 2),
                    _fmt(values["b_ms"], 2),
                    _fmt(values["ratio"], 2, "x"),
                ]
            )
        pairs = row["pairs_per_s"]
        table.append(
            [
                row["label"],
                "pairs/s",
                _fmt(pairs["a"], 2),
                _fmt(pairs["b"], 2),
                _fmt(pairs["ratio"], 2, "x"),
            ]
        )
    if table:
        lines.append(_text_table(["row", "stage", "A ms", "B ms", "B/A"], table))
        lines.append("B/A below 1: B is faster for ms (and slower for pairs/s).")
    else:
        lines.append("no row was measured in both reports")
    for side in ("only_a", "only_b"):
        if comparison[side]:
            lines.append(f"only in {side[-1].upper()}: {', '.join(comparison[side])}")
    return "\n".join(lines)
