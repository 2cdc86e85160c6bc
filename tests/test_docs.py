"""Every command shown in README.md and docs/*.md parses with the CLI as it is today.

The demo (``make demo``) runs the core commands end to end; this test keeps every other
example from going stale: each ``omama`` / ``omama-run`` line of a ```bash block must
name existing sub-commands and options, with every required argument, and each
``python -m benchmarks.<script>`` line must name a script that accepts its flags. The
examples whose inputs ship with the repository (``tests/fixtures/``) are run as shown.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from omama_train.cli import build_app
from runtime.cli import app as run_app

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted(p for p in (REPO / "docs").glob("*.md") if p.name != "CLI.md")]
PROGRAMS = {"omama": "omama", "omama-run": "omama-run"}
# The images of docs/docker.md: `docker run IMAGE ARGS` runs the image's program with ARGS.
IMAGES = {"omama-runtime": "omama-run", "omama-toolchain": "omama"}
SHELL_ENDS = {";", "|", "&&", "||", ">", ">>", "2>", "&"}


def _code_lines(path: Path) -> list[str]:
    """The lines of the ```bash blocks of ``path``, continuations joined."""
    lines, inside, pending = [], False, ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        if raw.startswith("```"):
            inside = raw.strip() == "```bash"
            continue
        if not inside:
            continue
        text = raw.split(" # ", 1)[0].rstrip()
        if text.endswith("\\"):
            pending += text[:-1] + " "
            continue
        lines.append(pending + text)
        pending = ""
    return lines


def _commands(line: str) -> list[tuple[str, list[str]]]:
    """(program, argv) of each omama / omama-run call in a shell line."""
    line = line.replace('"$(which omama)"', "omama")
    tokens = shlex.split(line, comments=True)
    programs = {**PROGRAMS, **IMAGES} if tokens[:2] == ["docker", "run"] else PROGRAMS
    found = []
    for i, token in enumerate(tokens):
        if token in programs:
            argv = []
            for arg in tokens[i + 1 :]:
                if arg in SHELL_ENDS or arg.rstrip(";") != arg:
                    if arg.rstrip(";") != arg:
                        argv.append(arg.rstrip(";"))
                    break
                argv.append(arg)
            found.append((programs[token], argv))
    return found


def _examples() -> list[tuple[str, str, list[str]]]:
    out = []
    for path in DOCS:
        for line in _code_lines(path):
            out += [(path.name, program, argv) for program, argv in _commands(line)]
    return out


EXAMPLES = _examples()
SCRIPT_EXAMPLES = sorted(
    {
        (path.name, match.group(1), tuple(re.findall(r"(--[a-z][a-z0-9-]*)", match.group(2))))
        for path in DOCS
        for match in re.finditer(
            r"python -m (benchmarks\.[a-z_]+)([^`|\n]*)", path.read_text(encoding="utf-8")
        )
    }
)


def _subcommands(command) -> dict:
    return getattr(command, "commands", None) or {}


def _resolve(program: str, argv: list[str]) -> tuple[object, list[str], str]:
    """(the command ``argv`` names, the arguments left for it, its full name)."""
    command = typer.main.get_command(build_app() if program == "omama" else run_app)
    name = program
    while argv and argv[0] in _subcommands(command):
        name = f"{name} {argv[0]}"
        command, argv = command.commands[argv[0]], argv[1:]
    return command, argv, name


def check_example(program: str, argv: list[str]) -> None:
    """Parse ``argv`` as ``program`` would; AssertionError saying what does not fit."""
    command, rest, name = _resolve(program, argv)
    assert not _subcommands(command), f"`{name}` needs a sub-command: {argv}"
    try:
        command.make_context(name, list(rest))
    except typer.BadParameter as exc:  # a placeholder path that does not exist here
        assert "does not exist" in exc.format_message(), f"`{name} {shlex.join(rest)}`: {exc}"
    except typer.TyperException as exc:
        raise AssertionError(f"`{name} {shlex.join(rest)}`: {exc.format_message()}") from exc


def test_the_docs_hold_examples_of_every_command():
    shown = {_resolve(program, argv)[2] for _, program, argv in EXAMPLES}
    for name in ("omama data prepare", "omama train", "omama export", "omama-run video",
                 "omama-run verify", "omama bench", "omama eval"):  # fmt: skip
        assert name in shown


@pytest.mark.parametrize(
    ("doc", "program", "argv"), EXAMPLES, ids=[f"{d}:{p} {' '.join(a[:2])}" for d, p, a in EXAMPLES]
)
def test_every_example_parses(doc, program, argv):
    check_example(program, argv)


def test_a_stale_example_fails():
    with pytest.raises(AssertionError, match="No such option"):
        check_example("omama-run", ["verify", "artifacts", "--no-such-flag", "1"])
    with pytest.raises(AssertionError, match="Missing"):
        check_example("omama", ["eval", "--gt", "gt.json", "--direction", "exo2ego"])
    with pytest.raises(AssertionError, match="sub-command"):
        check_example("omama", ["data"])


RUNNABLE = [(d, p, a) for d, p, a in EXAMPLES if any("tests/fixtures/" in arg for arg in a)]


def test_some_examples_run_on_the_fixtures():
    assert RUNNABLE, "no example reads tests/fixtures: nothing below runs"


@pytest.mark.parametrize(("doc", "program", "argv"), RUNNABLE)
def test_examples_on_the_fixtures_run_as_shown(doc, program, argv, tmp_path, monkeypatch, capsys):
    from runtime.clikit import run_app as run_cli

    (tmp_path / "tests").symlink_to(REPO / "tests")  # the example's relative paths
    monkeypatch.chdir(tmp_path)
    app = build_app() if program == "omama" else run_app
    code = run_cli(app, list(argv), prog_name=program)
    assert code == 0, capsys.readouterr().err
    outputs = [argv[i + 1] for i, arg in enumerate(argv) if arg == "--out"]
    assert all((tmp_path / out).exists() for out in outputs), outputs


@pytest.mark.parametrize(("doc", "module", "flags"), SCRIPT_EXAMPLES)
def test_every_benchmark_script_shown_accepts_its_flags(doc, module, flags):
    help_text = subprocess.run(
        [sys.executable, "-m", module, "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    for flag in flags:
        assert re.search(rf"{re.escape(flag)}\b", help_text), f"{module} has no {flag} ({doc})"
