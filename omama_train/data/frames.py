"""Frames out of a video by index: one sequential decode, the wanted frames resized and
written as JPEG (PyAV + OpenCV)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from runtime.errors import OmamaError


@dataclass
class ExtractResult:
    written: list[int]
    video_size_px: tuple[int, int] | None  # (H, W) of the decoded frames
    frames_decoded: int  # all of the video's frames unless it stopped after the last wanted
    error: str | None = None


def extract_frames(
    video: Path,
    frames: Iterable[int],
    write_frame: Callable[[int, bytes], None],
    scale: int,
    jpeg_quality: int,
) -> ExtractResult:
    """Decode ``video`` once, sequentially, and write the frames whose index is in ``frames``.

    ``write_frame(index, jpeg_bytes)`` stores one frame. Frames are counted in presentation
    order from 0, so the index is exact whatever the timestamps. Each frame (H, W) is
    resized to (H // scale, W // scale) with area interpolation. A decoding error stops the
    video; what was written before it is kept and the error is returned.
    """
    import av
    import cv2

    wanted = {f for f in frames if f >= 0}
    result = ExtractResult([], None, 0)
    if not wanted:
        return result
    last = max(wanted)
    try:
        with av.open(str(video)) as container:
            if not container.streams.video:
                result.error = "the file has no video stream"
                return result
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"  # frame threads: output order stays presentation order
            for index, frame in enumerate(container.decode(stream)):
                result.frames_decoded = index + 1
                if result.video_size_px is None:
                    result.video_size_px = (frame.height, frame.width)
                if index in wanted:
                    image = frame.to_ndarray(format="bgr24")
                    size = (frame.width // scale, frame.height // scale)
                    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
                    ok, jpeg = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
                    if not ok:
                        raise OmamaError(f"JPEG encoding failed for frame {index} of {video}")
                    write_frame(index, jpeg.tobytes())
                    result.written.append(index)
                if index >= last:
                    break
    except (av.error.FFmpegError, ValueError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    return result


def find_video(takes_dir: Path, take_name: str, take: str, cam: str) -> Path | None:
    """``<takes>/<take_name>/frame_aligned_videos/<cam>.mp4`` (or under the take uid)."""
    for folder in dict.fromkeys((take_name, take)):
        path = takes_dir / folder / "frame_aligned_videos" / f"{cam}.mp4"
        if path.is_file():
            return path
    return None
