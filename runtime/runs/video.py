"""``omama-run video``: every query of a set of tracks through a video pair.

A reader thread decodes both videos ahead (bounded queue), this thread infers (frames with
no query of any object are not inferred), a writer thread (:mod:`runtime.runs.video_sink`)
records predictions, encodes the overlay and checkpoints ``results.json`` +
``run_state.json`` every ``checkpoint_every_frames`` frames, so an interrupted run continues
with ``resume`` (:mod:`runtime.runs.video_resume`). Frames that fail to decode and queries
that cannot be used are reported and skipped.

Candidates: ``run.candidates`` where it has an entry for the frame, else FastSAM, else
(artifacts without FastSAM) zero candidates: empty masks with confidence 0, without running
the models. A frame whose precomputed candidates cannot be read is reported and skipped, as
the take run does; the summary counts the frames of each kind.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.atomic import write_json
from runtime.candidates import Candidates, VideoCandidates, open_video_candidates
from runtime.egoexo import is_ego_cam
from runtime.errors import OmamaError, no_fastsam_error
from runtime.info import peak_rss_mb
from runtime.jsonrecords import read_json_object
from runtime.latency import format_latency
from runtime.pipeline import Match, Pipeline
from runtime.results import new_results
from runtime.runs.records import RESULTS_NAME, SKIPS_LISTED, SUMMARY_NAME, Skips
from runtime.runs.video_resume import (
    CANDIDATE_COUNTS,
    DETAILS_NAME,
    STATE_NAME,
    load_resume,
    new_state,
    run_inputs,
)
from runtime.runs.video_sink import FrameOutput, VideoSink
from runtime.sizing import ASPECT_TOLERANCE, aspect_mismatch, working_size
from runtime.tracks import TrackSet, load_tracks
from runtime.video import FramePair, PrefetchReader, VideoInfo, VideoWriter, read_video_info

log = logging.getLogger(__name__)

CHECKPOINT_EVERY_FRAMES = 50


@dataclass
class VideoRun:
    """What ``omama-run video`` runs.

    Attributes:
        src_video, dst_video: the two videos (frames paired by index).
        tracks: the query tracks (:func:`runtime.tracks.load_tracks`).
        out_dir: results.json, summary.json, run_state.json, overlay.mp4 go here.
        take, src_cam, dst_cam: names in the results JSON.
        max_frames: read at most this many frames (from the start, or the resume point).
        resume: continue from ``out_dir``'s partial results.
        overlay: write an overlay MP4.
        checkpoint_every_frames: write the partial results every this many frames.
        queue_size: frame pairs decoded ahead / outputs waiting to be written.
        candidates: precomputed candidates of the destination video
            (:func:`runtime.candidates.open_video_candidates`); frames with queries but no
            entry get FastSAM, or zero candidates when the artifacts hold no FastSAM.
    """

    src_video: Path
    dst_video: Path
    tracks: TrackSet
    out_dir: Path
    take: str
    src_cam: str
    dst_cam: str
    max_frames: int | None = None
    resume: bool = False
    overlay: bool = False
    checkpoint_every_frames: int = CHECKPOINT_EVERY_FRAMES
    queue_size: int = 8
    candidates: VideoCandidates | None = None


def default_cams(direction: str, src_video: Path, dst_video: Path) -> tuple[str, str]:
    """Camera names for the results JSON: the video file names when they say ego (aria) /
    exo the way the direction needs, else ``aria`` / ``exo``."""
    src_ego = direction == "ego2exo"
    src = (
        src_video.stem if is_ego_cam(src_video.stem) == src_ego else ("aria" if src_ego else "exo")
    )
    dst = (
        dst_video.stem if is_ego_cam(dst_video.stem) != src_ego else ("exo" if src_ego else "aria")
    )
    return src, dst


def build_video_run(
    direction: str,
    src_video: Path,
    dst_video: Path,
    queries: list[str],
    out_dir: Path,
    objects: list[str] = (),
    src_cam: str | None = None,
    dst_cam: str | None = None,
    take: str | None = None,
    candidates: Path | None = None,
    **options,
) -> VideoRun:
    """The :class:`VideoRun` of ``omama-run video``'s arguments: the query tracks
    (:func:`runtime.tracks.load_tracks`; ``src_cam`` picks an annotation.json's source
    camera), the candidates, and the names in the results (``src_cam``, else the tracks'
    one camera, else :func:`default_cams`; ``take``, else the tracks' one take, else
    ``video``). ``options``: the other :class:`VideoRun` fields."""
    tracks = load_tracks(queries, objects, src_cam)
    video_candidates = open_video_candidates(candidates) if candidates is not None else None
    default_src, default_dst = default_cams(direction, src_video, dst_video)
    track_cams = tracks.cams()
    if len(track_cams) == 1 and src_cam is None:
        src_cam = track_cams[0]
    takes = tracks.takes()
    return VideoRun(
        src_video=src_video,
        dst_video=dst_video,
        tracks=tracks,
        out_dir=out_dir,
        take=take or (takes[0] if len(takes) == 1 else "video"),
        src_cam=src_cam or default_src,
        dst_cam=dst_cam or default_dst,
        candidates=video_candidates,
        **options,
    )


# ----------------------------------------------------------------------------- checks


def _check_queries(run: VideoRun, src_hw: tuple[int, int]) -> None:
    """Refuse tracks whose masks do not fit the source video (checked on their first frame)."""
    for track in run.tracks:
        frame = track.first_frame()
        mask = track.mask(frame)
        if mask is not None and aspect_mismatch(mask.shape, src_hw) > ASPECT_TOLERANCE:
            raise OmamaError(
                f"query masks of object {track.name!r} ({track.origin}) are "
                f"{mask.shape[1]}x{mask.shape[0]} px but the source video is "
                f"{src_hw[1]}x{src_hw[0]}: masks must be drawn on the source video's frames"
            )


def _candidate_misfit(cands_hw: tuple[int, int], dst_hw: tuple[int, int]) -> str | None:
    """Why candidates of ``cands_hw`` cannot serve a destination image of ``dst_hw`` (the
    rule of :meth:`Pipeline.encode_dst`: same aspect ratio, then resized), or None."""
    if aspect_mismatch(cands_hw, dst_hw) <= ASPECT_TOLERANCE:
        return None
    return (
        f"candidate masks are {cands_hw[1]}x{cands_hw[0]} px, which does not fit the "
        f"destination video {dst_hw[1]}x{dst_hw[0]} (aspect ratios differ by "
        f"{100 * aspect_mismatch(cands_hw, dst_hw):.0f}%)"
    )


def _check_candidates(source: VideoCandidates, dst_hw: tuple[int, int]) -> None:
    """Refuse, before any work, a candidate source whose first frame does not fit the
    destination video (a frame that cannot be read is left to the per-frame report)."""
    first = source.frames()[0]
    try:
        size = source.size_hw(first)
    except OmamaError:
        return
    problem = size and _candidate_misfit(size, dst_hw)
    if problem:
        raise OmamaError(f"--candidates {source.path} (frame {first}): {problem}")


def _check_inputs(pipeline: Pipeline, run: VideoRun) -> tuple[VideoInfo, VideoInfo]:
    """Sizes and counts of both videos, checked against the model, the queries and the
    candidates (the reader opens both videos again and refuses truncated ones)."""
    src_info, dst_info = read_video_info(run.src_video), read_video_info(run.dst_video)
    src_hw, dst_hw = (src_info.height, src_info.width), (dst_info.height, dst_info.width)
    pipeline.check_image(src_hw, "src", f"source video {run.src_video}")
    pipeline.check_image(dst_hw, "dst", f"destination video {run.dst_video}")
    _check_queries(run, src_hw)
    if run.candidates is not None:
        _check_candidates(run.candidates, dst_hw)
    return src_info, dst_info


# ----------------------------------------------------------------------------- frames


class _FrameMatcher:
    """The inference side of a video run: per frame pair, the usable queries, their
    candidates and the pipeline call; it counts what it inferred and skipped."""

    def __init__(self, pipeline: Pipeline, run: VideoRun, src_info: VideoInfo,
                 dst_info: VideoInfo, state: dict) -> None:  # fmt: skip
        self.pipeline, self.run = pipeline, run
        self.src_hw = (src_info.height, src_info.width)
        self.dst_hw = (dst_info.height, dst_info.width)
        self.work_hw = working_size(self.dst_hw, pipeline.views["dst"].image_size)
        self.query_skips = Skips.from_json(state["query_skips"])
        self.candidate_skips = Skips.from_json(state.get("candidate_skips"))
        self.inferred = 0
        self.infer_s = 0.0

    def queries(self, index: int) -> tuple[list[str], list[np.ndarray]]:
        """(names, masks) of the objects with a usable query at frame ``index``."""
        names, masks = [], []
        for track in self.run.tracks:
            if index not in track:
                continue
            try:
                mask = track.mask(index)
                problem = self.pipeline.query_problem(mask, self.src_hw)
            except OmamaError as exc:
                problem = str(exc)
            if problem == "the query mask is empty":
                continue  # the object is not in the source view at this frame
            if problem:
                self.query_skips.add(object=track.name, frame=index, reason=problem)
                continue
            names.append(track.name)
            masks.append(mask)
        return names, masks

    def _candidates(self, index: int) -> Candidates:
        """Precomputed candidates of one destination frame at their stored size (the pipeline
        resizes them to the working size); OmamaError naming the source and frame otherwise."""
        source = self.run.candidates
        cands = source.load(index, self.work_hw)
        problem = _candidate_misfit(cands.size_hw, self.dst_hw)
        if problem:
            raise OmamaError(f"{source.path} frame {index}: {problem}")
        return cands

    def frame(self, pair: FramePair, keep_frames: bool) -> FrameOutput:
        """Match the usable queries of one frame pair (a frame without any is not inferred)."""
        names, masks = self.queries(pair.index)
        matches: list[Match] = []
        source, cands = None, None
        if names:
            source = "fastsam"
            if self.run.candidates is not None and pair.index in self.run.candidates:
                try:
                    cands, source = self._candidates(pair.index), "precomputed"
                except OmamaError as exc:
                    self.candidate_skips.add(frame=pair.index, reason=str(exc))
                    names, masks, source = [], [], None
            elif not self.pipeline.has_fastsam:
                source = "none"
                out_hw = self.pipeline.output_size(self.dst_hw)
                matches = [Match(np.zeros(out_hw, np.uint8), 0.0, -1, None, [], 0)
                           for _ in names]  # fmt: skip
        if source in ("fastsam", "precomputed"):
            t0 = time.perf_counter()
            matches = self.pipeline.match_frame(pair.src, pair.dst, masks, candidates=cands)
            self.infer_s += time.perf_counter() - t0
            self.inferred += 1
        return FrameOutput(pair.index, pair.src if keep_frames else None,
                           pair.dst if keep_frames else None, names, masks, matches,
                           source)  # fmt: skip


# ----------------------------------------------------------------------------- the run


def _start(run: VideoRun, direction: str, inputs: dict) -> tuple[dict, dict]:
    """(state, results) to start from: the interrupted run's with ``resume``, else new."""
    out = Path(run.out_dir)
    if run.resume:
        return load_resume(out, inputs)
    if (out / STATE_NAME).is_file():
        log.info("%s holds an earlier run: starting over (use --resume to continue it)", out)
    (out / DETAILS_NAME).unlink(missing_ok=True)
    return new_state(inputs), new_results(direction)


