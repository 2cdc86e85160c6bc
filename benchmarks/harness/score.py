"""``--score-root``: the official metrics of a bench row on the takes of a processed root.

Each row's pipeline runs every chosen take (:func:`runtime.runs.take.run_take`, scoring
against the take's annotation, with the precomputed candidates of the take's split where
``omama data masks`` wrote them, FastSAM elsewhere) and
:func:`runtime.evaluate.evaluate_report` scores the predictions, so the report can put
accuracy beside latency for every backend and precision.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from runtime.errors import OmamaError


def score_takes(index: Any, split: str | None) -> list[str]:
    """Takes to score: ``split``'s, or test's when split.json has a test split, else every
    prepared take; an OmamaError when there are none.

    Arguments:
        index: a :class:`runtime.egoexo.ProcessedRoot`.
    """
    if split is None and index.split_json.is_file() and "test" in index.split_map():
        split = "test"
    takes = [t for t in index.takes(split) if index.has_take(t)]
    if not takes:
        where = f"split {split!r} of " if split else ""
        raise OmamaError(
            f"--score-root: no prepared takes in {where}{index.root} (give a processed root "
            "written by `omama data prepare`, e.g. of `omama data synth` takes)"
        )
    return takes


def score_metrics(
    pipeline: Any,
    score_root: str,
    score_split: str | None,
    score_frames: int | None,
    work_dir: Path,
) -> dict[str, Any]:
    """The official metrics of ``pipeline`` on the takes of ``score_root`` (see
    :func:`score_takes`), at most ``score_frames`` frames each, masks at the model size (as
    O-MaMa writes them); each take's run folder goes under ``work_dir``."""
    from runtime.egoexo import ProcessedRoot, candidates_dir
    from runtime.evaluate import evaluate_report
    from runtime.jsonrecords import read_json_object
    from runtime.runs.take import run_take

    index = ProcessedRoot(score_root)
    takes = score_takes(index, score_split)
    pipeline.mask_size = "model"
    predictions: dict = {}
    annotations: dict = {}
    counts = {"precomputed_frames": 0, "fastsam_frames": 0, "skipped": 0}
    started = time.perf_counter()
    for take in takes:
        out = work_dir / take
        split = index.split_of(take) if index.split_json.is_file() else None
        candidates = candidates_dir(index.root, split, pipeline.direction) if split else None
        summary = run_take(
            pipeline,
            index.take_dir(take),
            out,
            max_frames=score_frames,
            candidates=candidates,
            score=True,
            progress=False,
        )
        counts["precomputed_frames"] += summary["precomputed_frames"]
        counts["fastsam_frames"] += summary["fastsam_frames"]
        counts["skipped"] += summary["skipped"]["count"]
        results = read_json_object(out / "results.json", "results")
        predictions.update(next(iter(results.values()))["results"])
        annotations.update(read_json_object(out / "gt.json", "GT")["annotations"])
    report = evaluate_report(annotations, predictions, pipeline.direction, workers=1)
    return {
        "root": str(score_root),
        "split": score_split,
        "takes": len(takes),
        "frames_per_take": score_frames,
        "protocol": report["protocol"],
        "fastsam_conf": pipeline.fastsam_conf if pipeline.has_fastsam else None,
        **report["aggregated_metrics"],
        "observations": report["counts"]["observations"],
        "gt_visible": report["counts"]["gt_visible"],
        **counts,
        "wall_s": time.perf_counter() - started,
    }
