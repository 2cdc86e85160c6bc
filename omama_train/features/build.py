"""A feature-cache run: this shard's images not cached yet, computed and reported."""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from omama_train.devices import resolve_device
from omama_train.features.images import jpeg_size_hw, unique_images
from omama_train.features.locks import meta_lock, shard_lock
from omama_train.features.meta import (
    BACKBONE_FILE,
    DTYPE,
    FORMAT,
    FORMAT_VERSION,
    KINDS,
    META_NAME,
    create_or_check_meta,
    fmt_hw,
    view_sizes,
)
from omama_train.features.reader import FeatureCache
from omama_train.features.weights import BackboneWeights, backbone_identity, write_backbone_file
from omama_train.features.writer import (
    DEFAULT_FLUSH_EVERY,
    RunStats,
    compute_kind,
    default_batch_size,
    report_path,
)
from omama_train.imagekey import ImageKey
from omama_train.shards import select_shard
from runtime.atomic import remove_temporaries, write_json
from runtime.egoexo import ProcessedRoot, read_pairs
from runtime.errors import OmamaError
from runtime.info import package_version

if TYPE_CHECKING:
    from omama_train.models.backbones import BackboneSpec
    from omama_train.raywork import RayOptions


def build_cache(
    root: str | os.PathLike,
    out: str | os.PathLike,
    pairs_files: Sequence[str | os.PathLike],
    backbone: str | BackboneSpec = "dinov2_vitb14_reg",
    *,
    backbone_weights: str | os.PathLike | None = None,
    random_init: bool = False,
    seed: int = 0,
    weight_profile: str = "plain",
    pos_resize: str | None = None,
    device: str | None = None,
    batch_size: int | None = None,
    shard: tuple[int, int] = (0, 1),
    flush_every: int = DEFAULT_FLUSH_EVERY,
    io_threads: int = 4,
    limit: int | None = None,
    progress: bool = True,
    ray: RayOptions | None = None,
) -> dict:
    """Compute and store the features of this shard's images not cached yet.

    ``pairs_files``: the pairs JSON files whose images (both views) are cached.
    ``backbone_weights`` (a checkpoint ``load_backbone_weights`` reads) or ``random_init``
    (seeded by ``seed``, of ``weight_profile`` ``plain`` or ``outlier``). ``device``
    (None: ``auto``) is cuda when available, on this machine or, with ``ray``, on each
    worker; ``batch_size`` defaults to 16 on CUDA, 4 on CPU. ``limit``
    stops after that many new images (a trial run; the rest follows on the next run).
    ``ray``: the chunks are computed by Ray workers (:mod:`omama_train.features.ray_chunks`),
    which write the files this process would. Returns the report (also written to
    ``report_path(out, shard)``).
    """
    started = time.perf_counter()
    root, out = Path(root), Path(out)
    device, batch_size = _check_settings(
        out, device, batch_size, flush_every, io_threads, limit, on_ray=ray is not None
    )
    pairs_files = [Path(p) for p in pairs_files]
    index = ProcessedRoot(root)
    work = _Work.of(index, pairs_files, shard)
    bw = BackboneWeights.resolve(
        backbone,
        backbone_weights,
        random_init=random_init,
        seed=seed,
        pos_resize=pos_resize,
        profile=weight_profile,
    )
    meta = _new_meta(index, work.images, bw, pos_resize)
    kinds = list(meta["views"])
    if (out / META_NAME).exists():
        # Refuse before any work when the cache was built otherwise.
        meta = create_or_check_meta(out, meta)
    for kind in kinds:
        if kind not in meta["views"]:
            raise OmamaError(f"feature cache at {out} has no {kind} view: build a new cache")
    work.plan(out, limit)
    _check_source_sizes(work.todo, index, meta, out)
    saved_file = None
    if work.todo or (bw.random_init and (out / META_NAME).exists()):
        meta, saved_file = _settle_meta(out, meta, bw, create=bool(work.todo))
    weights = bw.describe() | ({"saved_file": saved_file} if saved_file else {})
    if not (out / META_NAME).exists():  # nothing to compute, no cache: nothing to write
        run = {"device": device, "batch_size": batch_size, "elapsed_s": 0.0}
        return _report(
            out, root, pairs_files, meta["backbone"], weights, shard, work, RunStats(), run
        )

    with shard_lock(out, shard):
        # Another run of this shard may have cached images since: they are skipped.
        work.plan(out, limit)
        _check_source_sizes(work.todo, index, meta, out)
        report_file = report_path(out, shard)
        remove_temporaries(out, [report_file.name])
        stats = RunStats()
        settings = {"device": device, "batch_size": batch_size, "flush_every": flush_every}
        ray_entry = None
        if ray is None:
            _compute(work.todo, meta, bw, index, out, shard, io_threads, progress, stats,
                     **settings)  # fmt: skip
        else:
            from omama_train.features.ray_chunks import WeightsRecipe, compute_on_ray

            # Absolute: workers on other nodes start in their raylet's folder, not ours.
            weights_file = Path(backbone_weights).resolve() if backbone_weights else None
            recipe = WeightsRecipe(backbone, weights_file, random_init, seed, pos_resize,
                                   weight_profile)  # fmt: skip
            ray_entry = compute_on_ray(ray, work.todo, meta, recipe, root, out, shard, progress,
                                       stats, io_threads=io_threads, **settings)  # fmt: skip
            device, batch_size = _ran_on(ray_entry, device, batch_size)
        run = {
            "device": device,
            "batch_size": batch_size,
            "elapsed_s": time.perf_counter() - started,
        }
        report = _report(out, root, pairs_files, meta["backbone"], weights, shard, work, stats, run)
        if ray is not None:
            report["ray"] = ray_entry
        write_json(report_file, report, indent=2)
    return report


