"""Video I/O: exact frame indexing, bad files, prefetching pairs with bounded memory, writing."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import av
import numpy as np
import pytest

from runtime.errors import OmamaError
from runtime.video import PrefetchReader, VideoReader, VideoWriter, read_video_info

SIZE_HW = (32, 48)


def level(index: int) -> int:
    """Grey level that identifies frame ``index`` (steps of 6 survive lossy coding)."""
    return (index * 6) % 240 + 8


def make_video(
    path: Path,
    n: int,
    fps: int = 30,
    codec: str = "libx264",
    corrupt: set[int] = frozenset(),
    options: dict | None = None,
    size_hw: tuple[int, int] = SIZE_HW,
) -> Path:
    """n flat grey frames (level(i)); packets listed in ``corrupt`` get their bytes replaced."""
    h, w = size_hw
    container = av.open(str(path), "w", options=options or {})
    stream = container.add_stream(codec, rate=fps)
    stream.width, stream.height = w, h
    stream.pix_fmt = "yuv420p" if codec == "libx264" else "yuvj420p"
    packets = 0

    def mux(packet):
        nonlocal packets
        if packets in corrupt:
            bad = av.Packet(b"\x12\x34" * (packet.size // 2))
            bad.pts, bad.dts, bad.time_base, bad.stream = (
                packet.pts,
                packet.dts,
                packet.time_base,
                packet.stream,
            )
            packet = bad
        packets += 1
        container.mux(packet)

    for i in range(n):
        frame = av.VideoFrame.from_ndarray(np.full((h, w, 3), level(i), np.uint8), format="rgb24")
        for packet in stream.encode(frame):
            mux(packet)
    for packet in stream.encode(None):
        mux(packet)
    container.close()
    return path


def frame_level(frame: np.ndarray) -> float:
    return float(frame.mean())


@pytest.fixture(scope="module")
def video60(tmp_path_factory) -> Path:
    return make_video(tmp_path_factory.mktemp("v") / "a.mp4", 60)


def test_reader_index_and_content(video60):
    with VideoReader(video60) as reader:
        info = reader.info
        assert (info.width, info.height, info.frame_count, len(reader)) == (48, 32, 60, 60)
        assert info.fps == pytest.approx(30.0) and info.duration_s == pytest.approx(2.0)
        got = list(reader.frames())
        assert [i for i, _ in got] == list(range(60))
        assert all(f.shape == (32, 48, 3) and f.dtype == np.uint8 for _, f in got)
        assert all(abs(frame_level(f) - level(i)) < 2.5 for i, f in got)
        assert reader.skipped == []
    assert read_video_info(video60).frame_count == 60


def test_reader_seeks_exactly(video60):
    with VideoReader(video60) as reader:
        got = list(reader.frames(start=37, stop=40))
        assert [i for i, _ in got] == [37, 38, 39]
        assert all(abs(frame_level(f) - level(i)) < 2.5 for i, f in got)
        for index in (45, 3, 59, 0):  # backwards and forwards
            assert abs(frame_level(reader.read(index)) - level(index)) < 2.5
        with pytest.raises(OmamaError, match="frames 0..59, not 60"):
            reader.read(60)
        assert list(reader.frames(start=70)) == []


def test_unreadable_and_truncated_videos(tmp_path):
    with pytest.raises(OmamaError, match="video not found"):
        VideoReader(tmp_path / "none.mp4")
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"this is not a video" * 50)
    with pytest.raises(OmamaError, match=f"cannot read video {garbage}"):
        VideoReader(garbage)
    # moov atom at the end: a cut file has no index at all
    whole = make_video(tmp_path / "whole.mp4", 100).read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(OmamaError, match="cannot read video"):
        VideoReader(cut)
    # moov atom first (faststart): the header promises frames the file no longer has
    fast = make_video(tmp_path / "fast.mp4", 100, options={"movflags": "faststart"}).read_bytes()
    cut_fast = tmp_path / "cut_fast.mp4"
    cut_fast.write_bytes(fast[: len(fast) * 2 // 3])
    with pytest.raises(OmamaError, match="truncated: its header declares 100 frames but only"):
        VideoReader(cut_fast)
    with VideoReader(cut_fast, allow_truncated=True) as reader:
        n = len(reader)
        assert 0 < n < 100
        delivered = [i for i, _ in reader.frames()]
        # every index is either delivered or reported, never silently lost
        assert sorted(delivered + [s.index for s in reader.skipped]) == list(range(n))


def test_frame_that_fails_to_decode_is_reported_and_skipped(tmp_path):
    video = make_video(tmp_path / "c.avi", 30, codec="mjpeg", corrupt={10})
    with VideoReader(video) as reader:
        assert len(reader) == 30
        got = [i for i, _ in reader.frames()]
        assert got == [i for i in range(30) if i != 10]
        assert [s.index for s in reader.skipped] == [10]
        assert "decode error" in reader.skipped[0].reason


def test_prefetch_pairs_are_aligned_and_memory_is_bounded(tmp_path):
    n = 300
    src = make_video(tmp_path / "src.mp4", n)
    dst = make_video(tmp_path / "dst.mp4", n)
    bound = 4
    seen_sizes = []
    with PrefetchReader(src, dst, queue_size=bound) as reader:
        assert len(reader) == n
        indices = []
        for pair in reader:
            seen_sizes.append(reader._queue.qsize())
            indices.append(pair.index)
            assert abs(frame_level(pair.src) - level(pair.index)) < 2.5
            assert abs(frame_level(pair.dst) - level(pair.index)) < 2.5
            if pair.index in (0, 100):  # a stalled consumer: the reader fills the queue, no more
                deadline = time.monotonic() + 20
                while reader._queue.qsize() < bound and time.monotonic() < deadline:
                    time.sleep(0.01)
                time.sleep(0.05)
                seen_sizes.append(reader._queue.qsize())
        stats = reader.stats
    assert indices == list(range(n))
    assert max(seen_sizes) <= bound and stats.max_queued <= bound
    assert stats.max_queued == bound  # it did decode ahead
    assert (stats.pairs, stats.src_frames, stats.dst_frames, stats.skipped) == (n, n, n, [])


def test_prefetch_different_lengths_and_rates(tmp_path, caplog):
    src = make_video(tmp_path / "src.mp4", 50, fps=30)
    dst = make_video(tmp_path / "dst.mp4", 40, fps=25)
    with (
        caplog.at_level(logging.WARNING, logger="runtime.video"),
        PrefetchReader(src, dst, queue_size=2) as reader,
    ):
        indices = [pair.index for pair in reader]
    assert indices == list(range(40))
    assert (reader.stats.src_frames, reader.stats.dst_frames) == (50, 40)
    assert "src.mp4 has 50 frames, dst.mp4 has 40" in caplog.text
    assert "frame rates differ" in caplog.text


def test_prefetch_reports_frames_missing_in_one_video(tmp_path):
    src = make_video(tmp_path / "src.avi", 20, codec="mjpeg")
    dst = make_video(tmp_path / "dst.avi", 20, codec="mjpeg", corrupt={7, 12})
    with PrefetchReader(src, dst) as reader:
        indices = [pair.index for pair in reader]
    assert indices == [i for i in range(20) if i not in (7, 12)]
    assert [(s.index, Path(s.video).name) for s in reader.stats.skipped] == [
        (7, "dst.avi"),
        (12, "dst.avi"),
    ]


def test_prefetch_range_and_early_stop(video60, tmp_path):
    with PrefetchReader(video60, video60, start=20, max_frames=5) as reader:
        assert [pair.index for pair in reader] == [20, 21, 22, 23, 24]
    reader = PrefetchReader(video60, video60, queue_size=2)
    for pair in reader:
        if pair.index == 3:
            break
    reader.close()  # the decoding thread stops although the queue was full
    assert reader._thread is not None and not reader._thread.is_alive()
    with pytest.raises(OmamaError, match="video not found"):
        PrefetchReader(video60, tmp_path / "missing.mp4")


def test_writer_round_trip(tmp_path):
    out = tmp_path / "out" / "overlay.mp4"
    with VideoWriter(out, fps=25, queue_size=3) as writer:
        for i in range(50):
            writer.write(np.full((25, 33, 3), level(i), np.uint8))  # odd size: padded
    assert writer.frames_written == 50 and writer.max_queued <= 3
    assert sorted(p.name for p in out.parent.iterdir()) == ["overlay.mp4"]
    with VideoReader(out) as reader:
        assert (reader.info.frame_count, reader.info.width, reader.info.height) == (50, 34, 26)
        assert reader.info.fps == pytest.approx(25.0)
        assert all(abs(frame_level(f[:25, :33]) - level(i)) < 3 for i, f in reader.frames())


def test_writer_failures_leave_no_file(tmp_path):
    out = tmp_path / "bad.mp4"
    with pytest.raises(RuntimeError, match="stop"), VideoWriter(out, fps=30) as writer:
        writer.write(np.zeros((16, 16, 3), np.uint8))
        raise RuntimeError("stop")
    writer = VideoWriter(out, fps=30)
    writer.write(np.zeros((16, 16, 3), np.uint8))
    with pytest.raises(OmamaError, match="frame of size 8x16 after frames of 16x16"):
        writer.write(np.zeros((16, 8, 3), np.uint8))
    with pytest.raises(OmamaError, match=r"\(H, W, 3\) uint8"):
        writer.write(np.zeros((16, 16), np.uint8))
    writer.abort()
    with pytest.raises(OmamaError, match="no frames were written"):
        VideoWriter(out, fps=30).close()
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- overlays


def test_overlay_mask_blends_inside_and_outlines():
    from runtime.overlay import PRED_RGB, overlay_mask

    image = np.full((40, 60, 3), 100, np.uint8)
    mask = np.zeros((40, 60), np.uint8)
    mask[10:30, 20:40] = 1
    out = overlay_mask(image, mask, PRED_RGB, alpha=0.5, outline_px=1)
    assert out is not image and (image == 100).all()  # input untouched
    centre = out[20, 30].astype(int)
    assert np.abs(centre - (100 + np.array(PRED_RGB)) / 2).max() <= 1
    assert (out[:8] == 100).all() and (out[:, :18] == 100).all()  # far outside: unchanged
    colour = np.array(PRED_RGB)
    edge = out[10, 25:35].astype(int)  # on the outline: nearer the colour than the fill is
    assert (np.abs(edge - colour).sum(axis=1) < np.abs(centre - colour).sum() / 2).all()
    small = np.zeros((20, 30), np.uint8)
    small[5:15, 10:20] = 1  # half size: resized to the image
    np.testing.assert_array_equal(overlay_mask(image, small, PRED_RGB, 0.5, 0)[20, 30], centre)
    np.testing.assert_array_equal(overlay_mask(image, np.zeros((40, 60))), image)
    with pytest.raises(OmamaError, match="2-D"):
        overlay_mask(image, np.zeros((40, 60, 1)))


def test_render_pair_panel():
    from runtime.overlay import confidence_text, draw_label, render_pair, side_by_side

    src = np.full((60, 80, 3), 50, np.uint8)  # exo-like 4:3
    dst = np.full((100, 100, 3), 50, np.uint8)  # ego-like square
    query = np.zeros((60, 80), np.uint8)
    query[20:40, 20:40] = 1
    pred = np.zeros((100, 100), np.uint8)
    pred[50:90, 50:90] = 1
    panel = render_pair(src, query, dst, pred, confidence=0.87, height_px=100)
    assert panel.shape == (100, round(80 * 100 / 60) + 8 + 100, 3)
    right = panel[:, -100:]
    assert right[70, 70, 0] > right[70, 70, 2]  # prediction drawn in red
    assert (right[:15, -40:] != 50).any()  # confidence label in the top-right corner
    assert confidence_text(0.87) == "conf 0.87 visible"
    assert confidence_text(0.5) == "conf 0.50 not visible"  # visible means > 0.5
    no_candidate = render_pair(src, query, dst, None, confidence=0.0, height_px=100)
    assert (no_candidate[40:, -60:] == 50).all()  # nothing drawn below the labels
    assert side_by_side(src, dst, gap_px=0).shape == (100, 133 + 100, 3)
    with pytest.raises(OmamaError, match="corner must be one of"):
        draw_label(src, "x", corner="middle")
