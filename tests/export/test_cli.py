"""``omama export``: flags to an export, and the one-line errors."""

from __future__ import annotations

from runtime.manifest import FastSAMSpec, check_artifacts
from tests.export.helpers import run_cli


def test_cli_export_ego2exo_with_measured_matcher_input(ego2exo):
    code, stdout, stderr, out = ego2exo
    assert code == 0, stderr
    manifest = check_artifacts(out)
    assert manifest.direction == "ego2exo"
    assert manifest.views["src"].kind == "ego" and manifest.views["src"].feat_grid == (5, 5)
    assert manifest.fastsam == FastSAMSpec(included=False)
    assert sorted(f.path for f in manifest.files) == [
        "backbone_ego.onnx",
        "backbone_exo.onnx",
        "matcher.onnx",
    ]
    decision = manifest.matcher.input_decision
    assert decision.chosen == manifest.matcher.input in ("weights", "masks")
    assert decision.weights_ms > 0 and decision.masks_ms > 0
    assert decision.masks_input_bytes > decision.weights_input_bytes
    assert f"matcher input: {decision.chosen}" in stdout
    assert "engines: not requested" in stdout
    assert stdout.splitlines()[-1].startswith(f"artifacts: {out} (3 files, ")
    assert "verified (" in stdout.splitlines()[-1]


def test_cli_without_weights_names_each_and_its_source(tmp_path, capsys):
    code, _, err = run_cli(["export", "--out", str(tmp_path / "a")], capsys)
    assert code == 1
    line = err.strip()
    assert line.startswith("error: cannot export without weights") and "\n" not in line
    for needle in (
        "--backbone-weights",
        "dinov2_vitb14_reg4_pretrain.pth",
        "--matcher",
        "official O-MaMa",
        "--fastsam",
        "FastSAM-x.pt",
        "--random-init",
    ):
        assert needle in line
    assert not (tmp_path / "a").exists()
    matcher = tmp_path / "m.pt"
    code, _, err = run_cli(
        [
            "export",
            "--matcher",
            str(matcher),
            "--no-fastsam-export",
            "--backbone-weights",
            str(tmp_path / "b.pth"),
        ],
        capsys,
    )
    assert code == 1 and f"no file at {matcher}" in err and "FastSAM" not in err


def test_cli_refuses_a_bad_choice_in_one_line(tmp_path, capsys):
    code, _, err = run_cli(
        ["export", "--random-init", "--out", str(tmp_path / "a"), "--fastsam-nms", "gpu"], capsys
    )
    assert code == 1
    assert err.strip() == "error: --fastsam-nms must be one of auto, graph, runtime, got 'gpu'"
    assert not (tmp_path / "a").exists()
