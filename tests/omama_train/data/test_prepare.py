"""``omama data prepare``: LZString -> RLE on real masks, frames, annotation.json, split.json,
resume after an interruption, and the report of corrupt inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omama_train.cli import build_app
from omama_train.data import encoded_masks
from omama_train.data import prepare as prep
from omama_train.data.pairs import make_pairs
from omama_train.data.prepare_report import PrepareReport
from omama_train.data.synth import synthesize
from omama_train.data.synth_scene import build_take
from runtime import rle
from runtime.clikit import run_app
from runtime.egoexo import ProcessedRoot

lzstring = pytest.importorskip("lzstring", reason="the reference LZString encoder (dev extra)")
LZ = lzstring.LZString()

SEED, FRAMES, EVERY = 0, 12, 3
ANNOTATED = [0, 3, 6, 9]
EGO = "aria01_214-1"
IMAGE_SIZES = {"ego": (224, 224), "exo": (126, 224)}  # small synth: 448x448 / 2, 896x504 / 4


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> Path:
    """Three small synthetic takes, plus relations_dev.json holding all of them."""
    base = tmp_path_factory.mktemp("synth")
    synthesize(base, 3, small=True, seed=SEED, frames=FRAMES, annotate_every=EVERY)
    merged: dict[str, dict] = {}
    for path in sorted((base / "annotations").glob("relations_*.json")):
        merged.update(json.loads(path.read_text())["annotations"])
    (base / "annotations" / "relations_dev.json").write_text(json.dumps({"annotations": merged}))
    return base


@pytest.fixture
def work(synth_data, tmp_path) -> Path:
    """A private copy of the synthetic dataset (tests may corrupt it)."""
    shutil.copytree(synth_data, tmp_path / "in")
    return tmp_path / "in"


def relations_of(work: Path) -> dict[str, dict]:
    return json.loads((work / "annotations" / "relations_dev.json").read_text())["annotations"]


def run_prepare(work: Path, out: Path, relations: dict | None = None, **kw) -> PrepareReport:
    path = work / "annotations" / "relations_dev.json"
    if relations is not None:
        path.write_text(json.dumps({"annotations": relations}))
    return prep.prepare(path, work / "takes", out, progress=False, **kw)


def encoded(mask: np.ndarray) -> dict:
    r = rle.encode(mask)
    return {
        "width": r["size"][1],
        "height": r["size"][0],
        "encodedMask": LZ.compressToEncodedURIComponent(r["counts"]),
    }


# LZString -> RLE -------------------------------------------------------------------------------


def test_encoded_masks_of_real_data_decode_to_their_rle(eval_fixture_dir):
    gt = json.loads((eval_fixture_dir / "exo2egoGT.json").read_text())
    rles = [
        r
        for take in gt["annotations"].values()
        for per_cam in take["masks"].values()
        for per_frame in per_cam.values()
        for r in per_frame.values()
    ]
    assert len(rles) == 64
    for r in rles:
        h, w = r["size"]
        entry = {
            "width": w,
            "height": h,
            "encodedMask": LZ.compressToEncodedURIComponent(r["counts"]),
        }
        out = encoded_masks.decode_encoded_mask(entry)
        assert out == {"size": [h, w], "counts": r["counts"]}
        assert rle.rle_runs(out["counts"])[1::2].sum() == rle.area(r)
    # A real mask announced with another size is refused instead of decoded out of bounds.
    r = rles[0]
    wrong = {
        "width": r["size"][1] - 1,
        "height": r["size"][0],
        "encodedMask": LZ.compressToEncodedURIComponent(r["counts"]),
    }
    with pytest.raises(ValueError, match="RLE covers"):
        encoded_masks.decode_encoded_mask(wrong)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 40), st.integers(1, 40), st.integers(0, 2**32 - 1))
def test_rle_runs_match_pycocotools(h, w, seed):
    mask = (np.random.default_rng(seed).random((h, w)) < 0.3).astype(np.uint8)
    runs = rle.rle_runs(rle.encode(mask)["counts"])
    flat = mask.flatten(order="F")  # COCO runs go down the columns
    expected, value, n = [], 0, 0
    for pixel in flat:
        if pixel != value:
            expected.append(n)
            value, n = pixel, 0
        n += 1
    expected.append(n)
    assert runs.tolist() == expected
    assert runs.sum() == h * w


@pytest.mark.parametrize("counts", ["\x7f", "0o", "a"])
def test_rle_runs_refuse_foreign_or_truncated_text(counts):
    with pytest.raises(ValueError):
        rle.rle_runs(counts)


# Prepare ------------------------------------------------------------------------------------


def test_prepare_on_synthetic_takes(work, tmp_path):
    out = tmp_path / "root"
    report = run_prepare(work, out)
    relations = relations_of(work)
    assert [t.status for t in report.takes] == ["prepared"] * 3
    assert not [p for t in report.takes for p in t.problems]
    index = ProcessedRoot(out)
    assert index.splits() == ["dev"] and index.takes("dev") == sorted(relations)
    n_frames = 0
    for uid, entry in relations.items():
        ann = index.annotation(uid)
        assert ann["take_name"] == entry["take_name"] and ann["scenario"] == entry["scenario"]
        assert ann["subsample_idx"] == ANNOTATED
        assert index.ego_cam(uid) == EGO and index.objects(uid) == sorted(entry["object_masks"])
        for obj, per_cam in entry["object_masks"].items():
            for cam, cam_entry in per_cam.items():
                # Annotated frames stay, with or without a mask (not visible: no mask).
                assert index.frames(uid, obj, cam) == cam_entry["annotated_frames"]
                assert index.mask_frames(uid, obj, cam) == sorted(map(int, cam_entry["annotation"]))
                for frame, src in cam_entry["annotation"].items():
                    counts = LZ.decompressFromEncodedURIComponent(src["encodedMask"])
                    expected = {"size": [src["height"], src["width"]], "counts": counts}
                    assert index.mask_rle(uid, obj, cam, frame) == expected
        for cam in index.cams(uid):
            files = sorted(index.take_dir(uid).joinpath(cam).glob("*.jpg"))
            assert sorted(int(p.stem) for p in files) == ANNOTATED  # exactly these frames
            view = "ego" if cam == EGO else "exo"
            for path in files:
                assert cv2.imread(str(path)).shape == (*IMAGE_SIZES[view], 3)
            n_frames += len(files)
            video = ann["prepare"]["video_size_px"][cam]
            assert video == ([448, 448] if view == "ego" else [504, 896])
        assert index.missing_images(uid) == []
    assert report.frames_written == n_frames
    # Invisible objects (annotated ego frames without a mask) become pairs too.
    pairs = make_pairs(index, "dev", "exo2ego").pairs
    assert any(index.mask_rle(p.take, p.obj, EGO, p.frame) is None for p in pairs)
    assert any(index.mask_rle(p.take, p.obj, EGO, p.frame) is not None for p in pairs)
    saved = json.loads((out / "prepare_report.json").read_text())
    assert saved["splits"]["dev"]["prepared"] == 3
    assert saved["splits"]["dev"]["masks_kept"] == saved["splits"]["dev"]["masks_in"] > 0


def test_frames_are_picked_by_index(work, tmp_path):
    """Each JPEG is the rendered frame of its index (the ego camera moves every frame)."""
    out = tmp_path / "root"
    prep.prepare(work / "annotations" / "relations_train.json", work / "takes", out, progress=False)
    take = build_take(SEED, 0, small=True, frames=FRAMES, annotate_every=EVERY)
    index = ProcessedRoot(out)
    for cam, size, candidates in (
        (EGO, (224, 224), range(FRAMES)),
        (take.cam_names[1], (224, 126), ANNOTATED),
    ):
        rendered = {
            f: cv2.resize(take.render(cam, f)[0], size, interpolation=cv2.INTER_AREA).astype(float)
            for f in candidates
        }
        for frame in ANNOTATED:
            jpg = cv2.imread(str(index.image_path(take.take_uid, cam, frame)))[:, :, ::-1]
            errors = {f: np.abs(jpg - r).mean() for f, r in rendered.items()}
            assert errors[frame] < 3.0  # JPEG q95 of a near-lossless video
            assert min(errors, key=errors.get) == frame


def test_prepare_resumes_after_an_interruption(work, tmp_path, monkeypatch):
    out = tmp_path / "root"
    relations = relations_of(work)
    first, second, _ = sorted(relations)
    cams_first = len(next(iter(relations[first]["object_masks"].values())))
    real_extract = prep.extract_frames
    calls = []

    def extract_then_stop(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == cams_first + 2:  # second take, second camera: half-written
            raise KeyboardInterrupt
        return real_extract(*args, **kwargs)

    monkeypatch.setattr(prep, "extract_frames", extract_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run_prepare(work, out)
    assert (out / "processed" / first / "annotation.json").is_file()
    assert not (out / "processed" / second / "annotation.json").exists()
    assert any((out / "processed" / second).rglob("*.jpg"))
    assert json.loads((out / "split.json").read_text()) == {"dev": [first]}
    saved = json.loads((out / "prepare_report.json").read_text())["splits"]["dev"]
    assert (saved["takes"], saved["takes_in_relations"]) == (1, 3)

    monkeypatch.setattr(prep, "extract_frames", real_extract)
    report = run_prepare(work, out)
    assert [t.status for t in report.takes] == ["skipped", "prepared", "prepared"]
    assert report.takes[0].frames_written == 0 and report.takes[0].masks_kept > 0
    assert json.loads((out / "split.json").read_text()) == {"dev": sorted(relations)}

    # A missing frame makes a take incomplete, changed inputs make it stale: both are redone.
    jpg = out / "processed" / first / EGO / "6.jpg"
    jpg.unlink()
    changed = json.loads(json.dumps(relations))
    changed[second]["scenario"] = "Cooking"
    report = run_prepare(work, out, changed)
    assert [t.status for t in report.takes] == ["prepared", "prepared", "skipped"]
    assert jpg.is_file() and ProcessedRoot(out).annotation(second)["scenario"] == "Cooking"
    report = run_prepare(work, out, relations)
    assert [t.status for t in report.takes] == ["skipped", "prepared", "skipped"]


def test_a_resumed_run_leaves_no_temporaries_of_a_killed_one(work, tmp_path):
    """A kill during an atomic write leaves its temporary (``.NAME.XXXX.SUFFIX``); the next
    run removes those of the takes it redoes and of the root's files, so the processed root
    ends up file for file as an uninterrupted run writes it."""
    out = tmp_path / "root"
    run_prepare(work, out)
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    take = out / "processed" / sorted(relations_of(work))[1]
    (take / "annotation.json").unlink()  # killed before its annotation: the take is redone
    leftovers = [
        take / EGO / ".6.jpg.k1ll3d.jpg",
        take / ".annotation.json.x7y8z9.json",
        out / ".split.json.q1w2e3.json",
        out / ".prepare_report.json.a1s2d3.json",
    ]
    for path in leftovers:
        path.write_bytes(b"half written")
    report = run_prepare(work, out)
    assert [t.status for t in report.takes] == ["skipped", "prepared", "skipped"]
    assert sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file()) == files


def test_prepare_reports_corrupt_inputs_and_keeps_the_rest(work, tmp_path):
    relations = relations_of(work)
    a, b, _ = sorted(relations)
    objects = relations[a]["object_masks"]
    exo = sorted(next(iter(objects.values())))[1]
    visible = [
        (obj, f)
        for obj, per_cam in objects.items()
        for f in map(int, per_cam[EGO]["annotation"])
        if str(f) in per_cam[exo]["annotation"]
    ]
    (o1, f1), (o2, f2), (o3, f3) = visible[:3]
    objects[o1][EGO]["annotation"][str(f1)]["encodedMask"] = "!!not-lzstring!!"
    objects[o2][exo]["annotation"][str(f2)]["width"] += 1  # its RLE no longer fits
    objects[o3][EGO]["annotation"][str(f3)] = encoded(np.ones((440, 448), np.uint8))
    objects[o3][EGO]["annotated_frames"].append(30)  # beyond the 12-frame video
    objects[o3][EGO]["annotation"]["30"] = encoded(np.ones((448, 448), np.uint8))
    b_exo = sorted(next(iter(relations[b]["object_masks"].values())))[1]
    (work / "takes" / relations[b]["take_name"] / "frame_aligned_videos" / f"{b_exo}.mp4").unlink()
    relations["no-such-take"] = {**relations[a], "take_name": "not_on_disk"}

    out = tmp_path / "root"
    report = run_prepare(work, out, relations)
    by_take = {t.take: t for t in report.takes}
    assert by_take[a].status == by_take[b].status == "prepared"
    assert by_take["no-such-take"].status == "failed"
    problems = {(p.kind, p.obj, p.cam): p for p in by_take[a].problems}
    assert set(problems) == {
        ("undecodable_mask", o1, EGO),
        ("undecodable_mask", o2, exo),
        ("size_mismatch", o3, EGO),
        ("frame_beyond_video", None, EGO),
    }
    assert problems[("undecodable_mask", o1, EGO)].frames == [f1]
    assert "outside the alphabet" in problems[("undecodable_mask", o1, EGO)].detail
    assert "RLE covers" in problems[("undecodable_mask", o2, exo)].detail
    assert problems[("size_mismatch", o3, EGO)].frames == [f3]
    assert "mask 448x440, video 448x448" in problems[("size_mismatch", o3, EGO)].detail
    beyond = problems[("frame_beyond_video", None, EGO)]
    assert beyond.frames == [30] and "12 frames" in beyond.detail
    assert (beyond.masks_dropped, beyond.annotated_dropped) == (1, 1)
    assert by_take[a].masks_kept == by_take[a].masks_in - 4
    (missing,) = by_take[b].problems
    assert (missing.kind, missing.cam, missing.frames) == ("missing_video", b_exo, ANNOTATED)
    assert missing.masks_dropped > 0 and missing.annotated_dropped > 0

    index = ProcessedRoot(out)
    # Left-out masks leave annotated_frames too (else they would read as "not visible").
    assert f1 not in index.frames(a, o1, EGO) and f1 in index.frames(a, o1, exo)
    assert f2 not in index.frames(a, o2, exo) and f2 in index.frames(a, o2, EGO)
    assert index.frames(a, o3, EGO) == [f for f in ANNOTATED if f != f3]
    assert b_exo not in index.cams(b) and index.missing_images(a) == []
    assert index.takes("dev") == sorted(set(relations) - {"no-such-take"})  # not the failed
    saved = json.loads((out / "prepare_report.json").read_text())
    assert saved["takes"]["no-such-take"]["status"] == "failed"
    assert len(saved["takes"][a]["problems"]) == 4
    text = report.summary_text()
    assert "4 takes, 3 prepared, 0 already complete (skipped), 1 failed" in text
    assert f"{a} {o3}/{EGO} [frames {f3}]: size_mismatch: 1 mask(s) left out" in text
    # The stored report survives a resume that skips the take.
    again = run_prepare(work, out, relations)
    assert {t.take: (t.status, len(t.problems)) for t in again.takes if t.take == a} == {
        a: ("skipped", 4)
    }


def test_prepare_in_parallel_matches_sequential(work, tmp_path):
    run_prepare(work, tmp_path / "seq")
    report = run_prepare(work, tmp_path / "par", workers=2)
    assert [t.status for t in report.takes] == ["prepared"] * 3
    for uid in relations_of(work):
        seq = ProcessedRoot(tmp_path / "seq").annotation(uid)
        par = ProcessedRoot(tmp_path / "par").annotation(uid)
        assert seq["masks"] == par["masks"] and seq["annotated_frames"] == par["annotated_frames"]


def test_prepare_cli_summary_and_errors(work, tmp_path, capsys):
    out = tmp_path / "root"
    relations = work / "annotations" / "relations_test.json"
    args = ["data", "prepare", "--relations", str(relations), "--takes", str(work / "takes")]
    assert run_app(build_app(), [*args, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "split test: 1 takes, 1 prepared, 0 already complete (skipped), 0 failed" in text
    assert f"report: {out / 'prepare_report.json'}" in text
    assert run_app(build_app(), [*args, "--out", str(out)]) == 0
    assert "0 prepared, 1 already complete" in capsys.readouterr().out
    synth_split = json.loads((work / "split.json").read_text())
    assert json.loads((out / "split.json").read_text()) == {"test": synth_split["test"]}

    other = tmp_path / "relations.json"
    shutil.copy(relations, other)
    code = run_app(
        build_app(),
        [
            "data",
            "prepare",
            "--relations",
            str(other),
            "--takes",
            str(work / "takes"),
            "--out",
            str(out),
        ],
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "--split" in err[0]
