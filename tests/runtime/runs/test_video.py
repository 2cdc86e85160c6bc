"""``omama-run video`` end to end on a synthetic take.

``omama-run video`` on the synthetic take's exo and ego videos with
ONNX Runtime and with the torch backend gives the same chosen candidate for every frame and
object, equal masks and confidences within 1e-4, and its results JSON passes ``omama eval``
with the GT of that take. Bad inputs that exist on a CPU machine each give one
line and exit 1, or a reported skip; an interrupted video run resumes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

from runtime import rle  # noqa: E402
from runtime.pipeline import Pipeline  # noqa: E402
from tests.runtime.assets import EGO, EXO  # noqa: E402
from tests.runtime.runs.cli import details, error_line, omama_run, predictions, video_args  # noqa: E402


def test_video_onnxruntime_and_torch_agree_and_pass_eval(assets, ort_run, gt_file, capsys):
    from runtime.evaluate import evaluate_files

    out_torch = ort_run.parent / "video_torch"
    code, text, err = omama_run(capsys, *video_args(assets, out_torch, "torch"))
    assert code == 0, err
    assert "on torch (cpu, fp32)" in text
    ort, tch = details(ort_run), details(out_torch)
    assert ort.keys() == tch.keys()
    assert {frame for frame, _ in ort} == {0, 2, 4}  # the annotated frames of cam01
    assert len({obj for _, obj in ort}) == 4
    for key, a in ort.items():
        b = tch[key]
        assert a["candidate"] == b["candidate"] >= 0, key
        assert [t["candidate"] for t in a["top5"]] == [t["candidate"] for t in b["top5"]]
        assert abs(a["confidence"] - b["confidence"]) < 1e-4
    pred_ort, pred_torch = predictions(ort_run), predictions(out_torch)
    assert pred_ort.keys() == pred_torch.keys() and len(pred_ort) == len(ort)
    for key, a in pred_ort.items():
        np.testing.assert_array_equal(
            rle.decode(a["pred_mask"]), rle.decode(pred_torch[key]["pred_mask"])
        )
        assert a["pred_mask"]["size"] == [448, 448]  # the destination video's size
    # the results pass the official evaluation against the take's GT
    for out in (ort_run, out_torch):
        report = evaluate_files(gt_file, out / "results.json", "exo2ego", workers=1)
        assert report["counts"]["observations"] == len(ort)
        assert 0.0 <= report["aggregated_metrics"]["iou"] <= 1.0
    summary = json.loads((ort_run / "summary.json").read_text())
    assert summary["frames"] == 6 and summary["frames_inferred_this_run"] == 3
    assert summary["complete"] and summary["predictions"] == len(ort)
    stages = {"preprocess", "fastsam", "backbone_src", "backbone_dst", "matcher", "postprocess"}
    assert set(summary["latency_ms"]) >= stages | {"total"}
    assert (ort_run / "metrics.json").is_file()


def test_video_overlay_has_every_frame(ort_run):
    from runtime.video import read_video_info

    info = read_video_info(ort_run / "overlay.mp4")
    assert info.frame_count == 6 and info.height == 540


def test_video_resumes_after_an_interruption(assets, ort_run, capsys, monkeypatch):

    out = ort_run.parent / "video_resume"
    calls = {"n": 0}
    original = Pipeline.match_frame

    def interrupted(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the second annotated frame (frame 2)
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Pipeline, "match_frame", interrupted)
    code, _, err = omama_run(capsys, *video_args(assets, out), "--checkpoint-every-frames", "1")
    assert code == 130  # interrupted
    state = json.loads((out / "run_state.json").read_text())
    assert state["next_frame"] == 2 and not state["complete"]
    assert {f for f, _ in details(out)} == {0}
    monkeypatch.setattr(Pipeline, "match_frame", original)
    code, text, err = omama_run(capsys, *video_args(assets, out), "--resume")
    assert code == 0, err
    assert predictions(out) == predictions(ort_run)
    assert details(out).keys() == details(ort_run).keys()
    code, text, _ = omama_run(capsys, *video_args(assets, out), "--resume")
    assert code == 0 and "already complete" in text


def test_max_frames_then_resume_continues_to_the_end(assets, ort_run, capsys):
    out = ort_run.parent / "video_quick"
    code, text, _ = omama_run(capsys, *video_args(assets, out), "--max-frames", "3")
    assert code == 0 and "3 frames (2 inferred this run)" in text
    code, text, _ = omama_run(capsys, *video_args(assets, out), "--resume")
    assert code == 0 and "6 frames (1 inferred this run)" in text
    assert predictions(out) == predictions(ort_run)


def _reencode_with_a_broken_frame(src: Path, dst: Path, broken: int) -> Path:
    """``src`` as MJPEG with the packet of frame ``broken`` replaced by garbage."""
    import av

    from runtime.video import VideoReader

    with VideoReader(src) as reader:
        frames = [frame for _, frame in reader.frames()]
    container = av.open(str(dst), "w")
    stream = container.add_stream("mjpeg", rate=30)
    stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
    stream.pix_fmt = "yuvj420p"
    for i, rgb in enumerate(frames):
        for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
            if i == broken:
                bad = av.Packet(b"\x12\x34" * (packet.size // 2))
                bad.pts, bad.dts, bad.time_base = packet.pts, packet.dts, packet.time_base
                bad.stream = packet.stream
                packet = bad
            container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)
    container.close()
    return dst


def test_a_frame_that_fails_to_decode_is_reported_and_skipped(assets, tmp_path, capsys):
    broken = _reencode_with_a_broken_frame(assets.video(EGO), tmp_path / f"{EGO}.avi", 2)
    args = video_args(assets, tmp_path / "out")
    args[2] = broken
    code, text, err = omama_run(capsys, *args)
    assert code == 0, err
    assert "skipped: 1 frames that failed to decode" in text
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [s["frame"] for s in summary["skipped_frames"]["listed"]] == [2]
    assert {f for f, _ in details(tmp_path / "out")} == {0, 4}


def _wrong_size_track(tmp_path: Path) -> Path:
    import cv2

    folder = tmp_path / "mug"
    folder.mkdir()
    mask = np.zeros((100, 100), np.uint8)
    mask[10:30, 10:30] = 255
    cv2.imwrite(str(folder / "0.png"), mask)
    return folder


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("garbage", "cannot read video"),
        ("truncated", "truncated"),
        ("missing", "source video not found"),
        ("direction", "--direction ego2exo but the artifacts"),
        ("query_size", "query masks of object 'mug'"),
        ("swapped", "did you swap source and destination"),
        ("resume", "holds no run_state.json"),
        ("tensorrt", "backend tensorrt unavailable"),
        ("no_artifacts", "artifacts folder not found"),
    ],
)
def test_video_bad_inputs_give_one_line_and_exit_1(case, message, assets, tmp_path, capsys):
    args = video_args(assets, tmp_path / "out")
    if case == "garbage":
        args[1] = tmp_path / "garbage.mp4"
        args[1].write_bytes(b"not a video at all" * 64)
    elif case == "truncated":  # index first (faststart): the header promises lost frames
        from runtime.video import VideoReader, VideoWriter

        with VideoReader(assets.video(EXO)) as reader, VideoWriter(tmp_path / "f.mp4", 30) as w:
            for _, frame in reader.frames():
                w.write(frame)
        data = (tmp_path / "f.mp4").read_bytes()
        args[1] = tmp_path / "cut.mp4"
        args[1].write_bytes(data[: len(data) * 2 // 3])
    elif case == "missing":
        args[1] = tmp_path / "none.mp4"
    elif case == "direction":
        args += ["--direction", "ego2exo"]
    elif case == "query_size":
        args[4] = _wrong_size_track(tmp_path)
        args = [a for a in args if a not in ("--src-cam", EXO)]
    elif case == "swapped":
        args[1], args[2] = args[2], args[1]
    elif case == "resume":  # outputs of some run, but not its state: nothing to trust
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "results.json").write_text("{}")
        args.append("--resume")
    elif case == "tensorrt":
        args[args.index("--backend") + 1] = "tensorrt"
    else:
        args[args.index("--artifacts") + 1] = tmp_path / "nothing"
    code, _, err = omama_run(capsys, *args)
    assert code == 1
    assert message in error_line(err)


def test_resume_of_a_run_killed_before_its_first_write_starts_from_the_first_frame(
    assets, tmp_path, capsys
):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / ".omama.lock").write_text("")  # what a kill while loading leaves
    code, _, err = omama_run(capsys, *video_args(assets, tmp_path / "out"), "--resume")
    assert code == 0, err
    code, _, err = omama_run(capsys, *video_args(assets, tmp_path / "fresh"))
    assert code == 0, err
    ours = json.loads((tmp_path / "out" / "results.json").read_text())
    assert ours == json.loads((tmp_path / "fresh" / "results.json").read_text())


def test_resume_of_a_folder_that_does_not_exist_is_refused(assets, tmp_path, capsys):
    out = tmp_path / "typo"  # a mistyped --out is not a run killed while starting
    code, _, err = omama_run(capsys, *video_args(assets, out), "--resume")
    assert code == 1 and "does not exist" in error_line(err)
    assert not out.exists()
