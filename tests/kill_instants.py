"""Dying at a named instant, as ``kill -9`` would (``os._exit(137)``: no ``finally``, no
atexit, no flushing): the hooks the commands' fault runners (``tests.omama_train.faults``,
``tests.runtime.runs.faults``) install from outside, so the library holds no such code."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

KILLED = 137


def die() -> None:
    sys.stderr.write("faults: killed\n")
    sys.stderr.flush()
    os._exit(KILLED)


def hook_replace(out: Path, regex: str, nth: int, when: str, flag: Path | None = None) -> None:
    """Wrap ``os.replace`` and ``os.rename`` (every atomic write goes through them)."""
    pattern, seen = re.compile(regex), [0]

    def wrap(original):
        def replace(src, dst, *args, **kwargs):
            try:
                rel = Path(os.path.abspath(dst)).relative_to(out).as_posix()
            except ValueError:
                rel = None
            hit = rel is not None and pattern.search(rel) is not None
            if hit:
                seen[0] += 1
                hit = seen[0] == nth
            if hit and flag is not None:
                flag.touch()
                while flag.exists():
                    time.sleep(0.05)
            elif hit and when == "before":
                die()
            result = original(src, dst, *args, **kwargs)
            if hit and when == "after":
                die()
            return result

        return replace

    os.replace, os.rename = wrap(os.replace), wrap(os.rename)


def hook_call(module, name: str, nth: int) -> None:
    """Die inside the ``nth`` call of ``module.name``."""
    original, seen = getattr(module, name), [0]

    def call(*args, **kwargs):
        seen[0] += 1
        if seen[0] == nth:
            die()
        return original(*args, **kwargs)

    setattr(module, name, call)


def sigkill_after(proc: subprocess.Popen, marker: Path, max_delay_s: float) -> float:
    """SIGKILL ``proc`` at a random instant up to ``max_delay_s`` after ``marker`` appears
    (its first checkpoint, say); returns that delay."""
    started = time.monotonic()
    while not marker.exists() and proc.poll() is None:
        assert time.monotonic() - started < 120, f"{marker} never appeared"
        time.sleep(0.005)
    delay_s = random.uniform(0.0, max_delay_s)
    time.sleep(delay_s)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    print(f"SIGKILL {delay_s:.3f} s after {marker.name} appeared (exit {proc.returncode})")
    return delay_s
