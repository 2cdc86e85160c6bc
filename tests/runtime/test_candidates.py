"""runtime.candidates: the O-MaMa candidate layout (npz arr_0 masks + npy x1,y1,w,h boxes)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from runtime.candidates import (
    Candidates,
    candidates_complete,
    inspect_candidates,
    load_frame_candidates,
    read_candidates,
    scale_boxes,
    write_candidates,
)
from runtime.egoexo import candidate_paths
from runtime.errors import OmamaError
from runtime.pooling import mask_boxes

torch.set_num_threads(1)


def _random_candidates(n: int, h: int = 24, w: int = 40, seed: int = 0) -> Candidates:
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, h, w), np.uint8)
    for i in range(n):
        y0, x0 = rng.integers(0, h - 4), rng.integers(0, w - 4)
        masks[i, y0 : y0 + rng.integers(1, 8), x0 : x0 + rng.integers(1, 12)] = 1
    return Candidates.from_masks(masks)


def _paths(tmp_path):
    return tmp_path / "7_masks.npz", tmp_path / "7_boxes.npy"


def test_round_trip_keeps_shapes_dtypes_and_values(tmp_path):
    cands = _random_candidates(5)
    masks_path, boxes_path = _paths(tmp_path)
    write_candidates(masks_path, boxes_path, cands)
    with np.load(masks_path) as npz:  # the reference layout: a single arr_0
        assert npz.files == ["arr_0"]
        assert npz["arr_0"].shape == (5, 24, 40) and npz["arr_0"].dtype == np.uint8
    raw_boxes = np.load(boxes_path)
    assert raw_boxes.shape == (5, 4) and raw_boxes.dtype == np.float32
    back = read_candidates(masks_path, boxes_path)
    np.testing.assert_array_equal(back.masks, cands.masks)
    np.testing.assert_array_equal(back.boxes, cands.boxes)
    assert back.size_hw == (24, 40) and len(back) == 5
    assert inspect_candidates(masks_path, boxes_path) == (5, 24, 40)
    assert candidates_complete(masks_path, boxes_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["7_boxes.npy", "7_masks.npz"]


def test_zero_candidates_are_valid(tmp_path):
    masks_path, boxes_path = _paths(tmp_path)
    write_candidates(masks_path, boxes_path, Candidates.empty((30, 50)))
    back = read_candidates(masks_path, boxes_path)
    assert back.masks.shape == (0, 30, 50) and back.boxes.shape == (0, 4)
    assert inspect_candidates(masks_path, boxes_path) == (0, 30, 50)
    resized = read_candidates(masks_path, boxes_path, image_size_hw=(15, 25))
    assert resized.masks.shape == (0, 15, 25) and resized.boxes.shape == (0, 4)


def test_legacy_empty_file_needs_an_image_size(tmp_path):
    masks_path, boxes_path = _paths(tmp_path)
    np.savez_compressed(masks_path, np.zeros((0, 0, 0), np.uint8))
    np.save(boxes_path, np.zeros((0, 4), np.float32))
    with pytest.raises(OmamaError, match="carry no image size"):
        read_candidates(masks_path, boxes_path)
    back = read_candidates(masks_path, boxes_path, image_size_hw=(700, 700))
    assert back.masks.shape == (0, 700, 700)


def test_from_masks_boxes_follow_the_reference_convention():
    masks = np.zeros((3, 10, 12), np.uint8)
    masks[0, 2:5, 3:9] = 1  # rows 2..4, cols 3..8
    masks[1, 7, 11] = 1  # a single pixel: w = h = 0
    expected = np.array([[3, 2, 5, 2], [11, 7, 0, 0], [0, 0, 0, 0]], np.float32)
    np.testing.assert_array_equal(Candidates.from_masks(masks).boxes, expected)
    none = Candidates.from_masks(np.zeros((0, 4, 4), np.uint8))
    assert none.boxes.shape == (0, 4) and none.boxes.dtype == np.float32
    with pytest.raises(OmamaError, match=r"\(N, H, W\)"):
        Candidates.from_masks(np.zeros((4, 4), np.uint8))


@settings(max_examples=40, deadline=None)
@given(
    arrays(
        np.uint8,
        st.tuples(st.integers(1, 4), st.integers(1, 9), st.integers(1, 9)),
        elements=st.integers(0, 1),
    )
)
def test_from_masks_boxes_match_where(masks):
    boxes = Candidates.from_masks(masks).boxes
    for mask, box in zip(masks, boxes, strict=True):
        ys, xs = np.where(mask)
        if len(xs) == 0:
            assert box.tolist() == [0, 0, 0, 0]
        else:
            x0, y0 = xs.min(), ys.min()
            assert box.tolist() == [x0, y0, xs.max() - x0, ys.max() - y0]


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        ((704, 704), (700, 700)),
        ((540, 960), (532, 952)),
        ((126, 224), (252, 448)),
        ((37, 23), (10, 61)),
    ],
)
def test_resized_masks_follow_torch_nearest(src, dst):
    # O-MaMa resizes FastSAM masks of another size with F.interpolate(mode="nearest").
    rng = np.random.default_rng(1)
    masks = (rng.random((2, *src)) > 0.5).astype(np.uint8)
    out = Candidates.from_masks(masks).resized(dst).masks
    assert out.shape == (2, *dst) and out.dtype == np.uint8 and out.flags.c_contiguous
    ref = F.interpolate(torch.from_numpy(masks)[None].float(), size=dst, mode="nearest")[0]
    np.testing.assert_array_equal(out, ref.to(torch.uint8).numpy())


def test_resized_uses_the_torch_rule_not_opencv():
    # 540 -> 532 rows: output row 399 is source row 404 for PyTorch, 405 for OpenCV.
    masks = np.zeros((1, 540, 8), np.uint8)
    masks[0, 405] = 1
    out = Candidates.from_masks(masks).resized((532, 8)).masks[0]
    assert not out[399].any()
    masks[0] = 0
    masks[0, 404] = 1
    assert Candidates.from_masks(masks).resized((532, 8)).masks[0, 399].all()


def test_reading_at_another_image_size_rescales_boxes_and_masks(tmp_path):
    cands = _random_candidates(4, h=20, w=40)
    masks_path, boxes_path = _paths(tmp_path)
    write_candidates(masks_path, boxes_path, cands)
    back = read_candidates(masks_path, boxes_path, image_size_hw=(10, 80))
    assert back.masks.shape == (4, 10, 80)
    np.testing.assert_allclose(back.boxes, cands.boxes * np.float32([2, 0.5, 2, 0.5]))
    np.testing.assert_allclose(scale_boxes(back.boxes, (10, 80), (20, 40)), cands.boxes)
    same = read_candidates(masks_path, boxes_path, image_size_hw=(20, 40))
    np.testing.assert_array_equal(same.boxes, cands.boxes)


def test_frame_helpers_use_the_omama_layout(tmp_path):
    cands = _random_candidates(2)
    paths = candidate_paths(tmp_path, "test", "exo2ego", "take1", "aria01_214-1", 30)
    write_candidates(*paths, cands)
    assert str(paths[0]).endswith("Masks_TEST_EXO2EGO/take1/aria01_214-1/30_masks.npz")
    back = load_frame_candidates(tmp_path, "test", "exo2ego", "take1", "aria01_214-1", "30")
    np.testing.assert_array_equal(back.masks, cands.masks)


def _write_raw(tmp_path, masks, boxes, key="arr_0"):
    masks_path, boxes_path = _paths(tmp_path)
    np.savez_compressed(masks_path, **{key: masks})
    np.save(boxes_path, boxes)
    return masks_path, boxes_path


@pytest.mark.parametrize(
    ("masks", "boxes", "key", "bad_file", "message"),
    [
        (np.zeros((2, 4, 4), np.float32), np.zeros((2, 4), np.float32), "arr_0", 0, "uint8"),
        (np.zeros((4, 4), np.uint8), np.zeros((0, 4), np.float32), "arr_0", 0, r"\(N, H, W\)"),
        (np.full((1, 4, 4), 255, np.uint8), np.zeros((1, 4), np.float32), "arr_0", 0, "0/1"),
        (np.zeros((1, 4, 4), np.uint8), np.zeros((1, 4), np.float32), "masks", 0, "arr_0"),
        (np.zeros((2, 4, 4), np.uint8), np.zeros((2, 5), np.float32), "arr_0", 1, r"\(N, 4\)"),
        (np.zeros((2, 4, 4), np.uint8), np.zeros((3, 4), np.float32), "arr_0", 1, "3 boxes"),
        (np.zeros((2, 4, 4), np.uint8), np.zeros((2, 4), np.int64), "arr_0", 1, "float32"),
        (np.zeros((1, 4, 4), np.uint8), np.float32([[0, 0, -1, 2]]), "arr_0", 1, "w, h >= 0"),
        (np.zeros((1, 4, 4), np.uint8), np.float32([[np.nan, 0, 1, 2]]), "arr_0", 1, "finite"),
    ],
)
def test_invalid_files_raise_naming_the_file(tmp_path, masks, boxes, key, bad_file, message):
    paths = _write_raw(tmp_path, masks, boxes, key)
    with pytest.raises(OmamaError, match=message) as info:
        read_candidates(*paths)
    assert str(paths[bad_file]) in str(info.value)


def test_bool_masks_are_accepted(tmp_path):
    masks = np.zeros((1, 5, 6), bool)
    masks[0, 1:3, 2:4] = True
    back = read_candidates(*_write_raw(tmp_path, masks, mask_boxes(masks)))
    assert back.masks.dtype == np.uint8 and back.masks.sum() == 4


def test_missing_and_corrupt_files(tmp_path):
    masks_path, boxes_path = _paths(tmp_path)
    with pytest.raises(OmamaError, match="not found"):
        read_candidates(masks_path, boxes_path)
    assert not candidates_complete(masks_path, boxes_path)
    write_candidates(masks_path, boxes_path, _random_candidates(3))
    masks_path.write_bytes(masks_path.read_bytes()[:40])  # truncated archive
    with pytest.raises(OmamaError, match=str(masks_path.name)):
        read_candidates(masks_path, boxes_path)
    assert not candidates_complete(masks_path, boxes_path)
    np.save(tmp_path / "plain.npy", np.zeros((1, 2, 2), np.uint8))
    (tmp_path / "plain.npy").rename(masks_path)  # a .npy under the .npz name
    with pytest.raises(OmamaError, match="npz"):
        read_candidates(masks_path, boxes_path)


def test_inspect_detects_count_mismatch_without_decompressing(tmp_path):
    masks_path, boxes_path = _paths(tmp_path)
    write_candidates(masks_path, boxes_path, _random_candidates(3))
    np.save(boxes_path, np.zeros((2, 4), np.float32))
    with pytest.raises(OmamaError, match="2 boxes for 3 masks"):
        inspect_candidates(masks_path, boxes_path)
    assert not candidates_complete(masks_path, boxes_path)


def test_candidates_validate_on_construction():
    with pytest.raises(OmamaError, match="uint8"):
        Candidates(np.zeros((1, 3, 3), np.int32), np.zeros((1, 4), np.float32))
    with pytest.raises(OmamaError, match="1 boxes for 2 masks"):
        Candidates(np.zeros((2, 3, 3), np.uint8), np.zeros((1, 4), np.float32))
    with pytest.raises(OmamaError, match="positive"):
        Candidates.empty((0, 5))
