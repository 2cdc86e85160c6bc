"""Image/mask preprocessing (docs/reference.md, section 2): numpy version and its torch twin."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from hypothesis import given, settings
from hypothesis import strategies as st

from omama_train.models.preprocess import (
    preprocess_image_torch,
    resize_mask_nearest_torch,
)
from runtime.errors import OmamaError
from runtime.metrics import resize_nearest
from runtime.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    model_input_size,
    nearest_indices,
    normalize_image,
    patch_multiple_size,
    preprocess_image,
    resize_mask_nearest,
)

torch.set_num_threads(1)

# Frame sizes of the processed Ego-Exo4D takes, raw camera sizes and model input sizes.
REAL_SIZES = [532, 540, 700, 704, 952, 960, 1408, 2160, 3840, 800, 608, 1088, 1600]
# (in, out) pairs beyond REAL_SIZES x REAL_SIZES: exact 2x up and down, the pooling grids
# (image -> 175 / 133 / 238), FastSAM letterbox contents, and small growths where an exact
# integer floor(i * in / out) is not OpenCV's rule (2 -> 98, 3 -> 147).
PAIRS = [(50, 100), (175, 350), (238, 476), (1, 2), (7, 14), (1408, 704), (100, 50)]
PAIRS += [(700, 175), (540, 133), (532, 133), (960, 238), (952, 238), (1408, 175), (533, 175)]
PAIRS += [(144, 126), (256, 224), (126, 256), (2, 98), (3, 147), (2, 196), (1, 4), (3, 7)]
PAIRS += [(99, 1), (7, 3), (17, 29), (13, 13), (5, 10), (37, 23), (23, 37)]


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _reference_tensor(rgb_uint8: np.ndarray) -> np.ndarray:
    """What O-MaMa feeds the backbone: torchvision ToTensor + Normalize on the RGB array."""
    x = TF.normalize(TF.to_tensor(rgb_uint8), IMAGENET_MEAN, IMAGENET_STD)
    return x.numpy()


def _cv2_indices(size_in: int, size_out: int) -> np.ndarray:
    row = np.arange(size_in, dtype=np.float32)[None, :].repeat(2, axis=0)
    return cv2.resize(row, (size_out, 2), interpolation=cv2.INTER_NEAREST)[0].astype(np.int64)


def _cv2_uint8_indices(size_in: int, size_out: int, axis: int) -> np.ndarray:
    """Source indices OpenCV picks on uint8 images (the masks' dtype) along rows (axis 0) or
    columns (axis 1): the index is split into its low and high byte, one per line."""
    index = np.arange(size_in)
    lines = np.stack([index % 256, index // 256]).astype(np.uint8)  # (2, size_in)
    image = lines.T.copy() if axis == 0 else lines
    dsize = (2, size_out) if axis == 0 else (size_out, 2)  # OpenCV sizes are (width, height)
    out = cv2.resize(image, dsize, interpolation=cv2.INTER_NEAREST).astype(np.int64)
    out = out.T if axis == 0 else out
    return out[0] + 256 * out[1]


def _torch_indices(size_in: int, size_out: int) -> np.ndarray:
    row = torch.arange(size_in, dtype=torch.float32).view(1, 1, 1, size_in)
    return F.interpolate(row, size=(1, size_out), mode="nearest")[0, 0, 0].long().numpy()


def test_patch_multiple_size_reference_sizes():
    assert patch_multiple_size(704, 704) == (700, 700)  # ego: 50x50 tokens
    assert patch_multiple_size(540, 960) == (532, 952)  # exo: 38x68 tokens
    assert patch_multiple_size(700, 700) == (700, 700)
    assert patch_multiple_size(20, 33, patch=16) == (16, 32)
    with pytest.raises(OmamaError, match="smaller than one"):
        patch_multiple_size(13, 700)


def test_model_input_size_keeps_the_token_grid():
    assert model_input_size(704, 704) == (700, 700)
    assert model_input_size(540, 960) == (532, 952)
    assert model_input_size(704, 704, 16) == (800, 800)  # DINOv3, 50x50 tokens
    assert model_input_size(540, 960, 16) == (608, 1088)  # 38x68 tokens
    assert model_input_size(704, 704, 32) == (1600, 1600)  # ResNet-50 stride 32


@pytest.mark.parametrize("size_in", REAL_SIZES)
@pytest.mark.parametrize("size_out", REAL_SIZES)
def test_nearest_indices_match_opencv_and_torch_on_real_sizes(size_in, size_out):
    np.testing.assert_array_equal(
        nearest_indices(size_in, size_out, "opencv"), _cv2_indices(size_in, size_out)
    )
    np.testing.assert_array_equal(
        nearest_indices(size_in, size_out, "torch"), _torch_indices(size_in, size_out)
    )


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 400), st.integers(1, 400))
def test_nearest_indices_match_opencv_and_torch(size_in, size_out):
    np.testing.assert_array_equal(
        nearest_indices(size_in, size_out, "opencv"), _cv2_indices(size_in, size_out)
    )
    np.testing.assert_array_equal(
        nearest_indices(size_in, size_out, "torch"), _torch_indices(size_in, size_out)
    )


@pytest.mark.parametrize(("size_in", "size_out"), PAIRS)
def test_nearest_indices_match_opencv_and_torch_on_chosen_pairs(size_in, size_out):
    cv = nearest_indices(size_in, size_out, "opencv")
    for axis in (0, 1):
        np.testing.assert_array_equal(cv, _cv2_uint8_indices(size_in, size_out, axis))
    np.testing.assert_array_equal(
        nearest_indices(size_in, size_out, "torch"), _torch_indices(size_in, size_out)
    )


def test_opencv_rule_is_not_the_exact_integer_floor():
    # floor(i * in / out) in exact arithmetic is another rule: OpenCV floors i * (1 / scale).
    exact = np.arange(98) * 2 // 98
    assert not np.array_equal(exact, nearest_indices(2, 98, "opencv"))
    np.testing.assert_array_equal(nearest_indices(2, 98, "opencv"), _cv2_indices(2, 98))


def test_nearest_indices_are_cached_and_read_only():
    index = nearest_indices(540, 532, "torch")
    assert nearest_indices(540, 532, "torch") is index
    assert not index.flags.writeable
    assert index.dtype == np.int64
    with pytest.raises(OmamaError, match="positive"):
        nearest_indices(0, 5)


def test_rules_differ_on_exo_height():
    # 540 -> 532: OpenCV and PyTorch pick another source row for output row 399.
    cv, pt = nearest_indices(540, 532, "opencv"), nearest_indices(540, 532, "torch")
    assert np.flatnonzero(cv != pt).tolist() == [399]
    with pytest.raises(OmamaError, match="nearest rule"):
        nearest_indices(540, 532, "bilinear")


@pytest.mark.parametrize(("h", "w", "out_hw"), [(540, 960, (532, 952)), (704, 704, (700, 700))])
def test_preprocess_image_matches_reference_pipeline(h, w, out_hw):
    rgb = _rgb(h, w)
    got = preprocess_image(rgb)
    assert got.dtype == np.float32
    assert got.shape == (3, *out_hw)
    resized = cv2.resize(rgb, out_hw[::-1], interpolation=cv2.INTER_NEAREST)
    np.testing.assert_array_equal(got, _reference_tensor(resized))


def test_preprocess_image_without_resize_and_with_explicit_size():
    rgb = _rgb(28, 42, seed=1)
    np.testing.assert_array_equal(preprocess_image(rgb), _reference_tensor(rgb))
    np.testing.assert_array_equal(normalize_image(rgb), _reference_tensor(rgb))
    up = preprocess_image(rgb, size_hw=(32, 48), patch=16)
    assert up.shape == (3, 32, 48)
    expected = _reference_tensor(cv2.resize(rgb, (48, 32), interpolation=cv2.INTER_NEAREST))
    np.testing.assert_array_equal(up, expected)


def test_normalisation_values():
    rgb = np.zeros((14, 14, 3), np.uint8)
    rgb[..., 1] = 255
    x = preprocess_image(rgb)
    np.testing.assert_allclose(x[0], -0.485 / 0.229, rtol=1e-6)
    np.testing.assert_allclose(x[1], (1 - 0.456) / 0.224, rtol=1e-6)


def test_preprocess_rejects_bad_input():
    with pytest.raises(OmamaError, match="uint8"):
        normalize_image(np.zeros((14, 14, 3), np.float32))
    with pytest.raises(OmamaError, match=r"\(H, W, 3\)"):
        preprocess_image(np.zeros((14, 14), np.uint8))
    with pytest.raises(OmamaError, match="mask must be"):
        resize_mask_nearest(np.zeros(5, np.uint8), (3, 3))


@pytest.mark.parametrize("rule", ["opencv", "torch"])
def test_resize_mask_nearest_single_and_stack(rule):
    rng = np.random.default_rng(2)
    masks = (rng.random((3, 54, 96)) > 0.5).astype(np.uint8)
    stack = resize_mask_nearest(masks, (53, 95), rule=rule)
    assert stack.shape == (3, 53, 95) and stack.dtype == np.uint8
    for i in range(3):
        np.testing.assert_array_equal(resize_mask_nearest(masks[i], (53, 95), rule=rule), stack[i])
    if rule == "opencv":
        expected = cv2.resize(masks[0], (95, 53), interpolation=cv2.INTER_NEAREST)
    else:
        t = torch.from_numpy(masks).float().unsqueeze(0)
        expected = F.interpolate(t, size=(53, 95), mode="nearest")[0, 0].to(torch.uint8).numpy()
    np.testing.assert_array_equal(stack[0], expected)
    assert resize_mask_nearest(masks, (54, 96), rule=rule) is masks  # no-op keeps the array


@pytest.mark.parametrize(
    ("h", "w", "size_hw"), [(540, 960, None), (33, 47, None), (30, 30, (48, 32))]
)
def test_torch_twin_is_bit_identical(h, w, size_hw):
    rgb = _rgb(h, w, seed=3)
    expected = preprocess_image(rgb, size_hw=size_hw, patch=14 if size_hw is None else 16)
    got = preprocess_image_torch(
        torch.from_numpy(rgb), size_hw=size_hw, patch=14 if size_hw is None else 16
    )
    assert got.dtype == torch.float32
    np.testing.assert_array_equal(got.numpy(), expected)
    batch = torch.from_numpy(np.stack([rgb, rgb[::-1].copy()]))
    got_batch = preprocess_image_torch(batch, size_hw=size_hw, patch=14 if size_hw is None else 16)
    assert got_batch.shape == (2, *expected.shape)
    np.testing.assert_array_equal(got_batch[0].numpy(), expected)


@pytest.mark.parametrize("rule", ["opencv", "torch"])
def test_torch_twin_masks_are_identical(rule):
    masks = (np.random.default_rng(4).random((2, 540, 96)) > 0.5).astype(np.uint8)
    got = resize_mask_nearest_torch(torch.from_numpy(masks), (532, 95), rule=rule)
    np.testing.assert_array_equal(got.numpy(), resize_mask_nearest(masks, (532, 95), rule=rule))
    with pytest.raises(OmamaError):
        preprocess_image_torch(torch.zeros(14, 14, 3))


@pytest.mark.parametrize(
    ("src", "dst"),
    [((1408, 1408), (700, 700)), ((540, 960), (532, 952)), ((2160, 3840), (270, 480))]
    + [((126, 224), (252, 448)), ((37, 23), (10, 61)), ((2, 3), (98, 147))],
)
def test_metrics_resize_nearest_equals_the_opencv_rule(src, dst):
    mask = (np.random.default_rng(5).random(src) > 0.5).astype(np.uint8)
    expected = resize_mask_nearest(mask, dst, rule="opencv")
    for layout in (mask, np.asfortranarray(mask)):  # pycocotools decodes column-major
        np.testing.assert_array_equal(resize_nearest(layout, dst), expected)
        np.testing.assert_array_equal(resize_mask_nearest(layout, dst, rule="opencv"), expected)


@pytest.mark.parametrize("rule", ["opencv", "torch"])
def test_resize_mask_nearest_ignores_memory_layout(rule):
    masks = (np.random.default_rng(6).random((2, 45, 70)) > 0.5).astype(np.uint8)
    expected = resize_mask_nearest(masks, (44, 141), rule=rule)
    fortran = np.asfortranarray(masks)
    np.testing.assert_array_equal(resize_mask_nearest(fortran, (44, 141), rule=rule), expected)
    np.testing.assert_array_equal(
        resize_mask_nearest(np.asfortranarray(masks[0]), (44, 141), rule=rule), expected[0]
    )
    np.testing.assert_array_equal(
        resize_mask_nearest(np.swapaxes(masks, 1, 2), (70, 44), rule=rule),
        np.swapaxes(resize_mask_nearest(masks, (44, 70), rule=rule), 1, 2),
    )
    empty = resize_mask_nearest(np.zeros((0, 45, 70), np.uint8), (44, 141), rule=rule)
    assert empty.shape == (0, 44, 141)


def test_runtime_preprocess_does_not_import_torch():
    code = (
        "import sys, runtime.preprocess\n"
        "bad = [m for m in ('torch', 'timm', 'ultralytics') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
