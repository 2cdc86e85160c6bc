"""COCO RLE: round trips, and counts that do not cover their size refused before
pycocotools reads them."""

from __future__ import annotations

import numpy as np
import pytest

from runtime import rle
from runtime.errors import OmamaError


def test_round_trip_and_area():
    mask = np.zeros((7, 9), np.uint8)
    mask[2:5, 3:8] = 1
    encoded = rle.encode(mask)
    assert np.array_equal(rle.decode(encoded), mask)
    assert rle.area(encoded) == 15
    listed = {"size": [2, 3], "counts": [1, 2, 3]}  # uncompressed, column-major
    assert rle.area(listed) == 2 and rle.decode(listed).sum() == 2


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"size": [7, 9], "counts": rle.encode(np.ones((7, 8), np.uint8))["counts"]}, "cover 56"),
        ({"size": [7, 9], "counts": rle.encode(np.ones((7, 10), np.uint8))["counts"]}, "cover 70"),
        ({"size": [2, 3], "counts": [1, 2]}, "cover 3 pixels but its size 2x3"),
        ({"size": [2, 3], "counts": [1, -2, 7]}, "non-negative"),
        ({"size": [2, 3], "counts": "\x7f!"}, "not COCO compressed counts"),
        ({"size": [2, 3], "counts": 6}, "string or a list"),
        ({"counts": "6"}, "not an RLE dict"),
    ],
)
def test_counts_that_do_not_fit_are_refused(bad, message):
    with pytest.raises(OmamaError, match=message):
        rle.decode(bad)
    with pytest.raises(OmamaError, match=message):
        rle.area(bad)
