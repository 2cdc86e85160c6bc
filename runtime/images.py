"""Reading image files: the one decoder of frames on disk (OpenCV, no torch)."""

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
