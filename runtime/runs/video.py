"""``omama-run video``: every query of a set of tracks through a video pair.

A reader thread decodes both videos ahead (bounded queue), this thread infers (frames with
no query of any object are not inferred), a writer thread (:mod:`runtime.runs.video_sink`)
records predictions, encodes the overlay and checkpoints ``results.json`` +
``run_state.json`` every ``checkpoint_every_frames`` frames, so an interrupted run continues
with ``resume`` (:mod:`runtime.runs.video_resume`); a resumed overlay is drawn again from
the first frame, the frames already done from their saved results. The state says
``complete`` only once the overlay is in place; a failed write (a full disk) stops the run
with one line, leaving the last checkpoint and no overlay. Frames that fail to decode and
queries that cannot be used are reported and skipped.

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
from runtime.runs.frame_sizes import SUBMISSION, track_frame_sizes
from runtime.runs.records import RESULTS_NAME, SUMMARY_NAME, write_failure
from runtime.runs.video_resume import (
    CANDIDATE_COUNTS,
    DETAILS_NAME,
    OVERLAY_NAME,
    STATE_NAME,
    load_resume,
    new_state,
    remove_temp_files,
    run_inputs,
)
from runtime.runs.video_sink import FrameOutput, VideoSink, recorded_predictions, replayed
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
    candidates and the pipeline call; it counts what it inferred. What it skips travels with
    the frame's output, so that a checkpoint holds the skips of the frames it covers.
    ``frame_sizes``: with --mask-size submission, per object the GT frame sizes of its
    annotation.json (:func:`runtime.runs.frame_sizes.track_frame_sizes`)."""

    def __init__(self, pipeline: Pipeline, run: VideoRun, src_info: VideoInfo,
                 dst_info: VideoInfo, frame_sizes: dict | None = None) -> None:  # fmt: skip
        self.pipeline, self.run = pipeline, run
        self.src_hw = (src_info.height, src_info.width)
        self.dst_hw = (dst_info.height, dst_info.width)
        self.work_hw = working_size(self.dst_hw, pipeline.views["dst"].image_size)
        self.frame_sizes = frame_sizes
        self.inferred = 0
        self.infer_s = 0.0

    def queries(self, index: int) -> tuple[list[str], list[np.ndarray], list[dict]]:
        """(names, masks) of the objects with a usable query at frame ``index``, and the
        unusable queries (skips)."""
        names, masks, skips = [], [], []
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
                skips.append({"object": track.name, "frame": index, "reason": problem})
                continue
            names.append(track.name)
            masks.append(mask)
        return names, masks, skips

    def _candidates(self, index: int) -> Candidates:
        """Precomputed candidates of one destination frame at their stored size (the pipeline
        resizes them to the working size); OmamaError naming the source and frame otherwise."""
        source = self.run.candidates
        cands = source.load(index, self.work_hw)
        problem = _candidate_misfit(cands.size_hw, self.dst_hw)
        if problem:
            raise OmamaError(f"{source.path} frame {index}: {problem}")
        return cands

    def mask_sizes(self, names: list[str], index: int) -> list[tuple[int, int]] | None:
        """Each object's submission mask size at frame ``index`` (None: not submission)."""
        if self.frame_sizes is None:
            return None
        dst = self.run.dst_cam
        return [self.frame_sizes[name].submission_hw(name, dst, index) for name in names]

    def frame(self, pair: FramePair, keep_frames: bool) -> FrameOutput:
        """Match the usable queries of one frame pair (a frame without any is not inferred)."""
        names, masks, query_skips = self.queries(pair.index)
        matches: list[Match] = []
        source, cands, candidate_skips = None, None, []
        if names:
            source = "fastsam"
            if self.run.candidates is not None and pair.index in self.run.candidates:
                try:
                    cands, source = self._candidates(pair.index), "precomputed"
                except OmamaError as exc:
                    candidate_skips.append({"frame": pair.index, "reason": str(exc)})
                    names, masks, source = [], [], None
            elif not self.pipeline.has_fastsam:
                source = "none"
                sizes = self.pipeline.output_sizes(self.dst_hw, len(names),
                                                   self.mask_sizes(names, pair.index))  # fmt: skip
                matches = [Match(np.zeros(hw, np.uint8), 0.0, -1, None, [], 0) for hw in sizes]
        if source in ("fastsam", "precomputed"):
            t0 = time.perf_counter()
            sizes = self.mask_sizes(names, pair.index)
            matches = self.pipeline.match_frame(pair.src, pair.dst, masks, cands, sizes)
            self.infer_s += time.perf_counter() - t0
            self.inferred += 1
        return FrameOutput(pair.index, pair.src if keep_frames else None,
                           pair.dst if keep_frames else None, names, masks, matches, source,
                           query_skips=query_skips, candidate_skips=candidate_skips)  # fmt: skip


