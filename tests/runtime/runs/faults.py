"""Run ``omama-run`` and die at one named instant, as ``kill -9`` would (``os._exit(137)``:
no ``finally``, no atexit, no flushing of Python's buffers).

    python -m tests.runtime.runs.faults SPEC [SPEC ...] -- OMAMA-RUN ARGS

SPEC is one of

- ``replace:REGEX:N:before|after``: around the N-th ``os.replace`` whose destination,
  relative to ``--out``, matches REGEX (every file put in place goes through it);
- ``overlay:N``: when the N-th frame is handed to the overlay encoder.

Instants are counted from the start of this process. The hooks patch the standard library
and the runtime's classes from outside: the runtime holds no fault-injection code.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tests.kill_instants import die, hook_replace


def hook_overlay(nth: int) -> None:
    from runtime.video import VideoWriter

    original, seen = VideoWriter.write, [0]

    def write(self, frame_rgb):
        seen[0] += 1
        if seen[0] == nth:
            die()
        return original(self, frame_rgb)

    VideoWriter.write = write


def install(spec: str, out: Path) -> None:
    kind, _, rest = spec.partition(":")
    if kind == "replace":
        regex, nth, when = rest.rsplit(":", 2)
        if when not in ("before", "after"):
            raise SystemExit(f"faults: {spec!r}: say before or after")
        hook_replace(out, regex, int(nth), when)
    elif kind == "overlay":
        hook_overlay(int(rest))
    else:
        raise SystemExit(f"faults: unknown instant {spec!r}")


def main(argv: list[str]) -> None:
    split = argv.index("--")
    specs, run_args = argv[:split], argv[split + 1 :]
    out = Path(os.path.abspath(run_args[run_args.index("--out") + 1]))
    for spec in specs:
        install(spec, out)
    from runtime.cli import main as run_main

    sys.argv = ["omama-run", *run_args]
    run_main()


if __name__ == "__main__":
    main(sys.argv[1:])
