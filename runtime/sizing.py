"""How an image of any size reaches a model's view size, and when two sizes are the same shape.

An image is first area-downscaled by the largest integer factor that keeps it at least the
model size (what ``omama data prepare`` does to Ego-Exo4D frames: 1408 -> 704 ego,
3840x2160 -> 960x540 exo; factor 1 for processed frames), giving the *working image*; the
nearest resize to the model size follows (:mod:`runtime.preprocess`). Candidates live at
the working size.
"""

from __future__ import annotations

import cv2
import numpy as np

ASPECT_TOLERANCE = 0.03  # 540x960 vs 532x952 differ by 0.7%; a swapped view by 40% or more


def aspect_mismatch(a_hw: tuple[int, int], b_hw: tuple[int, int]) -> float:
    """Relative difference of the aspect ratios of two (H, W) sizes (0 = same shape)."""
    return abs((a_hw[0] * b_hw[1]) / (a_hw[1] * b_hw[0]) - 1.0)


def working_size(image_hw: tuple[int, int], model_hw: tuple[int, int]) -> tuple[int, int]:
    """(H // k, W // k) with k the largest integer keeping it at least ``model_hw`` (k >= 1):
    1408x1408 for a 700x700 model -> 704x704; 2160x3840 for 532x952 -> 540x960."""
    k = max(1, min(image_hw[0] // model_hw[0], image_hw[1] // model_hw[1]))
    return image_hw[0] // k, image_hw[1] // k


def working_image(rgb: np.ndarray, model_hw: tuple[int, int]) -> np.ndarray:
    """The (H, W, 3) image area-downscaled to :func:`working_size` (``omama data prepare``)."""
    size = working_size(rgb.shape[:2], model_hw)
    if size == rgb.shape[:2]:
        return rgb
    return cv2.resize(rgb, (size[1], size[0]), interpolation=cv2.INTER_AREA)
