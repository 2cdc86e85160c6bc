"""The writer thread of a video run: predictions into the results, the overlay video, and
atomic checkpoints of the partial results every K frames.

The overlay is one video of every frame. A resumed run draws the frames that earlier runs
of the folder already matched again, from their saved results (:func:`replayed`), before
the new ones: the encoder gets the very frames of an uninterrupted run, whatever the
interruptions, and nothing of a killed run's half-written video is needed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from runtime import overlay, rle
from runtime.atomic import write_json
from runtime.egoexo import results_key
from runtime.errors import OmamaError
from runtime.metrics import confidence_value, pair_key
from runtime.pipeline import Match
from runtime.results import add_prediction, results_direction, write_results
from runtime.runs.records import RESULTS_NAME, SKIPS_LISTED, Skips, write_failure
from runtime.runs.video_resume import CANDIDATE_COUNTS, DETAILS_NAME, STATE_NAME
from runtime.video import FramePair, stop_worker

if TYPE_CHECKING:
    from runtime.runs.video import VideoRun
    from runtime.video import VideoWriter

log = logging.getLogger(__name__)

OVERLAY_HEIGHT_PX = 540


@dataclass
class FrameOutput:
    """What one frame of a video run produced, handed to the writer thread.

    Attributes:
        index: the frame index.
        src, dst: the (H, W, 3) RGB frames, kept only when an overlay is written.
        names, queries, matches: per object with a usable query: its name, its (H, W) query
            mask on the source frame, its :class:`runtime.pipeline.Match`.
        candidates: where the candidates came from (a key of ``CANDIDATE_COUNTS``), None
            when the frame was not matched.
        replay: the frame was matched and recorded by an earlier run: only drawn.
        skipped_frames, query_skips, candidate_skips: what was skipped since the previous
            frame (frames that did not decode) and in this one (as the state lists them).
    """

    index: int
    src: np.ndarray | None
    dst: np.ndarray | None
    names: list[str]
    queries: list[np.ndarray]
    matches: list[Match]
    candidates: str | None
    replay: bool = False
    skipped_frames: list[dict] = field(default_factory=list)
    query_skips: list[dict] = field(default_factory=list)
    candidate_skips: list[dict] = field(default_factory=list)


def recorded_predictions(results: dict, run: VideoRun) -> dict[str, dict]:
    """``{object: {frame: {"pred_mask": RLE, "confidence": float}}}`` of ``run``'s camera
    pair in ``results`` (what earlier runs of the folder recorded)."""
    take = results[results_key(results_direction(results))]["results"].get(run.take, {})
    masks = take.get("masks", {}) if isinstance(take, dict) else None
    if not isinstance(masks, dict):
        raise OmamaError(f"{run.out_dir / RESULTS_NAME}: take {run.take!r} holds no masks object")
    key = pair_key(run.src_cam, run.dst_cam)
    return {obj: pairs[key] for obj, pairs in masks.items()
            if isinstance(pairs, dict) and isinstance(pairs.get(key), dict)}  # fmt: skip


def replayed(pair: FramePair, run: VideoRun, recorded: dict[str, dict]) -> FrameOutput:
    """The overlay frame of ``pair`` that the run which matched it drew, from ``recorded``
    (:func:`recorded_predictions`): the objects with a prediction, in the tracks' order, their
    query masks, and matches rebuilt from the masks and confidences. The candidate index is
    not saved; the drawing only asks whether there is one, and an empty mask draws nothing
    either way."""
    names, queries, matches = [], [], []
    for track in run.tracks:
        entry = recorded.get(track.name, {}).get(str(pair.index))
        if entry is None:
            continue
        mask = rle.decode(entry["pred_mask"])
        candidate = 0 if mask.any() else -1
        names.append(track.name)
        queries.append(track.mask(pair.index))
        confidence = confidence_value(entry["confidence"], f"frame {pair.index} of {track.name}")
        matches.append(Match(mask, confidence, candidate, None, [], 0))
    return FrameOutput(pair.index, pair.src, pair.dst, names, queries, matches, None, True)


class VideoSink:
    """Writer thread of a video run: RLE-encodes predictions into the results, renders and
    encodes the overlay, and checkpoints the partial results atomically every
    ``run.checkpoint_every_frames`` frames (results first, then the state pointing past them).
    Outputs marked ``replay`` are only drawn.

    ``put`` blocks while the queue is full and re-raises a failure of the thread.
    """

    def __init__(self, run: VideoRun, results: dict, state: dict,
                 writer: VideoWriter | None) -> None:  # fmt: skip
        self.run, self.results, self.state = run, results, state
        self.writer = writer
        self._details = open(run.out_dir / DETAILS_NAME, "a", encoding="utf-8")  # noqa: SIM115
        self._queue: queue.Queue = queue.Queue(maxsize=run.queue_size)
        self.query_skips = Skips.from_json(state["query_skips"])
        self.candidate_skips = Skips.from_json(state.get("candidate_skips"))
        self.error: BaseException | None = None
        self._writing = DETAILS_NAME  # the file being written, named by a failure
        self._since_checkpoint = 0
        self.frames_rendered = 0
        self._thread = threading.Thread(target=self._work, name="omama-sink", daemon=True)
        self._thread.start()

    def _failure(self) -> OmamaError:
        return write_failure(self.error, self._writing, self.run.out_dir)

    def put(self, item: FrameOutput) -> None:
        while True:
            if self.error is not None:
                raise self._failure() from self.error
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _work(self) -> None:
        try:
            while True:
                item = self._queue.get()
                if item is None:
                    break
                if not item.replay:
                    self._writing = DETAILS_NAME
                    self._record(item)
                if self.writer is not None:
                    self._writing = self.writer.path.name
                    self._render(item)
                if item.replay:
                    continue
                self.state["next_frame"] = item.index + 1
                self.state["counts"]["frames"] += 1
                self._since_checkpoint += 1
                if self._since_checkpoint >= self.run.checkpoint_every_frames:
                    self.checkpoint()
        except BaseException as exc:
            self.error = exc
            while True:  # unblock a producer waiting on a full queue
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    break

    def add_skipped_frames(self, skipped: list[dict]) -> None:
        """Frames that did not decode into the state (the readers logged them)."""
        self.state["skipped_frames"] = (self.state["skipped_frames"] + skipped)[:SKIPS_LISTED]
        counts = self.state["counts"]
        counts["skipped_frames"] = counts.get("skipped_frames", 0) + len(skipped)

    def _record(self, item: FrameOutput) -> None:
        """Predictions into the results and the details file, the run's counts and skips."""
        self.add_skipped_frames(item.skipped_frames)
        for skip in item.query_skips:
            self.query_skips.add(**skip)
        for skip in item.candidate_skips:
            self.candidate_skips.add(**skip)
        counts, run = self.state["counts"], self.run
        if item.candidates is not None:
            key = CANDIDATE_COUNTS[item.candidates]
            counts[key] = counts.get(key, 0) + 1
        for name, match in zip(item.names, item.matches, strict=True):
            add_prediction(self.results, run.take, name, run.src_cam, run.dst_cam, item.index,
                           match.mask, match.confidence)  # fmt: skip
            line = {"frame": item.index, "object": name, **match.to_json()}
            self._details.write(json.dumps(line) + "\n")
            counts["predictions"] += 1
            counts["visible"] += int(match.visible)
            counts["no_candidates"] += int(match.candidate < 0)

    def _render(self, item: FrameOutput) -> None:
        if item.names:
            frame = overlay.render_objects(item.src, item.dst, item.names, item.queries,
                                           item.matches, OVERLAY_HEIGHT_PX)  # fmt: skip
        else:
            frame = overlay.side_by_side(
                overlay.draw_label(item.src, "source: no query"), item.dst, OVERLAY_HEIGHT_PX
            )
        self.writer.write(frame)
        self.frames_rendered += 1

    def checkpoint(self) -> None:
        """Partial results first, then the state that points past them (both atomic)."""
        self.state["query_skips"] = self.query_skips.to_json()
        self.state["candidate_skips"] = self.candidate_skips.to_json()
        self._writing = DETAILS_NAME
        self._details.flush()
        os.fsync(self._details.fileno())
        self._writing = RESULTS_NAME
        write_results(self.run.out_dir / RESULTS_NAME, self.results)
        self._writing = STATE_NAME
        write_json(self.run.out_dir / STATE_NAME, self.state, indent=1)
        self._since_checkpoint = 0

    def close(self) -> None:
        """Drain the queue and stop; re-raise a failure of the writer thread."""
        stop_worker(self._thread, self._queue, None)
        if self.error is not None:
            raise self._failure() from self.error

    def close_overlay(self) -> None:
        """Put the overlay in place (after :meth:`close`); one line if that fails."""
        try:
            self.writer.close()
        except Exception as exc:
            raise write_failure(exc, self.writer.path.name, self.run.out_dir) from exc

    def finish(self, failed: bool) -> None:
        """Final checkpoint and release of the details file (after :meth:`close`). After a
        failure (``failed``) the unfinished overlay is dropped (as is an overlay without
        frames) and the checkpoint is only attempted: the failure is the error to report."""
        if self.writer is not None and (failed or not self.frames_rendered):
            self.writer.abort()
        if self.error is not None:
            # The thread stopped inside a frame (its predictions and counts half recorded):
            # the last checkpoint on disk is the consistent one; the resume redoes the rest.
            with contextlib.suppress(OSError):  # unwritten lines: the resume redoes them
                self._details.close()
            return
        try:
            self.checkpoint()
            self._details.close()
        except Exception as exc:
            error = write_failure(exc, self._writing, self.run.out_dir)
            if not failed:
                raise error from exc
            log.warning("the partial results were not saved: %s", error)
        finally:
            if not self._details.closed:
                try:
                    self._details.close()
                except OSError as exc:  # unwritten lines: the resume redoes their frames
                    log.warning("closing %s: %s", DETAILS_NAME, exc)
