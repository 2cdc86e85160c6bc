"""Mask sizes ``omama submit`` accepts without the GT: exactly those the official 480 rule
(:func:`runtime.metrics.egoexo4d_size`, ``int(W * (1.0 / max(H, W) * 480))``) can produce."""

from __future__ import annotations

import numpy as np
import pytest

from runtime import rle
from runtime.errors import OmamaError
from runtime.metrics import egoexo4d_size
from runtime.results import add_prediction, new_results, results_takes

EGO, EXO = "aria01_214-1", "cam01"


def _results(size_hw, direction="ego2exo"):
    """One take, one object, one prediction of ``size_hw``, as ``omama-run`` writes it."""
    results = new_results(direction)
    src, dst = (EGO, EXO) if direction == "ego2exo" else (EXO, EGO)
    mask = np.zeros(size_hw, np.uint8)
    mask[: size_hw[0] // 2, : size_hw[1] // 2] = 1
    add_prediction(results, "take0", "obj0", src, dst, 0, mask, 0.7)
    return results_takes(results, direction)


def _accepted(size_hw) -> bool:
    from runtime.submission import check_without_gt

    try:
        check_without_gt(_results(size_hw), "ego2exo")
    except OmamaError:
        return False
    return True


def test_a_1080p_frame_off_by_one_is_accepted_at_the_size_the_official_rule_truncates_to():
    # 1919 * (1.0 / 1919 * 480) = 479.99999999999994: the evaluator compares with 269x479.
    assert egoexo4d_size((1079, 1919)) == (269, 479)
    from runtime.submission import check_without_gt

    out, check = check_without_gt(_results((269, 479)), "ego2exo")
    entry = out["take0"]["masks"]["obj0"][f"{EGO}_{EXO}"]["0"]
    assert entry["pred_mask"]["size"] == [269, 479] and check.entries == 1
    assert rle.decode(entry["pred_mask"]).shape == (269, 479)


def test_every_size_the_480_rule_produces_is_accepted_and_only_those():
    produced = set()
    for longer in (960, 1919):  # scales 0.5 (longer side 480) and just under 0.25 (479)
        for shorter in range(1, longer + 1):
            produced |= {egoexo4d_size((shorter, longer)), egoexo4d_size((longer, shorter))}
    for longer in range(1, 2200):  # small frames scale up, large ones down
        for shorter in {1, max(1, longer // 3), longer}:
            size = egoexo4d_size((shorter, longer))
            if min(size) >= 1:  # a 0-px side: the evaluator's own resize of the GT fails
                assert _accepted(size), size
    # Every size that passes is one the rule produces (both orientations).
    for longer in (479, 480):
        for shorter in (1, 2, 100, 269, 270, 478, 479, 480):
            if shorter > longer:
                continue
            for size in ((shorter, longer), (longer, shorter)):
                assert _accepted(size) == (size in produced), size


@pytest.mark.parametrize("size_hw", [(448, 448), (478, 300), (300, 481), (700, 700), (0, 480)])
def test_sizes_no_frame_maps_to_are_refused_in_one_line(size_hw):
    from runtime.submission import check_without_gt

    with pytest.raises(OmamaError) as err:
        check_without_gt(_results(size_hw), "ego2exo")
    message = str(err.value)
    assert "\n" not in message
    assert f"frame 0: mask is {size_hw[0]}x{size_hw[1]}" in message
    assert "--mask-size submission" in message