class _DecodeSkips:
    """The frames from ``start`` on that either video did not deliver, each handed on once,
    with the first frame pair after it: when the reader delivers a pair, it has decoded both
    videos up to it, so every skip before it is known."""

    def __init__(self, reader: PrefetchReader, start: int) -> None:
        self._found = (reader.src.skipped, reader.dst.skipped)  # appended by the reader
        self._seen = [0, 0]
        self._pending: list = []
        self._start = start

    def before(self, index: int) -> list[dict]:
        """The skips of the frames before ``index`` not handed on yet (as the state lists
        them)."""
        for i, found in enumerate(self._found):
            new = found[self._seen[i] :]
            self._seen[i] += len(new)
            self._pending += [s for s in new if s.index >= self._start]
        due = sorted(
            (s for s in self._pending if s.index < index), key=lambda s: (s.index, s.video)
        )
        self._pending = [s for s in self._pending if s.index >= index]
        return [{"frame": s.index, "video": s.video, "reason": s.reason} for s in due]


# ----------------------------------------------------------------------------- the run


def _start(run: VideoRun, direction: str, inputs: dict) -> tuple[dict, dict]:
    """(state, results) to start from: the interrupted run's with ``resume``; else new ones,
    the earlier run's outputs removed and the new state written at once (a run killed before
    its first checkpoint resumes from its first frame)."""
    out = Path(run.out_dir)
    outputs = (STATE_NAME, DETAILS_NAME, RESULTS_NAME, SUMMARY_NAME, OVERLAY_NAME)
    if run.resume and any((out / name).exists() for name in outputs):
        return load_resume(out, inputs)
    if run.resume:  # killed before its first write: there is nothing to resume, nothing lost
        log.info("--resume: %s holds nothing of an earlier run; starting from the first frame", out)
    if (out / STATE_NAME).is_file():
        log.info("%s holds an earlier run: starting over (use --resume to continue it)", out)
    for name in (DETAILS_NAME, RESULTS_NAME, SUMMARY_NAME, OVERLAY_NAME):
        (out / name).unlink(missing_ok=True)
    state = new_state(inputs)
    try:
        write_json(out / STATE_NAME, state, indent=1)
    except OSError as exc:
        raise write_failure(exc, STATE_NAME, out) from exc
    return state, new_results(direction)


def _finished_summary(run: VideoRun, state: dict) -> dict | None:
    """The summary of a complete run with everything it was asked for (the overlay too),
    or None: then the run goes on from its end, to write what is missing."""
    out = Path(run.out_dir)
    if not state["complete"] or (run.overlay and not (out / OVERLAY_NAME).is_file()):
        return None
    try:
        summary = read_json_object(out / SUMMARY_NAME, "summary")
    except OmamaError:
        return None  # killed before the summary was written
    return summary if isinstance(summary.get("skipped_frames"), dict) else None


