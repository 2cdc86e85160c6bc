"""``omama-run pair | video | take`` end to end on a synthetic take (issue 6, sections 2-4).

The proof of section 4: ``omama-run video`` on the synthetic take's exo and ego videos with
ONNX Runtime and with the torch backend gives the same chosen candidate for every frame and
object, equal masks and confidences within 1e-4, and its results JSON passes ``omama eval``
with the GT of that take. Bad inputs of section 3 that exist on a CPU machine each give one
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
from runtime.candidates import Candidates, write_candidates  # noqa: E402
from runtime.cli import app  # noqa: E402
from runtime.clikit import run_app  # noqa: E402
from runtime.egoexo import candidate_paths  # noqa: E402
from runtime.pipeline import STAGES  # noqa: E402
from tests.runtime.test_pipeline import EGO, EXO, build_assets  # noqa: E402


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return build_assets(tmp_path_factory.getbasetemp() / "pipeline_assets")


def omama_run(capsys, *argv) -> tuple[int, str, str]:
    code = run_app(app, [str(a) for a in argv], prog_name="omama-run")
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _error_line(err: str) -> str:
    """The one ``error:`` line (progress bars and log lines aside); never a traceback."""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def _video_args(assets, out, backend="onnxruntime", *extra):
    return [
        "video", assets.video(EXO), assets.video(EGO), "--query", assets.annotation,
        "--src-cam", EXO, "--out", out, "--artifacts", assets.weights, "--backend", backend,
        "--device", "cpu", "--threads", "1", "--weights-dir", assets.weights_dir, *extra,
    ]  # fmt: skip


def _details(out: Path) -> dict[tuple[int, str], dict]:
    lines = (out / "predictions.jsonl").read_text().splitlines()
    return {(d["frame"], d["object"]): d for d in map(json.loads, lines)}


def _predictions(out: Path) -> dict:
    results = json.loads((out / "results.json").read_text())["exo-ego"]["results"]
    return {
        (take, obj, pair, frame): entry
        for take, t in results.items()
        for obj, pairs in t["masks"].items()
        for pair, frames in pairs.items()
        for frame, entry in frames.items()
    }


@pytest.fixture(scope="module")
def gt_file(assets, tmp_path_factory) -> Path:
    """The GT of the take's cam01 -> ego observations (what the video run predicts)."""
    from omama_train.data.gt import build_gt
    from omama_train.data.pairs import all_pairs
    from runtime.atomic import write_json
    from runtime.egoexo import ProcessedRoot

    index = ProcessedRoot(assets.root)
    pairs = [p for p in all_pairs(index, [assets.take], "exo2ego") if p.exo_cam == EXO]
    gt, _ = build_gt(index, pairs, "exo2ego")
    path = tmp_path_factory.mktemp("gt") / "gt.json"
    write_json(path, gt)
    return path


@pytest.fixture(scope="module")
def ort_run(assets, gt_file, tmp_path_factory):
    """``omama-run video`` on ONNX Runtime with --overlay and --gt."""
    out = tmp_path_factory.mktemp("video_ort")
    code = run_app(app, [str(a) for a in _video_args(assets, out, "onnxruntime", "--overlay",
                                                      "--gt", gt_file)])  # fmt: skip
    assert code == 0
    return out


# ------------------------------------------------------------------------------ help


def test_help_lists_the_commands_and_each_has_an_example(capsys):
    code, out, _ = omama_run(capsys, "--help")
    assert code == 0
    for command in ("pair", "video", "take", "info"):
        assert command in out
        code, text, _ = omama_run(capsys, command, "--help")
        assert code == 0 and "Example: omama-run " + command in text


# ------------------------------------------------------------------------------ video


