"""Ego-Exo4D's LZString-encoded masks -> COCO RLE, checked without decoding the pixels.

The relations files store each mask as ``{width, height, encodedMask}``, where
``encodedMask`` is a COCO compressed-RLE string compressed with LZString
(``omama_train.data.lzstring``). :func:`decode_encoded_mask` returns the RLE and checks that
its runs cover exactly ``height * width`` pixels (:func:`rle_runs`, pure numpy).
"""

from __future__ import annotations

import numpy as np


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


def decode_encoded_mask(annotation: dict) -> dict:
    """Relations ``{width, height, encodedMask}`` -> RLE ``{"size": [H, W], "counts": str}``.

    Raises ValueError (or OmamaError from the codec) when the entry cannot be a mask of
    that size.
    """
    from omama_train.data.lzstring import decompress_from_encoded_uri_component

    try:
        height, width = int(annotation["height"]), int(annotation["width"])
        encoded = annotation["encodedMask"]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"entry lacks width/height/encodedMask: {exc}") from exc
    if height <= 0 or width <= 0:
        raise ValueError(f"size {width}x{height} is empty")
    counts = decompress_from_encoded_uri_component(encoded)
    if not counts.isascii():
        raise ValueError("decoded text is not an ASCII RLE")
    total = int(rle_runs(counts).sum())
    if total != height * width:
        raise ValueError(f"RLE covers {total} pixels, width x height = {width}x{height}")
    return {"size": [height, width], "counts": counts}
