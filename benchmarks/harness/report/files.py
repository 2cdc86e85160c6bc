"""The report's files: writing report.json, report.md and latency.png; reading report.json."""

from __future__ import annotations

import os
from pathlib import Path

from benchmarks.harness.report.markdown import markdown
from benchmarks.harness.report.plot import plot_latency
from benchmarks.harness.report.tables import ok_rows
from runtime.atomic import atomic_path, write_json
from runtime.errors import OmamaError
from runtime.jsonrecords import read_json_object

REPORT_JSON, REPORT_MD, LATENCY_PNG = "report.json", "report.md", "latency.png"


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
    """A report.json written by ``omama bench`` (or its folder), or an OmamaError naming
    the file."""
    path = Path(path)
    if path.is_dir():
        path = path / REPORT_JSON
    data = read_json_object(path, "bench report")
    if not isinstance(data, dict) or data.get("format") != "omama.bench":
        raise OmamaError(f"{path} is not an omama bench report (report.json of `omama bench`)")
    return data
