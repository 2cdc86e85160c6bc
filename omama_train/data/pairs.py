"""``omama data pairs``: the O-MaMa pairs files of a processed root, optionally sampled.

A pair is one observation: (object, exo camera, frame) where the source view has a mask
(the query exists) and the frame is annotated in the destination view. The destination may
have no mask there (the object is not visible): those pairs are kept, they teach and test
visibility.

Sampling (deterministic for a seed, and independent of the other takes):

- ``frame`` (as the reference study did): each (take, camera) keeps a fraction of its frames;
  a pair is kept when its frame was kept in both its ego and its exo camera. Camera
  samples are drawn independently, so about ratio^2 of the pairs remain.
- ``object``: each take keeps a fraction of its objects, with all their frames, so the
  sample covers fewer objects densely instead of many objects sparsely.

Each unit's sample is a prefix of a fixed random order, so a larger ratio keeps a superset:
``--target-pairs`` bisects the ratio to land closest to the wanted count.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import typer

from runtime.egoexo import (
    Pair,
    ProcessedRoot,
    check_direction,
    pairs_path,
    take_observations,
    write_pairs,
)
from runtime.errors import OmamaError
from runtime.locks import folder_lock

SAMPLE_BY = ("frame", "object")


def check_sample_by(sample_by: str) -> str:
    if sample_by not in SAMPLE_BY:
        raise OmamaError(f"--sample-by must be one of {', '.join(SAMPLE_BY)}, got {sample_by!r}")
    return sample_by


def all_pairs(index: ProcessedRoot, takes: Iterable[str], direction: str) -> list[Pair]:
    """Every observation of ``takes`` for ``direction``, ordered by take, object, exo cam, frame
    (:func:`runtime.egoexo.take_observations`, as pairs)."""

    pairs: list[Pair] = []
    for take in takes:
        ego = index.ego_cam(take)
        for o in take_observations(index, take, direction):
            exo = o.src_cam if o.dst_cam == ego else o.dst_cam
            pairs.append(Pair(take, o.obj, ego, exo, o.frame))
    return pairs


def _ranks(key: str, items: Sequence) -> dict:
    """A fixed random order of ``items`` (sorted first), seeded by ``key``: item -> rank."""
    seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
    order = sorted(items)
    random.Random(seed).shuffle(order)
    return {item: rank for rank, item in enumerate(order)}


def kept_count(ratio: float, n: int | np.ndarray) -> np.ndarray:
    """How many of ``n`` units a ratio keeps: rounded half up, at least one."""
    return np.maximum(1, np.floor(ratio * np.asarray(n) + 0.5)).astype(np.int64)


class PairSampler:
    """Keeps a deterministic fraction of ``pairs`` (see the module docstring).

    For each pair it stores its rank in each sampled unit and the unit's size, so trying a
    ratio is one vectorised comparison.
    """

    def __init__(
        self, index: ProcessedRoot, pairs: Sequence[Pair], sample_by: str, seed: int
    ) -> None:
        check_sample_by(sample_by)
        self.pairs = list(pairs)
        self.sample_by = sample_by
        ranks: list[list[int]] = []
        sizes: list[list[int]] = []
        if sample_by == "frame":
            cache: dict[tuple[str, str], dict] = {}
            for p in self.pairs:
                row_ranks, row_sizes = [], []
                for cam in (p.ego_cam, p.exo_cam):
                    if (p.take, cam) not in cache:
                        frames = index.cam_frames(p.take, cam)
                        cache[(p.take, cam)] = _ranks(f"{seed}:frame:{p.take}:{cam}", frames)
                    unit = cache[(p.take, cam)]
                    row_ranks.append(unit[p.frame])
                    row_sizes.append(len(unit))
                ranks.append(row_ranks)
                sizes.append(row_sizes)
        else:
            objects: dict[str, set[str]] = {}
            for p in self.pairs:
                objects.setdefault(p.take, set()).add(p.obj)
            units = {t: _ranks(f"{seed}:object:{t}", objs) for t, objs in objects.items()}
            for p in self.pairs:
                ranks.append([units[p.take][p.obj]])
                sizes.append([len(units[p.take])])
        width = 2 if sample_by == "frame" else 1
        self._ranks = np.asarray(ranks, dtype=np.int64).reshape(-1, width)
        self._sizes = np.asarray(sizes, dtype=np.int64).reshape(-1, width)

    def keep(self, ratio: float) -> np.ndarray:
        """Boolean (P,) mask of the pairs kept at ``ratio`` in (0, 1]."""
        if not 0.0 < ratio <= 1.0:
            raise OmamaError(f"--sample-ratio must be in (0, 1], got {ratio}")
        return (self._ranks < kept_count(ratio, self._sizes)).all(axis=1)

    def count(self, ratio: float) -> int:
        return int(self.keep(ratio).sum())

    def ratio_for(self, target_pairs: int) -> float:
        """The ratio whose sample size is closest to ``target_pairs`` (ties: the smaller)."""
        if target_pairs < 1:
            raise OmamaError(f"--target-pairs must be at least 1, got {target_pairs}")
        if self.count(1.0) <= target_pairs:
            return 1.0
        low, high = 0.0, 1.0  # count(low) < target <= count(high); counts grow with ratio
        for _ in range(60):
            mid = (low + high) / 2
            if self.count(mid) >= target_pairs:
                high = mid
            else:
                low = mid
        if low == 0.0:  # even one unit each is too many: the smallest sample, as a plain ratio
            return 1.0 / float(self._sizes.max())
        below, above = self.count(low), self.count(high)
        return low if target_pairs - below <= above - target_pairs else high

    def sample(self, ratio: float) -> list[Pair]:
        return [p for p, kept in zip(self.pairs, self.keep(ratio), strict=True) if kept]


@dataclass
class PairsResult:
    """The pairs of one split: ``pairs`` kept out of ``total`` at ``sample_ratio``."""

    split: str
    pairs: list[Pair]
    total: int
    sample_ratio: float | None
    missing_takes: list[str]


def make_pairs(
    index: ProcessedRoot,
    split: str,
    direction: str,
    *,
    sample_ratio: float | None = None,
    target_pairs: int | None = None,
    sample_by: str = "frame",
    seed: int = 42,
) -> PairsResult:
    """The (optionally sampled) pairs of the prepared takes of ``split``.

    ``sample_ratio`` and ``target_pairs`` exclude each other; with neither, every pair is
    kept. Takes listed in ``split.json`` but not prepared are returned in ``missing_takes``.
    """
    if sample_ratio is not None and target_pairs is not None:
        raise OmamaError("give either --sample-ratio or --target-pairs, not both")
    listed = index.takes(split)
    takes = [t for t in listed if index.has_take(t)]
    pairs = all_pairs(index, takes, direction)
    missing = [t for t in listed if not index.has_take(t)]
    if sample_ratio is None and target_pairs is None:
        return PairsResult(split, pairs, len(pairs), None, missing)
    sampler = PairSampler(index, pairs, sample_by, seed)
    ratio = sampler.ratio_for(target_pairs) if target_pairs is not None else sample_ratio
    return PairsResult(split, sampler.sample(ratio), len(pairs), ratio, missing)


def add_commands(data_app: typer.Typer) -> None:
    @data_app.command("pairs")
    def pairs_command(
        root: Path = typer.Option(..., "--root", help="Processed root (from omama data prepare)."),
        direction: str = typer.Option(..., "--direction", help="exo2ego or ego2exo."),
        split: str = typer.Option("all", "--split", help="A split of split.json, or 'all'."),
        sample_ratio: float | None = typer.Option(
            None, "--sample-ratio", help="Fraction in (0, 1] of the frames or objects to keep."
        ),
        target_pairs: int | None = typer.Option(
            None,
            "--target-pairs",
            help="Pick the ratio that gives about this many pairs per split.",
        ),
        sample_by: str = typer.Option(
            "frame", "--sample-by", help="frame (as the reference study) or object."
        ),
        seed: int = typer.Option(42, "--seed", help="Sampling seed."),
    ) -> None:
        """Write ROOT/dataset_jsons/<split>_<exoego|egoexo>_pairs.json for each split.

        One [ego_rgb, ego_mask, exo_rgb, exo_mask] tuple per (object, exo camera, frame)
        where the source view has a mask and the destination frame is annotated.

        Example: omama data pairs --root data --direction exo2ego --split train --sample-ratio 0.3
        """
        check_direction(direction)
        check_sample_by(sample_by)
        index = ProcessedRoot(root)
        splits = index.splits() if split == "all" else [split]
        folder = pairs_path(root, "train", direction).parent  # ROOT/dataset_jsons
        # One writer per direction: the two directions' files are apart.
        with folder_lock(folder, "omama data pairs", name=f".omama-{direction}.lock", instead=None):
            for name in splits:
                result = make_pairs(
                    index,
                    name,
                    direction,
                    sample_ratio=sample_ratio,
                    target_pairs=target_pairs,
                    sample_by=sample_by,
                    seed=seed,
                )
                path = pairs_path(root, name, direction)
                write_pairs(path, result.pairs, root)
                line = f"{name}: {len(result.pairs)} pairs"
                if result.sample_ratio is not None:
                    share = len(result.pairs) / result.total if result.total else math.nan
                    line += (
                        f" of {result.total} ({share:.1%}; ratio {result.sample_ratio:.4g} "
                        f"by {sample_by}, seed {seed})"
                    )
                typer.echo(f"{line} -> {path}")
                if result.missing_takes:
                    typer.echo(
                        f"  {len(result.missing_takes)} take(s) of split.json not prepared, "
                        f"left out: {', '.join(result.missing_takes[:5])}"
                        + (" ..." if len(result.missing_takes) > 5 else "")
                    )
