"""``omama eval``: reproduction of the published numbers of tests/fixtures, the report, the CLI, the
results/GT files and the gallery."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from benchmarks.reference_eval import ref_evaluate
from omama_train.cli import build_app
from runtime import rle
from runtime.clikit import run_app
from runtime.errors import OmamaError
from runtime.evaluate import evaluate, evaluate_files, evaluate_report
from runtime.gallery import render_panel, select_observations, write_gallery
from runtime.results import (
    add_gt_annotation,
    add_prediction,
    load_gt,
    load_results,
    new_gt,
    new_results,
    results_takes,
    validate_results,
    write_results,
)

EGO, EXOS = "aria01_214-1", ("cam01", "cam02")
SEED_NAMES = ("baseline", "finetuned")


def _circle(shape_hw, center_xy, radius_px):
    m = np.zeros(shape_hw, np.uint8)
    cv2.circle(m, (int(center_xy[0]), int(center_xy[1])), int(radius_px), 1, -1)
    return m


def synthetic(direction="exo2ego", n_takes=2, seed=0, perfect=False):
    """Tiny GT + results: ego GT 80x80, exo GT 60x100, predictions at 40x40 (ego) or
    30x50 (exo); some frames not visible in the destination."""
    rng = np.random.default_rng(seed)
    gt, results = new_gt(), new_results(direction)
    shapes = {EGO: (80, 80), "cam01": (60, 100), "cam02": (60, 100)}
    pred_shapes = {EGO: (40, 40), "cam01": (30, 50), "cam02": (30, 50)}
    for t in range(n_takes):
        take = f"take{t}"
        for o in range(3):
            obj = f"obj{o}"
            for frame in (0, 30, 60, 90):
                for cam in (EGO, *EXOS):
                    h, w = shapes[cam]
                    visible = not (cam != EGO and frame == 60 and o == 1) and not (
                        cam == EGO and frame == 90 and o == 2
                    )
                    c = (w / 2 + 10 * o + frame / 30, h / 2 + rng.integers(-3, 4))
                    mask = _circle(shapes[cam], c, 5 + 3 * o) if visible else None
                    add_gt_annotation(gt, take, obj, cam, frame, mask)
                src_dst = [(exo, EGO) if direction == "exo2ego" else (EGO, exo) for exo in EXOS]
                for src, dst in src_dst:
                    ph, pw = pred_shapes[dst]
                    dst_rle = gt["annotations"][take]["masks"][obj][dst].get(str(frame))
                    if perfect and dst_rle is not None:
                        from runtime import rle

                        pred = cv2.resize(
                            rle.decode(dst_rle), (pw, ph), interpolation=cv2.INTER_NEAREST
                        )
                    elif rng.random() < 0.15:
                        pred = np.zeros((ph, pw), np.uint8)
                    else:
                        c = (rng.integers(5, pw - 5), rng.integers(5, ph - 5))
                        pred = _circle((ph, pw), c, rng.integers(1, 8))
                    add_prediction(
                        results, take, obj, src, dst, frame, pred, float(rng.uniform(0.3, 0.9))
                    )
    # O-MaMa writes confidences as one-element lists: mix both forms.
    for take in results[next(iter(results))]["results"].values():
        for per_key in take["masks"]["obj0"].values():
            for entry in per_key.values():
                entry["confidence"] = [entry["confidence"]]
    return gt, results


# ----------------------------------------------------------------------------- fixture


@pytest.mark.parametrize("name", SEED_NAMES)
def test_fixture_reproduces_published_metrics(eval_fixture_dir, name):
    reported = json.loads((eval_fixture_dir / f"reported_metrics_{name}.json").read_text())
    report = evaluate_files(
        eval_fixture_dir / "exo2egoGT.json",
        eval_fixture_dir / f"predictions_{name}.json",
        "exo2ego",
        workers=1,
    )
    for key, value in reported["aggregated_metrics"].items():
        assert report["aggregated_metrics"][key] == pytest.approx(value, abs=1e-9), key
    ours = report["per_observation"]
    for key, values in reported["per_observation_metrics"].items():
        assert ours[key] == values, key  # same values in the same order
    assert report["counts"]["observations"] == 32 == report["counts"]["gt_visible"]


def test_fixture_egoexo4d_protocol_is_close_but_different(eval_fixture_dir):
    gt = eval_fixture_dir / "exo2egoGT.json"
    pred = eval_fixture_dir / "predictions_baseline.json"
    omama = evaluate_files(gt, pred, "exo2ego", "omama", workers=1)["aggregated_metrics"]
    official = evaluate_files(gt, pred, "exo2ego", "egoexo4d", workers=1)["aggregated_metrics"]
    for key in ("iou", "shape_acc", "location_score"):
        assert official[key] != omama[key]
        assert abs(official[key] - omama[key]) < 0.015, key
    assert official["balanced_acc"] == omama["balanced_acc"] == 1.0


# ----------------------------------------------------------------------------- CLI


def _eval_cli(capsys, gt, pred, direction, *options):
    args = ["eval", "--gt", gt, "--pred", pred, "--direction", direction, *options]
    code = run_app(build_app(), [str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_writes_the_json_report(eval_fixture_dir, tmp_path, capsys):
    out = tmp_path / "metrics.json"
    code, stdout, _ = _eval_cli(
        capsys,
        eval_fixture_dir / "exo2egoGT.json",
        eval_fixture_dir / "predictions_finetuned.json",
        "exo2ego",
        "--out",
        out,
        "--per-observation",
        "--workers",
        "1",
    )
    assert code == 0
    assert "0.5388" in stdout and "balanced_acc" in stdout and "By GT object size" in stdout
    assert "hand cream tube_29" in stdout  # --per-observation lines
    report = json.loads(out.read_text())
    expected = {"iou", "iou_std", "shape_acc", "location_score", "balanced_acc"}
    assert set(report["aggregated_metrics"]) == expected
    assert report["counts"]["observations"] == 32
    assert len(report["per_observation"]["iou_per_obs"]) == 32
    assert report["per_observation"]["observation_per_obs"][0][:2] == [
        "take",
        "adhesive bandage pack_35",
    ]
    sizes = report["breakdowns"]["gt_size"]["bins"]
    assert sum(b["gt_visible"] for b in sizes.values()) == 32
    assert list(report["breakdowns"]["dst_cam"]) == ["aria02_214-1"]
    assert sum(report["iou_histogram"]["counts"]) == 32


def test_cli_missing_object_is_one_line_naming_it(eval_fixture_dir, tmp_path, capsys):
    preds = json.loads((eval_fixture_dir / "predictions_baseline.json").read_text())
    del preds["exo-ego"]["results"]["take"]["masks"]["spoon_27"]
    bad = tmp_path / "preds.json"
    bad.write_text(json.dumps(preds))
    code, _, err = _eval_cli(capsys, eval_fixture_dir / "exo2egoGT.json", bad, "exo2ego")
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "'spoon_27'" in lines[0]


@pytest.mark.parametrize("pixels", [-1, +1])
def test_cli_refuses_a_prediction_whose_counts_do_not_cover_its_size(
    eval_fixture_dir, tmp_path, capsys, pixels
):
    """pycocotools would read past the counts (or ignore the rest) and give an IoU that
    changes from run to run: the RLE is refused, naming the observation."""
    preds = json.loads((eval_fixture_dir / "predictions_baseline.json").read_text())
    frames = preds["exo-ego"]["results"]["take"]["masks"]["spoon_27"]
    pair = next(iter(frames))
    frame = next(iter(frames[pair]))
    entry = frames[pair][frame]
    h, w = entry["pred_mask"]["size"]
    entry["pred_mask"] = rle.encode(np.ones((h, w + pixels), np.uint8))
    entry["pred_mask"]["size"] = [h, w]  # counts for h x (w +- 1) pixels, size h x w
    bad = tmp_path / "preds.json"
    bad.write_text(json.dumps(preds))
    code, _, err = _eval_cli(capsys, eval_fixture_dir / "exo2egoGT.json", bad, "exo2ego")
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("eval:")]
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error:")
    assert "'spoon_27'" in lines[0] and f"frame {frame}" in lines[0]
    assert f"RLE counts cover {h * (w + pixels)} pixels but its size {h}x{w}" in lines[0]


def test_cli_wrong_direction_says_which_one(eval_fixture_dir, capsys):
    code, _, err = _eval_cli(
        capsys,
        eval_fixture_dir / "exo2egoGT.json",
        eval_fixture_dir / "predictions_baseline.json",
        "ego2exo",
    )
    assert code == 1 and "--direction exo2ego" in err


def test_cli_gallery_without_root(eval_fixture_dir, tmp_path, capsys):
    gallery = tmp_path / "gallery"
    code, stdout, _ = _eval_cli(
        capsys,
        eval_fixture_dir / "exo2egoGT.json",
        eval_fixture_dir / "predictions_baseline.json",
        "exo2ego",
        "--workers",
        "1",
        "--gallery",
        gallery,
        "--gallery-per-group",
        "2",
    )
    assert code == 0 and "gallery written" in stdout
    sheet = cv2.imread(str(gallery / "contact_sheet.png"))
    hist = cv2.imread(str(gallery / "iou_histogram.png"))
    assert sheet is not None and sheet.shape[0] > 3 * 256
    assert hist is not None
    panels = sorted(p.name for p in (gallery / "panels").iterdir())
    assert panels == [f"{g}_{k}.png" for g in ("best", "median", "worst") for k in (1, 2)]
    page = (gallery / "index.html").read_text()
    assert "contact_sheet.png" in page and "masks are drawn alone" in page


# ----------------------------------------------------------------------------- synthetic


@pytest.mark.parametrize("direction", ["exo2ego", "ego2exo"])
def test_synthetic_matches_reference_port(direction):
    gt, results = synthetic(direction)
    takes = results_takes(results, direction)
    ours = evaluate_report(gt["annotations"], takes, direction, workers=1)
    ref = ref_evaluate(gt["annotations"], takes, direction)
    for key, values in ref["per_observation"].items():
        assert ours["per_observation"][key] == values, key
    for key, value in ref["aggregated_metrics"].items():
        assert ours["aggregated_metrics"][key] == pytest.approx(value, abs=1e-12)
    counts = ours["counts"]
    # 2 takes x (3 objects x 4 frames x 2 exo cams - 2 without a source mask); 2 per take
    # are not visible in the destination.
    assert counts["observations"] == 44
    assert counts["gt_not_visible"] == 4
    assert counts["gt_visible"] + counts["gt_not_visible"] == counts["observations"]
    dst = ours["breakdowns"]["dst_cam"]
    assert list(dst) == ([EGO] if direction == "exo2ego" else list(EXOS))


def test_process_pool_gives_the_same_report():
    gt, results = synthetic(n_takes=3, seed=1)
    takes = results_takes(results, "exo2ego")
    one = evaluate_report(gt["annotations"], takes, "exo2ego", workers=1)
    two = evaluate_report(gt["annotations"], takes, "exo2ego", workers=2)
    one.pop("elapsed_s"), two.pop("elapsed_s")
    assert one == two


def test_temporal_consistency_of_perfect_predictions():
    gt, results = synthetic(seed=2, perfect=True)
    report = evaluate_report(
        gt["annotations"], results_takes(results, "exo2ego"), "exo2ego", workers=1
    )
    temporal = report["temporal_consistency"]
    assert temporal["pairs"] > 0 and temporal["median_frame_gap"] == 30
    # Predictions are the GT at the same size, so they change exactly as the GT does.
    assert temporal["pred_iou"] == pytest.approx(temporal["gt_iou"], abs=1e-12)
    assert report["aggregated_metrics"]["iou"] == pytest.approx(1.0, abs=1e-6)


def test_size_terciles_split_the_visible_observations():
    gt, results = synthetic(seed=3)
    report = evaluate_report(
        gt["annotations"], results_takes(results, "exo2ego"), "exo2ego", workers=1
    )
    sizes = report["breakdowns"]["gt_size"]
    q1, q2 = sizes["thresholds_area_fraction"]
    assert 0 < q1 <= q2 < 1
    bins = sizes["bins"]
    assert sum(b["gt_visible"] for b in bins.values()) == report["counts"]["gt_visible"]
    assert all(b["gt_visible"] > 0 for b in bins.values())


# ----------------------------------------------------------------------------- files


def test_results_round_trip_and_validation(tmp_path):
    gt, results = synthetic()
    path = tmp_path / "preds.json"
    write_results(path, results)
    takes = load_results(path, "exo2ego")
    assert validate_results(gt["annotations"], takes, "exo2ego") == 44
    assert isinstance(takes["take0"]["masks"]["obj1"][f"cam01_{EGO}"]["30"]["confidence"], float)
    assert len(takes["take0"]["masks"]["obj0"][f"cam01_{EGO}"]["30"]["confidence"]) == 1
    assert takes["take0"]["subsample_idx"] == ["0", "30", "60", "90"]

    del takes["take1"]["masks"]["obj2"][f"cam02_{EGO}"]["60"]
    with pytest.raises(OmamaError, match="no frame 60 for object 'obj2'.*take 'take1'"):
        validate_results(gt["annotations"], takes, "exo2ego")
    del takes["take1"]
    with pytest.raises(OmamaError, match="no take 'take1'"):
        evaluate(gt["annotations"], takes, "exo2ego", workers=1)
    takes["take1"] = {"masks": {}}
    with pytest.raises(OmamaError, match="no object 'obj0' in take 'take1'"):
        validate_results(gt["annotations"], takes, "exo2ego")


def test_add_prediction_checks_the_direction():
    results = new_results("exo2ego")
    with pytest.raises(OmamaError, match="do not fit"):
        add_prediction(results, "t", "o", EGO, "cam01", 0, np.zeros((4, 4), np.uint8), 0.9)


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(OmamaError, match="not found"):
        load_gt(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(OmamaError, match="not readable JSON"):
        load_results(broken, "exo2ego")
    (tmp_path / "nogt.json").write_text("{}")
    with pytest.raises(OmamaError, match="no 'annotations'"):
        load_gt(tmp_path / "nogt.json")


# ----------------------------------------------------------------------------- gallery


def test_gallery_draws_frames_from_the_processed_root(tmp_path):
    gt, results = synthetic()
    takes = results_takes(results, "exo2ego")
    report = evaluate_report(gt["annotations"], takes, "exo2ego", workers=1)
    items = select_observations(report, 1)
    assert [it.group for it in items] == ["best", "median", "worst"]
    assert items[0].iou >= items[1].iou >= items[2].iou
    item = items[0]
    colours = {item.src_cam: (0, 0, 255), item.dst_cam: (255, 0, 0)}  # BGR red / blue
    for cam, colour in colours.items():
        path = tmp_path / "root" / "processed" / item.take / cam / f"{int(item.frame)}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), np.full((90, 160, 3), colour, np.uint8))
    panel = render_panel(item, gt["annotations"], takes, "omama", tmp_path / "root")
    src_px, dst_px = panel[100, 10].astype(int), panel[100, 256 + 6 + 10].astype(int)
    assert src_px[2] > 200 and src_px[0] < 60  # red source frame
    assert dst_px[0] > 200 and dst_px[2] < 60  # blue destination frame
    paths = write_gallery(tmp_path / "g", report, gt["annotations"], takes, root=tmp_path / "root")
    assert all(p.is_file() for p in paths.values())
    assert "masks are drawn alone" not in paths["html"].read_text()
