"""The ``omama`` command: its sub-commands come from every installed layer.

Layers register through the ``omama.commands`` entry-point group (see pyproject.toml), so
this module never imports export/ or benchmarks/ itself and ``omama --help`` imports no torch.
"""

from __future__ import annotations

import sys

from runtime.clikit import discover_commands, new_app, run_app


def build_app():
    app = new_app(
        "omama: prepare Ego-Exo4D data, train, evaluate, export and benchmark O-MaMa.\n\n"
        "Add --verbose to any command for debug logs and tracebacks."
    )
    discover_commands(app)
    return app


def main() -> None:
    sys.exit(run_app(build_app(), prog_name="omama"))
