"""``omama-run video --candidates``: precomputed candidate masks of the destination video.

On the synthetic take of :mod:`tests.runtime.assets` (exo 896x504 source, ego 448x448
destination, objects annotated on frames 0, 2 and 4) with the ``weights`` artifacts (FastSAM
included) and a copy of them without FastSAM (what ``omama export --no-fastsam-export``
writes: no FastSAM file, ``fastsam.included`` false). The candidates are the ego GT masks of
the frame, so every prediction must be one of them, resized the pipeline's way.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

from runtime import rle  # noqa: E402
from runtime.candidates import Candidates, open_video_candidates, write_candidates  # noqa: E402
from runtime.errors import OmamaError  # noqa: E402
from runtime.pipeline import Pipeline  # noqa: E402
from runtime.preprocess import resize_mask_nearest  # noqa: E402
from runtime.sizing import working_size  # noqa: E402
from runtime.tracks import load_tracks  # noqa: E402
from tests.runtime.assets import EGO, EXO  # noqa: E402
from tests.runtime.runs.cli import details, error_line, omama_run  # noqa: E402

FRAMES = (0, 2, 4)  # the annotated frames of the synthetic take
DST_HW = (448, 448)


@pytest.fixture(scope="module")
def no_fastsam(assets, tmp_path_factory) -> Path:
    """The ``weights`` artifacts exported again with ``--no-fastsam-export`` (an edited
    manifest would be refused: it no longer matches what its ONNX files record)."""
    from export.config import ExportConfig
    from export.pipeline import export_artifacts
    from runtime.manifest import load_manifest
    from tests.runtime.assets import small_backbone_spec

    folder = tmp_path_factory.mktemp("art_no_fastsam") / "art"
    export_artifacts(
        ExportConfig(
            out_dir=folder,
            backbone=small_backbone_spec(),
            backbone_weights=assets.weights_dir / "backbone.safetensors",
            matcher_weights=assets.weights_dir / "matcher.safetensors",
            include_fastsam=False,
            matcher_input="weights",
            parity_sets=4,
            parity_large_n=40,
            verify=False,
        ),
        echo=lambda line: None,
        progress=False,
    )
    assert not load_manifest(folder).fastsam.included
    return folder


@pytest.fixture(scope="module")
def gt_candidates(assets) -> dict[int, np.ndarray]:
    """Per annotated frame, the ego GT masks of every object: (N, 448, 448) uint8."""
    from runtime.egoexo import ProcessedRoot

    index = ProcessedRoot(assets.root)
    out = {}
    for frame in FRAMES:
        masks = [rle.decode(r) for o in index.objects(assets.take)
                 if (r := index.mask_rle(assets.take, o, EGO, frame)) is not None]  # fmt: skip
        out[frame] = np.stack(masks)
        assert out[frame].shape[1:] == DST_HW
    return out


def _folder(path: Path, per_frame: dict[int, np.ndarray]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for frame, masks in per_frame.items():
        write_candidates(path / f"{frame}_masks.npz", path / f"{frame}_boxes.npy",
                         Candidates.from_masks(masks))  # fmt: skip
    return path


def _json(path: Path, per_frame: dict[int, np.ndarray]) -> Path:
    data = {str(f): [rle.encode(m) for m in masks] for f, masks in per_frame.items()}
    path.write_text(json.dumps(data))
    return path


def _run(capsys, assets, out: Path, artifacts: Path, *extra) -> tuple[int, str, str]:
    return omama_run(capsys, "video", assets.video(EXO), assets.video(EGO), "--query",
                     assets.annotation, "--src-cam", EXO, "--out", out, "--artifacts", artifacts,
                     "--backend", "onnxruntime", "--device", "cpu", "--threads", "1",
                     *extra)  # fmt: skip


def _pred_masks(out: Path) -> dict[tuple[int, str], np.ndarray]:
    results = json.loads((out / "results.json").read_text())["exo-ego"]["results"]
    return {
        (int(frame), obj): rle.decode(entry["pred_mask"])
        for t in results.values()
        for obj, pairs in t["masks"].items()
        for frames in pairs.values()
        for frame, entry in frames.items()
    }


def _expected(masks: np.ndarray, weights_art: Path) -> np.ndarray:
    """Candidates as the pipeline outputs them with --mask-size image: resized to the
    destination working size (torch rule), then back to the video size (OpenCV rule)."""
    from runtime.manifest import load_manifest

    model_hw = load_manifest(weights_art).views["dst"].image_size
    work = Candidates.from_masks(masks).resized(working_size(DST_HW, model_hw)).masks
    return np.stack([resize_mask_nearest(m, DST_HW, rule="opencv") for m in work])


def _summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def test_sources_read_folder_and_json_alike(gt_candidates, tmp_path):
    folder = open_video_candidates(_folder(tmp_path / "f", gt_candidates))
    as_json = open_video_candidates(_json(tmp_path / "c.json", gt_candidates))
    for source in (folder, as_json):
        assert source.frames() == list(FRAMES) and 2 in source and 1 not in source
        assert source.size_hw(2) == DST_HW
        cands = source.load(2, (74, 74))
        np.testing.assert_array_equal(cands.masks, gt_candidates[2])
        np.testing.assert_array_equal(cands.boxes, Candidates.from_masks(gt_candidates[2]).boxes)
    assert folder.digest()["kind"] == "folder" and as_json.digest()["kind"] == "json"
    empty = open_video_candidates(_json(tmp_path / "e.json", {7: gt_candidates[0][:0]}))
    assert len(empty.load(7, (74, 74))) == 0 and empty.load(7, (74, 74)).size_hw == (74, 74)
    changed = open_video_candidates(_json(tmp_path / "c.json", {0: gt_candidates[0]}))
    assert changed.digest() != as_json.digest()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "holds no <frame>_masks.npz files"),
        ("{not json", "is not readable JSON"),
        ('{"0": {"size": [4, 4], "counts": "x"}}', "frame 0 must map to a list of RLEs"),
        ('{"a": []}', "key 'a' is not a frame index"),
        ('{"3": [{"size": [4], "counts": "x"}]}', "frame 3 candidate 0 is not an RLE"),
    ],
)
def test_malformed_sources_are_one_clear_error(content, message, tmp_path):
    path = tmp_path / "c.json"
    if content is None:
        path = tmp_path / "empty_folder"
        path.mkdir()
    else:
        path.write_text(content)
    with pytest.raises(OmamaError) as info:
        open_video_candidates(path)
    assert message in str(info.value)


def test_folder_and_json_candidates_give_the_gt_masks(assets, gt_candidates, tmp_path, capsys):
    folder = _folder(tmp_path / "cands", gt_candidates)
    as_json = _json(tmp_path / "cands.json", gt_candidates)
    outs = {}
    for name, source in (("folder", folder), ("json", as_json)):
        outs[name] = tmp_path / name
        code, text, err = _run(capsys, assets, outs[name], assets.weights, "--candidates", source)
        assert code == 0, err
        assert "candidates: 3 frames precomputed, 0 by FastSAM, 0 with none" in text
        summary = _summary(outs[name])
        assert summary["candidates"]["precomputed_frames"] == 3
        assert summary["candidates"]["source"].startswith(name)
        found, preds = details(outs[name]), _pred_masks(outs[name])
        assert {f for f, _ in found} == set(FRAMES) and found.keys() == preds.keys()
        for (frame, obj), d in found.items():
            n = len(gt_candidates[frame])
            assert d["candidates"] == n and 0 <= d["candidate"] < n, (frame, obj)
            expected = _expected(gt_candidates[frame], assets.weights)[d["candidate"]]
            np.testing.assert_array_equal(preds[(frame, obj)], expected)
    assert details(outs["folder"]) == details(outs["json"])  # same masks, same answers


def test_frames_without_an_entry_use_fastsam_or_get_none(
    assets, no_fastsam, gt_candidates, tmp_path, capsys
):
    folder = _folder(tmp_path / "cands", {f: gt_candidates[f] for f in (0, 4)})
    out = tmp_path / "with_fastsam"
    code, text, err = _run(capsys, assets, out, assets.weights, "--candidates", folder)
    assert code == 0, err
    assert "candidates: 2 frames precomputed, 1 by FastSAM, 0 with none" in text
    assert all(d["candidates"] > 0 for d in details(out).values())

    out = tmp_path / "without_fastsam"
    code, text, err = _run(capsys, assets, out, no_fastsam, "--candidates", folder)
    assert code == 0, err
    assert "candidates: 2 frames precomputed, 0 by FastSAM, 1 with none" in text
    found, preds = details(out), _pred_masks(out)
    assert {f for f, _ in found} == set(FRAMES)
    for (frame, obj), d in found.items():
        if frame == 2:  # no entry, no FastSAM: an empty mask with confidence 0
            assert (d["candidate"], d["candidates"], d["confidence"]) == (-1, 0, 0.0)
            assert preds[(frame, obj)].shape == DST_HW and not preds[(frame, obj)].any()
        else:
            assert d["candidates"] == len(gt_candidates[frame])
    summary = _summary(out)
    assert summary["no_candidates"] == sum(1 for f, _ in found if f == 2) > 0
    assert summary["candidates"]["no_candidate_frames"] == 1
    assert summary["frames_inferred_this_run"] == 2


def test_unreadable_candidates_skip_the_frame_with_a_report(
    assets, no_fastsam, gt_candidates, tmp_path, capsys
):
    folder = _folder(tmp_path / "cands", gt_candidates)
    (folder / "2_masks.npz").write_bytes(b"not a zip archive")
    out = tmp_path / "out"
    code, text, err = _run(capsys, assets, out, no_fastsam, "--candidates", folder)
    assert code == 0, err
    assert "1 frames skipped for unreadable candidates" in text
    (skip,) = _summary(out)["candidates"]["unreadable_frames"]["listed"]
    assert skip["frame"] == 2 and "2_masks.npz" in skip["reason"]
    assert {f for f, _ in details(out)} == {0, 4}


def test_artifacts_without_fastsam_need_candidates(assets, no_fastsam, tmp_path, capsys):
    from runtime.runs.video import VideoRun, run_video

    out = tmp_path / "out"
    code, _, err = _run(capsys, assets, out, no_fastsam)
    assert code == 1
    assert "hold no FastSAM model" in error_line(err) and "--candidates" in error_line(err)
    assert not out.exists()  # refused before any work
    tracks = load_tracks([assets.annotation], src_cam=EXO)
    run = VideoRun(assets.video(EXO), assets.video(EGO), tracks, out, "t", EXO, EGO)
    with (
        Pipeline(no_fastsam, backend="onnxruntime", device="cpu", threads=1) as pipe,
        pytest.raises(OmamaError, match="hold no FastSAM model"),
    ):
        run_video(pipe, run, progress=False)
    assert not out.exists()


def test_candidate_sizes_resize_or_refuse(assets, no_fastsam, gt_candidates, tmp_path, capsys):
    half = {f: m[:, ::2, ::2] for f, m in gt_candidates.items()}  # 224x224: same aspect
    out = tmp_path / "half"
    code, text, err = _run(capsys, assets, out, no_fastsam, "--candidates",
                           _json(tmp_path / "half.json", half))  # fmt: skip
    assert code == 0, err
    assert all(d["candidate"] >= 0 for d in details(out).values())
    wide = {f: np.zeros((len(m), 100, 300), np.uint8) for f, m in gt_candidates.items()}
    for masks in wide.values():
        masks[:, 10:40, 20:90] = 1
    code, _, err = _run(capsys, assets, tmp_path / "wide", no_fastsam, "--candidates",
                        _json(tmp_path / "wide.json", wide))  # fmt: skip
    assert code == 1
    line = error_line(err)
    assert "300x100 px, which does not fit the destination video 448x448" in line


def test_resume_refuses_another_candidate_source(
    assets, no_fastsam, gt_candidates, tmp_path, capsys
):
    folder = _folder(tmp_path / "cands", gt_candidates)
    out = tmp_path / "out"
    code, text, err = _run(capsys, assets, out, no_fastsam, "--candidates", folder,
                           "--max-frames", "3")  # fmt: skip
    assert code == 0 and "3 frames (2 inferred this run)" in text, err
    other = _json(tmp_path / "c.json", gt_candidates)  # the same masks from another source
    code, _, err = _run(capsys, assets, out, no_fastsam, "--resume", "--candidates", other)
    assert code == 1 and "(candidates differ)" in error_line(err)
    code, _, err = _run(capsys, assets, out, assets.weights, "--resume")  # FastSAM instead
    assert code == 1 and "candidates differ" in error_line(err)
    code, text, err = _run(capsys, assets, out, no_fastsam, "--candidates", folder, "--resume")
    assert code == 0, err
    assert "6 frames (1 inferred this run)" in text
    assert "candidates: 3 frames precomputed" in text
    full = tmp_path / "full"
    assert _run(capsys, assets, full, no_fastsam, "--candidates", folder)[0] == 0
    assert details(out) == details(full) and _pred_masks(out).keys() == _pred_masks(full).keys()
