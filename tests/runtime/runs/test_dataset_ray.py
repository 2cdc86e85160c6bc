"""``omama-run dataset --ray`` on a local Ray (the cases: :mod:`.ray_dataset_cases`), run in a
child pytest process: the cases start a Ray driver in their own process, whose threads must
not share a process with the rest of the suite (a later test died with SIGSEGV now and then
when they did)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")  # the shared assets are exported with torch
pytest.importorskip("ray")

CASES = Path(__file__).with_name("ray_dataset_cases.py")
REPO = Path(__file__).resolve().parents[3]


@pytest.mark.timeout(1200)
def test_ray_cases_pass_in_a_process_of_their_own(tmp_path):
    env = {**os.environ, "YOLO_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp",
         str(tmp_path / "cases"), str(CASES)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1150,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert " passed" in done.stdout and "skipped" not in done.stdout.splitlines()[-1]
