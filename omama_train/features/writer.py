"""Writing one camera kind's feature maps into a cache, chunk by chunk.

Writing. Images are sorted; shard ``i/n`` takes ``[i::n]`` of that list, so shards on
several machines partition the images without talking to each other. Within a shard the
images of one view go through the backbone in batches; every ``flush_every`` (K) images
form a chunk: its rows are written into a temporary ``.npy`` (an ``open_memmap``, so a
chunk never sits in RAM), which is renamed onto its final name once complete, and only then
is its index part written (atomically). An index part therefore always describes a complete
data file, and an interrupted run loses at most the chunk it was writing: the next run
skips every key already indexed (by any shard) and goes on. Leftovers of this shard's
interrupted chunks (temporary files, data files without an index part) are removed at the
start. One process per shard at a time: the caller holds the shard's lock
(:mod:`omama_train.features.locks`), so these leftovers are never another run's.

Compute: ``torch.inference_mode``; on CUDA under ``torch.autocast(float16)``, on CPU in
float32; stored as float16 either way (non-finite values are refused). JPEGs are decoded by
a small thread pool ahead of the model; preprocessing (nearest resize to the model input
size, ImageNet normalisation) runs on the device with the torch twin of
``runtime.preprocess``, which is bit-identical to it.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from omama_train.features.meta import CHUNKS_DIR, KINDS, fmt_hw
from omama_train.imagekey import ImageKey
from runtime.atomic import atomic_path, write_json
from runtime.egoexo import ProcessedRoot
from runtime.errors import OmamaError
from runtime.images import read_rgb
from runtime.preprocess import resize_nearest_hw

if TYPE_CHECKING:
    from omama_train.models.backbones import Backbone

DEFAULT_FLUSH_EVERY = 256
PREFETCH_BATCHES = 2  # batches decoded ahead of the model


def default_batch_size(device: str) -> int:
    """Images per forward when ``--batch-size`` is not given: 16 on CUDA, 4 on CPU."""
    return 16 if device.startswith("cuda") else 4


def _chunk_prefix(kind: str, shard: tuple[int, int]) -> str:
    return f"{kind}-{shard[0]:03d}of{shard[1]:03d}-"


def _clean_and_next_seq(chunks_dir: Path, prefix: str) -> int:
    """Remove this shard's leftovers of an interrupted chunk; the next free sequence number."""
    if not chunks_dir.is_dir():
        return 0
    for tmp in chunks_dir.glob(f".{prefix}*"):
        tmp.unlink(missing_ok=True)
    seqs = [-1]
    for data in chunks_dir.glob(f"{prefix}*.npy"):
        if not data.with_suffix(".json").is_file():
            data.unlink(missing_ok=True)  # renamed, but its index part was never written
            continue
        seqs.append(int(data.stem[len(prefix) :]))
    for part in chunks_dir.glob(f"{prefix}*.json"):
        seqs.append(int(part.stem[len(prefix) :]))
    return max(seqs) + 1


def _decoded_batches(batches: Sequence[Sequence[Path]], threads: int) -> Iterator[list[np.ndarray]]:
    """Decoded RGB images batch by batch, ``PREFETCH_BATCHES`` batches read ahead."""
    with ThreadPoolExecutor(max_workers=threads) as pool:
        pending: deque[list[Future]] = deque()
        upcoming = iter(batches)
        for batch in upcoming:
            pending.append([pool.submit(read_rgb, p) for p in batch])
            if len(pending) > PREFETCH_BATCHES:
                break
        while pending:
            futures = pending.popleft()
            nxt = next(upcoming, None)
            if nxt is not None:
                pending.append([pool.submit(read_rgb, p) for p in nxt])
            yield [f.result() for f in futures]


def _batches(items: Sequence, size: int) -> list[Sequence]:
    return [items[i : i + size] for i in range(0, len(items), size)]


@dataclass
class RunStats:
    """Per camera kind: images computed, seconds in the model, portrait frames resized;
    and the chunk names written."""

    computed: dict[str, int] = field(default_factory=lambda: {k: 0 for k in KINDS})
    compute_s: dict[str, float] = field(default_factory=lambda: {k: 0.0 for k in KINDS})
    portrait: dict[str, int] = field(default_factory=lambda: {k: 0 for k in KINDS})
    chunks: list[str] = field(default_factory=list)


def compute_kind(
    model: Backbone,
    kind: str,
    keys: list[ImageKey],
    index: ProcessedRoot,
    out: Path,
    *,
    shard: tuple[int, int],
    source_size_hw: tuple[int, int],
    device: str,
    batch_size: int,
    flush_every: int,
    io_threads: int,
    bar,
    stats: RunStats,
) -> None:
    """Features of ``keys`` (one camera kind) in chunks of ``flush_every`` images (see the
    module doc); ``bar`` (tqdm) advances per image."""
    chunks = plan_chunks(out, kind, keys, shard, flush_every)
    write_chunks(model, kind, chunks, index, out, source_size_hw=source_size_hw, device=device,
                 batch_size=batch_size, io_threads=io_threads, bar=bar, stats=stats)  # fmt: skip


