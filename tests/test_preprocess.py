"""Image/mask preprocessing (OMAMA_REFERENCE section 3): numpy version and its torch twin."""

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


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _reference_tensor(rgb_uint8: np.ndarray) -> np.ndarray:
    """What O-MaMa feeds the backbone: torchvision ToTensor + Normalize on the RGB array."""
    x = TF.normalize(TF.to_tensor(rgb_uint8), IMAGENET_MEAN, IMAGENET_STD)
    return x.numpy()


def _cv2_indices(size_in: int, size_out: int) -> np.ndarray:
    row = np.arange(size_in, dtype=np.float32)[None, :].repeat(2, axis=0)
    return cv2.resize(row, (size_out, 2), interpolation=cv2.INTER_NEAREST)[0].astype(np.int64)


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


def test_runtime_preprocess_does_not_import_torch():
    code = (
        "import sys, runtime.preprocess\n"
        "bad = [m for m in ('torch', 'timm', 'ultralytics') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
