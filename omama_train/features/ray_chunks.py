"""``omama features --ray``: the chunks of a run split over Ray workers.

The driver plans the chunks exactly as the in-process run would (per view, in sorted order,
``--flush-every`` images each, named after the shard's chunks already in the cache:
:func:`writer.plan_chunks`), holding the shard's lock, and hands one chunk per job to the
workers. Each worker builds the backbone once per view (weights resolved on the worker,
refused unless their sha256 is the cache's) and writes its chunks with the in-process
writer (:func:`writer.write_chunks`): data file renamed into place, then its index part.
The cache therefore holds the same files; a rerun skips every image indexed, and a chunk a
dead worker left unfinished is removed by the next run of the shard, as in-process.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from omama_train import raywork
from omama_train.features import writer
from omama_train.features.meta import KINDS, short_sha
from omama_train.features.weights import BackboneWeights
from omama_train.imagekey import ImageKey
from runtime.egoexo import ProcessedRoot
from runtime.errors import OmamaError


@dataclass(frozen=True)
class WeightsRecipe:
    """How a worker resolves the run's :class:`BackboneWeights` (the state itself is not
    shipped: a random init is re-made from its seed, a file read on the worker's node)."""

    backbone: object  # a registered name or a BackboneSpec
    backbone_weights: Path | None
    random_init: bool
    seed: int
    pos_resize: str | None
    profile: str

    def resolve(self) -> BackboneWeights:
        return BackboneWeights.resolve(
            self.backbone,
            self.backbone_weights,
            random_init=self.random_init,
            seed=self.seed,
            pos_resize=self.pos_resize,
            profile=self.profile,
        )


def compute_on_ray(
    options: raywork.RayOptions,
    todo: list[ImageKey],
    meta: dict,
    recipe: WeightsRecipe,
    root: Path,
    out: Path,
    shard: tuple[int, int],
    progress: bool,
    stats: writer.RunStats,
    *,
    device: str,
    batch_size: int | None,
    flush_every: int,
    io_threads: int,
) -> dict:
    """Features of ``todo`` on Ray, counted into ``stats``; returns the report's ``ray``
    entry (:func:`raywork.run_jobs`). ``device`` (``auto``, ``cpu``, ``cuda[:N]``) and
    ``batch_size`` (None: :func:`writer.default_batch_size`) are resolved on each worker."""
    from tqdm import tqdm

    jobs = []
    for kind in KINDS:
        keys = [k for k in todo if k.kind == kind]
        if keys:
            jobs += [(kind, name, chunk) for name, chunk in
                     writer.plan_chunks(out, kind, keys, shard, flush_every)]  # fmt: skip
    kwargs = {
        "root": Path(root).resolve(),
        "out": Path(out).resolve(),
        "recipe": recipe,
        "sha256": meta["weights"]["sha256"],
        "views": meta["views"],
        "batch_size": batch_size,
        "io_threads": io_threads,
    }
    with tqdm(total=len(todo), desc="features (Ray)", unit="img", file=sys.stderr,
              disable=not progress) as bar:  # fmt: skip

        def on_result(result: dict) -> None:
            kind = result["kind"]
            stats.computed[kind] += result["computed"]
            stats.compute_s[kind] += result["compute_s"]
            stats.portrait[kind] += result["portrait"]
            stats.chunks.append(result["name"])
            bar.update(result["computed"])

        return raywork.run_jobs(options, chunk_worker, kwargs, jobs, device, on_result)


def chunk_worker(
    *,
    root: Path,
    out: Path,
    recipe: WeightsRecipe,
    sha256: str,
    views: dict,
    batch_size: int | None,
    io_threads: int,
    device: str,
    threads: int,
):
    """A Ray worker's job function (``(kind, name, keys)`` -> that chunk's counts), holding
    one backbone per view, each built on first use, on this worker's ``device`` (its index
    parts record it, as the in-process run's do)."""
    batch_size = writer.default_batch_size(device) if batch_size is None else batch_size
    bw = recipe.resolve()
    if bw.sha256 != sha256:
        raise OmamaError(
            f"the backbone weights on this Ray node (sha256 {short_sha(bw.sha256)}...) are not "
            f"the cache's ({short_sha(sha256)}...): give every node the same "
            f"{recipe.backbone_weights or 'weights'}"
        )
    index = ProcessedRoot(root)
    models: dict = {}
    quiet = SimpleNamespace(update=lambda n: None)

    def work(job: tuple[str, str, list[ImageKey]]) -> dict:
        kind, name, keys = job
        sizes = views[kind]
        if kind not in models:
            models[kind] = bw.build(tuple(sizes["image_size_hw"])).to(device)
        stats = writer.RunStats()
        writer.write_chunks(models[kind], kind, [(name, [ImageKey(*k) for k in keys])], index,
                            out, source_size_hw=tuple(sizes["source_size_hw"]), device=device,
                            batch_size=batch_size, io_threads=io_threads, bar=quiet,
                            stats=stats)  # fmt: skip
        return {"kind": kind, "name": name, "computed": stats.computed[kind],
                "compute_s": stats.compute_s[kind], "portrait": stats.portrait[kind]}  # fmt: skip

    return work
