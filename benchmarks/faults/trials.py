"""Running a command uninterrupted, killing it at an instant, resuming it, and judging the
result against the uninterrupted run."""

from __future__ import annotations

import contextlib
import fnmatch
import os
import random
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import log
from benchmarks.faults.records import differences, is_lock, read_folder, volatile_fields
from benchmarks.faults.world import Scenario

POLL_S = 0.02
ORPHAN_GRACE_S = 15.0  # how long processes of a killed command may take to end
REDRAWS = 3  # new instants drawn when the command ended before the kill


def _env() -> dict[str, str]:
    return {**os.environ, "YOLO_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def _has_output(folder: Path) -> bool:
    return folder.is_dir() and any(not is_lock(p.name) for p in folder.iterdir())


def timed_run(argv: list[str], out: Path) -> tuple[float, float]:
    """Run to completion: (seconds until the first output appeared, total seconds)."""
    start = time.monotonic()
    with tempfile.TemporaryFile() as stderr:  # a pipe nobody drains would block the command
        proc = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=stderr, env=_env(), start_new_session=True
        )
        first = None
        while proc.poll() is None:
            if first is None and _has_output(out):
                first = time.monotonic() - start
            time.sleep(POLL_S)
        total = time.monotonic() - start
        if proc.returncode != 0:
            stderr.seek(0)
            raise SystemExit(f"uninterrupted run failed: {stderr.read().decode()[-2000:]}")
    return (first if first is not None else 0.0), total


def _group_alive(pgid: int) -> list[int]:
    alive = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == pgid:
                    alive.append(int(entry.name))
            except (ProcessLookupError, PermissionError):
                continue
    return alive


def kill_at(argv: list[str], at_s: float) -> dict[str, Any]:
    """Start ``argv`` and SIGKILL its own process ``at_s`` seconds later."""
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=_env(),
        start_new_session=True,
    )
    start = time.monotonic()
    deadline = start + at_s
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))
    if proc.poll() is not None:
        return {"killed": False, "exit": proc.returncode, "ended_s": time.monotonic() - start}
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = time.monotonic()
    survivors = _group_alive(proc.pid)
    while survivors and time.monotonic() - killed < ORPHAN_GRACE_S:
        time.sleep(0.1)  # workers still starting notice their parent is gone when they start
        survivors = _group_alive(proc.pid)
    for pid in survivors:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return {"killed": True, "orphans": len(survivors)}


def trial(
    scenario: Scenario,
    folder: Path,
    at_s: float,
    reference: dict[str, dict],
    volatile: dict[str, set[str]],
) -> dict[str, Any]:
    shutil.rmtree(folder, ignore_errors=True)
    outcome: dict[str, Any] = {"kill_at_s": round(at_s, 3), **kill_at(scenario.run(folder), at_s)}
    if not outcome["killed"]:
        outcome["outcome"] = "finished"
        return outcome
    _, temporary_after_kill = read_folder(folder, scenario.skip) if folder.exists() else ({}, [])
    outcome["temporary_after_kill"] = len(temporary_after_kill)
    done = subprocess.run(scenario.resume(folder), capture_output=True, text=True, env=_env())
    if done.returncode != 0:
        outcome.update(outcome="refused", error=done.stderr.strip().splitlines()[-1:])
        return outcome
    records, temporary = read_folder(folder, scenario.skip)
    diff = differences(reference, records, volatile)
    diff += [f"temporary file left: {rel}" for rel in temporary]
    if outcome["orphans"]:
        diff.append(f"{outcome['orphans']} process(es) outlived the killed command")
    outcome["outcome"] = "corrupt" if diff else "identical"
    if diff:
        outcome["differences"] = diff
    return outcome


def run_scenario(scenario: Scenario, work: Path, kills: int, rng: random.Random) -> dict[str, Any]:
    base = work / scenario.name
    shutil.rmtree(base, ignore_errors=True)
    log(f"[{scenario.name}] two uninterrupted runs")
    first_s, total_s = timed_run(scenario.run(base / "reference"), base / "reference")
    timed_run(scenario.run(base / "again"), base / "again")
    reference, _ = read_folder(base / "reference", scenario.skip)
    again, _ = read_folder(base / "again", scenario.skip)
    volatile = volatile_fields(reference, again)
    for pattern, names in scenario.invocation_fields.items():
        for rel in fnmatch.filter(reference, pattern):
            counted = {key for key in reference[rel] if set(re.split(r"[.\[\]]", key)) & set(names)}
            if counted:
                volatile.setdefault(rel, set()).update(counted)
    unstable = sorted(
        rel for rel in volatile if any(fnmatch.fnmatch(rel, p) for p in scenario.must_match)
    )
    trials = []
    for i in range(kills):
        end_s, attempts = total_s, 0
        while True:
            attempts += 1
            at_s = rng.uniform(first_s, end_s)
            result = trial(scenario, base / f"trial{i}", at_s, reference, volatile)
            if result["outcome"] != "finished" or attempts > REDRAWS:
                break
            # A faster run than the reference (the machine is shared): draw again before its end.
            end_s = max(first_s, min(end_s, 0.95 * result["ended_s"]))
        result["attempts"] = attempts
        log(
            f"[{scenario.name}] kill {i + 1}/{kills} at {at_s:.2f} s: {result['outcome']}"
            + (
                f" ({'; '.join(result.get('differences', result.get('error', []))[:3])})"
                if result["outcome"] in ("corrupt", "refused")
                else ""
            )
        )
        trials.append(result)
    counts = {
        name: sum(t["outcome"] == name for t in trials)
        for name in ("identical", "corrupt", "refused", "finished")
    }
    counts["tried"] = kills - counts["finished"]
    return {
        "command": " ".join(scenario.run(Path("OUT"))[3:]),
        "resume": " ".join(scenario.resume(Path("OUT"))[3:]),
        "uninterrupted_s": round(total_s, 2),
        "first_output_s": round(first_s, 2),
        "counts": counts,
        "deterministic": not unstable,
        "not_deterministic": unstable,
        "volatile": {rel: sorted(keys)[:20] for rel, keys in sorted(volatile.items())},
        "not_compared": scenario.skip,
        "invocation_fields": scenario.invocation_fields,
        "trials": trials,
    }
