"""``--mask-size submission``: masks at the size the official Ego-Exo4D evaluator compares with
(the annotated frame's size, longer side 480 px, int() truncation, nearest), on ``take``,
``video`` and ``dataset``; ``omama eval --protocol egoexo4d`` scores them exactly as the same
predictions at model size."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

from runtime import rle  # noqa: E402
from runtime.errors import OmamaError  # noqa: E402
from tests.runtime.assets import EGO, EXO  # noqa: E402
from tests.runtime.runs.cli import error_line, omama_run, predictions, video_args  # noqa: E402

# (frame H, W) -> the official evaluator's (int(H*480/max), int(W*480/max))
OFFICIAL = {
    (1080, 1920): (270, 480),  # landscape (exo GoPro)
    (1920, 1080): (480, 270),  # portrait
    (1408, 1408): (480, 480),  # square (Aria)
    # 1079 * (1 / 1919 * 480) = 269.89 and 1919 * (1 / 1919 * 480) = 479.99999999999994:
    # both truncated, so even the longer side is 479, as the official script computes it
    (1079, 1919): (269, 479),
    (3025, 3024): (480, 479),
}


def _annotation(video_sizes: dict, masks: dict | None = None) -> dict:
    return {"masks": masks or {}, "prepare": {"video_size_px": video_sizes}}


def test_submission_sizes_follow_the_official_rule():
    from runtime.runs.frame_sizes import AnnotationFrameSizes

    cams = {f"cam{i}": list(hw) for i, hw in enumerate(OFFICIAL)}
    sizes = AnnotationFrameSizes(_annotation(cams), "annotation.json")
    for (cam, hw), want in zip(cams.items(), OFFICIAL.values(), strict=True):
        assert sizes.submission_hw("obj", cam, 0) == want, hw


def test_the_frames_own_gt_mask_size_comes_first_then_the_video_then_the_masks():
    from runtime.runs.frame_sizes import AnnotationFrameSizes

    mask = rle.encode(np.zeros((3025, 3024), np.uint8))
    other = rle.encode(np.zeros((3024, 3024), np.uint8))
    ann = _annotation({"aria01": [3024, 3024]}, {"cup": {"aria01": {"4": mask}}})
    sizes = AnnotationFrameSizes(ann, "a.json")
    assert sizes.submission_hw("cup", "aria01", 4) == (480, 479)  # the GT mask the evaluator reads
    assert sizes.submission_hw("cup", "aria01", 6) == (480, 480)  # not visible: the video
    no_prepare = {"masks": {"cup": {"aria01": {"4": mask, "6": other, "8": other}}}}
    assert AnnotationFrameSizes(no_prepare, "a.json").submission_hw("cup", "aria01", 10) == (
        480,
        480,
    )
    with pytest.raises(OmamaError, match=r"records none \(no prepare.video_size_px\['cam01'\]"):
        AnnotationFrameSizes(ann, "a.json").submission_hw("cup", "cam01", 4)
    with pytest.raises(OmamaError, match="1920x1080 px but the destination frames are 448x448"):
        AnnotationFrameSizes(_annotation({"cam01": [1080, 1920]}), "a.json").check_camera(
            "cam01", (448, 448)
        )


def test_pipeline_writes_the_model_mask_resized_to_each_queries_size(assets, frames):
    from runtime.metrics import resize_nearest
    from runtime.pipeline import Pipeline

    src_rgb, dst_rgb, queries, _ = frames
    masks = list(queries.values())[:2]
    kwargs = dict(backend="onnxruntime", device="cpu", threads=1)
    with Pipeline(assets.random, mask_size="model", **kwargs) as pipe:
        model = pipe.match_frame(src_rgb, dst_rgb, masks)
    with Pipeline(assets.random, mask_size="submission", **kwargs) as pipe:
        wanted = [(270, 480), (480, 269)]
        got = pipe.match_frame(src_rgb, dst_rgb, masks, mask_hw=wanted)
        with pytest.raises(OmamaError, match="one mask size per query"):
            pipe.match_frame(src_rgb, dst_rgb, masks)
    for m, s, hw in zip(model, got, wanted, strict=True):
        assert s.mask.shape == hw and s.candidate == m.candidate
        np.testing.assert_array_equal(s.mask, resize_nearest(m.mask, hw))


def _take(capsys, assets, out, *extra):
    return omama_run(capsys, "take", assets.take_dir, "--score", "--out", out, "--artifacts",
                     assets.random, "--backend", "onnxruntime", "--device", "cpu", "--threads",
                     "1", *extra)  # fmt: skip


def test_take_submission_scores_as_model_size_under_egoexo4d(assets, tmp_path, capsys):
    from omama_train.cli import build_app
    from runtime.clikit import run_app

    reports = {}
    for size in ("model", "submission"):
        out = tmp_path / size
        code, _, err = _take(capsys, assets, out, "--mask-size", size)
        assert code == 0, err
        results = json.loads((out / "results.json").read_text())
        assert list(results) == ["exo-ego"]  # the EvalAI keys, nothing added
        got = {tuple(e["pred_mask"]["size"]) for e in predictions(out).values()}
        # the synthetic ego video is 448x448: the evaluator's GT is 480x480
        assert got == ({(70, 70)} if size == "model" else {(480, 480)})
        assert json.loads((out / "summary.json").read_text())["mask_size"] == size
        report = tmp_path / f"{size}.json"
        args = ["eval", "--gt", out / "gt.json", "--pred", out / "results.json", "--direction",
                "exo2ego", "--protocol", "egoexo4d", "--out", report, "--workers", "1"]  # fmt: skip
        assert run_app(build_app(), [str(a) for a in args]) == 0
        reports[size] = {k: v for k, v in json.loads(report.read_text()).items()
                         if k not in ("pred_file", "gt_file", "elapsed_s")}  # fmt: skip
    assert reports["submission"]["counts"]["observations"] == 24
    assert reports["submission"] == reports["model"]


def test_take_submission_without_the_frame_size_is_one_line(assets, tmp_path, capsys):
    import shutil

    root = tmp_path / "root"
    shutil.copytree(assets.root, root, ignore=shutil.ignore_patterns("*.jpg"))
    take_dir = root / "processed" / assets.take
    ann = json.loads((take_dir / "annotation.json").read_text())
    del ann["prepare"]["video_size_px"][EGO]
    for per_cam in ann["masks"].values():
        per_cam.pop(EGO, None)
    (take_dir / "annotation.json").write_text(json.dumps(ann))
    code, _, err = omama_run(capsys, "take", take_dir, "--mask-size", "submission", "--out",
                             tmp_path / "out", "--artifacts", assets.random, "--backend",
                             "onnxruntime", "--device", "cpu")  # fmt: skip
    assert code == 1
    assert f"needs the size of camera {EGO}'s frames" in error_line(err)


def test_video_submission_sizes_and_refusals(assets, tmp_path, capsys):
    out = tmp_path / "video"
    code, _, err = omama_run(capsys, *video_args(assets, out, "onnxruntime", "--mask-size",
                                                 "submission", "--max-frames", "3"))  # fmt: skip
    assert code == 0, err
    found = predictions(out)
    assert found and {tuple(e["pred_mask"]["size"]) for e in found.values()} == {(480, 480)}
    assert json.loads((out / "summary.json").read_text())["mask_size"] == "submission"
    # a track that is not an annotation.json records no destination frame size
    track = tmp_path / "cup.json"
    first = json.loads(assets.annotation.read_text())["masks"]
    obj = sorted(first)[0]
    track.write_text(json.dumps(first[obj][EXO]))
    args = video_args(assets, tmp_path / "v2", "onnxruntime", "--mask-size", "submission")
    args[args.index(assets.annotation)] = track
    args.remove("--src-cam")
    args.remove(EXO)
    code, _, err = omama_run(capsys, *args)
    assert code == 1 and "annotation.json" in error_line(err) and "cup.json" in error_line(err)
    # a destination camera the annotation does not hold
    code, _, err = omama_run(capsys, *video_args(assets, tmp_path / "v3", "onnxruntime",
                             "--mask-size", "submission", "--dst-cam", "aria99"))  # fmt: skip
    assert code == 1 and "camera aria99" in error_line(err)


def test_pair_refuses_submission_in_one_line(assets, frames, tmp_path, capsys):
    code, _, err = omama_run(capsys, "pair", tmp_path / "a.jpg", tmp_path / "b.jpg", "--query",
                             tmp_path / "q.png", "--mask-size", "submission", "--artifacts",
                             assets.random)  # fmt: skip
    assert code == 1 and "--mask-size submission" in error_line(err)
