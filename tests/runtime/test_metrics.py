"""Properties of the official metrics (runtime.metrics) on small generated masks.

The fast implementations are checked bit for bit against the straightforward port of the
reference evaluator in benchmarks/reference_eval.py (whole-image boundary maps, np.where
over a padded copy), and against the rules docs/reference.md, section 7 states.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from benchmarks.reference_eval import (
    ref_balanced_accuracy,
    ref_boundary_f,
    ref_iou,
    ref_location_score,
    ref_seg2bmap,
)
from runtime.errors import OmamaError
from runtime.metrics import (
    balanced_accuracy,
    bbox,
    boundary_f,
    boundary_map,
    boundary_radius_px,
    box_center,
    confidence_value,
    disk,
    egoexo4d_size,
    iou,
    is_visible,
    location_score,
    mask_metrics,
    resize_nearest,
    working_masks,
)

SETTINGS = settings(max_examples=60, deadline=None)


@st.composite
def mask_pairs(draw, max_side: int = 24):
    """Two uint8 masks of one random shape: random pixels, blobs, empties or full masks."""
    h = draw(st.integers(1, max_side))
    w = draw(st.integers(1, max_side))
    out = []
    for _ in range(2):
        kind = draw(st.sampled_from(["noise", "rect", "empty", "full", "noise"]))
        if kind == "noise":
            m = draw(arrays(np.uint8, (h, w), elements=st.integers(0, 1)))
        elif kind == "rect":
            m = np.zeros((h, w), np.uint8)
            y0, x0 = draw(st.integers(0, h - 1)), draw(st.integers(0, w - 1))
            y1, x1 = draw(st.integers(y0, h - 1)), draw(st.integers(x0, w - 1))
            m[y0 : y1 + 1, x0 : x1 + 1] = 1
        elif kind == "empty":
            m = np.zeros((h, w), np.uint8)
        else:
            m = np.ones((h, w), np.uint8)
        out.append(m)
    return out[0], out[1]


def _blob(shape_hw, center_xy, radius_px):
    m = np.zeros(shape_hw, np.uint8)
    cv2.circle(m, center_xy, radius_px, 1, -1)
    return m


# ----------------------------------------------------------------------------- properties


@SETTINGS
@given(mask_pairs())
def test_iou_is_symmetric_and_in_unit_interval(pair):
    a, b = pair
    assert iou(a, b) == iou(b, a)
    assert 0.0 <= iou(a, b) <= 1.0


@SETTINGS
@given(mask_pairs())
def test_identical_masks_give_iou_1_location_0_shape_1(pair):
    a, _ = pair
    m = mask_metrics(a, a.copy())
    assert m.iou == pytest.approx(1.0, abs=1e-6)  # 1e-7 in the union: n / (n + 1e-7)
    assert m.location_score == 0.0
    assert m.shape_acc == 1.0
    assert m.existence_acc


@SETTINGS
@given(mask_pairs())
def test_shape_acc_is_symmetric_and_bounded(pair):
    a, b = pair
    assert boundary_f(a, b) == boundary_f(b, a)
    assert 0.0 <= boundary_f(a, b) <= 1.0


def test_empty_mask_rules():
    empty = np.zeros((6, 10), np.uint8)
    some = np.zeros((6, 10), np.uint8)
    some[1:3, 2:5] = 1
    assert iou(empty, empty) == 1.0
    assert boundary_f(empty, empty) == 1.0
    assert location_score(empty, empty) == 0.0
    assert iou(empty, some) == 0.0
    assert boundary_f(empty, some) == 0.0 and boundary_f(some, empty) == 0.0
    # The empty mask's centre is (H // 2, W // 2) taken as (x, y): swapped on a 6x10 image.
    assert box_center(None, (6, 10)) == (3, 5)
    some_center = box_center(bbox(some), (6, 10))
    assert some_center == ((2 + 4) // 2, (1 + 2) // 2)
    expected = math.hypot(3 - 3, 5 - 1) / math.hypot(6, 10)
    assert location_score(some, empty) == pytest.approx(expected, abs=0)


def test_full_mask_has_no_boundary_and_matches_only_itself():
    full = np.ones((8, 8), np.uint8)
    assert not boundary_map(full).any()
    assert boundary_f(full, full) == 1.0
    half = np.zeros((8, 8), np.uint8)
    half[:, :4] = 1
    assert boundary_f(full, half) == 0.0  # no boundary vs a boundary: P or R = 0


def test_location_uses_box_centres_and_normalising_size():
    a = _blob((100, 100), (20, 30), 5)
    b = _blob((100, 100), (60, 30), 5)
    assert location_score(a, b) == pytest.approx(40 / math.hypot(100, 100))
    assert location_score(a, b, (480, 480)) == pytest.approx(40 / math.hypot(480, 480))


def test_shape_acc_tolerance_is_ceil_0008_diagonal():
    assert boundary_radius_px((700, 700)) == 8
    assert boundary_radius_px((480, 480)) == 6
    assert boundary_radius_px((270, 480)) == 5
    assert disk(2).tolist() == [
        [0, 0, 1, 0, 0],
        [0, 1, 1, 1, 0],
        [1, 1, 1, 1, 1],
        [0, 1, 1, 1, 0],
        [0, 0, 1, 0, 0],
    ]
    # A square moved by 8 px on a 700x700 image still matches its boundary; by 9 px it
    # does not (apart from the rows both squares share).
    a = np.zeros((700, 700), np.uint8)
    a[100:200, 100:200] = 1
    assert boundary_f(a, np.roll(a, 8, axis=1)) == 1.0
    assert boundary_f(a, np.roll(a, 9, axis=1)) < 1.0


# ----------------------------------------------------------------------------- vs reference


@SETTINGS
@given(mask_pairs())
def test_boundary_map_matches_reference(pair):
    a, _ = pair
    assert np.array_equal(boundary_map(a), ref_seg2bmap(a))


@SETTINGS
@given(mask_pairs(max_side=40))
def test_metrics_match_reference_port_bit_for_bit(pair):
    gt, pred = pair
    m = mask_metrics(gt, pred)
    assert m.iou == ref_iou(pred, gt)
    assert m.shape_acc == ref_boundary_f(gt, pred)
    assert m.location_score == ref_location_score(gt, pred)
    assert m.gt_area_px == int(gt.sum()) and m.pred_area_px == int(pred.sum())


@settings(max_examples=25, deadline=None)
@given(
    st.integers(60, 160),
    st.integers(60, 160),
    st.integers(0, 2**32 - 1),
)
def test_blob_metrics_match_reference_with_real_tolerance(h, w, seed):
    """Larger masks (tolerance radius > 1) with nearby and distant blobs."""
    rng = np.random.default_rng(seed)
    gt = _blob((h, w), (int(rng.integers(0, w)), int(rng.integers(0, h))), int(rng.integers(1, 30)))
    pred = _blob(
        (h, w), (int(rng.integers(0, w)), int(rng.integers(0, h))), int(rng.integers(1, 30))
    )
    m = mask_metrics(gt, pred)
    assert m.iou == ref_iou(pred, gt)
    assert m.shape_acc == ref_boundary_f(gt, pred)
    assert m.location_score == ref_location_score(gt, pred)


@SETTINGS
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 1)), min_size=1, max_size=30))
def test_balanced_accuracy_matches_reference(flags):
    gt, pred = [f[0] for f in flags], [f[1] for f in flags]
    assert balanced_accuracy(gt, pred) == ref_balanced_accuracy(gt, pred)


def test_balanced_accuracy_values():
    assert balanced_accuracy([1, 1, 1], [1, 1, 0]) == pytest.approx(2 / 3)
    assert balanced_accuracy([1, 1, 0, 0], [1, 0, 0, 0]) == pytest.approx((0.5 + 1.0) / 2)
    assert math.isnan(balanced_accuracy([], []))


@SETTINGS
@given(st.integers(2, 90), st.integers(2, 90), st.integers(1, 60), st.integers(1, 60))
def test_resize_of_column_major_masks_equals_opencv(h, w, new_h, new_w):
    rng = np.random.default_rng(h * 1000 + w)
    c_mask = (rng.random((h, w)) < 0.5).astype(np.uint8)
    f_mask = np.asfortranarray(c_mask)  # pycocotools decodes column-major
    expected = cv2.resize(c_mask, (new_w, new_h), interpolation=cv2.INTER_NEAREST)
    assert np.array_equal(resize_nearest(f_mask, (new_h, new_w)), expected)
    assert np.array_equal(resize_nearest(c_mask, (new_h, new_w)), expected)


# ----------------------------------------------------------------------------- protocols


def test_egoexo4d_working_size():
    assert egoexo4d_size((1408, 1408)) == (480, 480)
    assert egoexo4d_size((2160, 3840)) == (270, 480)
    assert egoexo4d_size((3024, 3025)) == (479, 480)


def test_working_masks_per_protocol():
    gt = _blob((1408, 1408), (700, 700), 200)
    pred = _blob((700, 700), (350, 350), 100)
    g, p, size = working_masks(gt, pred, "omama")
    assert g.shape == p.shape == size == (700, 700)
    g, p, size = working_masks(gt, pred, "egoexo4d")
    assert g.shape == p.shape == (480, 480) and size == (480, 480)
    with pytest.raises(OmamaError, match="protocol"):
        working_masks(gt, pred, "davis")


def test_confidence_accepts_numbers_and_one_element_lists():
    assert confidence_value(0.67) == 0.67
    assert confidence_value([0.67]) == 0.67
    assert confidence_value(1) == 1.0
    for bad in ("0.6", [0.1, 0.2], None, True):
        with pytest.raises(OmamaError, match="confidence"):
            confidence_value(bad)
    assert is_visible(0.51) and not is_visible(0.5)


@SETTINGS
@given(mask_pairs())
def test_bbox_matches_np_where(pair):
    a, _ = pair
    ys, xs = np.where(a)
    expected = None if ys.size == 0 else (ys.min(), ys.max(), xs.min(), xs.max())
    assert bbox(a) == expected
