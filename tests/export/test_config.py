"""``ExportConfig``: validation, missing weights, FastSAM's NMS settings."""

from __future__ import annotations

import pytest

from export.config import ExportConfig, fastsam_settings, missing_weights, validate
from runtime.errors import OmamaError
from runtime.manifest import NmsSettings


def test_missing_weights_is_empty_for_random_init(tmp_path):
    from export.pipeline import export_artifacts

    assert missing_weights(ExportConfig(random_init=True)) == []
    assert len(missing_weights(ExportConfig())) == 3
    assert len(missing_weights(ExportConfig(include_fastsam=False))) == 2
    with pytest.raises(OmamaError, match="drop --matcher or --random-init"):
        export_artifacts(
            ExportConfig(out_dir=tmp_path, random_init=True, matcher_weights=tmp_path / "m.pt"),
            progress=False,
        )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"matcher_input": "both"}, "matcher input must be one of auto, weights, masks"),
        ({"attention": "flash"}, "attention must be one of standard, folded, got 'flash'"),
        ({"opset": 16}, "opset must be at least 17 (LayerNormalization), got 16"),
        ({"fastsam_imgsz": 1000}, "FastSAM image size must be a multiple of 32, got 1000"),
        ({"direction": "ego2ego"}, "ego2ego"),
        ({"parity_sets": 0}, "--parity-sets must be at least 1"),
    ],
)
def test_validate_names_the_bad_value(overrides, message):
    with pytest.raises(OmamaError) as raised:
        validate(ExportConfig(random_init=True, **overrides))
    assert message in str(raised.value)


def test_fastsam_settings_follow_the_weights():
    """The reference's conf 0.4 for real weights; 0.01 for random ones, which score below
    0.013; iou 0.9 and max_det 300 either way."""
    assert fastsam_settings(ExportConfig()) == NmsSettings(0.4, 0.9, 300)
    assert fastsam_settings(ExportConfig(random_init=True)) == NmsSettings(0.01, 0.9, 300)
