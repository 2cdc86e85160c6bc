"""Helpers of the benchmarks tests: ``omama bench`` in-process, and a report's rows."""

from __future__ import annotations

import contextlib
import io

from runtime.clikit import new_app, run_app

# The shared bench run (conftest.py): 2 pairs x 2 objects, 2 timed passes.
PAIRS, OBJECTS, REPEATS = 2, 2, 2


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """``omama <argv>`` with only the bench command registered: (exit code, stdout, stderr)."""
    from benchmarks.cli import register

    app = new_app("test")
    register(app)
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = run_app(app, argv)
    return code, stdout.getvalue(), stderr.getvalue()


def row_of(report: dict, label: str) -> dict:
    """The report row labelled ``label``."""
    return next(r for r in report["rows"] if r["label"] == label)