def test_video_onnxruntime_and_torch_agree_and_pass_eval(assets, ort_run, gt_file, capsys):
    from runtime.evaluate import evaluate_files

    out_torch = ort_run.parent / "video_torch"
    code, text, err = omama_run(capsys, *_video_args(assets, out_torch, "torch"))
    assert code == 0, err
    assert "on torch (cpu, fp32)" in text
    ort, tch = _details(ort_run), _details(out_torch)
    assert ort.keys() == tch.keys()
    assert {frame for frame, _ in ort} == {0, 2, 4}  # the annotated frames of cam01
    assert len({obj for _, obj in ort}) == 4
    for key, a in ort.items():
        b = tch[key]
        assert a["candidate"] == b["candidate"] >= 0, key
        assert [t["candidate"] for t in a["top5"]] == [t["candidate"] for t in b["top5"]]
        assert abs(a["confidence"] - b["confidence"]) < 1e-4
    pred_ort, pred_torch = _predictions(ort_run), _predictions(out_torch)
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
    from runtime.pipeline import Pipeline

    out = ort_run.parent / "video_resume"
    calls = {"n": 0}
    original = Pipeline.match_frame

    def interrupted(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the second annotated frame (frame 2)
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Pipeline, "match_frame", interrupted)
    code, _, err = omama_run(capsys, *_video_args(assets, out), "--checkpoint-every-frames", "1")
    assert code == 130  # interrupted
    state = json.loads((out / "run_state.json").read_text())
    assert state["next_frame"] == 2 and not state["complete"]
    assert {f for f, _ in _details(out)} == {0}
    monkeypatch.setattr(Pipeline, "match_frame", original)
    code, text, err = omama_run(capsys, *_video_args(assets, out), "--resume")
    assert code == 0, err
    assert _predictions(out) == _predictions(ort_run)
    assert _details(out).keys() == _details(ort_run).keys()
    code, text, _ = omama_run(capsys, *_video_args(assets, out), "--resume")
    assert code == 0 and "already complete" in text


def test_max_frames_then_resume_continues_to_the_end(assets, ort_run, capsys):
    out = ort_run.parent / "video_quick"
    code, text, _ = omama_run(capsys, *_video_args(assets, out), "--max-frames", "3")
    assert code == 0 and "3 frames (2 inferred this run)" in text
    code, text, _ = omama_run(capsys, *_video_args(assets, out), "--resume")
    assert code == 0 and "6 frames (1 inferred this run)" in text
    assert _predictions(out) == _predictions(ort_run)


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
    args = _video_args(assets, tmp_path / "out")
    args[2] = broken
    code, text, err = omama_run(capsys, *args)
    assert code == 0, err
    assert "skipped: 1 frames that failed to decode" in text
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [s["frame"] for s in summary["skipped_frames"]["listed"]] == [2]
    assert {f for f, _ in _details(tmp_path / "out")} == {0, 4}


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
    args = _video_args(assets, tmp_path / "out")
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
    elif case == "resume":
        args.append("--resume")
    elif case == "tensorrt":
        args[args.index("--backend") + 1] = "tensorrt"
    else:
        args[args.index("--artifacts") + 1] = tmp_path / "nothing"
    code, _, err = omama_run(capsys, *args)
    assert code == 1
    assert message in _error_line(err)


# ------------------------------------------------------------------------------ pair


@pytest.fixture(scope="module")
def pair_inputs(assets, tmp_path_factory):
    import cv2

    from runtime.egoexo import ProcessedRoot
    from runtime.video import VideoReader

    folder = tmp_path_factory.mktemp("pair_inputs")
    with VideoReader(assets.video(EXO)) as src, VideoReader(assets.video(EGO)) as dst:
        cv2.imwrite(str(folder / "exo.png"), src.read(2)[:, :, ::-1])
        cv2.imwrite(str(folder / "ego.png"), dst.read(2)[:, :, ::-1])
    index = ProcessedRoot(assets.root)
    queries = []
    for obj in index.objects(assets.take)[:2]:
        mask = rle.decode(index.mask_rle(assets.take, obj, EXO, 2))
        path = folder / f"{obj.replace(' ', '_')}.png"
        cv2.imwrite(str(path), mask * 255)
        queries.append(path)
    return folder / "exo.png", folder / "ego.png", queries