def _close(state: dict, reader: PrefetchReader, sink: VideoSink, matcher: _FrameMatcher,
           finished: bool, end: int) -> None:  # fmt: skip
    """Stop the writer thread and write the final state (also after a failure)."""
    try:
        sink.close()
    finally:
        state["skipped_frames"] = (state["skipped_frames"] + [
            {"frame": s.index, "video": s.video, "reason": s.reason}
            for s in reader.stats.skipped
        ])[:SKIPS_LISTED]  # fmt: skip
        state["counts"]["skipped_frames"] = state["counts"].get("skipped_frames", 0) + len(
            reader.stats.skipped
        )
        state["query_skips"] = matcher.query_skips.to_json()
        state["candidate_skips"] = matcher.candidate_skips.to_json()
        # Complete = the end of the shorter video was reached (a --max-frames run is not).
        state["complete"] = finished and reader.stop >= end
        if finished and sink.error is None:
            state["next_frame"] = max(state["next_frame"], reader.stop)
        sink.finish()
        writer = sink.writer
        if writer is not None:
            if finished and sink.error is None and sink.frames_rendered:
                writer.close()
            else:
                writer.abort()


@dataclass(frozen=True)
class _Span:
    """Where this run started and what it found, for its summary."""

    start: int  # first frame index read
    frames_before: int  # frames done by earlier runs of this output folder
    outside: int  # query masks past the end of the videos
    wall_s: float