def _settle_meta(
    out: Path, meta: dict, bw: BackboneWeights, create: bool
) -> tuple[dict, dict | None]:
    """Under the cache's meta lock: check ``meta.json`` against this run (another run may have
    created it since), write the weights of a random-init run, and create ``meta.json`` when
    absent and ``create``. Returns (the meta in force, the weights file written or None)."""
    with meta_lock(out):
        remove_temporaries(out, [META_NAME, BACKBONE_FILE])  # of runs killed while writing
        if (out / META_NAME).exists():
            meta = create_or_check_meta(out, meta)
        saved_file = None
        if bw.random_init:
            saved_file = write_backbone_file(out, bw)
            # Recorded by the run that creates meta.json (an existing one is only checked).
            meta["weights"] = {**meta["weights"], "saved_file": saved_file}
        if create:
            meta = create_or_check_meta(out, meta)
    return meta, saved_file


def _check_settings(
    out: Path,
    device: str | None,
    batch_size: int | None,
    flush_every: int,
    io_threads: int,
    limit: int | None,
    on_ray: bool = False,
) -> tuple[str, int | None]:
    """(device, batch size) with their defaults; OmamaError for a setting out of range.
    ``on_ray``: the device is resolved (and CUDA checked) on the Ray workers and cluster, not
    here, so ``auto`` and a batch size of None stay for them (:mod:`.ray_chunks`)."""
    if on_ray:
        device = device or "auto"
    else:
        device = resolve_device(device)
        batch_size = default_batch_size(device) if batch_size is None else batch_size
    for name, value in (("--batch-size", batch_size), ("--flush-every", flush_every)):
        if value is not None and value < 1:
            raise OmamaError(f"{name} must be at least 1, got {value}")
    if io_threads < 1:
        raise OmamaError(f"--io-threads must be at least 1, got {io_threads}")
    if limit is not None and limit < 0:
        raise OmamaError(f"--limit must be at least 0, got {limit}")
    if out.exists() and not out.is_dir():
        raise OmamaError(f"--out {out} exists and is not a folder")
    return device, batch_size