def test_pair_writes_masks_overlay_and_json(assets, pair_inputs, tmp_path, capsys):
    import cv2

    src, dst, queries = pair_inputs
    out = tmp_path / "out"
    code, text, err = omama_run(capsys, "pair", src, dst, "--query", queries[0], "--query",
                                queries[1], "--artifacts", assets.weights, "--backend",
                                "onnxruntime", "--device", "cpu", "--out", out)  # fmt: skip
    assert code == 0, err
    result = json.loads((out / "result.json").read_text())
    assert [o["name"] for o in result["objects"]] == [q.stem for q in queries]
    assert set(result["latency_ms"]) == {*STAGES, "total"}
    for obj in result["objects"]:
        mask = cv2.imread(obj["mask_png"], cv2.IMREAD_GRAYSCALE)
        assert mask.shape == (448, 448) and set(np.unique(mask)) <= {0, 255}
        np.testing.assert_array_equal(rle.decode(obj["rle"]), mask // 255)
        assert obj["candidate"] >= 0 and len(obj["top5"]) == min(5, obj["candidates"])
        assert obj["top5"][0]["candidate"] == obj["candidate"]
        assert obj["visible"] == (obj["confidence"] > 0.5)
        assert f"{obj['name']}: " in text
    overlay = cv2.imread(str(out / "overlay.png"))
    assert overlay.shape[0] == 504 and overlay.shape[1] > 896
    assert result["backend"] == "onnxruntime" and result["candidates"] == "fastsam"


def test_pair_with_precomputed_candidates_at_model_size(assets, pair_inputs, tmp_path, capsys):
    from runtime.candidates import write_candidates
    from runtime.egoexo import ProcessedRoot

    src, dst, queries = pair_inputs
    index = ProcessedRoot(assets.root)
    gt = [rle.decode(index.mask_rle(assets.take, o, EGO, 2)) for o in index.objects(assets.take)
          if index.mask_rle(assets.take, o, EGO, 2) is not None]  # fmt: skip
    write_candidates(tmp_path / "2_masks.npz", tmp_path / "2_boxes.npy",
                     Candidates.from_masks(np.stack(gt)))  # fmt: skip
    code, _, err = omama_run(capsys, "pair", src, dst, "-q", queries[0], "--candidates",
                             tmp_path / "2_masks.npz", "--mask-size", "model", "--artifacts",
                             assets.weights, "--backend", "onnxruntime",
                             "--out", tmp_path / "o")  # fmt: skip
    assert code == 0, err
    (obj,) = json.loads((tmp_path / "o" / "result.json").read_text())["objects"]
    assert obj["candidates"] == len(gt) and obj["mask_size_hw"] == [70, 70]


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("empty_query", "the query mask is empty"),
        ("query_size", "must be drawn on the source image"),
        ("missing_query", "mask file not found"),
        ("unreadable_image", "could not be decoded"),
        ("swapped", "did you swap source and destination"),
        ("tampered", "does not match its manifest"),
        ("candidates_name", "must name a <frame>_masks.npz"),
    ],
)
def test_pair_bad_inputs_give_one_line_and_exit_1(case, message, assets, pair_inputs, tmp_path,
                                                  capsys):  # fmt: skip
    import shutil

    import cv2

    src, dst, queries = pair_inputs
    args = ["pair", src, dst, "--query", queries[0], "--artifacts", assets.weights,
            "--backend", "onnxruntime", "--out", tmp_path / "out"]  # fmt: skip
    if case == "empty_query":
        cv2.imwrite(str(tmp_path / "e.png"), np.zeros((504, 896), np.uint8))
        args[4] = tmp_path / "e.png"
    elif case == "query_size":
        cv2.imwrite(str(tmp_path / "s.png"), np.full((300, 300), 255, np.uint8))
        args[4] = tmp_path / "s.png"
    elif case == "missing_query":
        args[4] = tmp_path / "none.png"
    elif case == "unreadable_image":
        (tmp_path / "bad.jpg").write_bytes(b"jpeg? no")
        args[1] = tmp_path / "bad.jpg"
    elif case == "swapped":
        args[1], args[2] = dst, src
    elif case == "tampered":
        copy = tmp_path / "art"
        shutil.copytree(assets.weights, copy)
        with (copy / "backbone_ego.onnx").open("ab") as fh:
            fh.write(b"\0")
        args[6] = copy
    else:
        args += ["--candidates", tmp_path / "cands.npz"]
    code, _, err = omama_run(capsys, *args)
    assert code == 1
    assert message in _error_line(err)


