"""Cells and tables shared by the report's renderers: number formats, markdown and text
tables, stage titles, and the rows that ran."""

from __future__ import annotations

from collections.abc import Sequence

from benchmarks.harness.stats import END_TO_END

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


def fmt(value: float | None, digits: int = 1, suffix: str = "") -> str:
    """``1,234.5`` (``-`` for None)."""
    if value is None:
        return "-"
    return f"{value:,.{digits}f}{suffix}"


def sig(value: float | None) -> str:
    """Small errors in scientific notation, exact zero as 0."""
    if value is None:
        return "-"
    return "0" if value == 0 else f"{value:.2e}"


def ok_rows(report: dict) -> list[dict]:
    """The rows that were measured."""
    return [r for r in report["rows"] if r.get("status") == "ok"]


def not_measured(report: dict) -> list[str]:
    """``label: status: reason`` of every row that did not run."""
    return [
        f"{r['label']}: {r.get('status')}: {r.get('reason') or 'no reason recorded'}"
        for r in report["rows"]
        if r.get("status") != "ok"
    ]


def stage_mean(row: dict, stage: str) -> float | None:
    """Mean ms of ``stage`` in ``row`` (None when the row has no such stage)."""
    return (row.get("stages") or {}).get(stage, {}).get("mean_ms")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str = "") -> str:
    """A markdown table; ``align`` holds one of l/r per column (default: first l, rest r)."""
    align = align or "l" + "r" * (len(header) - 1)
    rule = ["---:" if a == "r" else ":---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
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
