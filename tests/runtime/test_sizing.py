"""The working-size rule and the aspect-ratio comparison."""

from __future__ import annotations

from runtime.pipeline import sigmoid  # noqa: E402
from runtime.sizing import aspect_mismatch, working_size  # noqa: E402


def test_working_size_reproduces_the_prepare_then_patch_chain():
    assert working_size((1408, 1408), (700, 700)) == (704, 704)
    assert working_size((2160, 3840), (532, 952)) == (540, 960)
    assert working_size((704, 704), (700, 700)) == (704, 704)
    assert working_size((540, 960), (532, 952)) == (540, 960)
    assert working_size((300, 300), (700, 700)) == (300, 300)  # smaller: no downscale
    assert working_size((448, 448), (70, 70)) == (74, 74)
    assert aspect_mismatch((540, 960), (532, 952)) < 0.01
    assert aspect_mismatch((704, 704), (532, 952)) > 0.5
    assert sigmoid(0.0) == 0.5 and abs(sigmoid(-800.0)) < 1e-300 and sigmoid(800.0) == 1.0
