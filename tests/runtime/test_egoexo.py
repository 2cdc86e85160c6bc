"""runtime.egoexo: the index over a processed root, and pairs files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from runtime import rle
from runtime.egoexo import (
    Pair,
    PairPath,
    ProcessedRoot,
    read_pairs,
    write_pairs,
)
from runtime.errors import OmamaError

EGO = "aria01_214-1"


def mask(h: int, w: int, y: int, x: int) -> dict:
    m = np.zeros((h, w), np.uint8)
    m[y : y + 3, x : x + 4] = 1
    return rle.encode(m)


def write_take(root: Path, take: str, annotation: dict, images: bool = True) -> None:
    folder = root / "processed" / take
    folder.mkdir(parents=True)
    (folder / "annotation.json").write_text(json.dumps(annotation))
    if images:
        index = ProcessedRoot(root)
        for cam in index.cams(take):
            (folder / cam).mkdir()
            for frame in index.cam_frames(take, cam):
                (folder / cam / f"{frame}.jpg").write_bytes(b"jpg")


@pytest.fixture
def root(tmp_path) -> Path:
    (tmp_path / "split.json").write_text(
        json.dumps({"test": ["t2", "t3"], "extra": ["t9"], "train": ["t1"]})
    )
    write_take(
        tmp_path,
        "t1",
        {
            "masks": {
                "cup": {EGO: {"3": mask(20, 20, 1, 1), "1": mask(20, 20, 2, 2)}, "cam02": {}},
                "pan": {"cam01": {"5": mask(10, 30, 0, 0)}},
            },
            "annotated_frames": {
                "cup": {EGO: [3, 1, 4], "cam02": [1]},
                "pan": {"cam01": [5, 6], EGO: [5]},
            },
            "subsample_idx": [1, 3, 4, 5, 6],
        },
    )
    # The reference's own format: masks only, no annotated_frames.
    write_take(tmp_path, "t2", {"masks": {"box": {EGO: {"7": mask(20, 20, 0, 0)}}}})
    return tmp_path


def test_index_lists_splits_takes_cams_objects_frames(root):
    index = ProcessedRoot(root)
    assert index.splits() == ["train", "test", "extra"]
    assert index.takes() == ["t1", "t2"]  # prepared takes, whatever split.json says
    assert index.takes("test") == ["t2", "t3"]
    assert index.split_of("t2") == "test" and index.split_of("nope") is None
    assert index.has_take("t1") and not index.has_take("t3")
    assert index.cams("t1") == [EGO, "cam01", "cam02"]
    assert index.ego_cam("t1") == EGO and index.exo_cams("t1") == ["cam01", "cam02"]
    assert index.objects("t1") == ["cup", "pan"]
    assert index.object_cams("t1", "pan") == [EGO, "cam01"]
    assert index.frames("t1", "cup", EGO) == [1, 3, 4]
    assert index.mask_frames("t1", "cup", EGO) == [1, 3]
    assert index.mask_frames("t1", "cup", "cam02") == []
    assert index.frames("t1", "cup", "cam01") == []
    assert index.frames("t2", "box", EGO) == [7]  # falls back to the mask frames
    assert index.cam_frames("t1", EGO) == [1, 3, 4, 5]
    assert index.cam_frames("t1", "cam01") == [5, 6]


def test_index_masks_and_images(root):
    index = ProcessedRoot(root)
    m = rle.decode(index.mask_rle("t1", "cup", EGO, 3))
    assert m.shape == (20, 20) and m.sum() == 12 and m[1, 1] == 1
    assert index.mask_rle("t1", "cup", EGO, "1") == mask(20, 20, 2, 2)
    assert index.mask_rle("t1", "cup", EGO, 4) is None  # annotated, not visible
    assert index.mask_rle("t1", "nothing", EGO, 4) is None
    path = index.image_path("t1", "cam01", 6)
    assert path == root / "processed" / "t1" / "cam01" / "6.jpg" and path.is_file()
    assert index.missing_images("t1") == []
    path.unlink()
    assert index.missing_images("t1") == [path]
    assert index.pairs_path("test", "exo2ego") == root / "dataset_jsons/test_exoego_pairs.json"


def test_annotation_is_parsed_once(root):
    index = ProcessedRoot(root)
    first = index.annotation("t1")
    (root / "processed" / "t1" / "annotation.json").write_text("{}")
    assert index.annotation("t1") is first
    with pytest.raises(OmamaError, match="no 'masks'"):
        ProcessedRoot(root).annotation("t1")


def test_index_errors_name_the_file(root, tmp_path):
    index = ProcessedRoot(root)
    with pytest.raises(OmamaError, match="t3.*not prepared"):
        index.annotation("t3")
    with pytest.raises(OmamaError, match="split 'val' is not in"):
        index.takes("val")
    with pytest.raises(OmamaError, match="split.json not found"):
        ProcessedRoot(tmp_path / "empty").splits()
    assert ProcessedRoot(tmp_path / "empty").takes() == []
    write_take(root, "t4", {"masks": {"x": {"aria01": {}, "aria02": {}}}}, images=False)
    with pytest.raises(OmamaError, match="exactly one ego.*aria01, aria02"):
        index.ego_cam("t4")
    (root / "split.json").write_text('{"train": "t1"}')
    with pytest.raises(OmamaError, match="lists of take ids"):
        ProcessedRoot(root).splits()


def test_pairs_files_round_trip(tmp_path):
    pairs = [Pair("t1", "cup", EGO, "cam01", 3), Pair("t1", "pan lid", EGO, "cam02", 10)]
    path = tmp_path / "dataset_jsons" / "train_exoego_pairs.json"
    assert write_pairs(path, pairs, "data/root/") == 2
    entries = json.loads(path.read_text())
    assert entries[0] == [
        f"data/root//t1//{EGO}//cup//rgb//3",
        f"data/root//t1//{EGO}//cup//mask//3",
        "data/root//t1//cam01//cup//rgb//3",
        "data/root//t1//cam01//cup//mask//3",
    ]
    assert read_pairs(path) == pairs
    assert PairPath.parse(entries[1][2]).obj == "pan lid"
    write_pairs(path, pairs, Path("/abs/root"))
    assert json.loads(path.read_text())[0][0].startswith("/abs/root//t1//")


def test_pairs_files_errors(tmp_path):
    with pytest.raises(OmamaError, match="contains '//'"):
        write_pairs(tmp_path / "p.json", [], "a//b")
    with pytest.raises(OmamaError, match="not found"):
        read_pairs(tmp_path / "missing.json")
    (tmp_path / "p.json").write_text('{"a": 1}')
    with pytest.raises(OmamaError, match="JSON list"):
        read_pairs(tmp_path / "p.json")
    (tmp_path / "p.json").write_text('[["r//t//c//o//rgb//1", "x", "r//t//d//o//rgb//2", "y"]]')
    with pytest.raises(OmamaError, match="mixes"):
        read_pairs(tmp_path / "p.json")
