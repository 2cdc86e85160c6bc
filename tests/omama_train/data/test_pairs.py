"""``omama data pairs`` (all pairs, frame and object sampling) and ``omama data gt``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from omama_train.cli import build_app
from omama_train.data.gt import build_gt
from omama_train.data.pairs import PairSampler, all_pairs, kept_count, make_pairs
from runtime import rle
from runtime.clikit import run_app
from runtime.egoexo import Pair, ProcessedRoot, read_pairs, write_pairs
from runtime.errors import OmamaError
from runtime.metrics import track_order

EGO = "aria01_214-1"


def rle_at(frame: int) -> dict:
    m = np.zeros((8, 8), np.uint8)
    m[frame % 8, :] = 1
    return rle.encode(m)


def take_annotation(masks: dict, annotated: dict) -> dict:
    return {
        "masks": {
            obj: {cam: {str(f): rle_at(f) for f in frames} for cam, frames in per_cam.items()}
            for obj, per_cam in masks.items()
        },
        "annotated_frames": annotated,
    }


def write_root(root: Path, takes: dict[str, dict], splits: dict[str, list[str]]) -> Path:
    for take, annotation in takes.items():
        (root / "processed" / take).mkdir(parents=True)
        (root / "processed" / take / "annotation.json").write_text(json.dumps(annotation))
    (root / "split.json").write_text(json.dumps(splits))
    return root


SMALL = take_annotation(
    masks={
        "cup": {EGO: [1, 2, 3], "cam01": [1, 3, 4], "cam02": [2]},
        "pan": {"cam01": [1]},
    },
    annotated={
        "cup": {EGO: [1, 2, 3, 4], "cam01": [1, 2, 3, 4], "cam02": [2, 5]},
        "pan": {EGO: [1], "cam01": [1]},
    },
)
N_OBJECTS, N_FRAMES = 10, 60
EXOS = ("cam01", "cam02", "cam03")
BIG = take_annotation(
    masks={f"obj{o}": {cam: range(N_FRAMES) for cam in (EGO, *EXOS)} for o in range(N_OBJECTS)},
    annotated={
        f"obj{o}": {cam: list(range(N_FRAMES)) for cam in (EGO, *EXOS)} for o in range(N_OBJECTS)
    },
)


@pytest.fixture
def root(tmp_path) -> Path:
    return write_root(
        tmp_path / "root",
        {"ta": SMALL, "big": BIG},
        {"train": ["big", "ta"], "test": ["ta", "gone"]},
    )


def test_pairs_need_a_query_and_an_annotated_destination(root):
    index = ProcessedRoot(root)
    p = lambda obj, exo, f: Pair("ta", obj, EGO, exo, f)  # noqa: E731
    # exo2ego: exo mask + ego annotated; "pan" is not visible in the ego view, still a pair.
    assert all_pairs(index, ["ta"], "exo2ego") == [
        p("cup", "cam01", 1),
        p("cup", "cam01", 3),
        p("cup", "cam01", 4),
        p("cup", "cam02", 2),
        p("pan", "cam01", 1),
    ]
    # ego2exo: ego mask + exo annotated (frame 2 of cam01 is annotated, not visible).
    assert all_pairs(index, ["ta"], "ego2exo") == [
        p("cup", "cam01", 1),
        p("cup", "cam01", 2),
        p("cup", "cam01", 3),
        p("cup", "cam02", 2),
    ]
    result = make_pairs(index, "test", "exo2ego")
    assert len(result.pairs) == result.total == 5 and result.missing_takes == ["gone"]
    assert len(all_pairs(index, ["big"], "exo2ego")) == N_OBJECTS * len(EXOS) * N_FRAMES


def test_frame_sampling_keeps_pairs_whose_frames_are_sampled_in_both_views(root):
    index = ProcessedRoot(root)
    pairs = all_pairs(index, ["big"], "exo2ego")
    kept = make_pairs(index, "train", "exo2ego", sample_ratio=0.3, seed=42).pairs
    kept_big = [p for p in kept if p.take == "big"]
    k = int(kept_count(0.3, N_FRAMES))
    assert k == 18
    # Frames are sampled per (take, camera), the same for every object.
    per_object = {}
    for pair in kept_big:
        per_object.setdefault(pair.obj, set()).add((pair.exo_cam, pair.frame))
    assert len(per_object) == N_OBJECTS and len({frozenset(v) for v in per_object.values()}) == 1
    ego_frames = {p.frame for p in kept_big}
    assert len(ego_frames) <= k
    for cam in EXOS:
        assert len({p.frame for p in kept_big if p.exo_cam == cam}) <= k
    # Independent samples of the two views: about ratio^2 of the pairs stay (0.09).
    share = len(kept_big) / len(pairs)
    assert 0.04 < share < 0.16
    # Deterministic for a seed, different for another, and a larger ratio keeps a superset.
    again = make_pairs(index, "train", "exo2ego", sample_ratio=0.3, seed=42).pairs
    assert again == kept
    assert make_pairs(index, "train", "exo2ego", sample_ratio=0.3, seed=7).pairs != kept
    larger = make_pairs(index, "train", "exo2ego", sample_ratio=0.5, seed=42).pairs
    assert set(kept) < set(larger)
    assert make_pairs(index, "train", "exo2ego", sample_ratio=1.0).pairs == all_pairs(
        index, ["big", "ta"], "exo2ego"
    )


def test_a_take_is_sampled_the_same_whatever_the_other_takes(root):
    index = ProcessedRoot(root)
    alone = PairSampler(index, all_pairs(index, ["big"], "exo2ego"), "frame", 42).sample(0.4)
    together = PairSampler(index, all_pairs(index, ["ta", "big"], "exo2ego"), "frame", 42)
    assert [p for p in together.sample(0.4) if p.take == "big"] == alone


def test_object_sampling_keeps_whole_objects(root):
    index = ProcessedRoot(root)
    result = make_pairs(index, "train", "exo2ego", sample_ratio=0.3, sample_by="object")
    big = [p for p in result.pairs if p.take == "big"]
    objects = {p.obj for p in big}
    assert len(objects) == 3  # round(0.3 * 10)
    assert big == [p for p in all_pairs(index, ["big"], "exo2ego") if p.obj in objects]
    small = [p for p in result.pairs if p.take == "ta"]
    assert len({p.obj for p in small}) == 1  # round(0.3 * 2) = 1: at least one object per take
    other = make_pairs(index, "train", "exo2ego", sample_ratio=0.3, sample_by="object", seed=1)
    assert {p.obj for p in other.pairs if p.take == "big"} != objects


@pytest.mark.parametrize(("sample_by", "target"), [("frame", 300), ("object", 540)])
def test_target_pairs_picks_the_closest_ratio(root, sample_by, target):
    index = ProcessedRoot(root)
    pairs = all_pairs(index, ["big"], "exo2ego")
    sampler = PairSampler(index, pairs, sample_by, 42)
    ratio = sampler.ratio_for(target)
    got = sampler.count(ratio)
    best = min(abs(sampler.count(r) - target) for r in np.linspace(0.001, 1, 1000))
    assert abs(got - target) <= best
    if sample_by == "object":
        assert got == 540  # 3 whole objects of 180 pairs
    assert sampler.ratio_for(10**6) == 1.0


def test_pairs_cli_writes_one_file_per_split(root, capsys):
    code = run_app(build_app(), ["data", "pairs", "--root", str(root), "--direction", "exo2ego"])
    assert code == 0
    out = capsys.readouterr().out
    assert "test: 5 pairs" in out and "1 take(s) of split.json not prepared" in out
    test_file = root / "dataset_jsons" / "test_exoego_pairs.json"
    entries = json.loads(test_file.read_text())
    assert entries[4] == [
        f"{root}//ta//{EGO}//pan//rgb//1",
        f"{root}//ta//{EGO}//pan//mask//1",
        f"{root}//ta//cam01//pan//rgb//1",
        f"{root}//ta//cam01//pan//mask//1",
    ]
    assert len(read_pairs(root / "dataset_jsons" / "train_exoego_pairs.json")) == 1805

    args = ["data", "pairs", "--root", str(root), "--direction", "ego2exo", "--split", "train"]
    assert run_app(build_app(), [*args, "--target-pairs", "540", "--sample-by", "object"]) == 0
    assert "train: 544 pairs of 1804" in capsys.readouterr().out  # 3 x 180 + 4 of "ta"
    assert not (root / "dataset_jsons" / "test_egoexo_pairs.json").exists()

    code = run_app(build_app(), [*args, "--target-pairs", "5", "--sample-ratio", "0.5"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err == ["error: give either --sample-ratio or --target-pairs, not both"]
    assert run_app(build_app(), [*args, "--sample-ratio", "1.5"]) == 1
    assert "(0, 1]" in capsys.readouterr().err


# GT ------------------------------------------------------------------------------------------


def test_gt_of_a_processed_root_reproduces_the_fixture_gt(eval_fixture_dir, tmp_path, capsys):
    reference = json.loads((eval_fixture_dir / "exo2egoGT.json").read_text())["annotations"]
    root = write_root(tmp_path / "root", {"take": reference["take"]}, {"test": ["take"]})
    out = tmp_path / "gt.json"
    args = ["data", "gt", "--root", str(root), "--direction", "exo2ego", "--out", str(out)]
    assert run_app(build_app(), args) == 0
    assert "32 observations in 1 takes" in capsys.readouterr().out  # the fixture's 32
    assert json.loads(out.read_text())["annotations"] == reference


def test_gt_holds_exactly_the_observations_of_a_pairs_file(root, tmp_path):
    index = ProcessedRoot(root)
    chosen = [Pair("ta", "cup", EGO, "cam01", 4), Pair("ta", "pan", EGO, "cam01", 1)]
    gt, no_query = build_gt(index, chosen, "exo2ego")
    assert no_query == 0
    take = gt["annotations"]["ta"]
    assert take["masks"] == {
        "cup": {"cam01": {"4": rle_at(4)}, EGO: {}},  # ego frame 4: annotated, not visible
        "pan": {"cam01": {"1": rle_at(1)}, EGO: {}},
    }
    assert take["annotated_frames"] == {
        "cup": {"cam01": [4], EGO: [4]},
        "pan": {"cam01": [1], EGO: [1]},
    }
    # The evaluator walks exactly these observations, invisible ones included.
    assert list(track_order(take, "exo2ego", "ta")) == [
        ("cup", "cam01", EGO, ["4"]),
        ("pan", "cam01", EGO, ["1"]),
    ]
    gt, _ = build_gt(index, [Pair("ta", "cup", EGO, "cam01", 3)], "ego2exo")
    assert gt["annotations"]["ta"]["masks"]["cup"] == {
        EGO: {"3": rle_at(3)},
        "cam01": {"3": rle_at(3)},
    }
    # A pair whose query mask is not in the root cannot be scored: counted, left out.
    gt, no_query = build_gt(index, [Pair("ta", "pan", EGO, "cam01", 1)], "ego2exo")
    assert no_query == 1 and gt["annotations"] == {}

    pairs_file = tmp_path / "chosen.json"
    write_pairs(pairs_file, chosen, root)
    out = tmp_path / "gt.json"
    args = ["data", "gt", "--root", str(root), "--direction", "exo2ego", "--out", str(out)]
    assert run_app(build_app(), [*args, "--pairs", str(pairs_file)]) == 0
    assert json.loads(out.read_text())["annotations"]["ta"] == take
    assert run_app(build_app(), [*args, "--pairs", str(pairs_file), "--split", "train"]) == 0
    write_pairs(pairs_file, [Pair("zz", "cup", EGO, "cam01", 4)], root)
    assert run_app(build_app(), [*args, "--pairs", str(pairs_file)]) == 1


def test_gt_narrowed_to_one_take_and_camera(tmp_path):
    from omama_train.data.gt import select_pairs

    pairs = [
        Pair("ta", "cup", EGO, "cam01", 1),
        Pair("ta", "cup", EGO, "cam02", 1),
        Pair("tb", "pan", EGO, "cam01", 2),
    ]
    assert select_pairs(pairs, [], []) == pairs
    assert select_pairs(pairs, ["ta"], ["cam01"]) == [pairs[0]]
    assert select_pairs(pairs, [], ["cam01"]) == [pairs[0], pairs[2]]
    with pytest.raises(OmamaError, match="no pairs with exo camera cam09; present: cam01, cam02"):
        select_pairs(pairs, [], ["cam09"])
    with pytest.raises(OmamaError, match="no pairs with take tz"):
        select_pairs(pairs, ["tz"], [])
