"""``omama data masks`` on bad input and beside other runs: a frame whose ground-truth masks
are invalid is skipped and reported (not the whole run), a second run of the same shard is
refused in one line, and shards of two candidate sources cannot mix in one folder."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import numpy as np
import pytest

from omama_train.data import masks as masks_module
from omama_train.data.masks import annotation_source, extract_candidates
from runtime.candidates import Candidates, read_candidates
from runtime.egoexo import Pair, candidate_paths, write_pairs
from runtime.rle import encode
from tests.omama_train.data.test_masks import (
    EGO,
    EGO_HW,
    EXO,
    FRAMES,
    VISIBLE,
    _report,
    _run_cli,
    _write_take,
)

ARGS = ["--direction", "exo2ego", "--from-annotations", "--no-progress"]


@pytest.fixture()
def root(tmp_path) -> Path:
    """test_masks' two takes: destination (ego) frames take_a 0, 5, 10 and take_b 0, whose
    image is missing."""
    root = tmp_path / "root"
    _write_take(root, "take_a", VISIBLE, {EGO: FRAMES, EXO: FRAMES})
    _write_take(root, "take_b", {"red mug_0": {EGO: (0,), EXO: (0,)}}, {EXO: (0,)})
    (root / "split.json").write_text(json.dumps({"test": ["take_a", "take_b"]}))
    pairs = [Pair("take_a", obj, EGO, EXO, f) for obj in VISIBLE for f in FRAMES]
    pairs.append(Pair("take_b", "red mug_0", EGO, EXO, 0))
    write_pairs(root / "dataset_jsons" / "test_exoego_pairs.json", pairs, root)
    return root


def corrupt(root: Path, take: str, obj: str, cam: str, frame: int, rle: dict) -> None:
    path = root / "processed" / take / "annotation.json"
    annotation = json.loads(path.read_text())
    annotation["masks"][obj][cam][str(frame)] = rle
    path.write_text(json.dumps(annotation))


def test_a_frame_with_an_invalid_mask_is_skipped_and_reported(root, capsys, caplog):
    # take_a ego frame 0: counts short of the size; frame 5: a mask of half the video's size.
    short = {"size": [128, 128], "counts": encode(np.ones((128, 127), np.uint8))["counts"]}
    corrupt(root, "take_a", "blue box_1", EGO, 0, short)
    corrupt(root, "take_a", "red mug_0", EGO, 5, encode(np.ones((64, 64), np.uint8)))
    with caplog.at_level(logging.WARNING):
        code, out, err = _run_cli(["--root", str(root), *ARGS], capsys)
    assert code == 0, err
    assert "1 written" in out and "2 skipped for invalid masks" in out

    report = _report(root)
    assert report["written"] == 1 and report["missing_images"] == [f"take_b/{EGO}/0"]
    skipped = {entry["frame"]: entry["problem"] for entry in report["invalid_masks"]}
    assert list(skipped) == [f"take_a/{EGO}/0", f"take_a/{EGO}/5"]
    assert (
        "object 'blue box_1', camera aria01_214-1, frame 0: RLE counts cover"
        in skipped[f"take_a/{EGO}/0"]
    )
    assert "frame 5: mask is 64x64 px" in skipped[f"take_a/{EGO}/5"]
    assert all("processed/take_a/annotation.json" in p for p in skipped.values())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and f"take_a/{EGO}/0" in warnings[0], warnings
    assert "processed/take_a/annotation.json" in warnings[0]
    # Nothing was written for the skipped frames; the good one is complete.
    for frame, written in ((0, False), (5, False), (10, True)):
        masks_file, _ = candidate_paths(root, "test", "exo2ego", "take_a", EGO, frame)
        assert masks_file.exists() == written
    assert read_candidates(
        *candidate_paths(root, "test", "exo2ego", "take_a", EGO, 10)
    ).size_hw == (EGO_HW)


def test_a_shard_left_without_any_candidates_fails_with_its_summary(root, capsys):
    invalid = {"size": [128, 128], "counts": "x"}
    for frame in (0, 5, 10):
        corrupt(root, "take_a", "red mug_0", EGO, frame, invalid)
    code, out, err = _run_cli(["--root", str(root), *ARGS], capsys)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1, lines
    assert "no frame of this shard has candidates: all 4 were skipped" in lines[0]
    assert "(3 with invalid masks, 1 missing image)" in lines[0]
    assert "masks_report_test_exo2ego.json" in lines[0]
    assert [e["frame"] for e in _report(root)["invalid_masks"]] == [
        f"take_a/{EGO}/{f}" for f in (0, 5, 10)
    ]


def test_a_second_run_of_the_same_shard_is_refused(root, capsys, monkeypatch):
    started, release = threading.Event(), threading.Event()
    make = masks_module.annotation_candidates

    def held(*args):
        if threading.current_thread().name == "first":
            started.set()
            release.wait(timeout=60)
        return make(*args)

    monkeypatch.setattr(masks_module, "annotation_candidates", held)
    codes: list[int] = []
    first = threading.Thread(
        target=lambda: codes.append(_run_cli(["--root", str(root), *ARGS], capsys)[0]),
        name="first",
    )
    first.start()
    try:
        assert started.wait(timeout=60)
        code, _, err = masks_module_cli(root, ["--shard", "0/1"], capsys)
        lines = err.strip().splitlines()
        assert code == 1 and len(lines) == 1, lines
        assert "Masks_TEST_EXO2EGO is being written by another omama command" in lines[0]
        assert lines[0].endswith("wait for it to finish"), lines[0]  # the folder follows --root
        code, _, err = masks_module_cli(root, ["--shard", "1/2"], capsys)
        assert code == 0, err  # another shard of the same folder is welcome
    finally:
        release.set()
        first.join(timeout=60)
    assert codes == [0]


def masks_module_cli(root: Path, extra: list[str], capsys) -> tuple[int, str, str]:
    return _run_cli(["--root", str(root), *ARGS, *extra], capsys)


def test_shards_of_two_sources_cannot_mix_in_one_folder(root, monkeypatch):
    """Shard 0 (ground truth) is held between checking the folder's source and recording
    it; shard 1 (another source) starts then: one of them must be refused."""
    checked, b_done = threading.Event(), threading.Event()
    check = masks_module.check_source

    def held_check(out_dir, source):
        check(out_dir, source)
        if threading.current_thread().name == "a":
            checked.set()
            b_done.wait(timeout=2)  # B may be waiting on A: then A goes on after 2 s

    monkeypatch.setattr(masks_module, "check_source", held_check)
    errors: dict[str, str] = {}

    def run(name, maker, source, shard):
        try:
            extract_candidates(root, "test", "exo2ego", maker, shard=shard, progress=False,
                               source=source)  # fmt: skip
        except masks_module.OmamaError as exc:
            errors[name] = str(exc)
        finally:
            if name == "b":
                b_done.set()

    other = {"mode": "fastsam", "weights_name": "FastSAM-x.pt"}
    empty = lambda frame, image: Candidates.empty(image.shape[:2])  # noqa: E731
    a = threading.Thread(
        target=run, args=("a", annotation_source(root), {"mode": "annotations"}, (0, 2)), name="a"
    )
    b = threading.Thread(target=run, args=("b", empty, other, (1, 2)), name="b")
    a.start()
    assert checked.wait(timeout=60)
    b.start()
    b.join(timeout=60)
    a.join(timeout=60)
    assert (
        list(errors) == ["b"] and "holds candidates made by {'mode': 'annotations'}" in errors["b"]
    )
    recorded = json.loads((root / "Masks_TEST_EXO2EGO" / "candidates_source.json").read_text())
    assert recorded == {"mode": "annotations"}