def _video_json(info: VideoInfo, path: Path) -> dict:
    return {"path": str(path), "frames": info.frame_count, "fps": info.fps,
            "size_wh": [info.width, info.height]}  # fmt: skip


def _summary(pipeline: Pipeline, run: VideoRun, state: dict, matcher: _FrameMatcher,
             infos: tuple[VideoInfo, VideoInfo], writer: VideoWriter | None,
             span: _Span) -> dict:  # fmt: skip
    """The summary of a run (``summary.json``), its counts over every run of the folder."""
    out, counts = Path(run.out_dir), state["counts"]
    frames_this_run = counts["frames"] - span.frames_before
    return {
        "results": str(out / RESULTS_NAME),
        "details": str(out / DETAILS_NAME),
        "overlay": str(writer.path) if writer is not None else None,
        **pipeline.describe(),
        "take": run.take,
        "src_cam": run.src_cam,
        "dst_cam": run.dst_cam,
        "objects": run.tracks.names,
        "src_video": _video_json(infos[0], run.src_video),
        "dst_video": _video_json(infos[1], run.dst_video),
        "resumed_from_frame": span.start if run.resume else None,
        "complete": state["complete"],
        "next_frame": state["next_frame"],
        "frames": counts["frames"],
        "frames_this_run": frames_this_run,
        "frames_inferred_this_run": matcher.inferred,
        "predictions": counts["predictions"],
        "visible": counts["visible"],
        "no_candidates": counts["no_candidates"],
        "skipped_frames": {"count": counts.get("skipped_frames", 0),
                           "listed": state["skipped_frames"]},
        "query_skips": state["query_skips"],
        "candidates": {
            "source": run.candidates.describe() if run.candidates is not None else "fastsam",
            **{key: counts.get(key, 0) for key in CANDIDATE_COUNTS.values()},
            "unreadable_frames": state["candidate_skips"],
        },
        "query_frames_past_the_end": span.outside,
        "wall_s": round(span.wall_s, 3),
        "fps_inferred": round(matcher.inferred / matcher.infer_s, 3) if matcher.infer_s else None,
        "fps_end_to_end": round(frames_this_run / span.wall_s, 3),
        "latency_ms": pipeline.latency.summary(),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }  # fmt: skip