def plan_chunks(
    out: Path, kind: str, keys: list[ImageKey], shard: tuple[int, int], flush_every: int
) -> list[tuple[str, list[ImageKey]]]:
    """``(name, keys)`` of the chunks ``keys`` (one kind) are written in, named after
    ``shard``'s chunks already in the cache (whose leftovers of an interrupted chunk are
    removed now: the caller holds the shard's lock)."""
    prefix = _chunk_prefix(kind, shard)
    seq = _clean_and_next_seq(out / CHUNKS_DIR, prefix)
    chunks = _batches(keys, flush_every)
    return [(f"{prefix}{seq + i:05d}", list(chunk)) for i, chunk in enumerate(chunks)]


def write_chunks(
    model: Backbone,
    kind: str,
    chunks: list[tuple[str, list[ImageKey]]],
    index: ProcessedRoot,
    out: Path,
    *,
    source_size_hw: tuple[int, int],
    device: str,
    batch_size: int,
    io_threads: int,
    bar,
    stats: RunStats,
) -> None:
    """Compute and write ``chunks`` (:func:`plan_chunks`) of one kind, in order."""
    batches = [batch for _, chunk in chunks for batch in _batches(chunk, batch_size)]
    decoded = _decoded_batches([[index.image_path(*k) for k in b] for b in batches], io_threads)
    encoder = _ChunkEncoder(model, kind, index, out, tuple(source_size_hw), device, bar, stats)
    with contextlib.closing(decoded):
        for name, chunk in chunks:
            encoder.write_chunk(out / CHUNKS_DIR, name, chunk, decoded)
            stats.chunks.append(name)


class _ChunkEncoder:
    """One kind's backbone on its device, turning decoded batches into chunk files."""

    def __init__(self, model, kind, index, out, source_size_hw, device, bar, stats) -> None:
        import torch

        self.model, self.kind, self.index, self.out = model, kind, index, out
        self.source_size_hw, self.device, self.bar, self.stats = source_size_hw, device, bar, stats
        self.cuda = device.startswith("cuda")
        self.amp = (
            torch.autocast("cuda", dtype=torch.float16) if self.cuda else contextlib.nullcontext()
        )

    def write_chunk(self, chunks_dir: Path, name: str, chunk: Sequence[ImageKey], decoded) -> None:
        """``<name>.npy`` (float16 rows, C, h, w) of ``chunk``'s images, renamed into place
        once complete, then its index part ``<name>.json``."""
        model = self.model
        data_path = chunks_dir / f"{name}.npy"
        shape = (len(chunk), model.out_channels, *model.grid)
        with atomic_path(data_path) as tmp:
            rows = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=shape)
            start = 0
            while start < len(chunk):
                rgbs = next(decoded)
                batch = chunk[start : start + len(rgbs)]
                rows[start : start + len(batch)] = self._features(batch, rgbs)
                start += len(batch)
                self.bar.update(len(batch))
            rows.flush()
            del rows
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        write_json(
            chunks_dir / f"{name}.json",
            {
                "view": self.kind,
                "file": data_path.name,
                "keys": [str(k) for k in chunk],
                "shape": list(shape),
                "device": self.device,
                "autocast_float16": self.cuda,
                "written_at": datetime.now().astimezone().isoformat(timespec="seconds"),
            },
        )

    def _features(self, batch: Sequence[ImageKey], rgbs: list[np.ndarray]) -> np.ndarray:
        """float16 (n, C, h, w) maps of one decoded batch (sizes checked, portrait resized)."""
        import torch

        from omama_train.models.preprocess import preprocess_image_torch
        from omama_train.sampling import landscape_size

        want = self.source_size_hw
        for key, rgb in zip(batch, rgbs, strict=True):
            if landscape_size(rgb.shape[:2]) != want:
                raise OmamaError(
                    f"image {self.index.image_path(*key)} is {fmt_hw(rgb.shape[:2])} px, "
                    f"the {self.kind} images of the cache at {self.out} are "
                    f"{fmt_hw(want)} (or portrait {want[1]}x{want[0]})"
                )
        portrait = sum(rgb.shape[0] > rgb.shape[1] for rgb in rgbs)
        if portrait:
            # Resized (not rotated) straight to the model size, as the dataset does; the
            # rest of the batch too, so it stacks (same indices as the device resize, so
            # landscape images are unchanged by this).
            size = self.model.image_size
            rgbs = [resize_nearest_hw(rgb, size, axes=(0, 1), rule="opencv") for rgb in rgbs]
            self.stats.portrait[self.kind] += portrait
        t0 = time.perf_counter()
        with torch.inference_mode(), self.amp:
            x = torch.from_numpy(np.stack(rgbs)).to(self.device, non_blocking=True)
            x = preprocess_image_torch(x, size_hw=self.model.image_size)
            feats = self.model(x).to(torch.float16)
        if not bool(torch.isfinite(feats).all()):
            raise OmamaError(
                f"features of {batch[0]} (batch of {len(batch)}) are not finite in "
                "float16; check the weights"
            )
        out = feats.cpu().numpy()
        self.stats.compute_s[self.kind] += time.perf_counter() - t0
        self.stats.computed[self.kind] += len(batch)
        return out


def report_path(out: Path, shard: tuple[int, int] = (0, 1)) -> Path:
    """``CACHE/report[_shard_i_n].json``."""
    suffix = "" if shard[1] == 1 else f"_shard_{shard[0]}_{shard[1]}"
    return Path(out) / f"report{suffix}.json"
