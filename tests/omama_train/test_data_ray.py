"""``omama data masks --ray`` and ``omama features --ray``: the flags, and what is refused in
one line before any work (no Ray is started in this process); the runs on a local Ray
(:mod:`.ray_data_cases`) in a child pytest process of their own, as the Ray dataset cases."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from omama_train.data import masks as masks_module
from omama_train.features.cli import register as register_features
from runtime import raykit
from runtime.clikit import new_app, run_app

CASES = Path(__file__).with_name("ray_data_cases.py")
DEVICE_CASES = Path(__file__).with_name("ray_device_cases.py")
REPO = Path(__file__).resolve().parents[2]


def _cli(capsys, *argv) -> tuple[int, str]:
    """Exit status and the one ``error:`` line of ``omama`` (data masks, features)."""
    app = new_app("test app")
    data_app = new_app("data")
    masks_module.add_commands(data_app)
    app.add_typer(data_app, name="data")
    register_features(app)
    capsys.readouterr()
    code = run_app(app, [str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert "Traceback" not in err and len(lines) == 1, err
    return code, lines[0]


COMMANDS = {
    "masks": ["data", "masks", "--root", "nowhere", "--direction", "exo2ego",
              "--from-annotations", "--no-progress"],
    "features": ["features", "--root", "nowhere", "--out", "nowhere/cache", "--random-init",
                 "--device", "cpu", "--no-progress"],
}  # fmt: skip


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_shard_and_ray_together_are_refused(command, capsys):
    code, line = _cli(capsys, *COMMANDS[command], "--shard", "1/2", "--ray", "--workers", "2")
    assert code == 1
    assert "--shard 1/2 splits the work by hand for runs without Ray" in line
    assert "give one or the other" in line


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_ray_flags_without_ray_are_refused(command, capsys):
    code, line = _cli(capsys, *COMMANDS[command], "--workers", "2")
    assert (code, line) == (1, "error: --workers sets the Ray actors: add --ray")
    code, line = _cli(capsys, *COMMANDS[command], "--gpus-per-worker", "0.5")
    assert code == 1 and "are for --ray runs" in line


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_without_the_ray_extra_the_flags_parse_and_say_what_to_install(
    command, capsys, monkeypatch
):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    argv = [*COMMANDS[command], "--ray", "--workers", "2", "--cpus-per-worker", "0.5",
            "--gpus-per-worker", "0"]  # fmt: skip
    code, line = _cli(capsys, *argv)
    assert (code, line) == (1, "error: needs Ray: pip install 'omama[ray]'")


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_dead_ray_address_is_one_line(command, capsys, monkeypatch):
    monkeypatch.setattr(raykit, "import_ray", lambda *parts: object())  # no Ray here
    with socket.socket() as sock:  # a port nobody listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code, line = _cli(capsys, *COMMANDS[command], "--ray-address", f"127.0.0.1:{port}")
    assert code == 1
    assert line.startswith(f"error: cannot reach the Ray cluster at 127.0.0.1:{port}")


@pytest.mark.timeout(900)
def test_ray_cases_pass_in_a_process_of_their_own(tmp_path):
    pytest.importorskip("ray")
    env = {**os.environ, "YOLO_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp",
         str(tmp_path / "cases"), str(CASES), str(DEVICE_CASES)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=850,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert " passed" in done.stdout and "skipped" not in done.stdout.splitlines()[-1]
