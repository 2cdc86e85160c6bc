"""The Ray executor of omama's embarrassingly parallel data jobs (``omama data masks --ray``:
one job per frame; ``omama features --ray``: one job per chunk of images).

    jobs (small, picklable) -> an actor pool of ``--workers`` actors, each building its
    worker once (a model loaded once; CPUs and GPUs declared to Ray) -> one small result
    per job, back on the driver in job order

Workers read their inputs from and write their outputs to the shared filesystem, each file
atomically, as the in-process run writes them; the driver holds the output folder's locks
and folds the results into the run's report. An actor that dies is restarted by Ray and
its job redone (its writes are atomic, so nothing half-written is left). ``--ray`` replaces
``--shard i/n``, the hand-made splitting kept for users without Ray.

The flags are spelled and mean what ``omama-run dataset``'s do (one meaning per flag name).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from runtime import raykit
from runtime.errors import OmamaError

RETRIES = 3  # restarts of a dead actor, and retries of the job it held


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide a data job runs on Ray; ``cpus_per_worker`` / ``gpus_per_worker``
    None: chosen from the cluster's resources (:func:`runtime.raykit.actor_resources`)."""

    address: str | None = None
    workers: int = 1
    cpus_per_worker: float | None = None
    gpus_per_worker: float | None = None


def ray_options(
    ray: bool,
    address: str | None,
    workers: int | None,
    cpus_per_worker: float | None,
    gpus_per_worker: float | None,
    shard: tuple[int, int] = (0, 1),
) -> RayOptions | None:
    """The options of a ``--ray`` run, None for one in this process. Before any work: flags
    only Ray uses are refused without it, ``--shard`` with it, a missing ``ray`` extra and a
    ``--ray-address`` nobody answers on are one line each."""
    if not (ray or address is not None):
        if workers is not None:
            raise OmamaError("--workers sets the Ray actors: add --ray")
        if cpus_per_worker is not None or gpus_per_worker is not None:
            raise OmamaError("--cpus-per-worker and --gpus-per-worker are for --ray runs")
        return None
    if shard != (0, 1):
        raise OmamaError(
            f"--shard {shard[0]}/{shard[1]} splits the work by hand for runs without Ray; "
            "--ray splits it over the Ray workers: give one or the other"
        )
    raykit.import_ray()
    raykit.check_reachable(address)
    return RayOptions(address, workers or 1, cpus_per_worker, gpus_per_worker)


def worker_resources(cluster: dict, options: RayOptions, device: str) -> tuple[float, float]:
    """``(cpus, gpus)`` per actor of a run on ``device`` (``auto``, ``cpu``, ``cuda[:N]``) on
    ``cluster`` (``ray.cluster_resources()``). CUDA is checked against the cluster's GPUs,
    not this machine's: a head node without a GPU drives workers that have one."""
    if device.startswith("cuda"):
        if float(cluster.get("GPU", 0)) <= 0:
            raise OmamaError(
                f"--device {device} asks the Ray workers for GPUs, but the Ray cluster has "
                "none: use --device cpu or auto, or add nodes with GPUs"
            )
        if options.gpus_per_worker == 0:
            raise OmamaError(
                f"--device {device} needs GPUs on the Ray workers: --gpus-per-worker 0 "
                "gives them none"
            )
    return raykit.actor_resources(
        cluster, options.workers, options.cpus_per_worker, options.gpus_per_worker, device
    )


class _Actor:
    """One Ray actor: resolves the run's device where it runs (``auto``: CUDA when Ray gave
    it a GPU), then ``factory(**kwargs, device=..., threads=...)`` builds its worker (a
    callable job -> result) once; the actor then runs jobs with it."""

    def __init__(self, factory: Callable, kwargs: dict, device: str, threads: int) -> None:
        import ray
        import torch

        from omama_train.devices import check_device

        logger = logging.getLogger("omama_train")
        if not logger.handlers:  # worker stderr goes to Ray's logs and dashboard
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)
        torch.set_num_threads(threads)
        self.device = check_device(raykit.worker_device(device, ray.get_gpu_ids()))
        self.work = factory(**kwargs, device=self.device, threads=threads)

    def run(self, job):
        return self.work(job)

    def where(self) -> str:
        return self.device


def run_jobs(
    options: RayOptions,
    factory: Callable,
    kwargs: dict,
    jobs: Sequence,
    device: str,
    on_result: Callable[[object], None],
) -> dict:
    """Run ``jobs`` on an actor pool of ``options.workers`` actors, each holding the worker
    ``factory(**kwargs, device=, threads=)`` builds on the device each resolves from
    ``device`` (:func:`worker_resources`, :func:`runtime.raykit.worker_device`);
    ``on_result`` gets each job's result on the driver, in job order. No jobs: Ray is not
    started. Returns how it ran (the report's ``ray`` entry; ``worker_devices``: actors per
    device they ran on)."""
    how = {"address": options.address, "workers": options.workers, "jobs": len(jobs)}
    if not jobs:
        return how
    with raykit.connection(options.address) as ray:
        cpus, gpus = worker_resources(ray.cluster_resources(), options, device)
        threads = raykit.threads_for(cpus)
        remote = ray.remote(
            num_cpus=cpus, num_gpus=gpus or None, max_restarts=RETRIES, max_task_retries=RETRIES
        )(_Actor)
        actors = [
            remote.remote(factory, kwargs, device, threads)
            for _ in range(min(options.workers, len(jobs)))
        ]
        try:
            from ray.util import ActorPool

            for result in ActorPool(actors).map(lambda actor, job: actor.run.remote(job), jobs):
                on_result(result)
            devices = Counter(ray.get([actor.where.remote() for actor in actors]))
        except OmamaError:
            raise
        except Exception as exc:  # Ray wraps a worker's error in its own types
            raise OmamaError(raykit.failure_line(exc)) from exc
        finally:
            for actor in actors:
                ray.kill(actor)
        nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    return how | {
        "nodes": nodes,
        "cpus_per_worker": cpus,
        "gpus_per_worker": gpus,
        "threads_per_model": threads,
        "worker_devices": dict(sorted(devices.items())),
    }