def _ran_on(ray_entry: dict, device: str, batch_size: int | None) -> tuple[str, int | None]:
    """The report's (device, batch size) of a Ray run: the devices its workers ran on
    (``auto`` when none ran), and the batch size they used (None if it differed)."""
    devices = list(ray_entry.get("worker_devices", {}))
    if batch_size is None and len(devices) == 1:
        batch_size = default_batch_size(devices[0])
    return " and ".join(devices) or device, batch_size


@dataclass
class _Work:
    """The images of a run: all of the pairs', this shard's, those present on disk, those
    not cached yet and those computed now (``todo``: ``uncached`` up to ``--limit``)."""

    images: list[ImageKey]
    shard_images: list[ImageKey]
    present: list[ImageKey]
    missing: list[str]
    uncached: list[ImageKey] = field(default_factory=list)
    todo: list[ImageKey] = field(default_factory=list)

    @classmethod
    def of(cls, index: ProcessedRoot, pairs_files: list[Path], shard: tuple[int, int]) -> _Work:
        images = unique_images(pair for path in pairs_files for pair in read_pairs(path))
        # Shards split the pairs' images, present or not, so every machine agrees on them.
        shard_images = select_shard(images, *shard)
        present = [k for k in shard_images if index.image_path(*k).is_file()]
        missing = [str(k) for k in shard_images if not index.image_path(*k).is_file()]
        return cls(images, shard_images, present, missing)

    def plan(self, out: Path, limit: int | None) -> None:
        """``uncached`` and ``todo`` from what the cache at ``out`` holds now."""
        cached = set(FeatureCache(out).keys()) if (out / META_NAME).exists() else set()
        self.uncached = [k for k in self.present if str(k) not in cached]
        self.todo = self.uncached if limit is None else self.uncached[:limit]


def _new_meta(
    index: ProcessedRoot, images: list[ImageKey], bw: BackboneWeights, pos_resize: str | None
) -> dict:
    """The ``meta.json`` this run would write. A kind's size is its first present image's
    over all shards (so they agree on it); every image computed is checked against it."""
    import torch

    identity = backbone_identity(bw.spec, pos_resize)
    firsts: dict[str, ImageKey] = {}
    for key in images:
        if key.kind not in firsts and index.image_path(*key).is_file():
            firsts[key.kind] = key
    sizes = {
        kind: view_sizes(jpeg_size_hw(index.image_path(*firsts[kind])), bw.spec.patch_size)
        for kind in KINDS
        if kind in firsts
    }
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "backbone": identity,
        "weights": bw.describe(),
        "dtype": DTYPE,
        "channels": identity["out_channels"],
        "views": sizes,
        "omama_version": package_version("omama"),
        "torch_version": torch.__version__,
        "created_at": datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def _check_source_sizes(todo: list[ImageKey], index: ProcessedRoot, meta: dict, out: Path) -> None:
    """Headers only: refuse an image whose (landscape) size is not its kind's, before
    computing anything."""
    from omama_train.sampling import landscape_size

    for key in todo:
        size = jpeg_size_hw(index.image_path(*key))
        want = tuple(meta["views"][key.kind]["source_size_hw"])
        if landscape_size(size) != want:
            raise OmamaError(
                f"image {index.image_path(*key)} is {fmt_hw(size)} px, the {key.kind} images "
                f"of the cache at {out} are {fmt_hw(want)} (or portrait {want[1]}x{want[0]}, "
                "resized to it)"
            )


def _compute(
    todo, meta, bw, index, out, shard, io_threads, progress, stats, *, device, **settings
) -> None:
    """Features of ``todo``, kind by kind, each kind's backbone built at its size."""
    import torch
    from tqdm import tqdm

    with tqdm(
        total=len(todo), desc="features", unit="img", file=sys.stderr, disable=not progress
    ) as bar:
        for kind in KINDS:
            keys = [k for k in todo if k.kind == kind]
            if not keys:
                continue
            bar.set_postfix(view=kind)
            sizes = meta["views"][kind]
            model = bw.build(tuple(sizes["image_size_hw"])).to(device)
            compute_kind(
                model,
                kind,
                keys,
                index,
                out,
                shard=shard,
                source_size_hw=tuple(sizes["source_size_hw"]),
                device=device,
                io_threads=io_threads,
                bar=bar,
                stats=stats,
                **settings,
            )
            del model
            if device.startswith("cuda"):
                torch.cuda.empty_cache()


