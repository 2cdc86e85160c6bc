"""FastSAM candidates: random-weight FastSAM-s built offline, `omama data masks` end to end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from omama_train.data import masks as masks_module
from omama_train.data.masks import report_path
from omama_train.imagekey import ImageKey, dst_frames
from omama_train.shards import parse_shard, select_shard
from runtime.candidates import read_candidates
from runtime.clikit import new_app, run_app
from runtime.egoexo import Pair, candidate_paths, frame_image_path, write_pairs
from runtime.errors import OmamaError
from runtime.pooling import mask_boxes
from runtime.preprocess import resize_mask_nearest
from runtime.rle import encode

torch.set_num_threads(1)

EGO, EXO = "aria01_214-1", "cam01"
EGO_HW, EXO_HW = (64, 64), (48, 80)  # processed jpg sizes (ego video /2, exo video /4)
FRAMES = (0, 5, 10)
# take_a: object -> cam -> frames where it has a mask (ego frame 10 shows nothing).
VISIBLE = {
    "red mug_0": {EGO: (0, 5), EXO: FRAMES},
    "blue box_1": {EGO: (0,), EXO: FRAMES},
}
FAST = ["--imgsz", "256", "--device", "cpu", "--no-progress"]


def _object_mask(obj: str, cam: str, frame: int, video_hw: tuple[int, int]) -> np.ndarray:
    h, w = video_hw
    mask = np.zeros(video_hw, np.uint8)
    k = sorted(VISIBLE).index(obj)
    y0, x0 = h // 8 + k * h // 3 + frame, w // 8 + k * w // 3
    mask[y0 : y0 + h // 4, x0 : x0 + w // 5] = 1
    return mask


def _write_take(root: Path, take: str, visible: dict, images: dict[str, tuple[int, ...]]) -> None:
    rng = np.random.default_rng(len(take))
    video_hw = {EGO: (EGO_HW[0] * 2, EGO_HW[1] * 2), EXO: (EXO_HW[0] * 4, EXO_HW[1] * 4)}
    masks: dict = {}
    for obj, per_cam in visible.items():
        for cam, frames in per_cam.items():
            for frame in frames:
                mask = _object_mask(obj, cam, frame, video_hw[cam])
                masks.setdefault(obj, {}).setdefault(cam, {})[str(frame)] = encode(mask)
    annotation = {
        "masks": masks,
        "annotated_frames": {obj: {EGO: list(FRAMES), EXO: list(FRAMES)} for obj in visible},
        "subsample_idx": list(FRAMES),
    }
    take_dir = root / "processed" / take
    take_dir.mkdir(parents=True)
    (take_dir / "annotation.json").write_text(json.dumps(annotation))
    for cam, frames in images.items():
        hw = EGO_HW if cam == EGO else EXO_HW
        for frame in frames:
            image = rng.integers(0, 255, (*hw, 3), dtype=np.uint8)
            image[hw[0] // 4 : hw[0] // 2, hw[1] // 4 : hw[1] // 2] = (40, 60, 220)
            path = frame_image_path(root, take, cam, frame)
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), image)


@pytest.fixture()
def processed_root(tmp_path) -> Path:
    """Two takes; take_b's ego image of frame 0 is missing."""
    root = tmp_path / "root"
    _write_take(root, "take_a", VISIBLE, {EGO: FRAMES, EXO: FRAMES})
    _write_take(root, "take_b", {"red mug_0": {EGO: (0,), EXO: (0,)}}, {EXO: (0,)})
    (root / "split.json").write_text(
        json.dumps({"train": [], "val": [], "test": ["take_a", "take_b"]})
    )
    pairs = [Pair("take_a", obj, EGO, EXO, f) for obj in VISIBLE for f in FRAMES]
    pairs.append(Pair("take_b", "red mug_0", EGO, EXO, 0))
    for tag in ("exoego", "egoexo"):
        write_pairs(root / "dataset_jsons" / f"test_{tag}_pairs.json", pairs, root)
    return root


