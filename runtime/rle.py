"""COCO run-length encoding of binary masks (pycocotools), in the JSON form Ego-Exo4D uses.

An RLE here is ``{"size": [H, W], "counts": str}`` (compressed counts as ASCII text).
Every RLE is checked before pycocotools reads it: counts that do not cover exactly H x W
pixels would make it read past its buffer and give a different mask on every run.
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
    """``{"size": [H, W], "counts": str | bytes | list}`` -> uint8 mask (H, W) with values 0/1.

    Raises OmamaError when the dict is not an RLE or its counts do not cover H x W pixels.
    """
    size, counts = _checked(rle)
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    if isinstance(counts, list):  # uncompressed RLE
        coco = mask_utils.frPyObjects({"size": size, "counts": counts}, size[0], size[1])
    else:
        coco = {"size": size, "counts": counts}
    return mask_utils.decode(coco)


def area(rle: dict) -> int:
    """Number of foreground pixels, without decoding (the RLE checked as :func:`decode`)."""
    size, counts = _checked(rle)
    if isinstance(counts, list):
        return int(sum(counts[1::2]))
    coco = {
        "size": size,
        "counts": counts.encode("ascii") if isinstance(counts, str) else counts,
    }
    return int(mask_utils.area(coco))


def _checked(rle: dict) -> tuple[list[int], str | bytes | list]:
    """([H, W], counts) of ``rle``; OmamaError unless its runs cover exactly H x W pixels."""
    try:
        size = [int(rle["size"][0]), int(rle["size"][1])]
        counts = rle["counts"]
    except (KeyError, TypeError, IndexError, ValueError) as exc:
        raise OmamaError(f"not an RLE dict with 'size' and 'counts': {str(rle)[:80]}") from exc
    if size[0] < 0 or size[1] < 0:
        raise OmamaError(f"RLE size {size[0]}x{size[1]} is negative")
    if isinstance(counts, list):
        if not all(isinstance(c, int) and c >= 0 for c in counts):
            raise OmamaError("RLE counts must be non-negative integers")
        total = sum(counts)
    elif isinstance(counts, (str, bytes)):
        text = counts.decode("ascii", errors="replace") if isinstance(counts, bytes) else counts
        try:
            total = int(rle_runs(text).sum())
        except ValueError as exc:
            raise OmamaError(f"RLE counts are not COCO compressed counts: {exc}") from exc
    else:
        raise OmamaError(f"RLE counts must be a string or a list, not {type(counts).__name__}")
    if total != size[0] * size[1]:
        raise OmamaError(
            f"RLE counts cover {total} pixels but its size {size[0]}x{size[1]} has "
            f"{size[0] * size[1]}"
        )
    return size, counts


def rle_runs(counts: str) -> np.ndarray:
    """Run lengths (int64, alternating background/foreground) of a COCO compressed RLE string.

    Raises ValueError on characters outside the format, truncated values or negative runs.
    Their sum is the pixel count the RLE covers: prepare checks it against ``height * width``
    without decoding the mask (an exo mask is 3840x2160).
    """
    codes = np.frombuffer(counts.encode("ascii", errors="replace"), dtype=np.uint8).astype(np.int64)
    codes -= 48
    if codes.size == 0:
        return np.zeros(0, dtype=np.int64)
    if codes.min() < 0 or codes.max() > 63:
        raise ValueError("characters outside the COCO RLE alphabet")
    more = (codes & 0x20) != 0
    if more[-1]:
        raise ValueError("truncated run value")
    ends = np.flatnonzero(~more)
    starts = np.concatenate([[0], ends[:-1] + 1])
    lengths = ends - starts + 1
    if lengths.max() > 7:  # 7 groups of 5 bits already exceed any image size
        raise ValueError("run value too large")
    value_index = np.repeat(np.arange(ends.size), lengths)
    position = np.arange(codes.size) - np.repeat(starts, lengths)
    values = np.zeros(ends.size, dtype=np.int64)
    np.add.at(values, value_index, (codes & 0x1F) << (5 * position))
    negative = (codes[ends] & 0x10) != 0
    values[negative] -= np.int64(1) << (5 * lengths[negative])
    # From the fourth value on, each run is stored as a difference to the run two before.
    runs = values.copy()
    runs[3::2] = np.cumsum(values[1::2])[1:]
    runs[4::2] = np.cumsum(values[2::2])[1:]
    if (runs < 0).any():
        raise ValueError("negative run length")
    return runs
