"""The summary table (one row per backend x precision, as ``yolo benchmark`` prints) and
the fidelity warnings: what ``omama bench`` prints and report.md opens with."""

from __future__ import annotations

from benchmarks.harness.report.tables import fmt, not_measured, ok_rows, sig, text_table
from benchmarks.harness.stats import END_TO_END

# Below these a precision is said to change the answers (the report's warnings).
AGREEMENT_WARN_PCT = 99.0
MASK_IOU_WARN = 0.99
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
    cells = [row["label"], str(row.get("status", "?")), fmt(row.get("size_mb"))]
    if row.get("status") != "ok":
        return cells + ["-"] * (len(SUMMARY_HEADER) - len(cells))
    fid = row.get("fidelity")
    e2e = row["stages"][END_TO_END]
    score = row.get("score") or {}
    memory = row.get("memory") or {}
    cells += [
        fmt(fid["mean_mask_iou"], 4) if fid else "n/a",
        fmt(fid["argmax_agreement_pct"], 1) if fid else "n/a",
        sig(fid["max_abs_similarity_error"]) if fid else "n/a",
        fmt(score.get("iou"), 4) if score else "-",
        fmt(e2e["mean_ms"]),
        fmt(e2e["p50_ms"]),
        fmt(e2e["p90_ms"]),
        fmt(e2e["p99_ms"]),
        fmt(row.get("pairs_per_s"), 2),
        fmt(row.get("object_matches_per_s"), 2),
        fmt(row.get("speedup_vs_reference"), 1, "x"),
        fmt(memory.get("peak_host_rss_mb"), 0),
        fmt(memory.get("peak_device_mb"), 0) if "peak_device_mb" in memory else "-",
    ]
    return cells


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


def format_summary(report: dict) -> str:
    """The summary table as plain text (what ``omama bench`` prints)."""
    config, art = report["config"], report["artifacts"]
    lines = [
        f"omama bench: {art['path']} ({art['direction']}"
        + (", random weights" if art["random_init"] else "")
        + f") on {config['device']}, {config['num_pairs']} pairs x "
        f"{config['objects_per_frame']} objects, {config['repeats']} repeats",
        text_table(SUMMARY_HEADER, [summary_cells(r) for r in report["rows"]]),
    ]
    lines += [f"  {line}" for line in not_measured(report)]
    if report.get("fidelity_note"):
        lines.append(f"fidelity: {report['fidelity_note']}")
    lines += [f"warning: {w}" for w in fidelity_warnings(report)]
    return "\n".join(lines)
