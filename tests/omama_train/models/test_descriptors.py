"""Separable descriptor pooling (torch and numpy twin) against a plain loop over the masks
(docs/reference.md, section 4)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from omama_train.models import descriptors as tdesc
from runtime import pooling
from runtime.errors import OmamaError

torch.set_num_threads(1)


def loop_object_descriptors(
    feats: torch.Tensor,
    masks: torch.Tensor,
    boxes: torch.Tensor,
    image_size: tuple[int, int],
    context_px: int = 100,
    reduction: int = 4,
) -> torch.Tensor:
    """Section 5 word for word: upsample the map, then one mask at a time."""
    batch, channels = feats.shape[:2]
    count = masks.shape[1]
    height, width = image_size
    grid_h, grid_w = height // reduction, width // reduction
    up = F.interpolate(feats, size=(grid_h, grid_w), mode="bilinear", align_corners=False)
    out = torch.zeros(batch, count, 2 * channels)
    for b in range(batch):
        for n in range(count):
            small = F.interpolate(masks[b, n][None, None].float(), size=(grid_h, grid_w))
            cells = small[0, 0] != 0
            if cells.any():
                out[b, n, :channels] = up[b][:, cells].mean(dim=1)
            x1, y1, w, h = (int(v) for v in boxes[b, n].tolist())
            x2, y2 = x1 + w, y1 + h
            x1 = min(max(x1 - context_px, 0), width) // reduction
            y1 = min(max(y1 - context_px, 0), height) // reduction
            x2 = min(max(x2 + context_px, 0), width) // reduction
            y2 = min(max(y2 + context_px, 0), height) // reduction
            x2, y2 = max(x2, x1 + 1), max(y2, y1 + 1)
            x1, y1 = min(max(x1, 0), grid_w - 1), min(max(y1, 0), grid_h - 1)
            x2, y2 = min(max(x2, 0), grid_w), min(max(y2, 0), grid_h)
            out[b, n, channels:] = up[b, :, y1:y2, x1:x2].mean(dim=(1, 2))
    return out


def random_case(rng: np.random.Generator, batch, count, channels, feat_grid, image_size, mask_size):
    """Random features, masks of mixed density (some empty) and boxes that reach past
    every border of the image."""
    feats = rng.standard_normal((batch, channels, *feat_grid)).astype(np.float32)
    density = rng.choice([0.0, 0.02, 0.3, 1.0], size=(batch, count, 1, 1))
    masks = (rng.random((batch, count, *mask_size)) < density).astype(np.uint8)
    height, width = image_size
    x1 = rng.uniform(-0.3 * width, 1.2 * width, (batch, count))
    y1 = rng.uniform(-0.3 * height, 1.2 * height, (batch, count))
    w = rng.uniform(0, 1.2 * width, (batch, count))
    h = rng.uniform(0, 1.2 * height, (batch, count))
    boxes = np.stack([x1, y1, w, h], axis=-1).astype(np.float32)
    return feats, masks, boxes


def check_all_equal(feats, masks, boxes, image_size, context_px, reduction):
    ref = loop_object_descriptors(
        torch.from_numpy(feats),
        torch.from_numpy(masks),
        torch.from_numpy(boxes),
        image_size,
        context_px,
        reduction,
    )
    fast = tdesc.object_descriptors(
        torch.from_numpy(feats),
        torch.from_numpy(masks),
        torch.from_numpy(boxes),
        image_size,
        context_px=context_px,
        reduction=reduction,
    )
    assert fast.shape == ref.shape
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)
    for b in range(feats.shape[0]):
        twin = pooling.object_descriptors(
            feats[b], masks[b], boxes[b], image_size, context_px=context_px, reduction=reduction
        )
        assert twin.dtype == np.float32
        np.testing.assert_allclose(twin, ref[b].numpy(), atol=1e-5, rtol=1e-5)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    batch=st.integers(1, 2),
    count=st.integers(0, 5),
    channels=st.integers(1, 6),
    feat_grid=st.tuples(st.integers(1, 9), st.integers(1, 9)),
    reduction=st.integers(1, 6),
    extra=st.tuples(st.integers(0, 40), st.integers(0, 40)),
    mask_extra=st.none() | st.tuples(st.integers(1, 50), st.integers(1, 50)),
    context_px=st.integers(0, 30),
)
def test_random_shapes_equal_loop_reference(
    seed, batch, count, channels, feat_grid, reduction, extra, mask_extra, context_px
):
    image_size = (reduction + extra[0], reduction + extra[1])
    mask_size = image_size if mask_extra is None else mask_extra
    rng = np.random.default_rng(seed)
    feats, masks, boxes = random_case(rng, batch, count, channels, feat_grid, image_size, mask_size)
    check_all_equal(feats, masks, boxes, image_size, context_px, reduction)


@pytest.mark.parametrize(
    ("image_size", "feat_grid"),
    [((700, 700), (50, 50)), ((532, 952), (38, 68))],
    ids=["ego", "exo"],
)
def test_official_sizes_with_edge_cases(image_size, feat_grid):
    """Ego and exo sizes: empty mask, a one-pixel mask the grid misses, a full mask, and
    boxes at every corner, past the image and of zero size."""
    height, width = image_size
    rng = np.random.default_rng(7)
    feats = rng.standard_normal((1, 8, *feat_grid)).astype(np.float32)
    masks = np.zeros((1, 8, height, width), dtype=np.uint8)
    masks[0, 1, 1, 1] = 1  # nearest keeps rows/cols 0, 4, 8, ...: empty on the grid
    masks[0, 2] = 1
    masks[0, 3, height - 30 :, width - 20 :] = 1
    masks[0, 4, :15, :60] = 255  # any non-zero value is foreground
    masks[0, 5, 100:300, 200:260] = 1
    masks[0, 6, 4, 8] = 1  # one pixel the grid keeps
    masks[0, 7] = rng.random((height, width)) < 0.1
    boxes = np.array(
        [
            [0, 0, 0, 0],
            [1, 1, 0, 0],
            [0, 0, width, height],
            [width - 20.7, height - 30.2, 20.9, 30.9],
            [0, 0, 60, 15],
            [200.5, 100.5, 60, 200],
            [width + 50, height + 50, 10, 10],
            [-40, -60, 10, 10],
        ],
        dtype=np.float32,
    )[None]
    check_all_equal(feats, masks, boxes, image_size, 100, 4)
    got = tdesc.object_descriptors(
        torch.from_numpy(feats), torch.from_numpy(masks), torch.from_numpy(boxes), image_size
    )
    assert torch.all(got[0, 0, :8] == 0) and torch.all(got[0, 1, :8] == 0)  # empty on grid
    assert torch.any(got[0, 6, :8] != 0)


def test_bilinear_matrix_follows_torch():
    rng = np.random.default_rng(0)
    for in_size, out_size in [(50, 175), (38, 133), (68, 238), (1, 5), (7, 3), (4, 4), (3, 10)]:
        x = rng.standard_normal((in_size, 6)).astype(np.float32)
        expected = F.interpolate(
            torch.from_numpy(x.T.copy())[None], size=out_size, mode="linear", align_corners=False
        )[0].T
        matrix = pooling.bilinear_matrix(in_size, out_size)
        np.testing.assert_allclose(matrix @ x, expected.numpy(), atol=2e-6)
        np.testing.assert_allclose(matrix.sum(axis=1), 1.0, atol=1e-12)


def test_context_boxes_by_hand_and_twins_agree():
    boxes = np.array(
        [[0, 0, 10, 10], [690.7, 5.2, 30.9, 0], [350, 350, 0, 0], [800, 800, 5, 5]], np.float32
    )
    expected = np.array(
        [[0, 0, 27, 27], [147, 0, 175, 26], [62, 62, 112, 112], [174, 174, 175, 175]]
    )
    got = pooling.context_boxes(boxes, (700, 700), (175, 175))
    np.testing.assert_array_equal(got, expected)
    got_torch = tdesc.context_boxes(torch.from_numpy(boxes), (700, 700), (175, 175))
    np.testing.assert_array_equal(got_torch.numpy(), expected)


def test_mask_boxes_match_pixel_extent():
    rng = np.random.default_rng(3)
    masks = np.zeros((4, 30, 40), dtype=np.uint8)
    masks[0, 5:9, 7:20] = 1
    masks[1, 29, 39] = 1
    masks[3] = rng.random((30, 40)) < 0.05
    expected = []
    for mask in masks:
        ys, xs = np.nonzero(mask)
        if len(ys) == 0:
            expected.append([0, 0, 0, 0])
        else:
            expected.append([xs.min(), ys.min(), xs.max() - xs.min(), ys.max() - ys.min()])
    np.testing.assert_array_equal(pooling.mask_boxes(masks), np.array(expected, np.float32))
    np.testing.assert_array_equal(
        tdesc.mask_boxes(torch.from_numpy(masks)).numpy(), np.array(expected, np.float32)
    )


def test_weights_sum_to_one_and_twins_agree():
    rng = np.random.default_rng(5)
    feats, masks, boxes = random_case(rng, 1, 6, 4, (12, 17), (168, 238), (168, 238))
    masks[0, 1:, 40:90, 30:100] = 1
    masks[0, 0] = 0
    weights = pooling.descriptor_weights(masks[0], boxes[0], (168, 238), (12, 17))
    assert weights.shape == (6, 2, 12 * 17)
    sums = weights.sum(axis=-1)
    np.testing.assert_allclose(sums[1:, 0], 1.0, atol=1e-5)  # mask rows (row 0 is empty)
    assert np.all(weights[0, 0] == 0)
    np.testing.assert_allclose(sums[:, 1], 1.0, atol=1e-5)  # context rows
    weights_torch = tdesc.descriptor_weights(
        torch.from_numpy(masks), torch.from_numpy(boxes), (168, 238), (12, 17)
    )
    np.testing.assert_allclose(weights_torch[0].numpy(), weights, atol=1e-6)


def test_descriptors_are_differentiable_in_features():
    rng = np.random.default_rng(1)
    feats, masks, boxes = random_case(rng, 1, 3, 4, (5, 6), (70, 84), (70, 84))
    masks[0, :, 20:40, 20:50] = 1
    feats_t = torch.from_numpy(feats).requires_grad_(True)
    out = tdesc.object_descriptors(
        feats_t, torch.from_numpy(masks), torch.from_numpy(boxes), (70, 84)
    )
    out.sum().backward()
    # Each of the N * C * 2 outputs is a weighted mean: its weights sum to 1.
    assert feats_t.grad is not None
    np.testing.assert_allclose(feats_t.grad.sum().item(), 3 * 4 * 2, rtol=1e-5)


def test_bad_shapes_are_reported():
    with pytest.raises(OmamaError, match="boxes"):
        pooling.descriptor_weights(np.zeros((2, 8, 8)), np.zeros((3, 4)), (8, 8), (2, 2))
    with pytest.raises(OmamaError, match="smaller than the reduction"):
        pooling.pooling_grid((3, 100), 4)
    with pytest.raises(OmamaError, match="features"):
        tdesc.object_descriptors(
            torch.zeros(8, 2, 2), torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 4), (8, 8)
        )
