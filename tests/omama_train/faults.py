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
import sys
from pathlib import Path

from tests.kill_instants import hook_call, hook_replace


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
