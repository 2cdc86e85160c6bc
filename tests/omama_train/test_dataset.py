"""Training data: the prep cache next to the candidates, samples, collate, validation frames.

The processed root is a small synthetic one (``omama data synth``) with the ground-truth
masks of every annotated object standing in for FastSAM candidates.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from omama_train.data.masks import annotation_source, extract_candidates
from omama_train.data.pairs import make_pairs
from omama_train.data.prepare import prepare
from omama_train.data.synth import synthesize
from omama_train.dataset import (
    ImageFrames,
    TrainingPairs,
    ValidationFrames,
    batch_descriptors,
    collate,
    data_hash,
    usable_pairs,
    view_image_sizes,
)
from omama_train.frameprep import ensure_frame_preps, load_frame_prep, prep_path
from omama_train.geometry import Geometry, masks_to_grid, pack_masks, unpack_masks
from omama_train.models.descriptors import object_descriptors
from runtime import rle
from runtime.candidates import load_frame_candidates
from runtime.egoexo import ProcessedRoot, candidate_paths, read_pairs, write_pairs
from runtime.pooling import mask_boxes
from runtime.preprocess import model_input_size

torch.set_num_threads(1)

SIZES = {"ego": (224, 224), "exo": (126, 224)}  # small synth: 448x448 / 2, 896x504 / 4
GRIDS = {"ego": (16, 16), "exo": (9, 16)}
CHANNELS = 16


def build_root(base: Path, takes: int, frames: int, every: int, directions=("exo2ego",)) -> Path:
    """Synthetic takes -> processed root -> pairs -> stand-in candidates, for all splits."""
    raw, root = base / "raw", base / "root"
    synthesize(raw, takes, small=True, seed=0, frames=frames, annotate_every=every)
    for relations in sorted((raw / "annotations").glob("relations_*.json")):
        prepare(relations, raw / "takes", root, progress=False)
    index = ProcessedRoot(root)
    for direction in directions:
        for split in index.splits():
            pairs = make_pairs(index, split, direction).pairs
            write_pairs(index.pairs_path(split, direction), pairs, root)
            extract_candidates(root, split, direction, annotation_source(root), progress=False)
    return root


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return build_root(tmp_path_factory.mktemp("data"), 2, 6, 3, ("exo2ego", "ego2exo"))


class RandomFeatures:
    """A feature source: fixed random (C, h, w) float16 maps per image."""

    def get(self, take: str, cam: str, frame: int) -> torch.Tensor:
        view = "ego" if "aria" in cam else "exo"
        seed = int(hashlib.sha256(f"{take}/{cam}/{frame}".encode()).hexdigest()[:8], 16)
        gen = torch.Generator().manual_seed(seed)
        return torch.randn(CHANNELS, *GRIDS[view], generator=gen).half()


def geometry(direction: str) -> Geometry:
    return Geometry.from_views(direction, SIZES, GRIDS)


def split_pairs(root: Path, split: str, direction: str):
    index = ProcessedRoot(root)
    return usable_pairs(index, read_pairs(index.pairs_path(split, direction)), direction)


def reference_gt(rle_dict: dict, size_hw: tuple[int, int]) -> np.ndarray:
    """The reference resize of a ground-truth mask: cv2 INTER_NEAREST to the model image."""
    return cv2.resize(rle.decode(rle_dict), size_hw[::-1], interpolation=cv2.INTER_NEAREST)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 5), st.integers(1, 40), st.integers(1, 40), st.integers(0, 2**31 - 1))
def test_pack_unpack_round_trip(n, h, w, seed):
    masks = np.random.default_rng(seed).random((n, h, w)) > 0.5
    out = unpack_masks(torch.from_numpy(pack_masks(masks)), (h, w))
    assert out.dtype == torch.bool and np.array_equal(out.numpy(), masks)
    assert pack_masks(masks).shape == (n, (h * w + 7) // 8)  # n = 0: a frame with no candidates


@pytest.mark.parametrize(("raw", "image"), [((704, 704), (700, 700)), ((540, 960), (532, 952))])
def test_grid_masks_compose_the_reference_resizes(raw, image):
    masks = (np.random.default_rng(0).random((3, *raw)) > 0.7).astype(np.uint8)
    pool = (image[0] // 4, image[1] // 4)
    # Candidates: torch nearest to the image, then torch nearest to the pooling grid.
    t = F.interpolate(torch.from_numpy(masks)[:, None].float(), size=image, mode="nearest")
    t = F.interpolate(t, size=pool, mode="nearest")[:, 0].bool().numpy()
    assert np.array_equal(masks_to_grid(masks, image, pool, "torch"), t)
    # Ground truth: OpenCV nearest to the image, then torch nearest to the grid.
    c = np.stack([cv2.resize(m, image[::-1], interpolation=cv2.INTER_NEAREST) for m in masks])
    c = F.interpolate(torch.from_numpy(c)[:, None].float(), size=pool, mode="nearest")
    assert np.array_equal(masks_to_grid(masks, image, pool, "opencv"), c[:, 0].bool().numpy())


def test_prep_files_are_built_once_and_rebuilt_when_candidates_change(root):
    pairs = split_pairs(root, "train", "exo2ego")
    g = geometry("exo2ego")
    first = ensure_frame_preps(root, "train", "exo2ego", pairs, g, progress=False)
    assert first["frames"] > 0 and first["built"] == first["frames"]
    again = ensure_frame_preps(root, "train", "exo2ego", pairs, g, progress=False)
    assert again == {"frames": first["frames"], "built": 0, "up_to_date": first["frames"]}
    take, cam, frame = pairs[0].take, pairs[0].ego_cam, pairs[0].frame
    masks_file = candidate_paths(root, "train", "exo2ego", take, cam, frame)[0]
    stat = masks_file.stat()
    os.utime(masks_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    redo = ensure_frame_preps(root, "train", "exo2ego", pairs, g, progress=False)
    assert redo["built"] == 1
    shards = [
        ensure_frame_preps(root, "train", "exo2ego", pairs, g, progress=False, shard=(i, 2))
        for i in range(2)
    ]
    assert sum(s["frames"] for s in shards) == first["frames"]
    assert prep_path(root, "train", "exo2ego", take, cam, frame, g).name == (
        f"{frame}_prep_224x224_126x224_r4.npz"
    )


@pytest.mark.parametrize("direction", ["exo2ego", "ego2exo"])
def test_prep_content_gives_the_reference_descriptors(root, direction):
    """Descriptors from the packed pooling-grid masks equal those of the reference path:
    masks at the model image size (GT: cv2 nearest; candidates: as stored), boxes from the
    GT mask or the boxes file, pooled by ``object_descriptors``."""
    g = geometry(direction)
    pairs = split_pairs(root, "train", direction)
    ensure_frame_preps(root, "train", direction, pairs, g, progress=False)
    index = ProcessedRoot(root)
    feats_source = RandomFeatures()
    checked_visible = 0
    for pair in pairs[:6]:
        src, dst = pair.src_cam(direction), pair.dst_cam(direction)
        prep = load_frame_prep(prep_path(root, "train", direction, pair.take, dst, pair.frame, g))
        src_feats = feats_source.get(pair.take, src, pair.frame).float()[None]
        dst_feats = feats_source.get(pair.take, dst, pair.frame).float()[None]

        q_bits, q_box = prep.queries[(src, pair.obj)]
        query = reference_gt(index.mask_rle(pair.take, pair.obj, src, pair.frame), g.src_image)
        np.testing.assert_array_equal(q_box, mask_boxes(query))
        ours = batch_descriptors(
            src_feats,
            torch.from_numpy(q_bits[None, None]),
            torch.from_numpy(q_box[None, None]),
            g.src_image,
            g.src_pool,
        )
        ref = object_descriptors(
            src_feats,
            torch.from_numpy(query[None, None]),
            torch.from_numpy(q_box[None, None]),
            g.src_image,
        )
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)

        cands = load_frame_candidates(
            root, "train", direction, pair.take, dst, pair.frame, g.dst_image
        )
        ours = batch_descriptors(
            dst_feats,
            torch.from_numpy(prep.cand_bits[None]),
            torch.from_numpy(prep.cand_boxes[None]),
            g.dst_image,
            g.dst_pool,
        )
        ref = object_descriptors(
            dst_feats,
            torch.from_numpy(cands.masks[None]),
            torch.from_numpy(cands.boxes[None]),
            g.dst_image,
        )
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)

        gt_rle = index.mask_rle(pair.take, pair.obj, dst, pair.frame)
        assert (pair.obj in prep.gt) == (gt_rle is not None)
        if gt_rle is not None:
            bits, box, anchor = prep.gt[pair.obj]
            gt = reference_gt(gt_rle, g.dst_image)
            np.testing.assert_array_equal(box, mask_boxes(gt))
            # Stand-in candidates hold the GT mask itself: the anchor is that candidate.
            np.testing.assert_array_equal(cands.masks[anchor], gt)
            np.testing.assert_array_equal(prep.cand_bits[anchor], bits)
            checked_visible += 1
    assert checked_visible > 0


def test_training_samples_follow_the_sampling_rules(root):
    g = geometry("exo2ego")
    pairs = split_pairs(root, "train", "exo2ego")
    ensure_frame_preps(root, "train", "exo2ego", pairs, g, progress=False)
    data = TrainingPairs(root, "train", "exo2ego", pairs, g, RandomFeatures(), n=8, seed=42)
    index = ProcessedRoot(root)
    seen_visible = seen_invisible = 0
    for i in range(len(data)):
        sample = data[i]
        pair = pairs[i]
        prep = data.prep(pair)
        assert sample["src_input"].shape == (CHANNELS, *GRIDS["exo"])
        assert sample["dst_input"].shape == (CHANNELS, *GRIDS["ego"])
        assert sample["dst_bits"].shape == (8, (56 * 56 + 7) // 8)
        assert sample["src_bits"].shape == (1, (31 * 56 + 7) // 8)
        valid = sample["valid"].numpy()
        n_valid = int(valid.sum())
        assert valid[:n_valid].all() and not valid[n_valid:].any()  # padding last
        assert not sample["dst_bits"][n_valid:].any() and not sample["dst_boxes"][n_valid:].any()
        visible = index.mask_rle(pair.take, pair.obj, pair.ego_cam, pair.frame) is not None
        assert bool(sample["visible"]) == visible
        positive = int(sample["positive"])
        assert positive < n_valid
        rows = [tuple(r) for r in sample["dst_bits"][:n_valid].numpy().tolist()]
        if visible:
            seen_visible += 1
            gt_bits = prep.gt[pair.obj][0]
            assert np.array_equal(sample["dst_bits"][positive].numpy(), gt_bits)
            # GT + every other candidate (few stand-ins per frame); the anchor never again.
            assert n_valid == min(8, prep.n_candidates)
            assert rows.count(tuple(gt_bits.tolist())) == 1
        else:
            seen_invisible += 1
            assert n_valid == min(8, max(1, prep.n_candidates))
        assert len(set(rows)) == len(rows) or prep.n_candidates == 0  # nothing repeated
    assert seen_visible and seen_invisible


def test_samples_depend_on_seed_epoch_and_index_only(root):
    g = geometry("exo2ego")
    pairs = split_pairs(root, "train", "exo2ego")
    ensure_frame_preps(root, "train", "exo2ego", pairs, g, progress=False)

    def batches(workers: int, epoch: int) -> list[dict]:
        data = TrainingPairs(root, "train", "exo2ego", pairs, g, RandomFeatures(), n=8, seed=3)
        data.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(
            data, batch_size=4, num_workers=workers, collate_fn=collate, shuffle=False
        )
        return list(loader)

    one, two = batches(0, epoch=1), batches(2, epoch=1)
    for a, b in zip(one, two, strict=True):
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert one[0]["dst_bits"].shape == (4, 8, (56 * 56 + 7) // 8)
    assert one[0]["positive"].shape == (4,) and one[0]["src_input"].dtype == torch.float16
    other = batches(0, epoch=2)
    changed = [
        not (
            torch.equal(a["positive"], b["positive"]) and torch.equal(a["dst_bits"], b["dst_bits"])
        )
        for a, b in zip(one, other, strict=True)
    ]
    assert any(changed)


def test_validation_frames_hold_every_candidate_and_every_query(root):
    g = geometry("exo2ego")
    pairs = split_pairs(root, "test", "exo2ego")
    ensure_frame_preps(root, "test", "exo2ego", pairs, g, progress=False)
    frames = ValidationFrames(root, "test", "exo2ego", pairs, g, RandomFeatures())
    asked = set()
    for i in range(len(frames)):
        item = frames[i]
        cands = load_frame_candidates(
            root, "test", "exo2ego", item.take, item.dst_cam, item.frame, g.dst_image
        )
        assert item.cand_bits.shape[0] == len(cands) == len(item.cand_rles)
        for k, r in enumerate(item.cand_rles):
            assert np.array_equal(rle.decode(r), cands.masks[k])
        assert rle.decode(item.empty_rle).shape == g.dst_image and not rle.area(item.empty_rle)
        for src_cam, src_input, objects, bits, boxes in item.groups:
            assert src_input.shape == (CHANNELS, *GRIDS["exo"])
            assert bits.shape[0] == boxes.shape[0] == len(objects)
            asked |= {(item.take, o, src_cam, item.frame) for o in objects}
    assert asked == {(p.take, p.obj, p.exo_cam, p.frame) for p in pairs}
    assert frames.n_pairs == len(pairs)


def test_missing_candidates_are_a_clear_error(root, tmp_path):
    copy = tmp_path / "root"
    shutil.copytree(root, copy)
    pairs = split_pairs(copy, "train", "exo2ego")
    shutil.rmtree(copy / "Masks_TRAIN_EXO2EGO")
    with pytest.raises(Exception, match="omama data masks"):
        ensure_frame_preps(copy, "train", "exo2ego", pairs, geometry("exo2ego"), progress=False)


def test_image_frames_resize_to_the_view_size_and_portrait_to_landscape(tmp_path):
    take, frame = "t0", 3
    index = ProcessedRoot(tmp_path)
    portrait = np.zeros((20, 10, 3), np.uint8)
    portrait[:10, :, 2] = 255  # top half red (BGR)
    path = index.image_path(take, "cam01", frame)
    path.parent.mkdir(parents=True)
    cv2.imwrite(str(path), portrait)
    frames = ImageFrames(tmp_path, {"ego": (14, 14), "exo": (14, 28)})
    image = frames.get(take, "cam01", frame)
    assert image.shape == (14, 28, 3) and image.dtype == torch.uint8
    assert image[0, 0, 0] > 200 and image[-1, 0, 0] < 50  # RGB; the top stays on top


def test_view_sizes_and_data_hash(root, tmp_path):
    index = ProcessedRoot(root)
    pairs = split_pairs(root, "train", "exo2ego")
    assert view_image_sizes(index, pairs, model_input_size) == SIZES
    patch16 = view_image_sizes(index, pairs, lambda h, w: model_input_size(h, w, 16))
    assert patch16 == {"ego": (256, 256), "exo": (144, 256)}
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps([1]))
    b.write_text("x")
    before = data_hash([a, b])
    assert data_hash([b, a]) == before and len(before) == 64
    a.write_text(json.dumps([2]))
    assert data_hash([a, b]) != before
    assert data_hash([a, tmp_path / "missing"]) != data_hash([a])
