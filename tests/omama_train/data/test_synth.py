"""Synthetic Ego-Exo4D takes: layout, relations format, exact masks, videos, determinism, CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import av
import numpy as np
import pytest

from omama_train.cli import build_app
from omama_train.data.lzstring import decompress_from_encoded_uri_component
from omama_train.data.synth import assign_splits, synthesize
from omama_train.data.synth_scene import EGO_CAM, EXO_CAMS, SMALL, build_take, take_uid
from runtime import rle
from runtime.clikit import run_app
from runtime.egoexo import SPLITS
from runtime.errors import OmamaError

# Short takes keep the suite fast; the head's pan sweep spans the take whatever its length.
FRAMES, EVERY, TAKES, SEED = 10, 3, 3, 0
ANNOTATED = [0, 3, 6, 9]


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth")
    summary = synthesize(out, TAKES, small=True, seed=SEED, frames=FRAMES, annotate_every=EVERY)
    return out, summary


@pytest.fixture(scope="module")
def relations(synth) -> dict[str, dict]:
    """All takes of all relations files, by take uid."""
    out, _ = synth
    takes = {}
    for split in SPLITS:
        data = json.loads((out / "annotations" / f"relations_{split}.json").read_text())
        assert set(data) == {"annotations"}
        takes.update(data["annotations"])
    return takes


def _video(out: Path, take_name: str, cam: str) -> Path:
    return out / "takes" / take_name / "frame_aligned_videos" / f"{cam}.mp4"


def _decode_all(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def _mask(entry: dict) -> np.ndarray:
    counts = decompress_from_encoded_uri_component(entry["encodedMask"])
    return rle.decode({"size": [entry["height"], entry["width"]], "counts": counts})


def test_layout_split_and_meta(synth, relations):
    out, summary = synth
    split = json.loads((out / "split.json").read_text())
    assert list(split) == list(SPLITS)
    assert [len(split[s]) for s in SPLITS] == [1, 1, 1]
    uids = [take_uid(SEED, i) for i in range(TAKES)]
    assert sorted(sum(split.values(), [])) == sorted(uids) == sorted(relations)
    assert re.fullmatch(
        r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", uids[0]
    )

    meta = json.loads((out / "synth_meta.json").read_text())
    assert meta["recipe"]["seed"] == SEED and meta["recipe"]["frames"] == FRAMES
    assert [t["take_uid"] for t in meta["takes"]] == uids
    for take_meta in meta["takes"]:
        cams = list(take_meta["cams"])
        assert cams[0] == EGO_CAM and 1 <= len(cams) - 1 <= 2
        assert cams[1:] == list(EXO_CAMS[: len(cams) - 1])
        folder = out / "takes" / take_meta["take_name"] / "frame_aligned_videos"
        assert sorted(p.name for p in folder.iterdir()) == sorted(f"{c}.mp4" for c in cams)
        assert uids.index(take_meta["take_uid"]) == int(take_meta["take_name"][-3:])
        assert take_meta["take_uid"] in split[take_meta["split"]]
        assert 3 <= len(take_meta["objects"]) <= 6
    assert summary["videos_written"] == sum(len(t["cams"]) for t in meta["takes"])
    assert summary["splits"] == {"train": 1, "val": 1, "test": 1}


def test_relations_format_and_mask_sizes(synth, relations):
    out, summary = synth
    n_masks = 0
    for uid, take in relations.items():
        assert set(take) == {"take_name", "scenario", "object_masks"}
        assert take["take_name"].startswith("synth_tabletop_")
        names = list(take["object_masks"])
        assert all(re.fullmatch(r"[a-z]+ [a-z]+_\d+", n) for n in names)
        colours = [n.split()[0] for n in names]
        assert len(set(colours)) == len(colours)  # distinct colours within a take
        for cams in take["object_masks"].values():
            for cam, record in cams.items():
                assert set(record) == {"annotated_frames", "annotation"}
                assert record["annotated_frames"] == ANNOTATED
                assert set(record["annotation"]) <= {str(f) for f in ANNOTATED}
                with av.open(str(_video(out, take["take_name"], cam))) as container:
                    stream = container.streams.video[0]
                    size = (stream.width, stream.height)
                assert size == (SMALL.ego_size_px if cam == EGO_CAM else SMALL.exo_size_px)
                for entry in record["annotation"].values():
                    assert set(entry) == {"width", "height", "encodedMask"}
                    assert (entry["width"], entry["height"]) == size
                    mask = _mask(entry)
                    assert mask.shape == (size[1], size[0]) and mask.any()
                    n_masks += 1
        assert uid
    assert n_masks == summary["masks"] > 0


def test_masks_are_exactly_the_rendered_object_pixels(synth, relations):
    out, _ = synth
    take = build_take(SEED, 0, small=True, frames=FRAMES, annotate_every=EVERY)
    record = relations[take.take_uid]["object_masks"]
    for cam in take.cam_names:
        for frame in (0, 6):
            _, ids = take.render(cam, frame)
            for obj in take.objects:
                entry = record[obj.name][cam]["annotation"].get(str(frame))
                expected = ids == obj.instance
                if entry is None:
                    assert not expected.any()
                else:
                    assert np.array_equal(_mask(entry).astype(bool), expected)


def test_objects_leave_the_ego_view_and_appear_in_both_views(synth, relations):
    _, summary = synth
    hidden_ego, both = 0, 0
    for take in relations.values():
        for cams in take["object_masks"].values():
            ego_frames = set(cams[EGO_CAM]["annotation"])
            hidden_ego += len(ANNOTATED) - len(ego_frames)
            for cam, record in cams.items():
                if cam != EGO_CAM:
                    both += len(ego_frames & set(record["annotation"]))
    assert hidden_ego == summary["ego_not_visible"] > 0  # visibility 0 happens
    assert both > 0  # the same object is annotated in ego and exo at the same frame


def test_objects_keep_their_colours_across_views():
    take = build_take(SEED, 1, small=True, frames=FRAMES, annotate_every=EVERY)
    exo = take.cam_names[1]
    ego_rgb, ego_ids = take.render(EGO_CAM, 0)
    exo_rgb, exo_ids = take.render(exo, 0)
    seen = [o for o in take.objects if (ego_ids == o.instance).sum() > 50]
    seen = [o for o in seen if (exo_ids == o.instance).sum() > 50]
    assert len(seen) >= 2
    ego_mean = {o.name: ego_rgb[ego_ids == o.instance].mean(0) for o in seen}
    exo_mean = {o.name: exo_rgb[exo_ids == o.instance].mean(0) for o in seen}
    for obj in seen:  # each object's exo colour is nearest to its own ego colour
        dist = {n: np.linalg.norm(exo_mean[obj.name] - m) for n, m in ego_mean.items()}
        assert min(dist, key=dist.get) == obj.name


def test_videos_have_every_frame_and_are_frame_accurate(synth):
    out, _ = synth
    take = build_take(SEED, 0, small=True, frames=FRAMES, annotate_every=EVERY)
    for cam in take.cam_names:
        path = _video(out, take.take_name, cam)
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            assert stream.average_rate == 30
            assert stream.codec_context.name == "h264"
        decoded = _decode_all(path)
        assert len(decoded) == FRAMES
        rendered, _ = take.render(cam, 6)
        diff = np.abs(decoded[6].astype(np.int16) - rendered).mean()
        assert diff < 6.0, f"{cam}: decoded frame 6 differs from the render by {diff:.2f}"
    # The ego camera moves: frame 6 of the video is the render of frame 6, not a neighbour.
    decoded = _decode_all(_video(out, take.take_name, EGO_CAM))[6].astype(np.int16)
    diffs = [np.abs(decoded - take.render(EGO_CAM, f)[0]).mean() for f in (5, 6, 7)]
    assert diffs[1] < 0.5 * min(diffs[0], diffs[2])


def test_same_seed_same_json_and_resume(tmp_path):
    def run(folder: str) -> dict:
        return synthesize(tmp_path / folder, 1, small=True, seed=7, frames=3, annotate_every=2)

    def files(folder: str) -> dict[str, bytes]:
        names = ["split.json", "synth_meta.json", "annotations/relations_test.json"]
        return {n: (tmp_path / folder / n).read_bytes() for n in names}

    first, second = run("a"), run("b")
    assert first["videos_written"] == second["videos_written"] > 0
    assert files("a") == files("b")
    # One take goes to test; the other splits are listed empty and get no relations file.
    assert json.loads(files("a")["split.json"])["val"] == []
    assert not (tmp_path / "a" / "annotations" / "relations_val.json").exists()
    # Another seed gives another take.
    assert build_take(8, 0, small=True).describe() != build_take(7, 0, small=True).describe()

    again = run("a")  # same recipe: the videos are kept, the JSON is the same
    assert again["videos_kept"] == first["videos_written"] and again["videos_written"] == 0
    assert files("a") == files("b")


def test_assign_splits():
    assert assign_splits(1) == ["test"]
    assert assign_splits(2) == ["train", "test"]
    for n in range(3, 12):
        splits = assign_splits(n)
        assert len(splits) == n and all(splits.count(s) >= 1 for s in SPLITS)
        assert splits.count("train") >= splits.count("test")
    with pytest.raises(OmamaError):
        assign_splits(0)


def test_render_rejects_unknown_camera_and_frame():
    take = build_take(SEED, 0, small=True, frames=4, annotate_every=2)
    with pytest.raises(OmamaError, match="no camera"):
        take.render("cam09", 0)
    with pytest.raises(OmamaError, match="outside"):
        take.render(EGO_CAM, 4)


def test_cli_synth(tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["data", "synth", "--out", str(out), "--num-takes", "1", "--small"]
    code = run_app(build_app(), [*args, "--seed", "3", "--frames", "2", "--annotate-every", "1"])
    stdout = capsys.readouterr().out
    assert code == 0
    assert "wrote 1 takes" in stdout and "(train 0, val 0, test 1)" in stdout
    relations = json.loads((out / "annotations" / "relations_test.json").read_text())
    (take,) = relations["annotations"].values()
    for cams in take["object_masks"].values():
        assert cams[EGO_CAM]["annotated_frames"] == [0, 1]
    assert len(_decode_all(_video(out, take["take_name"], EGO_CAM))) == 2

    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = run_app(build_app(), ["data", "synth", "--out", str(blocker), "--num-takes", "1"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.startswith("error:") and "not a folder" in err
