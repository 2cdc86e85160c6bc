"""Options of ``omama bench``: list flags and range checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.harness.plan import BenchConfig, parse_list, validate_config
from runtime.errors import OmamaError


def test_parse_list():
    assert parse_list("torch, onnxruntime,torch", ("torch", "onnxruntime"), "--b") == [
        "torch",
        "onnxruntime",
    ]
    with pytest.raises(OmamaError, match="--b must be among"):
        parse_list("tensorrt", ("torch",), "--b")
    with pytest.raises(OmamaError, match="at least one"):
        parse_list(" , ", ("torch",), "--b")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("num_pairs", 0, "--num-pairs must be at least 1"),
        ("objects_per_frame", 0, "--objects-per-frame must be at least 1"),
        ("warmup", -1, "--warmup must be at least 0"),
        ("threads", 0, "--threads must be at least 1"),
        ("candidate_source", "sam", "--candidate-source must be one of"),
        ("fastsam_conf", 1.0, r"--fastsam-conf must lie in \[0, 1\)"),
        ("score_frames", 0, "--score-frames must be at least 1"),
    ],
)
def test_validate_config_names_the_flag(field, value, message):
    validate_config(BenchConfig(artifacts=Path("a")))  # the defaults pass
    with pytest.raises(OmamaError, match=message):
        validate_config(BenchConfig(artifacts=Path("a"), **{field: value}))
