"""``omama data gt`` refuses a mask it cannot score: counts that do not cover its size, or a
size that is not its frame's, each in one line naming the observation."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from omama_train.cli import build_app
from runtime import rle
from runtime.clikit import run_app

EGO, EXO = "aria01_214-1", "cam01"
VIDEO_HW = {EGO: (16, 16), EXO: (16, 24)}  # ego jpgs 8x8 (/2), exo 4x6 (/4)


def mask_rle(hw: tuple[int, int], frame: int) -> dict:
    mask = np.zeros(hw, np.uint8)
    mask[frame % hw[0], :] = 1
    return rle.encode(mask)


def write_root(root: Path, reference: str, odd: dict | None = None) -> Path:
    """Take "ta": object "cup" masked in both cameras at frames 1, 2. ``reference``: what
    tells the size of a camera's masks (the recorded video size, or the jpgs);
    ``odd`` replaces the exo mask of frame 2."""
    masks = {cam: {str(f): mask_rle(hw, f) for f in (1, 2)} for cam, hw in VIDEO_HW.items()}
    if odd is not None:
        masks[EXO]["2"] = odd
    annotation = {
        "masks": {"cup": masks},
        "annotated_frames": {"cup": {EGO: [1, 2], EXO: [1, 2]}},
    }
    if reference == "record":
        annotation["prepare"] = {"video_size_px": {c: list(hw) for c, hw in VIDEO_HW.items()}}
    take = root / "processed" / "ta"
    take.mkdir(parents=True)
    (take / "annotation.json").write_text(json.dumps(annotation))
    if reference == "jpg":
        for cam, (h, w) in VIDEO_HW.items():
            scale = 2 if cam == EGO else 4
            (take / cam).mkdir()
            for frame in (1, 2):
                image = np.full((h // scale, w // scale, 3), 128, np.uint8)
                cv2.imwrite(str(take / cam / f"{frame}.jpg"), image)
    (root / "split.json").write_text(json.dumps({"train": [], "val": [], "test": ["ta"]}))
    return root


def run_gt(root: Path, out: Path, capsys) -> tuple[int, list[str]]:
    capsys.readouterr()
    argv = ["data", "gt", "--root", str(root), "--direction", "exo2ego", "--out", str(out)]
    code = run_app(build_app(), argv)
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize(
    ("reference", "says"),
    [
        ("record", "its video is 16x24 px"),
        ("jpg", "the camera's frames are 4x6 px jpgs, 4 times smaller than 16x24"),
    ],
)
def test_a_mask_of_another_size_than_its_frame_is_refused(tmp_path, capsys, reference, says):
    root = write_root(tmp_path / "good", reference)
    code, err = run_gt(root, tmp_path / "good.json", capsys)
    assert code == 0, err  # masks of their frame's size make a GT
    gt = json.loads((tmp_path / "good.json").read_text())["annotations"]["ta"]
    assert gt["masks"]["cup"][EXO]["2"] == mask_rle(VIDEO_HW[EXO], 2)

    root = write_root(tmp_path / "root", reference, odd=mask_rle((8, 12), 2))
    code, err = run_gt(root, tmp_path / "gt.json", capsys)
    assert code == 1 and len(err) == 1, err
    assert "take ta, object 'cup', camera cam01, frame 2: mask is 8x12 px" in err[0]
    assert re.search(says, err[0]), err[0]
    assert not (tmp_path / "gt.json").exists()


def test_a_mask_whose_counts_do_not_cover_its_size_is_refused(tmp_path, capsys):
    short = {"size": [16, 24], "counts": rle.encode(np.ones((16, 23), np.uint8))["counts"]}
    root = write_root(tmp_path / "root", "record", odd=short)
    code, err = run_gt(root, tmp_path / "gt.json", capsys)
    assert code == 1 and len(err) == 1, err
    assert "take ta, object 'cup', camera cam01, frame 2" in err[0]
    assert "counts cover 368 pixels but its size 16x24 has 384" in err[0]
    assert "processed/ta/annotation.json" in err[0]