# ------------------------------------------------------------------------------ take


def test_take_uses_precomputed_candidates_and_prints_metrics(assets, tmp_path, capsys):
    from runtime.egoexo import ProcessedRoot
    from runtime.results import load_gt, validate_results
    from runtime.runs.take import take_observations

    index = ProcessedRoot(assets.root)
    gt = [rle.decode(index.mask_rle(assets.take, o, EGO, 0)) for o in index.objects(assets.take)
          if index.mask_rle(assets.take, o, EGO, 0) is not None]  # fmt: skip
    # processed ego frames are 224x224; candidates of frame 0 at that size
    cands = Candidates.from_masks(
        np.stack([m[::2, ::2] for m in gt])  # the GT is at the video's 448x448
    )
    write_candidates(*candidate_paths(assets.root, "test", "exo2ego", assets.take, EGO, 0), cands)
    out = tmp_path / "take"
    try:
        code, text, err = omama_run(capsys, "take", assets.take_dir, "--score", "--out", out,
                                    "--candidates", assets.root / "Masks_TEST_EXO2EGO",
                                    "--artifacts", assets.weights, "--backend", "onnxruntime",
                                    "--device", "cpu", "--threads", "1")  # fmt: skip
        # without --candidates every destination frame gets FastSAM
        code_fastsam, _, err_fastsam = omama_run(
            capsys, "take", assets.take_dir, "--max-frames", "1", "--out", tmp_path / "fastsam",
            "--artifacts", assets.weights, "--backend", "onnxruntime", "--device", "cpu",
            "--threads", "1",
        )  # fmt: skip
    finally:
        import shutil

        shutil.rmtree(assets.root / "Masks_TEST_EXO2EGO")
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["precomputed_frames"] == 1 and summary["fastsam_frames"] == 2
    assert code_fastsam == 0, err_fastsam
    fastsam_only = json.loads((tmp_path / "fastsam" / "summary.json").read_text())
    assert (fastsam_only["precomputed_frames"], fastsam_only["fastsam_frames"]) == (0, 1)
    n = len(take_observations(index, assets.take, "exo2ego"))
    assert n == 4 * 2 * 3  # objects x exo cams x annotated frames
    assert summary["observations"] == summary["observations_total"] == n
    assert "omama eval: exo2ego, protocol omama" in text and "balanced_acc" in text
    gt_annotations = load_gt(out / "gt.json")
    results = json.loads((out / "results.json").read_text())["exo-ego"]["results"]
    assert validate_results(gt_annotations, results, "exo2ego") == n
    sizes = {tuple(e["pred_mask"]["size"]) for _, _, _, e in _walk(results)}
    assert sizes == {(70, 70)}  # the model's destination size, as O-MaMa writes them
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["counts"]["observations"] == n


def _walk(results: dict):
    for take, t in results.items():
        for obj, pairs in t["masks"].items():
            for pair, frames in pairs.items():
                for frame, entry in frames.items():
                    yield take, obj, (pair, frame), entry


def test_take_refuses_a_folder_that_is_not_a_processed_take(assets, tmp_path, capsys):
    code, _, err = omama_run(capsys, "take", tmp_path, "--artifacts", assets.weights,
                             "--backend", "onnxruntime")  # fmt: skip
    assert code == 1 and "is not a processed take" in _error_line(err)
