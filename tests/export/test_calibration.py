"""int8 calibration data: a prepared root sampled per view across takes, an image folder with
an unreadable file, synthetic frames; the feeds are what the runtime feeds; ``omama export
--int8 --calib ROOT`` records them."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from export.int8.calibration import calibration
from omama_train.models.backbones import BACKBONES
from runtime.clikit import new_app, run_app
from runtime.errors import OmamaError
from runtime.manifest import load_manifest
from runtime.verification.inputs import synthetic_scene
from tests.export.helpers import GRIDS, SMALL

SIZES = {"exo": (56, 84), "ego": (70, 70)}


@pytest.fixture(scope="module")
def prepared_root(tmp_path_factory) -> Path:
    """Three small synthetic takes (train, val, test), prepared."""
    from omama_train.data.prepare import prepare
    from omama_train.data.synth import synthesize

    base = tmp_path_factory.mktemp("calib_synth")
    synthesize(base / "raw", 3, small=True, seed=0, frames=6, annotate_every=2)
    for relations in sorted((base / "raw" / "annotations").glob("relations_*.json")):
        prepare(relations, base / "raw" / "takes", base / "root", progress=False)
    return base / "root"


def test_prepared_root_is_sampled_per_view_from_the_train_takes(prepared_root):
    from runtime.egoexo import ProcessedRoot, is_ego_cam

    index = ProcessedRoot(prepared_root)
    (train,) = index.takes("train")  # 3 annotated frames per camera, 1 ego and 3 exo cameras
    calib = calibration(prepared_root, 6, SIZES, seed=0)
    assert calib.source == "frames" and calib.path == str(prepared_root) and not calib.notes
    for kind in ("ego", "exo"):
        frames = calib.frames[kind]
        assert len(frames) == 3 and len(set(frames)) == 3
        assert all(f.parts[-3] == train for f in frames)  # processed/<take>/<cam>/<frame>.jpg
        assert all(is_ego_cam(f.parts[-2]) == (kind == "ego") for f in frames)
        record = calib.record(kind)
        assert record.frames == {kind: 3} and record.takes == 1 and record.representative
    # Seeded: the same sample again; another seed, another sample of the exo frames.
    assert calibration(prepared_root, 6, SIZES, seed=0).frames == calib.frames
    assert calibration(prepared_root, 6, SIZES, seed=1).frames["exo"] != calib.frames["exo"]
    assert len(calibration(prepared_root, 300, SIZES).frames["ego"]) == 3  # all there are


def test_without_a_train_split_every_take_is_sampled_in_turn(prepared_root, tmp_path):
    import shutil

    root = tmp_path / "root"
    shutil.copytree(prepared_root, root)
    takes = sorted(p.name for p in (root / "processed").iterdir())
    (root / "split.json").write_text(json.dumps({"test": takes}))
    calib = calibration(root, 8, SIZES, seed=0)
    ego_takes = [f.parts[-3] for f in calib.frames["ego"]]
    assert len(ego_takes) == 4 and set(ego_takes[:3]) == set(takes)  # one per take first
    assert calib.record("ego").takes == 3 and calib.record("exo").takes == 3


def test_feeds_are_what_the_pipeline_feeds(prepared_root):
    from runtime.fastsam_post import letterbox
    from runtime.images import read_rgb
    from runtime.preprocess import preprocess_image
    from runtime.sizing import working_image

    calib = calibration(prepared_root, 4, SIZES, seed=0)
    (feed, *_) = calib.backbone_feeds("ego", SIZES["ego"])
    rgb = read_rgb(calib.frames["ego"][0])
    assert rgb.shape[0] > SIZES["ego"][0]  # the runtime's working-image downscale applies
    expected = preprocess_image(working_image(rgb, SIZES["ego"]), SIZES["ego"])[None]
    np.testing.assert_array_equal(feed["image"], expected)
    fastsam = calib.fastsam_feeds("ego", SIZES["ego"], 128)
    np.testing.assert_array_equal(fastsam[0]["images"],
                                  letterbox(working_image(rgb, SIZES["ego"]), 128)[0])  # fmt: skip
    assert len(list(fastsam)) == len(fastsam) == 2  # re-iterable, as NNCF needs


def test_image_folder_skips_unreadable_files_in_one_line(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"frame{i}.png"), synthetic_scene(rng, (60, 90)))
    (tmp_path / "nested").mkdir()
    cv2.imwrite(str(tmp_path / "nested" / "more.jpg"), synthetic_scene(rng, (60, 90)))
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "notes.txt").write_text("ignored")
    calib = calibration(tmp_path, 300, SIZES, seed=0)
    assert calib.source == "images" and len(calib.frames["ego"]) == 4
    assert calib.frames["ego"] == calib.frames["exo"]  # both backbones get every image
    assert calib.notes == ["calibration: skipped 1 of 5 images that could not be read (broken.jpg)"]
    assert calib.record("exo").frames == {"exo": 4} and calib.record("exo").takes is None
    assert len(calibration(tmp_path, 2, SIZES, seed=0).frames["ego"]) <= 2


def test_unusable_calibration_sources_are_one_clear_error(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x")
    with pytest.raises(OmamaError, match=r"none of the 1 calibration images could be read"):
        calibration(tmp_path, 10, SIZES)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(OmamaError, match=r"no images \(\*\.jpg, \*\.png\) and no prepared"):
        calibration(empty, 10, SIZES)
    with pytest.raises(OmamaError, match="expected a prepared root or a folder of images"):
        calibration(tmp_path / "a.jpg", 10, SIZES)


def test_synthetic_frames_are_capped_and_flagged():
    calib = calibration(None, 300, SIZES, seed=0)
    assert calib.source == "synthetic" and len(calib.frames["ego"]) == 16
    assert calib.frames["exo"][0].shape == (*SIZES["exo"], 3)
    assert calib.record("ego").representative is False
    assert len(calib.notes) == 1 and "not representative" in calib.notes[0]


def test_export_int8_with_calib_root_records_frames_and_takes(prepared_root, tmp_path):
    from export.cli import register

    out = tmp_path / "artifacts"
    app = new_app("test")
    register(app)
    argv = ["export", "--random-init", "--int8", "--calib", str(prepared_root),
            "--calib-frames", "6", "--out", str(out), "--no-fastsam-export", "--parity-sets",
            "20", "--matcher-input", "weights"]  # fmt: skip
    stdout, stderr = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(BACKBONES, "dinov2_vits14_reg", SMALL)
        mp.setattr("export.config.RANDOM_GRIDS", dict(GRIDS))
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = run_app(app, argv)
    assert code == 0, stderr.getvalue()
    assert "not representative" not in stdout.getvalue()
    manifest = load_manifest(out)
    for kind in ("exo", "ego"):
        calib = manifest.select(f"backbone_{kind}", "onnx", "int8").quantization.calibration
        assert calib.source == "frames" and calib.path == str(prepared_root)
        assert calib.frames == {kind: 3} and calib.takes == 1 and calib.representative
    assert manifest.verification.passed
