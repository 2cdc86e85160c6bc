"""``omama bench --compare A B``: ratios B / A of the mean stage latencies and throughput.

Reads only what every report.json has had (labels, stages, pairs/s, device, environment),
so reports written before a change of the config keys still compare.
"""

from __future__ import annotations

import os
from typing import Any

from benchmarks.harness.report.files import load_report
from benchmarks.harness.report.tables import STAGE_TITLES, fmt, ok_rows, stage_mean, text_table
from benchmarks.harness.stats import END_TO_END
from runtime.pipeline import STAGES


def compare_reports(a: dict, b: dict) -> dict[str, Any]:
    """Ratios B / A of the mean latencies of every stage for the rows both reports ran,
    and of their throughput; rows only one report has are listed by name."""
    rows_a = {r["label"]: r for r in ok_rows(a)}
    rows_b = {r["label"]: r for r in ok_rows(b)}
    rows = []
    for label in (label for label in rows_a if label in rows_b):
        ra, rb = rows_a[label], rows_b[label]
        stages = {}
        for stage in (*STAGES, END_TO_END):
            ma, mb = stage_mean(ra, stage), stage_mean(rb, stage)
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
                    fmt(values["a_ms"], 2),
                    fmt(values["b_ms"], 2),
                    fmt(values["ratio"], 2, "x"),
                ]
            )
        pairs = row["pairs_per_s"]
        table.append(
            [
                row["label"],
                "pairs/s",
                fmt(pairs["a"], 2),
                fmt(pairs["b"], 2),
                fmt(pairs["ratio"], 2, "x"),
            ]
        )
    if table:
        lines.append(text_table(["row", "stage", "A ms", "B ms", "B/A"], table))
        lines.append("B/A below 1: B is faster for ms (and slower for pairs/s).")
    else:
        lines.append("no row was measured in both reports")
    for side in ("only_a", "only_b"):
        if comparison[side]:
            lines.append(f"only in {side[-1].upper()}: {', '.join(comparison[side])}")
    return "\n".join(lines)


def compare_files(a_path: str | os.PathLike, b_path: str | os.PathLike) -> str:
    """The text of ``omama bench --compare A B``: two report.json files (or their folders)."""
    return format_comparison(compare_reports(load_report(a_path), load_report(b_path)))
