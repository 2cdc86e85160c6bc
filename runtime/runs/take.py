"""``omama-run take``: every object and camera pair of a processed take (``ROOT/processed/<take>``).

Frames are visited in order; for each frame the destination (exo2ego: the ego frame) or
source view is encoded once for all cameras and objects, and each (source cam, destination
cam) pair is one matcher call for all its objects. With a candidates folder (what ``omama
data masks`` writes, e.g. ``ROOT/Masks_<SPLIT>_<DIRECTION>``) its candidates are used where
present, FastSAM elsewhere; without one, FastSAM everywhere. Writes ``results.json`` and
``summary.json`` (and when scoring, ``gt.json`` and ``metrics.json``).

One take's work is two functions that ``omama-run dataset`` calls too: :func:`predict_take`
(the model calls, on any subset of a take's observations, with images from any reader) and
:func:`collect_take` (its predictions as the take's results and GT entries).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
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
from runtime.pipeline import DestinationFrame, Pipeline, ViewFrame
from runtime.results import add_gt_annotation, add_prediction, new_gt, new_results, write_results
from runtime.runs.frame_sizes import SUBMISSION, AnnotationFrameSizes, scoring_protocol
from runtime.runs.records import RESULTS_NAME, SKIPS_LISTED, SUMMARY_NAME, Skips
from runtime.sizing import working_size

ImageReader = Callable[[str, int], np.ndarray]
"""``(cam, frame) -> (H, W, 3) uint8 RGB`` of the take; raises OmamaError when unreadable."""


class _FrameViews:
    """The encoded views of the current frame, reused across its cameras and objects (a new
    frame forgets the last one's); counts the destination frames by candidate source."""

    def __init__(self, pipeline: Pipeline, index: ProcessedRoot, take: str,
                 candidates: Path | None, read_image: ImageReader) -> None:  # fmt: skip
        self.pipeline, self.index, self.take = pipeline, index, take
        self.candidates, self.read_image = candidates, read_image
        self.counts = {"precomputed_frames": 0, "fastsam_frames": 0}
        self._cache: dict[tuple[str, str], ViewFrame] = {}
        self._frame: int | None = None

    def _forget_unless(self, frame: int) -> None:
        if frame != self._frame:
            self._cache, self._frame = {}, frame

    def src(self, cam: str, frame: int) -> ViewFrame:
        self._forget_unless(frame)
        if ("src", cam) not in self._cache:
            rgb = self.read_image(cam, frame)
            self._cache[("src", cam)] = self.pipeline.encode_src(rgb)
        return self._cache[("src", cam)]

    def dst(self, cam: str, frame: int) -> DestinationFrame:
        self._forget_unless(frame)
        if ("dst", cam) not in self._cache:
            rgb = self.read_image(cam, frame)
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


def submission_sizes(
    pipeline: Pipeline, index: ProcessedRoot, take: str, observations: list[TakeObservation]
) -> AnnotationFrameSizes | None:
    """The take's GT frame sizes when ``pipeline`` writes ``submission`` masks (None
    otherwise), checked to hold every destination camera's before any work."""
    if pipeline.mask_size != SUBMISSION:
        return None
    where = str(index.take_dir(take) / "annotation.json")
    sizes = AnnotationFrameSizes(index.annotation(take), where)
    for cam in sorted({o.dst_cam for o in observations}):
        sizes.check_camera(cam)
    return sizes


def select_observations(
    index: ProcessedRoot, take: str, direction: str, max_frames: int | None
) -> tuple[list[TakeObservation], list[int]]:
    """The observations of the first ``max_frames`` annotated frames, and those frames."""
    observations = take_observations(index, take, direction)
    if not observations:
        raise OmamaError(f"take {take} has no {direction} observations (no masked frames)")
    frames = sorted({o.frame for o in observations})
    if max_frames is not None:
        frames = frames[: max(int(max_frames), 0)]
        observations = [o for o in observations if o.frame in set(frames)]
    return observations, frames


@dataclass
class TakePredictions:
    """What :func:`predict_take` produced for some observations of a take (JSON-ready).

    ``predictions`` holds one dict per predicted observation, in the order predicted:
    ``object``, ``src_cam``, ``dst_cam``, ``frame``, ``mask`` (RLE at the output size),
    ``confidence``, ``visible``, ``candidate`` (-1: the frame had no candidates).
    """

    predictions: list[dict] = field(default_factory=list)
    skips: Skips = field(default_factory=Skips)
    view_counts: dict = field(default_factory=lambda: {"precomputed_frames": 0,
                                                       "fastsam_frames": 0})  # fmt: skip

    def to_json(self) -> dict:
        return {"predictions": self.predictions, "skipped": self.skips.to_json(),
                **self.view_counts}  # fmt: skip

    @classmethod
    def from_json(cls, record: dict) -> TakePredictions:
        counts = {k: int(record[k]) for k in ("precomputed_frames", "fastsam_frames")}
        return cls(list(record["predictions"]), Skips.from_json(record["skipped"]), counts)

    def extend(self, other: TakePredictions) -> None:
        """Append ``other`` (the take's next frames): predictions, skips and counts."""
        self.predictions.extend(other.predictions)
        for item in other.skips.listed:
            if len(self.skips.listed) < SKIPS_LISTED:
                self.skips.listed.append(item)
        self.skips.count += other.skips.count
        for key, value in other.view_counts.items():
            self.view_counts[key] += value


def predict_take(
    pipeline: Pipeline,
    index: ProcessedRoot,
    take: str,
    observations: Iterable[TakeObservation],
    candidates: str | os.PathLike | None = None,
    read_image: ImageReader | None = None,
    on_group: Callable[[int], object] | None = None,
) -> TakePredictions:
    """Predict ``observations`` of ``take``, frame by frame (see the module docstring).

    Arguments:
        candidates: the candidates folder (``<candidates>/<take>/<cam>/<frame>_masks.npz``);
            None: FastSAM for every destination frame.
        read_image: where the frames come from (default: the processed JPEGs).
        on_group: called with the number of observations of each (frame, source camera,
            destination camera) group once it is done.
    With mask size ``submission`` each mask is written at its GT frame's submission size
    (:mod:`runtime.runs.frame_sizes`); a take that does not record it is an OmamaError.
    """
    if read_image is None:
        read_image = lambda cam, frame: read_rgb(index.image_path(take, cam, frame))  # noqa: E731
    observations = list(observations)
    sizes = submission_sizes(pipeline, index, take, observations)
    groups: dict[tuple[int, str, str], list[TakeObservation]] = {}
    for obs in observations:
        groups.setdefault((obs.frame, obs.src_cam, obs.dst_cam), []).append(obs)
    views = _FrameViews(pipeline, index, take, Path(candidates) if candidates else None,
                        read_image)  # fmt: skip
    out = TakePredictions()
    for (frame, src_cam, dst_cam), group in sorted(groups.items()):
        try:
            src, dst = views.src(src_cam, frame), views.dst(dst_cam, frame)
        except OmamaError as exc:
            for obs in group:
                out.skips.add(object=obs.obj, cams=f"{src_cam}->{dst_cam}", frame=frame,
                              reason=str(exc))  # fmt: skip
        else:
            usable, queries = _usable_queries(pipeline, index, take, src, group, out.skips)
            mask_hw = None
            if sizes is not None:
                sizes.check_camera(dst_cam, dst.image_hw)
                mask_hw = [sizes.submission_hw(o.obj, o.dst_cam, o.frame) for o in usable]
            matches = pipeline.match(src, dst, queries, mask_hw) if usable else []
            out.predictions.extend(
                {
                    "object": obs.obj,
                    "src_cam": obs.src_cam,
                    "dst_cam": obs.dst_cam,
                    "frame": obs.frame,
                    "mask": rle.encode(match.mask),
                    "confidence": float(match.confidence),
                    "visible": bool(match.visible),
                    "candidate": int(match.candidate),
                }  # fmt: skip
                for obs, match in zip(usable, matches, strict=True)
            )
        if on_group is not None:
            on_group(len(group))
    out.view_counts = dict(views.counts)
    return out


class TakeOutputs:
    """A take's predictions as its results entry, and the GT of those observations (taken
    from the processed annotation), with the counts of what was predicted."""

    def __init__(self, take: str, direction: str, score: bool) -> None:
        self.take, self.score = take, score
        self.results, self.gt = new_results(direction), new_gt()
        self.counts = {"observations": 0, "visible": 0, "no_candidates": 0}

    def add(self, index: ProcessedRoot, prediction: dict) -> None:
        """Record one dict of :attr:`TakePredictions.predictions`."""
        obj, src_cam, frame = prediction["object"], prediction["src_cam"], prediction["frame"]
        dst_cam = prediction["dst_cam"]
        add_prediction(self.results, self.take, obj, src_cam, dst_cam, frame,
                       prediction["mask"], prediction["confidence"])  # fmt: skip
        self.counts["observations"] += 1
        self.counts["visible"] += int(prediction["visible"])
        self.counts["no_candidates"] += int(prediction["candidate"] < 0)
        if self.score:
            for cam in (src_cam, dst_cam):
                add_gt_annotation(self.gt, self.take, obj, cam, frame,
                                  index.mask_rle(self.take, obj, cam, frame))  # fmt: skip

    def results_entry(self) -> dict | None:
        """The take's entry of the results (None when nothing was predicted)."""
        return next(iter(self.results.values()))["results"].get(self.take)

    def gt_entry(self) -> dict | None:
        """The take's GT entry, annotated frames in frame order (as `omama data gt`)."""
        entry = self.gt["annotations"].get(self.take)
        for per_cam in (entry or {}).get("annotated_frames", {}).values():
            for frame_list in per_cam.values():
                frame_list.sort()
        return entry


def collect_take(index: ProcessedRoot, take: str, direction: str, predicted: TakePredictions,
                 score: bool) -> TakeOutputs:  # fmt: skip
    """The :class:`TakeOutputs` of ``predicted`` (the whole take's, in frame order)."""
    outputs = TakeOutputs(take, direction, score)
    for prediction in predicted.predictions:
        outputs.add(index, prediction)
    return outputs


def _write_score(outputs: TakeOutputs, direction: str, out: Path, protocol: str) -> dict:
    """Write ``gt.json`` (and ``metrics.json`` under ``protocol`` when anything was predicted);
    the summary's ``gt``, ``metrics`` and ``report`` entries."""
    from runtime.evaluate import evaluate_report

    entry = outputs.gt_entry()
    write_json(out / "gt.json", {"annotations": {outputs.take: entry} if entry else {}})
    scored: dict = {}
    if outputs.counts["observations"]:
        predictions = {outputs.take: outputs.results_entry()}
        report = evaluate_report({outputs.take: entry}, predictions, direction, protocol,
                                 workers=1)  # fmt: skip
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
    observations, frames = select_observations(index, take, direction, max_frames)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pipeline.reset_latency()
    bar = tqdm(total=len(observations), desc=f"take {take[:8]}", unit="obs", disable=not progress)
    with bar:
        predicted = predict_take(pipeline, index, take, observations, candidates,
                                 on_group=bar.update)  # fmt: skip
    outputs = collect_take(index, take, direction, predicted, score)
    write_results(out / RESULTS_NAME, outputs.results)
    summary = {
        "results": str(out / RESULTS_NAME),
        **pipeline.describe(),
        "take": take,
        "split": index.split_of(take) if index.split_json.is_file() else None,
        "frames": len(frames),
        "observations_total": len(observations),
        **outputs.counts,
        **predicted.view_counts,
        "skipped": predicted.skips.to_json(),
        "wall_s": round(time.perf_counter() - started, 3),
        "latency_ms": pipeline.latency.summary(),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    if score:
        summary.update(_write_score(outputs, direction, out, scoring_protocol(pipeline.mask_size)))
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
