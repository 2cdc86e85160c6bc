"""Image files and arrays: the one decoder of frames on disk (OpenCV, no torch), the RGB check."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from runtime.errors import OmamaError


def read_rgb(path: Path) -> np.ndarray:
    """Decoded RGB uint8 (H, W, 3) of the image file ``path``.

    Raises OmamaError naming the file when it is missing or cannot be decoded.
    """
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        reason = "could not be decoded" if Path(path).is_file() else "is missing"
        raise OmamaError(f"image {path} {reason}")
    return np.ascontiguousarray(bgr[:, :, ::-1])


def check_rgb(image: np.ndarray, what: str) -> np.ndarray:
    """``image`` as an array, or an OmamaError naming ``what`` unless it is (H, W, 3) uint8."""
    image = np.asarray(image)
    if (
        image.ndim != 3
        or image.shape[2] != 3
        or image.dtype != np.uint8
        or min(image.shape[:2]) < 1
    ):
        raise OmamaError(
            f"{what} must be an (H, W, 3) uint8 RGB image, got {image.shape} {image.dtype}"
        )
    return image
