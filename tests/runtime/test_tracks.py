"""Query tracks of ``omama-run video``: PNG folders, JSON and annotation.json, and their errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

from runtime import rle  # noqa: E402
from runtime.errors import OmamaError  # noqa: E402
from runtime.tracks import load_tracks, read_mask_png  # noqa: E402
from tests.runtime.assets import EXO  # noqa: E402


def test_tracks_from_png_folders_json_and_annotation(tmp_path, assets):
    import cv2

    one = tmp_path / "mug"
    one.mkdir()
    mask = np.zeros((20, 30), np.uint8)
    mask[5:10, 3:9] = 1
    cv2.imwrite(str(one / "4.png"), mask * 255)
    cv2.imwrite(str(one / "7.png"), np.zeros((20, 30), np.uint8))
    (one / "notes.txt").write_text("ignored")
    tracks = load_tracks([one])
    assert tracks.names == ["mug"] and tracks.frames() == [4, 7]
    np.testing.assert_array_equal(tracks.tracks[0].mask(4), mask)
    assert tracks.tracks[0].mask(5) is None
    # RGBA: the alpha channel is the mask
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[2:4, 2:4, 3] = 255
    cv2.imwrite(str(tmp_path / "a.png"), rgba)
    assert read_mask_png(tmp_path / "a.png").sum() == 4

    several = tmp_path / "objects"
    for name in ("cup", "pan"):
        (several / name).mkdir(parents=True)
        cv2.imwrite(str(several / name / "0.png"), mask * 255)
    assert load_tracks([several]).names == ["cup", "pan"]
    assert load_tracks([several], objects=["pan"]).names == ["pan"]

    per_frame = tmp_path / "knife.json"
    per_frame.write_text(json.dumps({"3": rle.encode(mask)}))
    per_object = tmp_path / "many.json"
    per_object.write_text(json.dumps({"fork": {"1": rle.encode(mask), "2": rle.encode(mask)}}))
    tracks = load_tracks([per_frame, per_object])
    assert tracks.names == ["knife", "fork"] and tracks.frames() == [1, 2, 3]
    np.testing.assert_array_equal(tracks.tracks[1].mask(2), mask)

    ann = load_tracks([assets.annotation], src_cam=EXO)
    assert ann.cams() == [EXO] and ann.takes() == [assets.take]
    assert len(ann) == 4 and ann.frames() == [0, 2, 4]
    assert load_tracks([assets.annotation], objects=["cyan book_2"], src_cam=EXO).names == [
        "cyan book_2"
    ]


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "query track not found"),
        ("empty_dir", "holds no per-frame masks"),
        ("no_cam", "name the source camera with --src-cam"),
        ("bad_cam", "has no masks in camera 'cam09'"),
        ("bad_object", "has no object 'sofa'"),
        ("duplicate", "comes from two tracks"),
        ("not_tracks", "is neither"),
        ("bad_frame", "non-integer frame key"),
        ("bad_json", "not readable JSON"),
    ],
)
def test_track_errors_are_one_clear_line(case, message, tmp_path, assets):
    mask_rle = rle.encode(np.ones((4, 4), np.uint8))
    specs, objects, cam = [tmp_path / "x.json"], (), None
    if case == "missing":
        specs = [tmp_path / "nope"]
    elif case == "empty_dir":
        (tmp_path / "d").mkdir()
        specs = [tmp_path / "d"]
    elif case == "no_cam":
        specs = [assets.annotation]
    elif case == "bad_cam":
        specs, cam = [assets.annotation], "cam09"
    elif case == "bad_object":
        specs, objects, cam = [assets.annotation], ["sofa"], EXO
    elif case == "duplicate":
        (tmp_path / "x.json").write_text(json.dumps({"0": mask_rle}))
        specs = [tmp_path / "x.json", tmp_path / "x.json"]
    elif case == "not_tracks":
        (tmp_path / "x.json").write_text(json.dumps({"a": 1}))
    elif case == "bad_frame":
        (tmp_path / "x.json").write_text(json.dumps({"obj": {"first": mask_rle}}))
    else:
        (tmp_path / "x.json").write_text("{nope")
    with pytest.raises(OmamaError, match=message):
        load_tracks(specs, objects, cam)


def test_unreadable_png_names_the_file(tmp_path):
    bad = tmp_path / "3.png"
    bad.write_bytes(b"not a png")
    track = load_tracks([tmp_path]).tracks[0]
    with pytest.raises(OmamaError, match=f"cannot read mask {bad}"):
        track.mask(3)


def test_a_query_mask_with_more_than_two_values_is_thresholded_with_one_warning(
    tmp_path, caplog, monkeypatch
):
    import cv2

    from runtime import tracks

    monkeypatch.setattr(tracks, "_warned_not_binary", [])
    binary = np.zeros((6, 8), np.uint8)
    binary[1:4, 2:6] = 255
    soft = binary.copy()
    soft[1, 2] = 128  # an anti-aliased edge pixel
    for name, image in (("binary.png", binary), ("soft.png", soft), ("soft2.png", soft)):
        cv2.imwrite(str(tmp_path / name), image)
    with caplog.at_level("WARNING", logger="runtime.tracks"):
        assert read_mask_png(tmp_path / "binary.png").tolist() == (binary > 0).tolist()
        assert not caplog.records
        assert read_mask_png(tmp_path / "soft.png").tolist() == (soft > 0).tolist()
        read_mask_png(tmp_path / "soft2.png")
    (record,) = caplog.records  # once per process
    assert "soft.png has 3 values" in record.getMessage()
    assert "every non-zero pixel counts as the object" in record.getMessage()
