"""Video I/O for the runtime (PyAV): frame-accurate reading, prefetching pairs, background encoding.

- :class:`VideoReader` opens a video, indexes it by demuxing (no decoding) to know the
  exact frame count and every frame's timestamp, and yields ``(index, RGB frame)`` from any
  start frame. A frame that fails to decode is skipped and recorded (:attr:`skipped`, with
  its index); an unreadable or truncated file is an :class:`OmamaError`.
- :class:`PrefetchReader` decodes a source and a destination video ahead of the consumer
  in one thread, into a bounded queue of frame pairs aligned by frame index. Videos of
  different lengths stop at the shorter with a warning that gives both counts; different
  frame rates give a warning; frames missing in either video are reported, never silently
  dropped.
- :class:`VideoWriter` encodes frames (libx264, yuv420p) in a thread fed by a bounded
  queue, into a temporary file renamed onto the target once closed successfully and found
  whole; any error of the encoder, the muxer or the final write of the index (a full disk)
  is raised by :meth:`VideoWriter.write` or :meth:`VideoWriter.close` and leaves no file.

Bounded queues keep memory flat on videos of any length: at most ``queue_size`` decoded
pairs (or frames to encode) exist at a time, whatever the speed of the consumer.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from runtime.atomic import temp_path_beside
from runtime.errors import OmamaError

log = logging.getLogger(__name__)

QUEUE_SIZE = 8
_END = object()


def _import_av():
    try:
        import av
    except ImportError as exc:  # pragma: no cover - av is a base dependency
        raise OmamaError("PyAV is not installed (pip install av)") from exc
    return av


@dataclass(frozen=True)
class VideoInfo:
    """What :class:`VideoReader` found in a video.

    Attributes:
        path: the file.
        width, height: frame size in pixels.
        fps: frames per second (the stream's average rate).
        frame_count: frames in the file (from the demux index, not the header).
        codec: decoder name.
        duration_s: frame_count / fps.
    """

    path: Path
    width: int
    height: int
    fps: float
    frame_count: int
    codec: str

    @property
    def duration_s(self) -> float:
        return self.frame_count / self.fps if self.fps else 0.0


@dataclass(frozen=True)
class SkippedFrame:
    """A frame that was not delivered: its index, the video and why."""

    index: int
    video: str
    reason: str


class VideoReader:
    """Frame-accurate reading of one video with PyAV.

    Arguments:
        path: the video file.
        allow_truncated: read what is there when the header promises more frames than the
            file holds (default: refuse with an :class:`OmamaError`).

    Frames are (H, W, 3) uint8 RGB. Frame ``i`` is the i-th frame in presentation order;
    :meth:`frames` seeks to the key frame before ``start`` and decodes forward, so any
    start is exact. Decode failures are recorded in :attr:`skipped` and logged. One
    iteration at a time: a new :meth:`frames` call (or :meth:`read`) moves the decoder.
    """

    def __init__(self, path: str | os.PathLike, allow_truncated: bool = False) -> None:
        av = _import_av()
        self.path = Path(path)
        if not self.path.is_file():
            raise OmamaError(f"video not found: {self.path}")
        try:
            self._container = av.open(str(self.path))
        except av.FFmpegError as exc:
            raise OmamaError(f"cannot read video {self.path}: {_reason(exc)}") from exc
        if not self._container.streams.video:
            self._container.close()
            raise OmamaError(f"{self.path} has no video stream")
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"
        try:
            self._pts = self._index(allow_truncated)
        except BaseException:
            self._container.close()
            raise
        self._index_of = {pts: i for i, pts in enumerate(self._pts)}
        rate = self._stream.average_rate or self._stream.guessed_rate or self._stream.base_rate
        ctx = self._stream.codec_context
        self.info = VideoInfo(
            path=self.path,
            width=int(ctx.width),
            height=int(ctx.height),
            fps=float(rate) if rate else 0.0,
            frame_count=len(self._pts),
            codec=str(ctx.name),
        )
        self.skipped: list[SkippedFrame] = []

    def _index(self, allow_truncated: bool) -> list[int]:
        """Timestamps of every frame in presentation order, from the packets alone."""
        av = _import_av()
        stamps: list[int] = []
        try:
            for packet in self._container.demux(self._stream):
                if packet.size == 0:  # the flush packet at the end
                    continue
                stamp = packet.pts if packet.pts is not None else packet.dts
                if stamp is None:
                    stamp = stamps[-1] + 1 if stamps else 0
                stamps.append(int(stamp))
        except av.FFmpegError as exc:
            if not allow_truncated:
                raise OmamaError(
                    f"video {self.path} is truncated or corrupt after {len(stamps)} frames: "
                    f"{_reason(exc)}"
                ) from exc
            log.warning("%s: reading stops after %d frames: %s", self.path, len(stamps), exc)
        stamps = sorted(set(stamps))
        declared = int(self._stream.frames or 0)
        if declared > len(stamps):
            message = (
                f"video {self.path} is truncated: its header declares {declared} frames "
                f"but only {len(stamps)} are in the file"
            )
            if not allow_truncated:
                raise OmamaError(message)
            log.warning("%s", message)
        if not stamps:
            raise OmamaError(f"video {self.path} holds no frames")
        self._container.seek(0)
        return stamps

    def __len__(self) -> int:
        return self.info.frame_count

    def frames(self, start: int = 0, stop: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(index, frame)`` for frames ``start <= index < stop`` that decode.

        Frames that fail to decode, or that the decoder never returns, are appended to
        :attr:`skipped` (and logged) instead of being yielded.
        """
        av = _import_av()
        n = len(self._pts)
        stop = n if stop is None else min(int(stop), n)
        start = max(int(start), 0)
        if start >= stop:
            return
        self._container.seek(self._pts[start], stream=self._stream, backward=True)
        expected = start  # next index we owe the caller
        failed: set[int] = set()
        for packet in self._container.demux(self._stream):
            try:
                decoded = packet.decode()
            except av.FFmpegError as exc:
                index = self._packet_index(packet)
                if index is not None and start <= index < stop and index not in failed:
                    failed.add(index)
                    self._skip(index, f"decode error: {_reason(exc)}")
                continue
            for frame in decoded:
                index = self._frame_index(frame, expected)
                if index is None or index < expected:
                    continue  # before the start (seek lands on a key frame) or a duplicate
                if index >= stop:
                    return
                for missing in range(expected, index):
                    if missing not in failed:
                        self._skip(missing, "not returned by the decoder")
                expected = index + 1
                yield index, frame.to_ndarray(format="rgb24")
            if expected >= stop:
                return
        for missing in range(expected, stop):
            if missing not in failed:
                self._skip(missing, "not returned by the decoder")

    def _packet_index(self, packet) -> int | None:
        stamp = packet.pts if packet.pts is not None else packet.dts
        return self._index_of.get(int(stamp)) if stamp is not None else None

    def _frame_index(self, frame, expected: int) -> int | None:
        if frame.pts is None:  # no timestamps: trust decoding order
            return expected
        return self._index_of.get(int(frame.pts))

    def _skip(self, index: int, reason: str) -> None:
        self.skipped.append(SkippedFrame(index, str(self.path), reason))
        log.warning("%s: frame %d skipped (%s)", self.path, index, reason)

    def read(self, index: int) -> np.ndarray:
        """Frame ``index`` (exact seek); an :class:`OmamaError` if it cannot be decoded."""
        if not 0 <= index < len(self._pts):
            raise OmamaError(f"{self.path} has frames 0..{len(self._pts) - 1}, not {index}")
        for got, frame in self.frames(index, index + 1):
            if got == index:
                return frame
        raise OmamaError(f"{self.path}: frame {index} cannot be decoded")

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def stop_worker(thread: threading.Thread, work: queue.Queue, end: object) -> None:
    """Hand ``end`` to the worker ``thread`` reading ``work`` and wait for it to finish;
    a worker that died (and so never drains a full queue) is only joined."""
    while thread.is_alive():
        try:
            work.put(end, timeout=0.1)
            break
        except queue.Full:
            continue
    thread.join()


def _reason(exc: Exception) -> str:
    """An FFmpeg error without the errno noise."""
    text = getattr(exc, "strerror", None) or str(exc)
    return str(text).strip()


def read_video_info(path: str | os.PathLike) -> VideoInfo:
    """Size, fps and exact frame count of a video (demux only, no decoding)."""
    with VideoReader(path, allow_truncated=True) as reader:
        return reader.info


# ----------------------------------------------------------------------------- pairs


@dataclass(frozen=True)
class FramePair:
    """Frame ``index`` of the source and destination videos, (H, W, 3) uint8 RGB each."""

    index: int
    src: np.ndarray
    dst: np.ndarray


@dataclass
class PairStats:
    """What a :class:`PrefetchReader` delivered and what it could not.

    ``src_frames`` / ``dst_frames`` are the frame counts of the two videos in the read
    range; ``pairs`` the pairs delivered; ``skipped`` the frames missing in either video
    (each makes its pair missing); ``max_queued`` the most pairs ever waiting in the queue.
    """

    src_frames: int = 0
    dst_frames: int = 0
    pairs: int = 0
    skipped: list[SkippedFrame] = field(default_factory=list)
    max_queued: int = 0


class PrefetchReader:
    """Decode a source and a destination video ahead of the consumer, aligned by frame.

    Arguments:
        src_path, dst_path: the two videos (e.g. exo and ego of one take).
        queue_size: pairs decoded ahead at most (memory bound: ``queue_size`` pairs).
        start: first frame index (to resume); max_frames: at most this many frames.
        allow_truncated: as :class:`VideoReader`.

    Iterating yields :class:`FramePair` for every index both videos decode; reading
    stops at the end of the shorter video (a warning gives both lengths). Opening errors
    are raised here; errors while decoding are raised from the iteration.
    """

    def __init__(
        self,
        src_path: str | os.PathLike,
        dst_path: str | os.PathLike,
        queue_size: int = QUEUE_SIZE,
        start: int = 0,
        max_frames: int | None = None,
        allow_truncated: bool = False,
    ) -> None:
        if queue_size < 1:
            raise OmamaError(f"queue_size must be at least 1, got {queue_size}")
        self.src = VideoReader(src_path, allow_truncated)
        try:
            self.dst = VideoReader(dst_path, allow_truncated)
        except Exception:
            self.src.close()
            raise
        src_info, dst_info = self.src.info, self.dst.info
        if abs(src_info.fps - dst_info.fps) > 1e-3:
            log.warning(
                "frame rates differ: %s at %.3f fps, %s at %.3f fps; frames are paired by index",
                src_info.path.name,
                src_info.fps,
                dst_info.path.name,
                dst_info.fps,
            )
        end = min(src_info.frame_count, dst_info.frame_count)
        if src_info.frame_count != dst_info.frame_count:
            log.warning(
                "videos differ in length: %s has %d frames, %s has %d; reading the first %d",
                src_info.path.name,
                src_info.frame_count,
                dst_info.path.name,
                dst_info.frame_count,
                end,
            )
        self.start = max(int(start), 0)
        self.stop = end if max_frames is None else min(end, self.start + int(max_frames))
        self.stats = PairStats(src_frames=src_info.frame_count, dst_frames=dst_info.frame_count)
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self.queue_size = queue_size
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __len__(self) -> int:
        """Frame indices in the read range (pairs delivered may be fewer, see stats)."""
        return max(self.stop - self.start, 0)

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
            except queue.Full:
                continue
            self.stats.max_queued = max(self.stats.max_queued, self._queue.qsize())
            return True
        return False

    def _produce(self) -> None:
        try:
            src_iter = self.src.frames(self.start, self.stop)
            dst_iter = self.dst.frames(self.start, self.stop)
            src_next, dst_next = next(src_iter, None), next(dst_iter, None)
            while src_next is not None and dst_next is not None and not self._stop.is_set():
                (i, src_frame), (j, dst_frame) = src_next, dst_next
                if i == j:
                    if not self._put(FramePair(i, src_frame, dst_frame)):
                        return
                    src_next, dst_next = next(src_iter, None), next(dst_iter, None)
                elif i < j:  # the destination lacks frame i
                    src_next = next(src_iter, None)
                else:
                    dst_next = next(dst_iter, None)
            # drain the longer side so its decode failures are reported too
            for _ in src_iter if src_next is not None else ():
                pass
            for _ in dst_iter if dst_next is not None else ():
                pass
            self._put(_END)
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(exc)

    def __iter__(self) -> Iterator[FramePair]:
        if self._thread is not None:
            raise OmamaError("a PrefetchReader can be iterated once")
        self._thread = threading.Thread(target=self._produce, name="omama-prefetch", daemon=True)
        self._thread.start()
        try:
            while True:
                item = self._queue.get()
                if item is _END:
                    break
                if isinstance(item, BaseException):
                    raise item
                self.stats.pairs += 1
                yield item
        finally:
            self._finish()

    def _finish(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.stats.skipped = sorted(
            self.src.skipped + self.dst.skipped, key=lambda s: (s.index, s.video)
        )

    def close(self) -> None:
        self._finish()
        self.src.close()
        self.dst.close()

    def __enter__(self) -> PrefetchReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ----------------------------------------------------------------------------- writing


class VideoWriter:
    """Encode RGB frames to H.264 (libx264, yuv420p) in a background thread.

    Arguments:
        path: output file (``.mp4``); written to a temporary file next to it and renamed
            onto it when :meth:`close` succeeds, so a crash never leaves half a video.
        fps: frame rate.
        queue_size: frames waiting to be encoded at most (:meth:`write` blocks beyond).
        crf: x264 quality (lower is better; 23 is x264's default).
        preset: x264 speed preset.

    Frames are (H, W, 3) uint8 RGB, all of the size of the first one; odd sizes are padded
    by one pixel (yuv420p needs even sizes).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        fps: float,
        queue_size: int = QUEUE_SIZE,
        crf: int = 23,
        preset: str = "veryfast",
    ) -> None:
        if fps <= 0:
            raise OmamaError(f"video frame rate must be positive, got {fps}")
        if queue_size < 1:
            raise OmamaError(f"queue_size must be at least 1, got {queue_size}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fps = fps
        self.crf, self.preset = int(crf), preset
        self.frames_written = 0
        self.max_queued = 0
        self._size_hw: tuple[int, int] | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._error: BaseException | None = None
        self._tmp = temp_path_beside(self.path, suffix=".mp4")
        self._closed = False
        self._thread = threading.Thread(target=self._encode, name="omama-writer", daemon=True)
        self._thread.start()

    def write(self, frame_rgb: np.ndarray) -> None:
        """Queue one frame (blocks while ``queue_size`` frames wait)."""
        if self._closed:
            raise OmamaError(f"video writer for {self.path} is closed")
        frame = np.asarray(frame_rgb)
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise OmamaError(
                f"video frames must be (H, W, 3) uint8 RGB, got {frame.shape} {frame.dtype}"
            )
        if self._size_hw is None:
            self._size_hw = frame.shape[:2]
        elif frame.shape[:2] != self._size_hw:
            raise OmamaError(
                f"video {self.path}: frame of size {frame.shape[1]}x{frame.shape[0]} after "
                f"frames of {self._size_hw[1]}x{self._size_hw[0]}"
            )
        while True:
            self._raise_if_failed()
            try:
                self._queue.put(frame, timeout=0.1)
                break
            except queue.Full:
                continue
        self.max_queued = max(self.max_queued, self._queue.qsize())

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise OmamaError(f"writing video {self.path} failed: {self._error}") from self._error

    def _encode(self) -> None:
        av = _import_av()
        container = stream = None
        try:
            while True:
                frame = self._queue.get()
                if frame is _END:
                    break
                if container is None:
                    h, w = frame.shape[:2]
                    # faststart: the index goes first, so players can start before the end
                    container = av.open(
                        str(self._tmp), "w", format="mp4", options={"movflags": "faststart"}
                    )
                    stream = container.add_stream(
                        "libx264", rate=Fraction(self.fps).limit_denominator(1001)
                    )
                    stream.width, stream.height = w + w % 2, h + h % 2
                    stream.pix_fmt = "yuv420p"
                    stream.options = {"crf": str(self.crf), "preset": self.preset}
                if frame.shape[0] % 2 or frame.shape[1] % 2:
                    frame = np.pad(
                        frame, ((0, frame.shape[0] % 2), (0, frame.shape[1] % 2), (0, 0)), "edge"
                    )
                video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
                for packet in stream.encode(video_frame):
                    container.mux(packet)
                self.frames_written += 1
            if container is not None:
                for packet in stream.encode(None):
                    container.mux(packet)
                container, closing = None, container
                closing.close()  # writes the index: a full disk often shows up only here
        except BaseException as exc:
            self._error = self._error or exc
            while True:  # unblock a producer waiting on a full queue
                try:
                    if self._queue.get_nowait() is _END:
                        break
                except queue.Empty:
                    break
            if container is not None:  # after a failure: release the file, keep the error
                with contextlib.suppress(Exception):
                    container.close()

    def close(self) -> int:
        """Finish encoding and move the video into place; returns the frames written."""
        if self._closed:
            return self.frames_written
        self._closed = True
        stop_worker(self._thread, self._queue, _END)
        try:
            self._raise_if_failed()
            if self.frames_written == 0:
                raise OmamaError(f"no frames were written to {self.path}")
            self._check_whole()
            os.replace(self._tmp, self.path)
        finally:
            if self._tmp.exists():
                self._tmp.unlink()
        return self.frames_written

    def _check_whole(self) -> None:
        """Flush the encoded file to the disk and count its frames before it takes its final
        name: a video under that name always decodes whole."""
        with open(self._tmp, "rb") as fh:
            os.fsync(fh.fileno())
        try:
            frames = read_video_info(self._tmp).frame_count
        except OmamaError as exc:
            raise OmamaError(f"writing video {self.path} failed: {exc}") from exc
        if frames != self.frames_written:
            raise OmamaError(
                f"writing video {self.path} failed: it holds {frames} of the "
                f"{self.frames_written} frames encoded"
            )

    def abort(self) -> None:
        """Stop without producing the video (the temporary file is removed)."""
        self._error = self._error or OmamaError("aborted")
        with contextlib.suppress(OmamaError):
            self.close()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
