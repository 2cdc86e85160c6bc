"""``omama-run``: the lean runtime's command line (no torch)."""

from __future__ import annotations

import json
import sys

import typer

from runtime.clikit import new_app, run_app

app = new_app("omama-run: O-MaMa inference on ONNX Runtime or TensorRT, without torch.")


@app.command("info")
def info_command(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Show runtime library versions, GPUs and usable backends.

    Example: omama-run info --json
    """
    from runtime.info import format_info, runtime_info

    info = runtime_info()
    typer.echo(json.dumps(info, indent=2) if as_json else format_info(info))


def main() -> None:
    sys.exit(run_app(app, prog_name="omama-run"))
