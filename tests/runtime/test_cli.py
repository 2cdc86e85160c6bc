"""``omama-run``: every command is listed and shows an example."""

from __future__ import annotations

from runtime.cli import app
from runtime.clikit import run_app


def test_help_lists_the_commands_and_each_has_an_example(capsys):
    assert run_app(app, ["--help"], prog_name="omama-run") == 0
    out = capsys.readouterr().out
    for command in ("pair", "video", "take", "info", "verify"):
        assert command in out
        assert run_app(app, [command, "--help"], prog_name="omama-run") == 0
        assert "Example: omama-run " + command in capsys.readouterr().out