def _report(out, root, pairs_files, identity, weights, shard, work, stats, run) -> dict:
    """The run's report (``report_path(out, shard)``): counts, disk use, timing, machine."""
    import torch

    cache = FeatureCache(out) if (out / META_NAME).exists() else None
    usage = cache.disk_usage() if cache else {}
    computed = sum(stats.computed.values())
    compute_s = sum(stats.compute_s.values())
    return {
        "cache": str(out),
        "root": str(root),
        "pairs_files": [str(p) for p in pairs_files],
        "backbone": identity,
        "weights": weights,
        "shard": list(shard),
        "images_total": len(work.images),
        "images_in_shard": len(work.shard_images),
        "computed": computed,
        "computed_per_view": stats.computed,
        "portrait_resized_per_view": stats.portrait,
        "skipped_cached": len(work.present) - len(work.uncached),
        "left_for_later": len(work.uncached) - len(work.todo),
        "missing_images": work.missing,
        "chunks_written": stats.chunks,
        "disk": usage,
        "cache_mb": round(sum(v["bytes"] for v in usage.values()) / 1e6, 2),
        "cache_devices": cache.devices() if cache else {},
        "device": run["device"],
        "batch_size": run["batch_size"],
        "timing": {
            "seconds_total": round(run["elapsed_s"], 3),
            "images_per_s": round(computed / compute_s, 3) if compute_s else None,
            "images_per_s_per_view": {
                kind: round(stats.computed[kind] / stats.compute_s[kind], 3)
                for kind in KINDS
                if stats.compute_s[kind]
            },
        },
        "finished_at": datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
        },
    }


def summary_text(report: dict) -> str:
    """The one-paragraph summary printed by ``omama features``."""
    shard = report["shard"]
    where = "" if shard[1] == 1 else f" (shard {shard[0]}/{shard[1]})"
    rate = report["timing"]["images_per_s"]
    lines = [
        f"{report['images_in_shard']} images{where} of {report['images_total']}: "
        f"{report['computed']} computed, {report['skipped_cached']} already cached, "
        f"{report['left_for_later']} left for a later run (--limit), "
        f"{len(report['missing_images'])} missing"
        + (f"; {rate:.2f} images/s on {report['device']}" if rate else ""),
        f"cache {report['cache']}: {report['cache_mb']:.1f} MB on disk",
    ]
    for view, usage in report["disk"].items():
        lines.append(
            f"  {view}: {usage['images']} images, {usage['bytes'] / 1e6:.1f} MB, "
            f"{usage['mb_per_1000_images']:.1f} MB per 1000 images"
        )
    devices = report.get("cache_devices", {})
    if len(devices) > 1:
        lines.append(
            "the cache mixes maps computed on "
            + " and ".join(
                f"{d} ({n} images{', float16 autocast' if d.startswith('cuda') else ''})"
                for d, n in devices.items()
            )
            + ": they differ by rounding; rebuild it on one device for uniform maps"
        )
    portrait = {v: n for v, n in report.get("portrait_resized_per_view", {}).items() if n}
    if portrait:
        lines.append(
            "portrait frames resized to their view's landscape size: "
            + ", ".join(f"{n} {v}" for v, n in portrait.items())
        )
    weights = report["weights"]
    if weights.get("saved_file"):
        path = Path(report["cache"]) / weights["saved_file"]["name"]
        lines.append(
            f"backbone weights (random init, seed {weights['seed']}, "
            f"{weights.get('profile', 'plain')} profile): {path} "
            f"(export with --backbone-weights {path})"
        )
    elif weights.get("random_init") is False and weights.get("seed") is not None:
        lines.append(
            f"{weights['file']} has no 1x1 projection to 768 channels: it is seeded with "
            f"--seed {weights['seed']} (export with --backbone-weights {weights['file']} "
            f"--seed {weights['seed']})"
        )
    return "\n".join(lines)
