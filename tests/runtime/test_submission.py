"""``omama submit`` and ``omama eval`` on a two-direction submission, on small synthetic GT and
results (ego GT 80x80 -> masks 480x480, exo GT 60x100 -> masks 288x480)."""

from __future__ import annotations

import copy
import json

import cv2
import numpy as np
import pytest

from omama_train.cli import build_app
from runtime import rle
from runtime.clikit import run_app
from runtime.egoexo import is_ego_cam
from runtime.evaluate import evaluate_files
from runtime.metrics import egoexo4d_size
from runtime.results import add_gt_annotation, add_prediction, new_gt, new_results

EGO, EXOS = "aria01_214-1", ("cam01", "cam02")
GT_SIZES = {EGO: (80, 80), "cam01": (60, 100), "cam02": (60, 100)}
FRAMES = (0, 2, 4)
KEYS = {"exo2ego": "exo-ego", "ego2exo": "ego-exo"}


def _circle(shape_hw, center_xy, radius_px):
    m = np.zeros(shape_hw, np.uint8)
    cv2.circle(m, (int(center_xy[0]), int(center_xy[1])), int(radius_px), 1, -1)
    return m


def _visible(take, obj, cam, frame):
    # Some frames not visible in one view; obj1's cam02 frame 4 is not annotated at all.
    return not (obj == "obj1" and frame == 2 and cam == EGO) and not (
        obj == "obj0" and frame == 4 and cam == "cam01"
    )


def synthetic_gt():
    """GT of 2 takes: obj0/obj1 in every camera, and obj2 only in the ego camera (the
    official evaluator requires its key but never scores it)."""
    gt = new_gt()
    for t in range(2):
        take = f"take{t}"
        for o in range(2):
            obj = f"obj{o}"
            for cam in (EGO, *EXOS):
                h, w = GT_SIZES[cam]
                for frame in FRAMES:
                    if obj == "obj1" and cam == "cam02" and frame == 4:
                        continue  # annotated in the source (ego) only: required, never scored
                    mask = _circle((h, w), (w / 2 + 5 * o + frame, h / 2), 6 + 2 * o)
                    add_gt_annotation(
                        gt, take, obj, cam, frame, mask if _visible(take, obj, cam, frame) else None
                    )
        add_gt_annotation(gt, take, "obj2", EGO, 0, _circle(GT_SIZES[EGO], (40, 40), 5))
    return gt


def synthetic_results(gt, direction, seed=0):
    """Predictions for the observations the evaluator scores (as ``omama-run`` writes them),
    masks at the 480 rule's size; obj0's confidences as one-element lists (O-MaMa's form)."""
    rng = np.random.default_rng(seed)
    results = new_results(direction)
    for take, entry in gt["annotations"].items():
        for obj, cams in entry["masks"].items():
            if not any(is_ego_cam(c) for c in cams) or all(is_ego_cam(c) for c in cams):
                continue
            for exo in EXOS:
                src, dst = (exo, EGO) if direction == "exo2ego" else (EGO, exo)
                annotated = entry["annotated_frames"][obj][dst]
                for frame in cams.get(src, {}):
                    if int(frame) not in annotated:
                        continue
                    h, w = egoexo4d_size(GT_SIZES[dst])
                    c = (rng.integers(20, w - 20), rng.integers(20, h - 20))
                    mask = _circle((h, w), c, rng.integers(10, 60))
                    conf = float(rng.uniform(0.2, 0.9))
                    add_prediction(results, take, obj, src, dst, frame, mask, conf)
    for take in results[KEYS[direction]]["results"].values():
        for per_key in take["masks"]["obj0"].values():
            for e in per_key.values():
                e["confidence"] = [e["confidence"]]
    return results


@pytest.fixture
def files(tmp_path):
    gt = synthetic_gt()
    paths = {"gt": tmp_path / "gt.json"}
    paths["gt"].write_text(json.dumps(gt))
    for direction in KEYS:
        paths[direction] = tmp_path / f"{direction}.json"
        paths[direction].write_text(json.dumps(synthetic_results(gt, direction)))
    return gt, paths


