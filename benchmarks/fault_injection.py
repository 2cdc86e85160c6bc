"""Kill each long omama command at random instants, resume it, and compare with an
uninterrupted run: does a ``kill -9`` ever lose or corrupt what a command writes?

    python -m benchmarks.fault_injection [--kills 10] [--seed 0] [--commands prepare,...]

The script builds a small synthetic world once (``omama data synth`` and the demo's chain, in
``--work``), then for each command:

1. runs it twice uninterrupted into two fresh folders. What differs between those two runs
   (wall-clock fields of JSON/CSV records, files named after the time) is *volatile*: it is
   left out of every comparison and listed in the report. Files a scenario names as
   ``must_match`` (trained weights, results) are never left out: if two uninterrupted runs
   differ there, the scenario is reported as not deterministic.
2. ``--kills`` times: starts the command in a fresh folder, sends SIGKILL to the command's
   own process (not its group: its workers must die with it) at an instant drawn uniformly
   between its first write to the folder and the end of the uninterrupted run, checks that
   no process of it survives, runs the resume command to completion and compares the folder
   with the first uninterrupted run: every file, decoded (JSON by key, CSV by column, videos
   frame by frame, everything else byte by byte).

Each trial is ``identical``, ``corrupt`` (resume exited 0 but a file differs, is missing or
is extra, or a temporary file is left behind), ``refused`` (resume exited non-zero) or
``finished`` (the command ended before the kill landed, even after drawing earlier instants
three more times: not counted as tried). The counts
and every difference are printed and saved to ``benchmarks/results/fault_injection.json``.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

from benchmarks.common import RESULTS_DIR, load_average, machine_record, write_result
from benchmarks.faults.trials import run_scenario
from benchmarks.faults.world import build_world, scenarios


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--work",
        type=Path,
        default=Path("/tmp/omama_fault_injection"),
        help="Scratch folder (the world is built once and reused).",
    )
    parser.add_argument("--kills", type=int, default=10, help="Kills per command.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the kill instants.")
    parser.add_argument(
        "--commands", default="prepare,features,train,video", help="Comma-separated."
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "fault_injection.json")
    args = parser.parse_args(argv)
    if args.kills < 1:
        parser.error("--kills must be at least 1")
    load_at_start = load_average()
    world = build_world(args.work)
    available = scenarios(world)
    names = [n.strip() for n in args.commands.split(",") if n.strip()]
    unknown = [n for n in names if n not in available]
    if unknown:
        parser.error(f"unknown command(s) {unknown}; choose from {sorted(available)}")
    rng = random.Random(args.seed)
    results = {name: run_scenario(available[name], args.work, args.kills, rng) for name in names}
    report = {
        "what": "kill -9 of each long command at random instants, resume, compare with an "
        "uninterrupted run",
        "kills_per_command": args.kills,
        "seed": args.seed,
        "not_run": {"omama-run dataset": "the command does not exist yet (issue 14)"},
        "results": results,
        "machine": machine_record(load_at_start),
    }
    write_result(args.out, report)
    print(
        f"{'command':10s} {'tried':>5s} {'identical':>9s} {'corrupt':>7s} {'refused':>7s} "
        f"{'finished':>8s}  uninterrupted"
    )
    for name, res in results.items():
        c = res["counts"]
        print(
            f"{name:10s} {c['tried']:5d} {c['identical']:9d} {c['corrupt']:7d} "
            f"{c['refused']:7d} {c['finished']:8d}  {res['uninterrupted_s']:.1f} s"
            + ("" if res["deterministic"] else f"  NOT DETERMINISTIC: {res['not_deterministic']}")
        )
    print(f"saved {args.out}")
    return (
        0
        if all(r["counts"]["corrupt"] == r["counts"]["refused"] == 0 for r in results.values())
        else 1
    )


if __name__ == "__main__":
    sys.exit(main())
