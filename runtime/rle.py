"""COCO run-length encoding of binary masks (pycocotools), in the JSON form Ego-Exo4D uses.

An RLE here is ``{"size": [H, W], "counts": str}`` (compressed counts as ASCII text).
"""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils

from runtime.errors import OmamaError


def encode(mask: np.ndarray) -> dict:
    """Binary mask (H, W) of any dtype -> ``{"size": [H, W], "counts": str}``."""
    if mask.ndim != 2:
        raise OmamaError(f"RLE encode expects a 2-D mask, got shape {mask.shape}")
    rle = mask_utils.encode(np.asfortranarray(mask.astype(bool, copy=False).astype(np.uint8)))
    return {
        "size": [int(rle["size"][0]), int(rle["size"][1])],
        "counts": rle["counts"].decode("ascii"),
    }


def decode(rle: dict) -> np.ndarray:
    """``{"size": [H, W], "counts": str | bytes}`` -> uint8 mask (H, W) with values 0/1."""
    try:
        size = [int(rle["size"][0]), int(rle["size"][1])]
        counts = rle["counts"]
    except (KeyError, TypeError, IndexError, ValueError) as exc:
        raise OmamaError(f"not an RLE dict with 'size' and 'counts': {str(rle)[:80]}") from exc
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    if isinstance(counts, list):  # uncompressed RLE
        coco = mask_utils.frPyObjects({"size": size, "counts": counts}, size[0], size[1])
    else:
        coco = {"size": size, "counts": counts}
    return mask_utils.decode(coco)


def area(rle: dict) -> int:
    """Number of foreground pixels, without decoding."""
    counts = rle["counts"]
    coco = {
        "size": list(rle["size"]),
        "counts": counts.encode("ascii") if isinstance(counts, str) else counts,
    }
    return int(mask_utils.area(coco))
