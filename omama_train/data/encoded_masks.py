"""Ego-Exo4D's LZString-encoded masks -> COCO RLE, checked without decoding the pixels.

The relations files store each mask as ``{width, height, encodedMask}``, where
``encodedMask`` is a COCO compressed-RLE string compressed with LZString
(``omama_train.data.lzstring``). :func:`decode_encoded_mask` returns the RLE and checks that
its runs cover exactly ``height * width`` pixels (:func:`runtime.rle.rle_runs`).
"""

from __future__ import annotations

from runtime.rle import rle_runs


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