def _cli(capsys, *args):
    code = run_app(build_app(), [str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _submit(capsys, paths, out, gt=True, **replaced):
    args = ["submit", "--out", out]
    for direction in KEYS:
        args += [f"--{direction}", replaced.get(direction, paths[direction])]
        if gt:
            args += [f"--gt-{direction}", paths["gt"]]
    return _cli(capsys, *args)


def _official_structure(gt, submission, direction):
    """The structural rules of the challenge's evaluator, restated: exactly the GT's takes and
    objects, every (object, exo camera) pair, every source-view GT frame with pred_mask and
    a float confidence, and masks at the 480 rule's size where the destination is visible."""
    block = submission[KEYS[direction]]
    assert block["version"] == "xx" and block["challenge"] == "xx"
    results = block["results"]
    assert sorted(results) == sorted(gt["annotations"])
    scored = 0
    for take, gt_take in gt["annotations"].items():
        pred = results[take]
        assert isinstance(pred["subsample_idx"], list)
        assert sorted(pred["masks"]) == sorted(gt_take["masks"])
        for obj, cams in gt_take["masks"].items():
            ego = [c for c in cams if is_ego_cam(c)]
            exo = [c for c in cams if not is_ego_cam(c)]
            if not ego or not exo:
                continue
            for cam in exo:
                src, dst = (cam, ego[0]) if direction == "exo2ego" else (ego[0], cam)
                frames = pred["masks"][obj][f"{src}_{dst}"]
                for frame in cams[src]:
                    entry = frames[frame]
                    assert type(entry["confidence"]) is float
                    assert isinstance(entry["pred_mask"]["counts"], str)
                    if frame in cams.get(dst, {}):
                        expected = egoexo4d_size(tuple(cams[dst][frame]["size"]))
                        assert tuple(entry["pred_mask"]["size"]) == expected
                        assert rle.decode(entry["pred_mask"]).shape == expected
                    scored += int(frame) in gt_take["annotated_frames"][obj][dst]
    return scored


def test_submit_writes_a_two_direction_file_the_official_rules_accept(files, tmp_path, capsys):
    gt, paths = files
    out = tmp_path / "submission.json"
    code, stdout, stderr = _submit(capsys, paths, out)
    assert code == 0, stderr
    submission = json.loads(out.read_text())
    assert sorted(submission) == ["ego-exo", "exo-ego"]
    for direction in KEYS:
        scored = _official_structure(gt, submission, direction)
        assert f"{direction}: 2 takes, 6 objects" in stdout
        assert f"({scored} scored by the evaluator)" in stdout
        original = json.loads(paths[direction].read_text())[KEYS[direction]]["results"]
        written = submission[KEYS[direction]]["results"]
        # obj2 (ego camera only) is added empty in each take, so the object counts match.
        assert written["take0"]["masks"]["obj2"] == {} and "obj2" not in original["take0"]["masks"]
    # obj1's frame 4 is annotated in the ego view only: for ego2exo it is a required source
    # frame of cam02, never scored, so it is added as an empty placeholder.
    filled = submission["ego-exo"]["results"]["take1"]["masks"]["obj1"][f"{EGO}_cam02"]["4"]
    assert filled["confidence"] == 0.0 and rle.area(filled["pred_mask"]) == 0
    assert filled["pred_mask"]["size"] == [288, 480]
    assert "ego2exo: 2 takes, 6 objects, 20 entries (18 scored by the evaluator); 4 required" in (
        stdout
    )
    # The one-element list confidences of obj0 are written as the floats they hold.
    listed = json.loads(paths["exo2ego"].read_text())["exo-ego"]["results"]["take0"]["masks"]
    entry = listed["obj0"][f"cam01_{EGO}"]["0"]
    written = submission["exo-ego"]["results"]["take0"]["masks"]["obj0"][f"cam01_{EGO}"]["0"]
    assert entry["confidence"] == [written["confidence"]]
    assert "12 one-element list confidences written as floats" in stdout


def _drop(path):
    def edit(results):
        node = results
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]

    return edit


def _resize_one(results):
    entry = results["take1"]["masks"]["obj0"][f"cam02_{EGO}"]["2"]
    entry["pred_mask"] = rle.encode(np.ones((448, 448), np.uint8))


BROKEN = {
    "missing take": (_drop(["take1"]), "exo2ego: take 'take1': missing (rule: every take"),
    "missing object": (
        _drop(["take0", "masks", "obj1"]),
        "exo2ego: take 'take0' object 'obj1': missing (rule: every object",
    ),
    "missing camera pair": (
        _drop(["take0", "masks", "obj1", f"cam02_{EGO}"]),
        f"exo2ego: take 'take0' object 'obj1' (cam02_{EGO}): missing (rule: every camera pair",
    ),
    "missing frame": (
        _drop(["take0", "masks", "obj0", f"cam01_{EGO}", "2"]),
        f"exo2ego: take 'take0' object 'obj0' (cam01_{EGO}) frame 2: missing (rule: every "
        "annotated frame",
    ),
    "missing subsample_idx": (
        _drop(["take1", "subsample_idx"]),
        "exo2ego: take 'take1': no 'subsample_idx' list",
    ),
    "wrong mask size": (
        _resize_one,
        f"exo2ego: take 'take1' object 'obj0' (cam02_{EGO}) frame 2: mask is 448x448 but the "
        "official evaluator compares it with the GT (80x80) resized to 480x480 (longer side "
        "480): rerun omama-run with --mask-size submission",
    ),
    "extra take": (
        lambda r: r.__setitem__("take9", copy.deepcopy(r["take0"])),
        "exo2ego: take 'take9': not in the GT (rule: exactly the GT's 2 takes)",
    ),
    "string confidence": (
        lambda r: r["take0"]["masks"]["obj1"][f"cam01_{EGO}"]["0"].__setitem__("confidence", "x"),
        f"exo2ego: take 'take0' object 'obj1' (cam01_{EGO}) frame 0: 'confidence' must be a number",
    ),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_submit_names_the_first_broken_rule_and_writes_nothing(files, tmp_path, capsys, case):
    gt, paths = files
    edit, message = BROKEN[case]
    results = json.loads(paths["exo2ego"].read_text())
    edit(results["exo-ego"]["results"])
    bad = tmp_path / "bad_exo2ego.json"
    bad.write_text(json.dumps(results))
    out = tmp_path / "submission.json"
    code, _, stderr = _submit(capsys, paths, out, exo2ego=bad)
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert code == 1 and len(lines) == 1, stderr
    assert lines[0].startswith("error: " + message), lines[0]
    assert not out.exists() and list(tmp_path.glob("*.tmp*")) == []


def test_submit_one_direction_or_none(files, tmp_path, capsys):
    gt, paths = files
    out = tmp_path / "one.json"
    code, stdout, _ = _cli(capsys, "submit", "--exo2ego", paths["exo2ego"], "--gt-exo2ego",
                           paths["gt"], "--out", out)  # fmt: skip
    assert code == 0 and list(json.loads(out.read_text())) == ["exo-ego"]
    assert "ego2exo: not in this submission" in stdout
    code, _, stderr = _cli(capsys, "submit", "--out", tmp_path / "none.json")
    assert code == 1 and "give --exo2ego RESULTS, --ego2exo RESULTS, or both" in stderr
    code, _, stderr = _cli(capsys, "submit", "--exo2ego", paths["exo2ego"], "--gt-ego2exo",
                           paths["gt"], "--out", tmp_path / "none.json")  # fmt: skip
    assert code == 1 and "--gt-ego2exo without --ego2exo results" in stderr
    assert not (tmp_path / "none.json").exists()


def test_submit_without_gt_checks_what_it_can_and_says_what_it_could_not(files, tmp_path, capsys):
    gt, paths = files
    out = tmp_path / "submission.json"
    code, stdout, _ = _submit(capsys, paths, out, gt=False)
    assert code == 0 and sorted(json.loads(out.read_text())) == ["ego-exo", "exo-ego"]
    assert "not checked without the GT:" in stdout
    assert "exo2ego: that every take, object, camera pair and annotated frame is present" in stdout
    # Masks at the model's size (448x448) cannot be right without the GT either.
    results = json.loads(paths["exo2ego"].read_text())
    _resize_one(results["exo-ego"]["results"])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(results))
    code, _, stderr = _submit(capsys, paths, tmp_path / "no.json", gt=False, exo2ego=bad)
    assert code == 1 and f"(cam02_{EGO}) frame 2: mask is 448x448" in stderr
    assert "--mask-size submission" in stderr
    assert not (tmp_path / "no.json").exists()


def _summary(stdout):
    return [
        ln for ln in stdout.splitlines() if not ln.startswith(("evaluated in", "report written"))
    ]


def test_eval_of_a_submission_prints_both_directions_as_the_two_files_do(files, tmp_path, capsys):
    gt, paths = files
    sub = tmp_path / "submission.json"
    assert _submit(capsys, paths, sub)[0] == 0
    out = tmp_path / "report.json"
    code, stdout, stderr = _cli(capsys, "eval", "--pred", sub, "--gt-exo2ego", paths["gt"],
                                "--gt-ego2exo", paths["gt"], "--protocol", "egoexo4d",
                                "--workers", "1", "--out", out)  # fmt: skip
    assert code == 0, stderr
    separate = []
    for direction in KEYS:
        code, single, _ = _cli(capsys, "eval", "--pred", paths[direction], "--gt", paths["gt"],
                               "--protocol", "egoexo4d", "--workers", "1")  # fmt: skip
        assert code == 0
        separate += _summary(single) + [""]
        expected = evaluate_files(paths["gt"], paths[direction], direction, "egoexo4d", 1)
        report = json.loads(out.read_text())[direction]
        assert report["aggregated_metrics"] == expected["aggregated_metrics"]
        assert report["counts"] == expected["counts"]
    assert _summary(stdout) == separate[:-1]
    assert "omama eval: exo2ego, protocol egoexo4d" in stdout
    assert "omama eval: ego2exo, protocol egoexo4d" in stdout


def test_eval_of_a_submission_needs_a_gt_per_direction(files, tmp_path, capsys):
    gt, paths = files
    sub = tmp_path / "submission.json"
    assert _submit(capsys, paths, sub)[0] == 0
    code, _, stderr = _cli(capsys, "eval", "--pred", sub, "--gt", paths["gt"])
    assert code == 1 and "give --gt-exo2ego and --gt-ego2exo" in stderr
    code, _, stderr = _cli(capsys, "eval", "--pred", sub, "--gt-exo2ego", paths["gt"])
    assert code == 1 and "no GT for ego2exo: give --gt-ego2exo" in stderr
    code, stdout, _ = _cli(capsys, "eval", "--pred", sub, "--gt", paths["gt"], "--direction",
                           "ego2exo", "--workers", "1")  # fmt: skip
    assert code == 0 and "omama eval: ego2exo" in stdout and "exo2ego" not in stdout


def test_eval_refuses_a_gt_flag_it_would_ignore(files, tmp_path, capsys):
    gt, paths = files
    sub = tmp_path / "submission.json"
    assert _submit(capsys, paths, sub)[0] == 0
    code, _, stderr = _cli(capsys, "eval", "--pred", sub, "--gt", paths["gt"], "--gt-exo2ego",
                           paths["gt"], "--direction", "exo2ego")  # fmt: skip
    assert code == 1 and "give --gt or --gt-exo2ego / --gt-ego2exo, not both" in stderr
    code, _, stderr = _cli(capsys, "eval", "--pred", sub, "--gt-ego2exo", paths["gt"],
                           "--gt-exo2ego", paths["gt"], "--direction", "exo2ego")  # fmt: skip
    assert code == 1 and "--gt-ego2exo given but ego2exo is not evaluated" in stderr
