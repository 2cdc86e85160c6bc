"""``omama-run pair``: masks, overlay and result.json, precomputed candidates, bad inputs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

from runtime import rle  # noqa: E402
from runtime.candidates import Candidates, write_candidates  # noqa: E402
from runtime.pipeline import STAGES  # noqa: E402
from tests.runtime.assets import EGO, EXO  # noqa: E402
from tests.runtime.runs.cli import error_line, omama_run  # noqa: E402


@pytest.fixture(scope="module")
def pair_inputs(assets, tmp_path_factory):
    import cv2

    from runtime.egoexo import ProcessedRoot
    from runtime.video import VideoReader

    folder = tmp_path_factory.mktemp("pair_inputs")
    with VideoReader(assets.video(EXO)) as src, VideoReader(assets.video(EGO)) as dst:
        cv2.imwrite(str(folder / "exo.png"), src.read(2)[:, :, ::-1])
        cv2.imwrite(str(folder / "ego.png"), dst.read(2)[:, :, ::-1])
    index = ProcessedRoot(assets.root)
    queries = []
    for obj in index.objects(assets.take)[:2]:
        mask = rle.decode(index.mask_rle(assets.take, obj, EXO, 2))
        path = folder / f"{obj.replace(' ', '_')}.png"
        cv2.imwrite(str(path), mask * 255)
        queries.append(path)
    return folder / "exo.png", folder / "ego.png", queries


def test_pair_writes_masks_overlay_and_json(assets, pair_inputs, tmp_path, capsys):
    import cv2

    src, dst, queries = pair_inputs
    out = tmp_path / "out"
    code, text, err = omama_run(capsys, "pair", src, dst, "--query", queries[0], "--query",
                                queries[1], "--artifacts", assets.weights, "--backend",
                                "onnxruntime", "--device", "cpu", "--out", out)  # fmt: skip
    assert code == 0, err
    result = json.loads((out / "result.json").read_text())
    assert [o["name"] for o in result["objects"]] == [q.stem for q in queries]
    assert set(result["latency_ms"]) == {*STAGES, "total"}
    for obj in result["objects"]:
        mask = cv2.imread(obj["mask_png"], cv2.IMREAD_GRAYSCALE)
        assert mask.shape == (448, 448) and set(np.unique(mask)) <= {0, 255}
        np.testing.assert_array_equal(rle.decode(obj["rle"]), mask // 255)
        assert obj["candidate"] >= 0 and len(obj["top5"]) == min(5, obj["candidates"])
        assert obj["top5"][0]["candidate"] == obj["candidate"]
        assert obj["visible"] == (obj["confidence"] > 0.5)
        assert f"{obj['name']}: " in text
    overlay = cv2.imread(str(out / "overlay.png"))
    assert overlay.shape[0] == 504 and overlay.shape[1] > 896
    assert result["backend"] == "onnxruntime" and result["candidates"] == "fastsam"


def test_pair_with_precomputed_candidates_at_model_size(assets, pair_inputs, tmp_path, capsys):
    from runtime.egoexo import ProcessedRoot

    src, dst, queries = pair_inputs
    index = ProcessedRoot(assets.root)
    gt = [rle.decode(index.mask_rle(assets.take, o, EGO, 2)) for o in index.objects(assets.take)
          if index.mask_rle(assets.take, o, EGO, 2) is not None]  # fmt: skip
    write_candidates(tmp_path / "2_masks.npz", tmp_path / "2_boxes.npy",
                     Candidates.from_masks(np.stack(gt)))  # fmt: skip
    code, _, err = omama_run(capsys, "pair", src, dst, "-q", queries[0], "--candidates",
                             tmp_path / "2_masks.npz", "--mask-size", "model", "--artifacts",
                             assets.weights, "--backend", "onnxruntime",
                             "--out", tmp_path / "o")  # fmt: skip
    assert code == 0, err
    (obj,) = json.loads((tmp_path / "o" / "result.json").read_text())["objects"]
    assert obj["candidates"] == len(gt) and obj["mask_size_hw"] == [70, 70]


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("empty_query", "the query mask is empty"),
        ("query_size", "must be drawn on the source image"),
        ("missing_query", "mask file not found"),
        ("unreadable_image", "could not be decoded"),
        ("swapped", "did you swap source and destination"),
        ("tampered", "does not match its manifest"),
        ("candidates_name", "must name a <frame>_masks.npz"),
    ],
)
def test_pair_bad_inputs_give_one_line_and_exit_1(case, message, assets, pair_inputs, tmp_path,
                                                  capsys):  # fmt: skip

    import cv2

    src, dst, queries = pair_inputs
    args = ["pair", src, dst, "--query", queries[0], "--artifacts", assets.weights,
            "--backend", "onnxruntime", "--out", tmp_path / "out"]  # fmt: skip
    if case == "empty_query":
        cv2.imwrite(str(tmp_path / "e.png"), np.zeros((504, 896), np.uint8))
        args[4] = tmp_path / "e.png"
    elif case == "query_size":
        cv2.imwrite(str(tmp_path / "s.png"), np.full((300, 300), 255, np.uint8))
        args[4] = tmp_path / "s.png"
    elif case == "missing_query":
        args[4] = tmp_path / "none.png"
    elif case == "unreadable_image":
        (tmp_path / "bad.jpg").write_bytes(b"jpeg? no")
        args[1] = tmp_path / "bad.jpg"
    elif case == "swapped":
        args[1], args[2] = dst, src
    elif case == "tampered":
        copy = tmp_path / "art"
        shutil.copytree(assets.weights, copy)
        with (copy / "backbone_ego.onnx").open("ab") as fh:
            fh.write(b"\0")
        args[6] = copy
    else:
        args += ["--candidates", tmp_path / "cands.npz"]
    code, _, err = omama_run(capsys, *args)
    assert code == 1
    assert message in error_line(err)
