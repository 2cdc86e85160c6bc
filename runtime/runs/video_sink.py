"""The writer thread of a video run: predictions into the results, the overlay video, and
atomic checkpoints of the partial results every K frames."""

from __future__ import annotations

import json
import os
import queue
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from runtime import overlay
from runtime.atomic import write_json
from runtime.errors import OmamaError
from runtime.results import add_prediction, write_results
from runtime.runs.records import RESULTS_NAME
from runtime.runs.video_resume import CANDIDATE_COUNTS, DETAILS_NAME, STATE_NAME
from runtime.video import stop_worker

if TYPE_CHECKING:
    from runtime.pipeline import Match
    from runtime.runs.video import VideoRun
    from runtime.video import VideoWriter

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
    """

    index: int
    src: np.ndarray | None
    dst: np.ndarray | None
    names: list[str]
    queries: list[np.ndarray]
    matches: list[Match]
    candidates: str | None


class VideoSink:
    """Writer thread of a video run: RLE-encodes predictions into the results, renders and
    encodes the overlay, and checkpoints the partial results atomically every
    ``run.checkpoint_every_frames`` frames (results first, then the state pointing past them).

    ``put`` blocks while the queue is full and re-raises a failure of the thread.
    """

    def __init__(self, run: VideoRun, results: dict, state: dict,
                 writer: VideoWriter | None) -> None:  # fmt: skip
        self.run, self.results, self.state = run, results, state
        self.writer = writer
        self._details = open(run.out_dir / DETAILS_NAME, "a", encoding="utf-8")  # noqa: SIM115
        self._queue: queue.Queue = queue.Queue(maxsize=run.queue_size)
        self.error: BaseException | None = None
        self._since_checkpoint = 0
        self.frames_rendered = 0
        self._thread = threading.Thread(target=self._work, name="omama-sink", daemon=True)
        self._thread.start()

    def put(self, item: FrameOutput) -> None:
        while True:
            if self.error is not None:
                raise OmamaError(f"writing outputs failed: {self.error}") from self.error
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
                self._record(item)
                if self.writer is not None:
                    self._render(item)
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

    def _record(self, item: FrameOutput) -> None:
        """Predictions into the results and the details file, and the run's counts."""
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
        self._details.flush()
        os.fsync(self._details.fileno())
        write_results(self.run.out_dir / RESULTS_NAME, self.results)
        write_json(self.run.out_dir / STATE_NAME, self.state, indent=1)
        self._since_checkpoint = 0

    def close(self) -> None:
        """Drain the queue and stop; re-raise a failure of the writer thread."""
        stop_worker(self._thread, self._queue, None)
        if self.error is not None:
            raise OmamaError(f"writing outputs failed: {self.error}") from self.error

    def finish(self) -> None:
        """Final checkpoint and release of the details file (after :meth:`close`)."""
        self.checkpoint()
        self._details.close()
