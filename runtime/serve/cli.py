"""``omama serve``: the HTTP service command (entry point ``serve`` of ``omama.commands``).

Flags only: the artifacts flags are ``omama-run``'s (:mod:`runtime.cli`), the rest are
declared here; the command checks them, starts :mod:`runtime.serve.app` and blocks until
Ctrl-C or SIGTERM. Ray loads inside the command, so ``omama --help`` needs no Ray.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from runtime.cli import Artifacts, Backend, Device, Precision, Threads, Trust, WeightsDirs

Name = Annotated[
    str,
    typer.Option(
        "--name",
        help="Serve application name; any name but omama moves the routes under /NAME "
        "(/NAME/v1/match), so services of several artifacts folders share a Ray cluster. A "
        "name already running there is refused.",
    ),
]
Host = Annotated[str, typer.Option("--host", help="Address to listen on (0.0.0.0: all).")]
Port = Annotated[int, typer.Option("--port", min=1, max=65535, help="HTTP port.")]
Replicas = Annotated[
    int, typer.Option("--replicas", min=1, help="Replicas (Ray actors), each with its models.")
]
MaxBatch = Annotated[
    int,
    typer.Option(
        "--max-batch",
        min=1,
        help="Requests a replica runs together; those for the same destination image share "
        "its FastSAM and backbone passes (1: no batching).",
    ),
]
BatchWaitMs = Annotated[
    float,
    typer.Option("--batch-wait-ms", min=0.0, help="How long a batch waits to fill, ms."),
]
CpusPerReplica = Annotated[
    float,
    typer.Option(
        "--cpus-per-replica",
        min=0.0,
        help="CPUs each replica declares to Ray (fractions allowed); also its threads per "
        "model unless --threads.",
    ),
]
GpusPerReplica = Annotated[
    float,
    typer.Option(
        "--gpus-per-replica",
        min=0.0,
        help="GPUs each replica declares when it runs on CUDA (0.5: two replicas per GPU).",
    ),
]
MaxBodyMb = Annotated[
    float, typer.Option("--max-body-mb", min=0.0, help="Larger request bodies get 413.")
]
MaxPixels = Annotated[
    int,
    typer.Option(
        "--max-pixels",
        min=1,
        help="Larger images and masks get 413, read from their headers before decoding; a "
        "request's arrays together at most 16 times this.",
    ),
]
HealthTimeoutS = Annotated[
    float,
    typer.Option(
        "--health-timeout-s",
        min=0.0,
        help="A replica whose batch runs longer fails its health check and Serve restarts it.",
    ),
]
RayAddress = Annotated[
    str | None,
    typer.Option(
        "--ray-address",
        help="Join this running Ray cluster (e.g. auto, or HEAD:6379) instead of starting a "
        "local Ray; stopping then removes only this application.",
    ),
]


def register(omama_app: typer.Typer) -> None:
    """Add ``omama serve`` to ``omama_app`` (the ``omama.commands`` entry point)."""

    @omama_app.command("serve")
    def serve_command(
        artifacts: Artifacts = Path("artifacts"),
        name: Name = "omama",
        host: Host = "127.0.0.1",
        port: Port = 8000,
        replicas: Replicas = 1,
        max_batch: MaxBatch = 8,
        batch_wait_ms: BatchWaitMs = 10.0,
        backend: Backend = "auto",
        device: Device = "auto",
        precision: Precision = "auto",
        threads: Threads = None,
        cpus_per_replica: CpusPerReplica = 1.0,
        gpus_per_replica: GpusPerReplica = 1.0,
        max_body_mb: MaxBodyMb = 50.0,
        max_pixels: MaxPixels = 64_000_000,
        health_timeout_s: HealthTimeoutS = 120.0,
        weights_dirs: WeightsDirs = [],  # noqa: B006 - typer copies list defaults
        trust: Trust = None,
        ray_address: RayAddress = None,
    ) -> None:
        """Serve O-MaMa masks over HTTP on Ray Serve (POST /v1/match, GET /v1/info, /healthz).

        Starts a local Ray (or joins --ray-address), one replica per --replicas, each opening
        the artifacts once; blocks until Ctrl-C or SIGTERM, then shuts the service down. See
        docs/serve.md for the API. Needs omama[ray].

        Example: omama serve --artifacts artifacts --port 8000 --replicas 2 --max-batch 8

        Example: omama serve --ray-address auto --name cups --artifacts cups_artifacts

        Example: curl -s localhost:8000/v1/info
        """
        from runtime.raykit import threads_for
        from runtime.serve.app import Resources, check_name, require_ray, serve_until_signal
        from runtime.serve.service import ServeConfig

        require_ray()
        check_name(name)
        _check_artifacts(artifacts, trust, backend, device, precision, local=ray_address is None)
        config = ServeConfig(
            artifacts=str(artifacts.resolve()),
            backend=backend,
            device=device,
            precision=precision,
            # A replica declaring N CPUs runs its models on N threads, not on every core.
            threads=threads if threads is not None else threads_for(cpus_per_replica),
            trust=str(trust.resolve()) if trust is not None else None,
            weights_dirs=tuple(str(Path(d).resolve()) for d in weights_dirs),
            max_batch=max_batch,
            batch_wait_ms=batch_wait_ms,
            max_body_mb=max_body_mb,
            max_pixels=max_pixels,
            health_timeout_s=health_timeout_s,
        )
        resources = Resources(replicas, cpus_per_replica, gpus_per_replica)
        serve_until_signal(config, resources, host, port, ray_address, typer.echo, name)


def _check_artifacts(artifacts: Path, trust: Path | None, backend: str, device: str,
                     precision: str, local: bool) -> None:  # fmt: skip
    """One line before Ray starts when the folder, its signature or the flags are wrong.

    On a cluster (``local`` False) the backend is resolved by each replica, on its node."""
    from runtime.manifest import check_artifacts

    if trust is not None:
        from runtime.manifest.signing import verify_signature

        verify_signature(artifacts, trust)
    manifest = check_artifacts(artifacts, check_hashes=False)
    if local:
        from runtime.sessions import plan_artifacts

        plan_artifacts(manifest, backend, device, precision)
