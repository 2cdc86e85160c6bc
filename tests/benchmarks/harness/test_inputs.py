"""The synthetic frame pairs every bench worker rebuilds."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.common import ellipse_mask
from benchmarks.harness.inputs import synthetic_pairs
from runtime.errors import OmamaError


def test_synthetic_pairs_are_deterministic_and_consistent():
    first = synthetic_pairs((30, 50), (40, 40), 2, 3, num_candidates=8, seed=5)
    again = synthetic_pairs((30, 50), (40, 40), 2, 3, num_candidates=8, seed=5)
    for pair, twin in zip(first, again, strict=True):
        assert np.array_equal(pair.src_rgb, twin.src_rgb)
        assert np.array_equal(pair.candidates.masks, twin.candidates.masks)
        assert pair.src_rgb.shape == (30, 50, 3) and pair.dst_rgb.shape == (40, 40, 3)
        assert len(pair.queries) == 3 and all(q.shape == (30, 50) and q.any() for q in pair.queries)
        assert len(pair.candidates) == 8 and pair.candidates.size_hw == (40, 40)
        for k in range(3):
            assert np.array_equal(pair.candidates.masks[pair.target_index[k]], pair.targets[k])
        union = np.sum(pair.queries, axis=0)
        assert union.max() == 1  # objects do not overlap
    other = synthetic_pairs((30, 50), (40, 40), 1, 3, num_candidates=8, seed=6)
    assert not np.array_equal(other[0].dst_rgb, first[0].dst_rgb)
    with pytest.raises(OmamaError, match="at least one pair"):
        synthetic_pairs((30, 50), (40, 40), num_pairs=0, objects_per_frame=3)


def test_ellipse_mask():
    mask = ellipse_mask((9, 11), 4, 5, 2, 3)
    assert mask.dtype == np.uint8 and mask.shape == (9, 11)
    assert mask[4, 5] == 1 and mask[4, 8] == 1 and mask[4, 9] == 0 and mask[7, 5] == 0
    assert np.array_equal(mask, mask[::-1, ::-1])  # symmetric about its centre