@pytest.fixture(scope="session")
def random_weights(tmp_path_factory) -> Path:
    from omama_train.models.fastsam import build_random_fastsam

    return build_random_fastsam(tmp_path_factory.mktemp("fastsam") / "FastSAM-s-random.pt", "s")


def _run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    app = new_app("test app")
    data_app = new_app("data")
    masks_module.add_commands(data_app)
    app.add_typer(data_app, name="data")
    capsys.readouterr()
    code = run_app(app, ["data", "masks", *args])
    out, err = capsys.readouterr()
    return code, out, err


def _report(root: Path, direction: str = "exo2ego", shard=(0, 1)) -> dict:
    return json.loads(report_path(root, "test", direction, shard).read_text())


def _image_rgb() -> np.ndarray:
    rng = np.random.default_rng(3)
    image = rng.integers(0, 255, (126, 224, 3), dtype=np.uint8)
    image[30:90, 50:150] = (200, 30, 30)
    return image


# --- model ---------------------------------------------------------------------------------


def test_random_checkpoint_has_fastsam_s_architecture(random_weights):
    from omama_train.models.fastsam import load_fastsam

    model = load_fastsam(random_weights)
    assert model.task == "segment"
    assert model.model.names == {0: "object"}  # one class, like FastSAM
    n_params = sum(p.numel() for p in model.model.parameters())
    assert 11.7e6 < n_params < 11.9e6  # FastSAM-s: 11.8 M parameters


def test_segment_everything_shapes_and_boxes(random_weights):
    from omama_train.models.fastsam import load_fastsam, segment_everything

    model = load_fastsam(random_weights)
    image = _image_rgb()
    for retina in (True, False):
        masks, boxes = segment_everything(model, image, imgsz=256, conf=0.001, retina_masks=retina)
        assert masks.ndim == 3 and masks.shape[1:] == (126, 224) and masks.dtype == np.uint8
        assert len(masks) > 0 and set(np.unique(masks)) <= {0, 1}
        assert boxes.shape == (len(masks), 4) and boxes.dtype == np.float32
        assert (boxes[:, 2:] >= 0).all()
        assert (boxes[:, 0] + boxes[:, 2] <= 224 + 1e-3).all()
        assert (boxes[:, 1] + boxes[:, 3] <= 126 + 1e-3).all()
        if retina:  # retina masks are cropped to their boxes: every pixel lies inside it
            tight = mask_boxes(masks)
            nonempty = masks.any(axis=(1, 2))
            assert (tight[nonempty, :2] >= np.floor(boxes[nonempty, :2]) - 1).all()
            ends, box_ends = tight[:, :2] + tight[:, 2:], boxes[:, :2] + boxes[:, 2:]
            assert (ends[nonempty] <= np.ceil(box_ends[nonempty]) + 1).all()


