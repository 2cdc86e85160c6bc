"""The Ray executor of ``omama-run dataset``: a Ray Data pipeline over the run's items.

    items (ids only) -> map: read + decode the item's JPEGs (tasks, READ_CPUS each)
                     -> map_batches: predict (an actor pool of ``--workers`` actors, each
                        holding one set of sessions per direction; GPUs per actor on CUDA)
                     -> the driver, answer by answer, as they finish

The driver writes each finished take's part (:mod:`runtime.runs.dataset`); nothing a
worker does is written to disk, so a worker that dies leaves nothing half-written: Ray
restarts the actor and retries its item (Ray Data's default for actor pools). Ray is
imported only here and only when a run asks for it; without the ``ray`` extra the command
says so in one line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Iterator

import numpy as np

from runtime import raykit
from runtime.errors import OmamaError
from runtime.runs.dataset_jobs import (
    Item,
    ItemPredictor,
    WorkerSpec,
    pack_images,
    read_item_images,
    unpack_images,
)

log = logging.getLogger(__name__)

# Per frame-reading task. Ray Data fuses the reading into the actors (no separate tasks)
# when an actor's resources are the same, e.g. --cpus-per-worker 0.25: same answers.
READ_CPUS = 0.25


def import_ray():
    """The ``ray`` module with Ray Data, or the one-line error naming the extra."""
    return raykit.import_ray("data")


@contextlib.contextmanager
def ray_connection(address: str | None) -> Iterator[object]:
    """Ray for this run: the Ray this process already started (kept running), else
    ``ray.init(address)`` (None: ``$RAY_ADDRESS`` or a cluster started on this machine with
    ``ray start``, else a new local Ray), disconnected at the end (a local Ray we started
    stops with it; a cluster keeps running)."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    raykit.check_reachable(address)
    try:
        ray.init(address=address, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "Ray"
        raise OmamaError(f"cannot start or reach {where}: {_first_line(exc)}") from exc
    try:
        yield ray
    finally:
        ray.shutdown()


def worker_resources(
    cluster: dict, workers: int, cpus: float | None, gpus: float | None, device: str
) -> tuple[float, float]:
    """``(cpus, gpus)`` per actor, declared to Ray; refuses what the cluster cannot hold
    (Ray would wait for it forever).

    Defaults: a GPU per actor when ``device`` is CUDA (or auto on a cluster with GPUs); an
    equal share of all CPUs but one (kept for reading frames), at least 0.25, and at most 1
    when the models run on GPUs (on CPUs the share is their threads: :func:`threads_for`).
    """
    if gpus is None:
        gpus = 1.0 if raykit.uses_gpu(device, float(cluster.get("GPU", 0))) else 0.0
    if gpus > 0 and device == "cpu":
        raise OmamaError("--gpus-per-worker asks for GPUs but --device is cpu")
    raykit.check_fits(cluster, "GPU", workers, gpus, "worker",
                      "--workers or --gpus-per-worker, or use --device cpu")  # fmt: skip
    if cpus is None:
        share = math.floor(4 * (float(cluster.get("CPU", 0)) - 1) / workers) / 4
        cpus = max(0.25, min(1.0, share) if gpus > 0 else share)
    raykit.check_fits(cluster, "CPU", workers, cpus, "worker", "--workers or --cpus-per-worker",
                      READ_CPUS, f" and a frame reader of {READ_CPUS:g} CPU")  # fmt: skip
    return cpus, gpus


def _read_row(row: dict, root: str) -> dict:
    """Ray Data task: decode the JPEGs of one item (a block holds plain columns only)."""
    item = Item.from_json(json.loads(row["item"]))
    keys, pixels = pack_images(read_item_images(root, item))
    return {"item": row["item"], "keys": json.dumps(keys), "pixels": pixels}


class _RayItemPredictor:
    """Ray Data actor: one :class:`ItemPredictor` for its lifetime (subclassed per run with
    the run's ``spec``, so Ray restarts it from its class alone)."""

    spec: WorkerSpec

    def __init__(self) -> None:
        logger = logging.getLogger("runtime")
        if not logger.handlers:  # worker stderr goes to Ray's logs and dashboard
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)
        self.predictor = ItemPredictor(self.spec)

    def __call__(self, batch: dict) -> dict:
        answers = []
        for item_json, keys_json, pixels in zip(
            batch["item"], batch["keys"], batch["pixels"], strict=True
        ):
            item = Item.from_json(json.loads(str(item_json)))
            images = unpack_images(json.loads(str(keys_json)), np.asarray(pixels))
            answers.append(json.dumps(self.predictor.predict(item, images)))
        return {"answer": np.array(answers, dtype=object)}


def run_on_ray(
    spec: WorkerSpec,
    items: list[Item],
    options,
    on_answer: Callable[[dict], None],
    on_start: Callable[[], None],
) -> dict:
    """Predict ``items`` on Ray (``options``: :class:`runtime.runs.dataset.RayOptions`);
    ``on_start`` is called once Ray is up, ``on_answer`` with each item's answer on the
    driver as it finishes. Returns how it ran."""
    started = time.perf_counter()
    with ray_connection(options.address) as ray:
        ray_start_s = time.perf_counter() - started
        on_start()
        cpus, gpus = worker_resources(
            ray.cluster_resources(),
            options.workers,
            options.cpus_per_worker,
            options.gpus_per_worker,
            spec.device,
        )
        spec = dataclasses.replace(spec, threads=spec.threads or raykit.threads_for(cpus))
        actor = type("OmamaItemPredictor", (_RayItemPredictor,), {"spec": spec})
        context = ray.data.DataContext.get_current()
        progress_bars, context.enable_progress_bars = context.enable_progress_bars, False
        try:
            rows = [{"item": json.dumps(item.to_json())} for item in items]
            ds = ray.data.from_items(rows, override_num_blocks=len(rows))
            ds = ds.map(_read_row, fn_kwargs={"root": spec.root}, num_cpus=READ_CPUS)
            ds = ds.map_batches(
                actor,
                batch_size=1,
                batch_format="numpy",
                num_cpus=cpus,
                num_gpus=gpus or None,
                compute=ray.data.ActorPoolStrategy(size=options.workers),
            )
            for row in ds.iter_rows():
                on_answer(json.loads(row["answer"]))
        except OmamaError:
            raise
        except Exception as exc:  # Ray wraps a worker's error in its own types
            raise OmamaError(_failure(exc)) from exc
        finally:
            context.enable_progress_bars = progress_bars
        nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    return {
        "executor": "ray",
        "ray": {
            "address": options.address,
            "nodes": nodes,
            "workers": options.workers,
            "cpus_per_worker": cpus,
            "gpus_per_worker": gpus,
            "threads_per_model": spec.threads,
            "ray_start_s": round(ray_start_s, 3),
        },
    }


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _failure(exc: BaseException) -> str:
    """One line for a failed Ray job: the OmamaError a worker raised, if any (as an object in
    the cause chain, or in the text of the traceback Ray carries), else the first line of
    Ray's error."""
    seen, cause = set(), exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OmamaError):
            return f"a Ray worker failed: {_first_line(cause)}"
        for line in str(cause).splitlines():
            if f"{OmamaError.__name__}: " in line:
                return f"a Ray worker failed: {line.split(f'{OmamaError.__name__}: ', 1)[1]}"
        cause = getattr(cause, "cause", None) or cause.__cause__ or cause.__context__
    return f"the Ray job failed: {type(exc).__name__}: {_first_line(exc)}"
