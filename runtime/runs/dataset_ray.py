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

import dataclasses
import json
import logging
import time
from collections.abc import Callable

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


def ray_connection(address: str | None):
    """Ray with Ray Data for this run (:func:`runtime.raykit.connection`)."""
    return raykit.connection(address, "data")


def worker_resources(
    cluster: dict, workers: int, cpus: float | None, gpus: float | None, device: str
) -> tuple[float, float]:
    """``(cpus, gpus)`` per predicting actor (:func:`runtime.raykit.actor_resources`), leaving
    room for a frame reader of :data:`READ_CPUS`."""
    return raykit.actor_resources(cluster, workers, cpus, gpus, device, READ_CPUS,
                                  f" and a frame reader of {READ_CPUS:g} CPU")  # fmt: skip


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
            raise OmamaError(raykit.failure_line(exc)) from exc
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