def run_video(
    pipeline: Pipeline, run: VideoRun, progress: bool = True, echo: Callable[[str], None] = print
) -> dict:
    """Match every query of ``run.tracks`` through a video pair (see the module docstring);
    writes and returns the summary."""
    from tqdm import tqdm

    if run.candidates is None and not pipeline.has_fastsam:
        raise no_fastsam_error(pipeline.manifest.root)
    started = time.perf_counter()
    out = Path(run.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    src_info, dst_info = _check_inputs(pipeline, run)
    state, results = _start(run, pipeline.direction, run_inputs(run, pipeline, src_info, dst_info))
    if state.get("complete"):
        echo(f"{out}: this run is already complete ({state['counts']['frames']} frames)")
        summary_path = out / SUMMARY_NAME
        return read_json_object(summary_path, "summary") if summary_path.is_file() else state
    start, frames_before = int(state["next_frame"]), int(state["counts"]["frames"])
    end = min(src_info.frame_count, dst_info.frame_count)
    outside = sum(1 for t in run.tracks for f in t.frames if f >= end)
    if outside:
        log.warning("%d query masks are for frames past the end of the videos (%d frames)",
                    outside, end)  # fmt: skip
    reader = PrefetchReader(run.src_video, run.dst_video, queue_size=run.queue_size, start=start,
                            max_frames=run.max_frames)  # fmt: skip
    writer = None
    if run.overlay:
        name = "overlay.mp4" if start == 0 else f"overlay_from_{start}.mp4"
        writer = VideoWriter(out / name, fps=src_info.fps or 30.0, queue_size=run.queue_size)
    sink = VideoSink(run, results, state, writer)
    matcher = _FrameMatcher(pipeline, run, src_info, dst_info, state)
    pipeline.reset_latency()
    bar = tqdm(total=len(reader), desc="video", unit="frame", disable=not progress)
    finished = False
    try:
        for pair in reader:
            sink.put(matcher.frame(pair, keep_frames=writer is not None))
            bar.update(1)
        finished = True
    finally:
        bar.close()
        reader.close()
        _close(state, reader, sink, matcher, finished, end)
    span = _Span(start, frames_before, outside, time.perf_counter() - started)
    summary = _summary(pipeline, run, state, matcher, (src_info, dst_info), writer, span)
    write_json(out / SUMMARY_NAME, summary, indent=2)
    return summary


def format_video_summary(summary: dict) -> str:
    """The lines ``omama-run video`` prints after a run."""
    skipped = summary["skipped_frames"]["count"]
    lines = [
        f"omama-run video: {summary['frames']} frames ({summary['frames_inferred_this_run']} "
        f"inferred this run), {len(summary['objects'])} objects, {summary['predictions']} "
        f"predictions ({summary['visible']} visible, {summary['no_candidates']} without "
        f"candidates) on {summary['backend']} ({summary['device']}, {summary['precision']})",
        f"  speed: {summary['fps_inferred'] or 0:.2f} inferred frames/s, "
        f"{summary['fps_end_to_end']:.2f} frames/s end to end; peak memory "
        f"{summary['peak_rss_mb']:.0f} MB",
        f"  skipped: {skipped} frames that failed to decode, "
        f"{summary['query_skips']['count']} unusable queries",
        "  latency per inferred frame:",
        format_latency(summary["latency_ms"]),
        f"  results: {summary['results']}",
    ]
    cands = summary.get("candidates")  # absent from summaries written before --candidates
    if cands:
        lines.insert(3, (
            f"  candidates: {cands['precomputed_frames']} frames precomputed, "
            f"{cands['fastsam_frames']} by FastSAM, {cands['no_candidate_frames']} with none; "
            f"{cands['unreadable_frames']['count']} frames skipped for unreadable candidates"
        ))  # fmt: skip
    if summary.get("overlay"):
        lines.append(f"  overlay: {summary['overlay']}")
    return "\n".join(lines)
