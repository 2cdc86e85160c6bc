"""Run ``omama train`` and die at one named instant, as ``kill -9`` would (``os._exit(137)``:
no ``finally``, no atexit, no flushing).

    python -m tests.omama_train.faults SPEC [SPEC ...] -- TRAIN ARGS

SPEC is one of

- ``replace:REGEX:N:before|after``: around the N-th ``os.replace`` / ``os.rename`` whose
  destination, relative to ``--out``, matches REGEX (files and folders being put in place);
- ``step:N``: inside the N-th training step (after the forward pass, before the update);
- ``validate:N``: inside the N-th validation pass (before its predictions are scored);
- ``pause:REGEX:N:FLAG``: before that N-th replace, create ``FLAG`` and wait until it is
  deleted (holds a run half-way, e.g. to start a second command beside it).

Instants are counted from the start of this process. The hooks patch the standard library
and the training modules from outside: the library holds no fault-injection code.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

KILLED = 137


def die() -> None:
    sys.stderr.write("faults: killed\n")
    sys.stderr.flush()
    os._exit(KILLED)


def hook_replace(out: Path, regex: str, nth: int, when: str, flag: Path | None) -> None:
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


def install(spec: str, out: Path) -> None:
    kind, _, rest = spec.partition(":")
    if kind in ("replace", "pause"):
        regex, nth, last = rest.rsplit(":", 2)
        flag = Path(last) if kind == "pause" else None
        hook_replace(out, regex, int(nth), last, flag)
    elif kind == "step":
        import omama_train.train.trainer as trainer

        hook_call(trainer, "masked_loss", int(rest))
    elif kind == "validate":
        import omama_train.train.validate as validate

        hook_call(validate, "score_predictions", int(rest))
    else:
        raise SystemExit(f"faults: unknown instant {spec!r}")


def main(argv: list[str]) -> None:
    import torch

    torch.set_num_threads(1)
    split = argv.index("--")
    specs, train_args = argv[:split], argv[split + 1 :]
    out = Path(os.path.abspath(train_args[train_args.index("--out") + 1]))
    for spec in specs:
        install(spec, out)
    from omama_train.train.cli import main as train_main

    train_main(train_args)


if __name__ == "__main__":
    main(sys.argv[1:])
