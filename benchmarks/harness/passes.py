"""Passes of a runner over the synthetic pairs, and the fidelity reference file.

A *timed* pass appends each pair's stage and end-to-end ms to the sample lists; the
*fidelity* pass matches on the fixed candidates and keeps the similarities. The torch fp32
row saves its outputs (:func:`save_outputs`) and every later row compares with them
(:func:`load_outputs`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from benchmarks.harness.inputs import BenchPair
from benchmarks.harness.stats import END_TO_END
from runtime.atomic import atomic_path
from runtime.candidates import Candidates
from runtime.pipeline import STAGES


@dataclass
class PassOutput:
    """Outputs of one pass over the pairs: (P, K) choices; for an end-to-end pass the
    (P, K, H, W) final masks and (P,) candidate counts, for the fidelity pass the
    (P, K, N) similarities on the fixed candidates."""

    choices: np.ndarray
    masks: np.ndarray | None = None
    candidates: np.ndarray | None = None
    sims: np.ndarray | None = None


def run_pass(
    runner: Any,
    pairs: Sequence[BenchPair],
    candidates_of: Callable[[BenchPair], Candidates | None],
    host: dict[str, list[float]] | None = None,
    device: dict[str, list[float]] | None = None,
) -> PassOutput:
    """One end-to-end pass over the pairs; appends each pair's stage and end-to-end ms to
    ``host`` (and CUDA-event ms per model to ``device``) when given."""
    choices, masks, counts = [], [], []
    for pair in pairs:
        t0 = time.perf_counter()
        record, matches = runner.run(pair, candidates_of(pair))
        elapsed_ms = 1e3 * (time.perf_counter() - t0)
        if host is not None:
            host[END_TO_END].append(elapsed_ms)
            for stage in STAGES:
                host[stage].append(record["host"][stage])
        if device is not None:
            for role, value in record["device"].items():
                device.setdefault(role, []).append(value)
        choices.append([m.candidate for m in matches])
        masks.append(np.stack([m.mask for m in matches]))
        counts.append(matches[0].n_candidates)
    return PassOutput(np.asarray(choices), np.stack(masks), np.asarray(counts))


def fidelity_pass(runner: Any, pairs: Sequence[BenchPair]) -> PassOutput:
    """Every pair matched on its fixed candidates: (P, K) choices, (P, K, N) similarities."""
    choices, sims = [], []
    for pair in pairs:
        pair_sims, matches = runner.similarities(pair)
        sims.append(pair_sims)
        choices.append([m.candidate for m in matches])
    return PassOutput(np.asarray(choices), sims=np.stack(sims))


def save_outputs(path: str | os.PathLike, final: PassOutput, fid: PassOutput) -> None:
    """The fidelity reference of a run: final masks bit-packed, choices, similarities."""
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez_compressed(
            tmp,
            masks_packed=np.packbits(final.masks.astype(bool), axis=-1),
            mask_width=np.int64(final.masks.shape[-1]),
            choices=final.choices,
            fid_choices=fid.choices,
            fid_sims=fid.sims,
        )


def load_outputs(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """What :func:`save_outputs` wrote: ``masks`` (P, K, H, W) uint8, ``fid_choices``,
    ``fid_sims``."""
    with np.load(path) as data:
        width = int(data["mask_width"])
        masks = np.unpackbits(data["masks_packed"], axis=-1, count=width).astype(np.uint8)
        return {"masks": masks, "fid_choices": data["fid_choices"], "fid_sims": data["fid_sims"]}
