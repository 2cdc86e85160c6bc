"""The report's heading names the random weights' profile when the artifacts record one."""

from __future__ import annotations

from benchmarks.harness.report.markdown import _heading


def _report(**artifacts) -> dict:
    art = {"path": "a", "direction": "exo2ego", "backbone": "dinov2_vitb14_reg",
           "matcher_input": "weights", "fastsam": None, "fastsam_imgsz": 1024,
           "random_init": True} | artifacts  # fmt: skip
    config = {"device": "cpu", "num_pairs": 1, "objects_per_frame": 2, "warmup": 1,
              "repeats": 1, "threads": 1}  # fmt: skip
    return {"artifacts": art, "config": config, "inputs": "synthetic"}


def test_heading_names_the_weight_profile():
    heading = "\n".join(_heading(_report(weight_profile="outlier")))
    assert "accuracy is not. Weight profile: outlier." in heading
    assert "Weight profile" not in "\n".join(_heading(_report()))  # reports without the key
