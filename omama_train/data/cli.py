"""``omama data ...``: each data module adds its own commands through ``add_commands``.

Modules listed here must import nothing heavy (no torch, no ultralytics) at module level,
so that ``omama --help`` stays fast.
"""

from __future__ import annotations

import importlib

import typer

from runtime.clikit import new_app

COMMAND_MODULES = ("prepare", "pairs", "masks", "synth", "gt", "baseline")


def register(app: typer.Typer) -> None:
    data_app = new_app("Prepare Ego-Exo4D takes: frames, annotations, pairs, candidate masks.")
    for name in COMMAND_MODULES:
        importlib.import_module(f"omama_train.data.{name}").add_commands(data_app)
    app.add_typer(data_app, name="data")
