"""The command-line flags of every command that can run on Ray (``omama-run dataset``,
``omama data masks``, ``omama features``): one spelling and one meaning each."""

from __future__ import annotations

from typing import Annotated

import typer

Ray = Annotated[
    bool,
    typer.Option(
        "--ray",
        help="Run on Ray (pip install 'omama[ray]'): joins $RAY_ADDRESS or the "
        "cluster `ray start` began here, else starts a local Ray for the run.",
    ),
]
RayAddress = Annotated[
    str | None,
    typer.Option(
        "--ray-address", help="Join the Ray cluster at ADDRESS (e.g. HEAD:6379); implies --ray."
    ),
]
Workers = Annotated[
    int | None,
    typer.Option("--workers", min=1, help="Ray actors, each opening its models once (default 1)."),
]
CpusPerWorker = Annotated[
    float | None,
    typer.Option(
        "--cpus-per-worker",
        min=0.01,
        help="CPUs Ray reserves per actor (default: an equal share of all CPUs but one, "
        "at least 0.25, at most 1 with GPUs).",
    ),
]
GpusPerWorker = Annotated[
    float | None,
    typer.Option(
        "--gpus-per-worker",
        min=0.0,
        help="GPUs per actor (default: 1 with --device cuda, or with auto on a cluster "
        "that has GPUs).",
    ),
]