def test_unletterbox_inverts_ultralytics_letterbox():
    from ultralytics.data.augment import LetterBox

    from omama_train.models.fastsam import unletterbox_masks

    yy, xx = np.mgrid[:126, :224]
    pattern = ((yy // 8 + xx // 8) % 2).astype(np.uint8)  # 8-px checkerboard
    boxed = LetterBox(new_shape=(256, 256), auto=True, stride=32)(
        image=np.repeat(pattern[..., None] * 255, 3, axis=2)
    )
    assert boxed.shape[:2] == (160, 256)  # content 144 rows + 8 rows of padding each side
    masks = (boxed[None, :, :, 0] > 127).astype(np.uint8)
    back = unletterbox_masks(torch.from_numpy(masks), (126, 224)).numpy()
    assert back.shape == (1, 126, 224) and back.dtype == np.uint8
    assert (back[0] == pattern).mean() > 0.85  # only edge pixels differ
    naive = resize_mask_nearest(masks, (126, 224), rule="torch")  # padding misaligns rows
    assert (naive[0] == pattern).mean() < 0.7


def test_unletterbox_without_padding_is_torch_nearest():
    import torch.nn.functional as F

    from omama_train.models.fastsam import unletterbox_masks

    masks = (np.random.default_rng(0).random((2, 64, 128)) > 0.5).astype(np.uint8)
    back = unletterbox_masks(torch.from_numpy(masks), (135, 270)).numpy()  # no padding
    ref = F.interpolate(torch.from_numpy(masks)[None].float(), size=(135, 270), mode="nearest")
    np.testing.assert_array_equal(back, ref[0].to(torch.uint8).numpy())


def test_zero_detections_give_empty_arrays(random_weights):
    from omama_train.models.fastsam import load_fastsam, segment_everything

    masks, boxes = segment_everything(
        load_fastsam(random_weights), _image_rgb(), imgsz=256, conf=0.5
    )
    assert masks.shape == (0, 126, 224) and masks.dtype == np.uint8
    assert boxes.shape == (0, 4) and boxes.dtype == np.float32


def test_thread_settings_survive_ultralytics(random_weights):
    from omama_train.models.fastsam import load_fastsam, segment_everything

    torch.set_num_threads(2)  # ultralytics would set min(8, cpus - 1) on device selection
    try:
        segment_everything(load_fastsam(random_weights), _image_rgb(), imgsz=128, conf=0.5)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)


def test_rgb_input_is_validated(random_weights):
    from omama_train.models.fastsam import load_fastsam, segment_everything

    with pytest.raises(OmamaError, match="RGB"):
        segment_everything(load_fastsam(random_weights), np.zeros((8, 8), np.uint8))


def test_missing_weights_say_where_they_come_from(processed_root, tmp_path, capsys):
    code, _, err = _run_cli(
        [
            "--root",
            str(processed_root),
            "--direction",
            "exo2ego",
            "--fastsam",
            str(tmp_path / "FastSAM-x.pt"),
        ],
        capsys,
    )
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: FastSAM weights not found at ")
    assert "https://github.com/ultralytics/assets/releases" in lines[0]


def test_bad_weights_file_is_one_clear_error(tmp_path):
    from omama_train.models.fastsam import load_fastsam

    bad = tmp_path / "FastSAM-x.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(OmamaError, match="not a loadable ultralytics FastSAM checkpoint"):
        load_fastsam(bad)


# --- omama data masks ----------------------------------------------------------------------


def _fastsam_args(root, weights) -> list[str]:
    """``omama data masks`` arguments for FastSAM candidates of the exo2ego test split."""
    return ["--root", str(root), "--direction", "exo2ego", "--fastsam", str(weights)]


def test_cli_fastsam_writes_resumes_and_reports(processed_root, random_weights, capsys):
    args = _fastsam_args(processed_root, random_weights)
    args += ["--conf", "0.001", *FAST]
    code, out, err = _run_cli(args, capsys)
    assert code == 0, err
    assert "3 written" in out and "1 missing images" in out

    report = _report(processed_root)
    assert report["mode"] == "fastsam" and report["fastsam"]["conf"] == 0.001
    assert report["frames_total"] == 4 and report["frames_in_shard"] == 4
    assert report["written"] == 3 and report["skipped_complete"] == 0
    assert report["missing_images"] == [f"take_b/{EGO}/0"]
    total = 0
    for frame in FRAMES:
        paths = candidate_paths(processed_root, "test", "exo2ego", "take_a", EGO, frame)
        cands = read_candidates(*paths)
        assert cands.size_hw == EGO_HW and cands.boxes.shape == (len(cands), 4)
        total += len(cands)
    assert report["candidates"]["total"] == total > 0
    assert not (processed_root / "Masks_TEST_EXO2EGO" / "take_b").exists()

    # Resume: nothing is recomputed, files are untouched.
    first = candidate_paths(processed_root, "test", "exo2ego", "take_a", EGO, 0)
    stamp = first[0].stat().st_mtime_ns
    code, _, err = _run_cli(args, capsys)
    assert code == 0, err
    report = _report(processed_root)
    assert report["written"] == 0 and report["skipped_complete"] == 3
    assert first[0].stat().st_mtime_ns == stamp

    # An interrupted frame (boxes written, masks not) is redone.
    first[0].unlink()
    code, _, err = _run_cli(args, capsys)
    assert code == 0, err
    report = _report(processed_root)
    assert report["written"] == 1 and report["redone_incomplete"] == [f"take_a/{EGO}/0"]
    assert read_candidates(*first).size_hw == EGO_HW


def test_cli_zero_detections_are_written_as_empty(processed_root, random_weights, capsys):
    args = _fastsam_args(processed_root, random_weights)
    code, _, err = _run_cli([*args, "--conf", "0.5", "--no-retina", *FAST], capsys)
    assert code == 0, err
    report = _report(processed_root)
    assert report["fastsam"]["retina_masks"] is False
    assert report["zero_candidates"] == [f"take_a/{EGO}/{f}" for f in FRAMES]
    for frame in FRAMES:
        paths = candidate_paths(processed_root, "test", "exo2ego", "take_a", EGO, frame)
        with np.load(paths[0]) as npz:
            assert npz["arr_0"].shape == (0, *EGO_HW)
        assert np.load(paths[1]).shape == (0, 4)


def test_from_annotations_uses_every_gt_mask_of_the_frame(processed_root, capsys):
    code, out, err = _run_cli(
        [
            "--root",
            str(processed_root),
            "--direction",
            "exo2ego",
            "--from-annotations",
            "--no-progress",
        ],
        capsys,
    )
    assert code == 0, err
    assert _report(processed_root)["mode"] == "annotations"
    for frame in FRAMES:
        cands = read_candidates(
            *candidate_paths(processed_root, "test", "exo2ego", "take_a", EGO, frame)
        )
        objs = [o for o in sorted(VISIBLE) if frame in VISIBLE[o][EGO]]
        assert len(cands) == len(objs)
        for mask, obj in zip(cands.masks, objs, strict=True):
            full = _object_mask(obj, EGO, frame, (128, 128))
            # GT masks: resized with the OpenCV rule, as O-MaMa resizes them
            expected = cv2.resize(full, EGO_HW[::-1], interpolation=cv2.INTER_NEAREST)
            np.testing.assert_array_equal(mask, expected)
        np.testing.assert_array_equal(cands.boxes, mask_boxes(cands.masks))
    assert _report(processed_root)["zero_candidates"] == [f"take_a/{EGO}/10"]


def test_a_folder_keeps_one_source(processed_root, random_weights, capsys):
    base = ["--root", str(processed_root), "--direction", "exo2ego", "--no-progress"]
    code, _, err = _run_cli([*base, "--from-annotations"], capsys)
    assert code == 0, err
    source_file = processed_root / "Masks_TEST_EXO2EGO" / "candidates_source.json"
    assert json.loads(source_file.read_text()) == {"mode": "annotations"}
    # Resuming with FastSAM would silently keep the ground-truth stand-ins: refused.
    code, _, err = _run_cli([*base, "--fastsam", str(random_weights), *FAST[:2]], capsys)
    assert code == 1 and "holds candidates made by {'mode': 'annotations'}" in err
    shutil.rmtree(source_file.parent)  # what the message asks for
    code, _, err = _run_cli([*base, "--fastsam", str(random_weights), *FAST[:2]], capsys)
    assert code == 0, err
    assert _report(processed_root)["written"] == 3
    recorded = json.loads(source_file.read_text())
    assert recorded["mode"] == "fastsam" and recorded["imgsz"] == 256 and recorded["conf"] == 0.4
    assert recorded["weights_name"] == random_weights.name
    code, _, err = _run_cli([*base, "--fastsam", str(random_weights), "--conf", "0.3"], capsys)
    assert code == 1 and "holds candidates made by" in err


def test_shards_split_the_frames_without_overlap(processed_root, capsys):
    base = [
        "--root",
        str(processed_root),
        "--direction",
        "ego2exo",
        "--from-annotations",
        "--no-progress",
    ]
    written: list[set[str]] = []
    for i in range(2):
        code, out, err = _run_cli([*base, "--shard", f"{i}/2"], capsys)
        assert code == 0, err
        assert f"(shard {i}/2)" in out
        report = _report(processed_root, "ego2exo", (i, 2))
        assert report["frames_total"] == 4 and report["shard"] == [i, 2]
        done = {str(f) for f in _written_frames(processed_root / "Masks_TEST_EGO2EXO")}
        written.append(done - set().union(*written))
        # Disjoint shards: every frame of this shard is new, none was done by the other.
        assert report["frames_in_shard"] == report["written"] == len(written[-1])
    expected = {f"take_a/{EXO}/{f}" for f in FRAMES} | {f"take_b/{EXO}/0"}
    assert written[0] | written[1] == expected
    assert not report_path(processed_root, "test", "ego2exo").exists()


def _written_frames(masks_dir: Path) -> list[ImageKey]:
    return [
        ImageKey(p.parent.parent.name, p.parent.name, int(p.name.split("_")[0]))
        for p in masks_dir.glob("*/*/*_masks.npz")
    ]


def test_option_errors(processed_root, random_weights, capsys):
    base = ["--root", str(processed_root), "--direction", "exo2ego"]
    for extra, message in [
        ([], "either --fastsam"),
        (["--from-annotations", "--fastsam", str(random_weights)], "either --fastsam"),
        (["--from-annotations", "--shard", "2/2"], "0 <= i < n"),
        (["--from-annotations", "--split", "val"], "pairs file not found"),
    ]:
        code, _, err = _run_cli([*base, *extra], capsys)
        assert code == 1 and message in err, (extra, err)
    code, _, err = _run_cli(
        ["--root", str(processed_root), "--direction", "up", "--from-annotations"], capsys
    )
    assert code == 1 and "direction" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_without_gpu_is_a_clear_error(processed_root, random_weights, capsys):
    args = _fastsam_args(processed_root, random_weights)
    code, _, err = _run_cli([*args, "--device", "cuda"], capsys)
    assert code == 1 and "no CUDA GPU" in err


# --- pure helpers --------------------------------------------------------------------------


def test_destination_frames_are_unique_and_follow_the_direction():
    pairs = [
        Pair("t", o, EGO, c, f) for o in ("a", "b") for c in ("cam01", "cam02") for f in (3, 1)
    ]
    assert dst_frames(pairs, "exo2ego") == [
        ImageKey("t", EGO, 1),
        ImageKey("t", EGO, 3),
    ]
    assert len(dst_frames(pairs, "ego2exo")) == 4
    assert dst_frames(pairs, "ego2exo")[0] == ImageKey("t", "cam01", 1)


def test_shard_selection_partitions():
    frames = [ImageKey("t", EGO, f) for f in range(11)]
    parts = [select_shard(frames, i, 3) for i in range(3)]
    assert sorted(f for part in parts for f in part) == frames
    assert [len(p) for p in parts] == [4, 4, 3]
    assert parse_shard("2/3") == (2, 3)
    for bad in ("3/3", "-1/2", "0/0", "a/b", "1"):
        with pytest.raises(OmamaError):
            parse_shard(bad)


def test_cli_refuses_a_fastsam_file_that_runs_code(processed_root, tmp_path, capsys):
    import os

    import torch

    marker = tmp_path / "pwned"

    class CreatesFile:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "FastSAM-x.pt"
    torch.save({"model": CreatesFile()}, evil)
    code, _, err = _run_cli(
        ["--root", str(processed_root), "--direction", "exo2ego", "--fastsam", str(evil), *FAST],
        capsys,
    )
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1
    assert "not a loadable ultralytics FastSAM checkpoint" in lines[0]
    assert not marker.exists()
