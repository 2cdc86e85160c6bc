"""``omama-run take``: every object and camera pair of a processed take (``ROOT/processed/<take>``).

Frames are visited in order; for each frame the destination (exo2ego: the ego frame) or
source view is encoded once for all cameras and objects, and each (source cam, destination
cam) pair is one matcher call for all its objects. With a candidates folder (what ``omama
data masks`` writes, e.g. ``ROOT/Masks_<SPLIT>_<DIRECTION>``) its candidates are used where
present, FastSAM elsewhere; without one, FastSAM everywhere. Writes ``results.json`` and
``summary.json`` (and when scoring, ``gt.json`` and ``metrics.json``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from runtime import rle
from runtime.atomic import write_json
from runtime.candidates import read_candidates
from runtime.egoexo import (
    ProcessedRoot,
    TakeObservation,
    frame_candidate_files,
    take_observations,
)
from runtime.errors import OmamaError, no_fastsam_error
from runtime.images import read_rgb
from runtime.info import peak_rss_mb
from runtime.latency import format_latency
from runtime.pipeline import DestinationFrame, Match, Pipeline, ViewFrame
from runtime.results import add_gt_annotation, add_prediction, new_gt, new_results, write_results
from runtime.runs.records import RESULTS_NAME, SUMMARY_NAME, Skips
from runtime.sizing import working_size


class _FrameViews:
    """The encoded views of the current frame, reused across its cameras and objects (a new
    frame forgets the last one's); counts the destination frames by candidate source."""

    def __init__(self, pipeline: Pipeline, index: ProcessedRoot, take: str,
                 candidates: Path | None) -> None:  # fmt: skip
        self.pipeline, self.index, self.take = pipeline, index, take
        self.candidates = candidates
        self.counts = {"precomputed_frames": 0, "fastsam_frames": 0}
        self._cache: dict[tuple[str, str], ViewFrame] = {}
        self._frame: int | None = None

    def _forget_unless(self, frame: int) -> None:
        if frame != self._frame:
            self._cache, self._frame = {}, frame

    def src(self, cam: str, frame: int) -> ViewFrame:
        self._forget_unless(frame)
        if ("src", cam) not in self._cache:
            rgb = read_rgb(self.index.image_path(self.take, cam, frame))
            self._cache[("src", cam)] = self.pipeline.encode_src(rgb)
        return self._cache[("src", cam)]

    def dst(self, cam: str, frame: int) -> DestinationFrame:
        self._forget_unless(frame)
        if ("dst", cam) not in self._cache:
            rgb = read_rgb(self.index.image_path(self.take, cam, frame))
            candidates = None
            if self.candidates is not None:
                masks_path, boxes_path = frame_candidate_files(
                    self.candidates / self.take / cam, frame
                )
                if masks_path.is_file() and boxes_path.is_file():
                    work_hw = working_size(rgb.shape[:2], self.pipeline.views["dst"].image_size)
                    candidates = read_candidates(masks_path, boxes_path, work_hw)
            self._cache[("dst", cam)] = self.pipeline.encode_dst(rgb, candidates)
            self.counts["precomputed_frames" if candidates is not None else "fastsam_frames"] += 1
        return self._cache[("dst", cam)]


def _usable_queries(pipeline: Pipeline, index: ProcessedRoot, take: str, src: ViewFrame,
                    group: list[TakeObservation], skips: Skips) -> tuple[list, list]:  # fmt: skip
    """(observations, query masks) of ``group`` whose source mask can be a query."""
    usable, queries = [], []
    for obs in group:
        rle_dict = index.mask_rle(take, obs.obj, obs.src_cam, obs.frame)
        query = None if rle_dict is None else rle.decode(rle_dict)
        problem = "no query mask" if query is None else pipeline.query_problem(query, src.image_hw)
        if problem:
            skips.add(object=obs.obj, cams=f"{obs.src_cam}->{obs.dst_cam}", frame=obs.frame,
                      reason=problem)  # fmt: skip
            continue
        usable.append(obs)
        queries.append(query)
    return usable, queries


def _select(index: ProcessedRoot, take: str, direction: str,
            max_frames: int | None) -> tuple[list[TakeObservation], list[int]]:  # fmt: skip
    """The observations of the first ``max_frames`` annotated frames, and those frames."""
    observations = take_observations(index, take, direction)
    if not observations:
        raise OmamaError(f"take {take} has no {direction} observations (no masked frames)")
    frames = sorted({o.frame for o in observations})
    if max_frames is not None:
        frames = frames[: max(int(max_frames), 0)]
        observations = [o for o in observations if o.frame in set(frames)]
    return observations, frames


class _TakeOutputs:
    """Predictions, the GT of the scored observations, and the counts of a take run."""

    def __init__(self, take: str, direction: str, score: bool) -> None:
        self.take, self.score = take, score
        self.results, self.gt = new_results(direction), new_gt()
        self.counts = {"observations": 0, "visible": 0, "no_candidates": 0}

    def add(
        self, index: ProcessedRoot, obs: TakeObservation, query: np.ndarray, match: Match
    ) -> None:
        add_prediction(self.results, self.take, obs.obj, obs.src_cam, obs.dst_cam, obs.frame,
                       match.mask, match.confidence)  # fmt: skip
        self.counts["observations"] += 1
        self.counts["visible"] += int(match.visible)
        self.counts["no_candidates"] += int(match.candidate < 0)
        if self.score:
            add_gt_annotation(self.gt, self.take, obs.obj, obs.src_cam, obs.frame, query)
            target = index.mask_rle(self.take, obs.obj, obs.dst_cam, obs.frame)
            add_gt_annotation(self.gt, self.take, obs.obj, obs.dst_cam, obs.frame, target)


def _write_score(outputs: _TakeOutputs, direction: str, out: Path) -> dict:
    """Write ``gt.json`` (and ``metrics.json`` when anything was predicted); the summary's
    ``gt``, ``metrics`` and ``report`` entries."""
    from runtime.evaluate import evaluate_report

    for entry in outputs.gt["annotations"].values():  # frame order, as `omama data gt`
        for per_cam in entry["annotated_frames"].values():
            for frame_list in per_cam.values():
                frame_list.sort()
    write_json(out / "gt.json", outputs.gt)
    scored: dict = {}
    if outputs.counts["observations"]:
        predictions = outputs.results[next(iter(outputs.results))]["results"]
        report = evaluate_report(outputs.gt["annotations"], predictions, direction, workers=1)
        write_json(out / "metrics.json", report, indent=2)
        scored = {"metrics": report["aggregated_metrics"], "report": report}
    return {**scored, "gt": str(out / "gt.json")}


def run_take(
    pipeline: Pipeline,
    take_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    max_frames: int | None = None,
    candidates: str | os.PathLike | None = None,
    score: bool = False,
    progress: bool = True,
) -> dict:
    """Every object and camera pair of a processed take (see the module docstring).

    Arguments:
        candidates: the candidates folder (``<candidates>/<take>/<cam>/<frame>_masks.npz``);
            None: FastSAM for every destination frame.
        score: also write the take's GT (``gt.json``) and its official metrics
            (``metrics.json``; the summary's ``report``).
    Returns the summary, also written to ``out_dir/summary.json`` (without the report).
    """
    from tqdm import tqdm

    started = time.perf_counter()
    take_dir = Path(take_dir)
    take, index = take_dir.name, ProcessedRoot(take_dir.parent.parent)
    if not index.has_take(take):
        raise OmamaError(
            f"{take_dir} is not a processed take (no annotation.json): give "
            "ROOT/processed/<take> as written by `omama data prepare`"
        )
    if candidates is None and not pipeline.has_fastsam:
        raise no_fastsam_error(pipeline.manifest.root)
    direction = pipeline.direction
    observations, frames = _select(index, take, direction, max_frames)
    groups: dict[tuple[int, str, str], list[TakeObservation]] = {}
    for obs in observations:
        groups.setdefault((obs.frame, obs.src_cam, obs.dst_cam), []).append(obs)
    views = _FrameViews(pipeline, index, take, Path(candidates) if candidates else None)
    outputs, skips = _TakeOutputs(take, direction, score), Skips()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pipeline.reset_latency()
    bar = tqdm(total=len(observations), desc=f"take {take[:8]}", unit="obs", disable=not progress)
    with bar:
        for (frame, src_cam, dst_cam), group in sorted(groups.items()):
            bar.update(len(group))
            try:
                src, dst = views.src(src_cam, frame), views.dst(dst_cam, frame)
            except OmamaError as exc:
                for obs in group:
                    skips.add(object=obs.obj, cams=f"{src_cam}->{dst_cam}", frame=frame,
                              reason=str(exc))  # fmt: skip
                continue
            usable, queries = _usable_queries(pipeline, index, take, src, group, skips)
            if usable:
                matches = pipeline.match(src, dst, queries)
                for obs, query, match in zip(usable, queries, matches, strict=True):
                    outputs.add(index, obs, query, match)
    write_results(out / RESULTS_NAME, outputs.results)
    summary = {
        "results": str(out / RESULTS_NAME),
        **pipeline.describe(),
        "take": take,
        "split": index.split_of(take) if index.split_json.is_file() else None,
        "frames": len(frames),
        "observations_total": len(observations),
        **outputs.counts,
        **views.counts,
        "skipped": skips.to_json(),
        "wall_s": round(time.perf_counter() - started, 3),
        "latency_ms": pipeline.latency.summary(),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    if score:
        summary.update(_write_score(outputs, direction, out))
    write_json(out / SUMMARY_NAME, {k: v for k, v in summary.items() if k != "report"}, indent=2)
    return summary


def format_take_summary(summary: dict) -> str:
    lines = [
        f"omama-run take {summary['take']}: {summary['observations']} of "
        f"{summary['observations_total']} observations in {summary['frames']} frames "
        f"({summary['visible']} predicted visible, {summary['no_candidates']} without "
        f"candidates) on {summary['backend']} ({summary['device']}, {summary['precision']})",
        f"  candidates: {summary['precomputed_frames']} destination frames precomputed, "
        f"{summary['fastsam_frames']} by FastSAM; skipped observations: "
        f"{summary['skipped']['count']}; {summary['wall_s']:.1f} s",
        "  latency per matcher call (a frame's views counted once):",
        format_latency(summary["latency_ms"]),
        f"  results: {summary['results']}",
    ]
    return "\n".join(lines)
