"""``omama export --random-init official``: the issue's spelling, rewritten before typer parses
it to ``--random-init --random-shapes official`` (typer has no option with an optional value)."""

from __future__ import annotations

import pytest

from omama_train.cli import main, normalise_argv


@pytest.fixture()
def exported(monkeypatch):
    """The ExportConfig each ``omama export`` run would export (nothing is exported)."""
    configs = []

    class Done:
        def summary(self) -> str:
            return "nothing exported"

    def export_artifacts(config, echo):
        configs.append(config)
        return Done()

    monkeypatch.setattr("export.pipeline.export_artifacts", export_artifacts)
    return configs


def run(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    return exit_.value.code


@pytest.mark.parametrize("shapes", ["small", "official"])
def test_both_spellings_give_the_same_export(exported, tmp_path, shapes):
    out = str(tmp_path / "a")
    assert run(["export", "--random-init", shapes, "--out", out]) == 0
    assert run(["export", "--random-init", "--random-shapes", shapes, "--out", out]) == 0
    short, long = exported
    assert short == long and short.random_init and short.random_shapes == shapes


def test_other_command_lines_are_left_as_they_are(exported, tmp_path):
    out = str(tmp_path / "x")
    assert run(["export", "--random-init", "--out", out]) == 0
    (config,) = exported
    assert config.random_shapes == "small" and str(config.out_dir) == out
    assert normalise_argv(["export", "--random-init", "--out", out]) == [
        "export", "--random-init", "--out", out,
    ]  # fmt: skip
    # Only `export`, and only the very next token.
    for argv in (
        ["features", "--random-init", "official"],
        ["export", "--out", "official", "--random-init"],
        ["export", "--", "--random-init", "official"],
    ):
        assert normalise_argv(argv) == argv
    assert normalise_argv(["--verbose", "export", "--random-init", "official"]) == [
        "--verbose", "export", "--random-init", "--random-shapes", "official",
    ]  # fmt: skip
