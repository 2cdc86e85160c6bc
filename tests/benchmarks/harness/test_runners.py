"""The similarity matrix from profile-limited matcher calls."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.harness.runners import assemble_blocks
from runtime.errors import OmamaError


def test_assemble_blocks_tiles_profile_limited_calls():
    full = np.arange(15, dtype=np.float32).reshape(3, 5)
    blocks = [
        full[0:2, 0:2],
        full[0:2, 2:4],
        full[0:2, 4:5],
        full[2:3, 0:2],
        full[2:3, 2:4],
        full[2:3, 4:5],
    ]
    assert np.array_equal(assemble_blocks(blocks, 3, 5), full)
    assert np.array_equal(assemble_blocks([full], 3, 5), full)
    with pytest.raises(OmamaError, match="only part"):
        assemble_blocks(blocks[:4], 3, 5)
    with pytest.raises(OmamaError, match="do not tile"):
        assemble_blocks([full, full], 3, 5)
