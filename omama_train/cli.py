"""The ``omama`` command: its sub-commands come from every installed layer.

Layers register through the ``omama.commands`` entry-point group (see pyproject.toml), so
this module never imports export/ or benchmarks/ itself and ``omama --help`` imports no torch.
"""

from __future__ import annotations

import sys

from runtime.clikit import discover_commands, new_app, run_app

# `omama export --random-init official`: the spelling of the issue. typer has no option with
# an optional value, so it is rewritten to `--random-init --random-shapes official` before
# parsing (the words are export.config.RANDOM_SHAPES; this layer may not import export/).
RANDOM_SHAPE_WORDS = ("small", "official")


def build_app():
    app = new_app(
        "omama: prepare Ego-Exo4D data, train, evaluate, export and benchmark O-MaMa.\n\n"
        "Add --verbose to any command for debug logs and tracebacks."
    )
    discover_commands(app)
    return app


def normalise_argv(argv: list[str]) -> list[str]:
    """``export ... --random-init small|official ...`` -> ``export ... --random-init
    --random-shapes small|official ...``; any other command line is returned unchanged
    (only the export sub-command, only when the very next token is one of those words)."""
    args = list(argv)
    command = next((i for i, a in enumerate(args) if not a.startswith("-")), None)
    if command is None or args[command] != "export":
        return args
    out = args[: command + 1]
    for i in range(command + 1, len(args)):
        if args[i] == "--":  # everything after it is an argument, never an option
            return out + args[i:]
        out.append(args[i])
        following = args[i + 1] if i + 1 < len(args) else None
        if args[i] == "--random-init" and following in RANDOM_SHAPE_WORDS:
            out.append("--random-shapes")
    return out


def main(argv: list[str] | None = None) -> None:
    args = normalise_argv(sys.argv[1:] if argv is None else argv)
    sys.exit(run_app(build_app(), args, prog_name="omama"))
