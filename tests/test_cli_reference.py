"""docs/CLI.md is the generated --help of every command; it must not drift from the code."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _render() -> str:
    spec = importlib.util.spec_from_file_location(
        "cli_reference", REPO / "scripts" / "cli_reference.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.render()


def test_cli_reference_is_in_sync():
    current = (REPO / "docs" / "CLI.md").read_text(encoding="utf-8")
    assert current == _render(), "docs/CLI.md is out of date: run `python scripts/cli_reference.py`"


def test_every_command_has_an_example():
    text = _render()
    sections = text.split("\n## `")[1:]
    leaf = [s for s in sections if "Commands:" not in s]
    missing = [s.split("`", 1)[0] for s in leaf if "Example" not in s]
    assert not missing, f"commands without an example in --help: {missing}"