def _close(state: dict, reader: PrefetchReader, skips: _DecodeSkips, sink: VideoSink,
           finished: bool, end: int) -> None:  # fmt: skip
    """Stop the writer thread, put the overlay in place, then write the final state; after a
    failure, the state of the frames recorded (their skips with them) and no overlay."""
    state["complete"] = False  # said only once the overlay is in place
    failed = True
    try:
        sink.close()
        if finished:
            sink.add_skipped_frames(skips.before(reader.stop))
            state["next_frame"] = max(state["next_frame"], reader.stop)
            if sink.writer is not None and sink.frames_rendered:
                sink.close_overlay()
            # Complete = the end of the shorter video was reached (a --max-frames run is not).
            state["complete"] = reader.stop >= end
            failed = False  # an error of the loop itself (not finished) still drops the overlay
    finally:
        sink.finish(failed)


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
             infos: tuple[VideoInfo, VideoInfo], span: _Span) -> dict:  # fmt: skip
    """The summary of a run (``summary.json``), its counts over every run of the folder."""
    out, counts = Path(run.out_dir), state["counts"]
    frames_this_run = counts["frames"] - span.frames_before
    return {
        "results": str(out / RESULTS_NAME),
        "details": str(out / DETAILS_NAME),
        "overlay": str(out / OVERLAY_NAME) if run.overlay and (out / OVERLAY_NAME).is_file()
        else None,
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
    frame_sizes = None  # per object, the GT frame sizes of --mask-size submission
    if pipeline.mask_size == SUBMISSION:
        frame_sizes = track_frame_sizes(run.tracks, run.dst_cam, (dst_info.height, dst_info.width))
    remove_temp_files(out)
    state, results = _start(run, pipeline.direction, run_inputs(run, pipeline, src_info, dst_info))
    summary = _finished_summary(run, state)
    if summary is not None:
        echo(f"{out}: this run is already complete ({state['counts']['frames']} frames)")
        return summary
    start, frames_before = state["next_frame"], state["counts"]["frames"]
    end = min(src_info.frame_count, dst_info.frame_count)
    outside = sum(1 for t in run.tracks for f in t.frames if f >= end)
    if outside:
        log.warning("%d query masks are for frames past the end of the videos (%d frames)",
                    outside, end)  # fmt: skip
    writer, first = None, start
    if run.overlay and not (state["complete"] and (out / OVERLAY_NAME).is_file()):
        writer = VideoWriter(out / OVERLAY_NAME, fps=src_info.fps or 30.0,
                             queue_size=run.queue_size)  # fmt: skip
        first = 0  # the frames done before are drawn again, from their results
    recorded = recorded_predictions(results, run) if first < start else {}
    reader = PrefetchReader(run.src_video, run.dst_video, queue_size=run.queue_size, start=first,
                            max_frames=None if run.max_frames is None
                            else start - first + run.max_frames)  # fmt: skip
    sink = VideoSink(run, results, state, writer)
    matcher = _FrameMatcher(pipeline, run, src_info, dst_info, frame_sizes)
    pipeline.reset_latency()
    bar = tqdm(total=len(reader), desc="video", unit="frame", disable=not progress)
    finished, skips = False, _DecodeSkips(reader, start)
    try:
        for pair in reader:
            if pair.index < start:
                sink.put(replayed(pair, run, recorded))
            else:
                output = matcher.frame(pair, keep_frames=writer is not None)
                output.skipped_frames = skips.before(pair.index)
                sink.put(output)
            bar.update(1)
        finished = True
    finally:
        bar.close()
        reader.close()
        _close(state, reader, skips, sink, finished, end)
    span = _Span(start, frames_before, outside, time.perf_counter() - started)
    summary = _summary(pipeline, run, state, matcher, (src_info, dst_info), span)
    try:
        write_json(out / SUMMARY_NAME, summary, indent=2)
    except OSError as exc:
        raise write_failure(exc, SUMMARY_NAME, out) from exc
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
