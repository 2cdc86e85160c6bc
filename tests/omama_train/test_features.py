"""``omama features``: the fp16 feature cache (values, refusal on mismatch, resume, shards,
memory-mapped reading) on two small synthetic takes with a seeded random ViT-S.

Most tests use ViT-S/14 with registers cut to 2 blocks (every block is the same code, so
depth adds nothing to what is checked); the CLI test runs the registered full-depth model.
Images: ego 224x224 (16x16 tokens), exo 126x224 (9x16 tokens), 12 in all.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from omama_train.data.pairs import make_pairs
from omama_train.data.prepare import prepare
from omama_train.data.synth import synthesize
from omama_train.features import writer
from omama_train.features.build import build_cache, summary_text
from omama_train.features.cli import register
from omama_train.features.images import resolve_pairs_files, unique_images
from omama_train.features.meta import BACKBONE_FILE
from omama_train.features.reader import FeatureCache
from omama_train.features.weights import BackboneWeights, backbone_identity, write_backbone_file
from omama_train.imagekey import cam_kind
from omama_train.models.backbones import BACKBONES, random_backbone_state
from runtime.clikit import new_app, run_app
from runtime.egoexo import DIRECTIONS, ProcessedRoot, pairs_path, read_pairs, write_pairs
from runtime.errors import OmamaError
from runtime.images import read_rgb
from runtime.preprocess import preprocess_image

torch.set_num_threads(1)

SMALL = dataclasses.replace(BACKBONES["dinov2_vits14_reg"], timm_overrides={"depth": 2})
SMALL_NOREG = dataclasses.replace(BACKBONES["dinov2_vits14"], timm_overrides={"depth": 2})
SIZES = {"ego": (224, 224), "exo": (126, 224)}
GRIDS = {"ego": (16, 16), "exo": (9, 16)}
N_IMAGES = 12


@pytest.fixture(scope="session")
def root(tmp_path_factory) -> Path:
    return small_root(tmp_path_factory.mktemp("features"))


def small_root(base: Path) -> Path:
    """Two small synthetic takes (train, test), 2 annotated frames each, pairs both ways."""
    synthesize(base / "in", 2, small=True, seed=0, frames=6, annotate_every=3)
    for relations in sorted((base / "in" / "annotations").glob("relations_*.json")):
        prepare(relations, base / "in" / "takes", base / "root", progress=False)
    index = ProcessedRoot(base / "root")
    for split in index.splits():
        for direction in DIRECTIONS:
            pairs = make_pairs(index, split, direction).pairs
            write_pairs(pairs_path(base / "root", split, direction), pairs, base / "root")
    return base / "root"


@pytest.fixture(scope="session")
def pairs_files(root) -> list[Path]:
    return resolve_pairs_files(root)


def build(root, out, pairs_files, spec=SMALL, **kw) -> dict:
    kw = {"random_init": True, "flush_every": 3, "batch_size": 2, "progress": False} | kw
    return build_cache(root, out, pairs_files, spec, **({"device": "cpu"} | kw))


@pytest.fixture(scope="session")
def full_cache(root, pairs_files, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cache") / "full"
    build(root, out, pairs_files)
    return out


def all_maps(path: Path) -> dict[str, np.ndarray]:
    cache = FeatureCache(path)
    return {key: np.array(cache.get_array(*key.split("/"))) for key in cache}


# ---------------------------------------------------------------------- images and values


def test_unique_images_are_both_views_of_every_pair(root, pairs_files):
    pairs = [p for f in pairs_files for p in read_pairs(f)]
    images = unique_images(pairs)
    assert images == sorted(set(images))
    assert {(p.take, c, p.frame) for p in pairs for c in (p.ego_cam, p.exo_cam)} == set(images)
    assert len(images) == N_IMAGES
    assert sum(k.kind == "ego" for k in images) == 4


def test_cache_holds_the_backbone_output_of_each_image(root, full_cache):
    cache = FeatureCache(full_cache)
    assert len(cache) == N_IMAGES and cache.duplicates == 0
    weights = BackboneWeights.resolve(SMALL, random_init=True, seed=0)
    index = ProcessedRoot(root)
    for view in ("ego", "exo"):
        key = next(k for k in cache if cam_kind(k.split("/")[1]) == view)
        take, cam, frame = key.split("/")
        rgb = cv2.cvtColor(cv2.imread(str(index.image_path(take, cam, frame))), cv2.COLOR_BGR2RGB)
        model = weights.build(SIZES[view])
        with torch.no_grad():
            ref = model(torch.from_numpy(preprocess_image(rgb))[None])[0]
        got = cache.get(take, cam, int(frame))
        assert got.dtype == torch.float16 and tuple(got.shape) == (768, *GRIDS[view])
        torch.testing.assert_close(got.float(), ref, rtol=2e-3, atol=2e-3)
        assert ref.abs().max() > 0.5  # not a degenerate all-zero map


def test_both_views_share_one_set_of_weights():
    weights = BackboneWeights.resolve(SMALL, random_init=True, seed=0)
    ego, exo = weights.build(SIZES["ego"]), weights.build(SIZES["exo"])
    ego_sd, exo_sd = ego.state_dict(), exo.state_dict()
    assert ego_sd.keys() == exo_sd.keys()
    for key in ego_sd:
        if key != "trunk.pos_embed":  # interpolated to each grid
            assert torch.equal(ego_sd[key], exo_sd[key]), key
    assert ego_sd["trunk.pos_embed"].shape[1] == 16 * 16
    assert exo_sd["trunk.pos_embed"].shape[1] == 9 * 16


def test_meta_records_backbone_weights_sizes_and_dtype(full_cache):
    cache = FeatureCache(full_cache)
    meta = cache.meta
    assert cache.backbone == meta["backbone"]["name"] == "dinov2_vits14_reg"
    assert meta["backbone"]["timm_overrides"] == {"depth": 2}
    assert meta["backbone"]["pos_resize"] == "bicubic_antialias"
    assert meta["weights"]["random_init"] is True and meta["weights"]["seed"] == 0
    assert meta["weights"]["sha256"] == BackboneWeights.resolve(SMALL, random_init=True).sha256
    assert meta["dtype"] == "float16" and meta["channels"] == 768
    for view in ("ego", "exo"):
        assert tuple(meta["views"][view]["source_size_hw"]) == SIZES[view]
        assert cache.image_size(view) == SIZES[view]
        assert cache.grid(view) == GRIDS[view]
    assert cache.grid("aria01_214-1") == GRIDS["ego"] and cache.grid("cam02") == GRIDS["exo"]
    usage = cache.disk_usage()
    assert usage["ego"]["images"] == 4 and usage["exo"]["images"] == 8
    # fp16 maps plus one small .npy header per chunk file.
    assert 768 * 16 * 16 * 2 * 4 < usage["ego"]["bytes"] < 768 * 16 * 16 * 2 * 4 + 2 * 4096


def test_weights_hash_follows_the_tensors_not_the_file_name(tmp_path):
    a = BackboneWeights.resolve(SMALL, random_init=True, seed=0).sha256
    assert a == BackboneWeights.resolve(SMALL, random_init=True, seed=0).sha256
    assert a != BackboneWeights.resolve(SMALL, random_init=True, seed=1).sha256
    state = random_backbone_state(SMALL, 0)
    trunk = {k[len("trunk.") :]: v.contiguous() for k, v in state.items() if k.startswith("trunk.")}
    path = tmp_path / "weights.safetensors"
    save_file(trunk, str(path))
    first = BackboneWeights.resolve(SMALL, path)
    trunk["norm.bias"] = trunk["norm.bias"] + 1e-3
    save_file(trunk, str(path))
    second = BackboneWeights.resolve(SMALL, path)
    assert first.sha256 != second.sha256
    assert first.describe()["random_init"] is False


# ---------------------------------------------------------------------- refusal


def copy_cache(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_other_weights_are_refused(root, pairs_files, full_cache, tmp_path):
    out = copy_cache(full_cache, tmp_path / "cache")
    with pytest.raises(OmamaError, match=r"weights sha256 \w+\.\.\., these weights are \w+"):
        build(root, out, pairs_files, seed=1)
    other = BackboneWeights.resolve(SMALL, random_init=True, seed=1).sha256
    with pytest.raises(OmamaError, match="rebuild it with omama features"):
        FeatureCache(out, expect={"weights_sha256": other})
    assert len(FeatureCache(out)) == N_IMAGES  # nothing was added or lost


def test_weights_file_changed_under_the_same_name_is_refused(root, pairs_files, tmp_path):
    state = random_backbone_state(SMALL, 0)
    trunk = {k[len("trunk.") :]: v.contiguous() for k, v in state.items() if k.startswith("trunk.")}
    path = tmp_path / "backbone.safetensors"
    save_file(trunk, str(path))
    out = tmp_path / "cache"
    report = build(root, out, pairs_files, random_init=False, backbone_weights=path, limit=2)
    assert report["computed"] == 2 and FeatureCache(out).meta["weights"]["random_init"] is False
    trunk["blocks.0.attn.qkv.weight"] = trunk["blocks.0.attn.qkv.weight"] * 1.01
    save_file(trunk, str(path))
    with pytest.raises(OmamaError, match="weights sha256"):
        build(root, out, pairs_files, random_init=False, backbone_weights=path)


def test_other_backbone_is_refused(root, pairs_files, full_cache, tmp_path):
    out = copy_cache(full_cache, tmp_path / "cache")
    with pytest.raises(OmamaError, match="backbone dinov2_vits14_reg, not dinov2_vits14"):
        build(root, out, pairs_files, spec=SMALL_NOREG)
    with pytest.raises(OmamaError, match="backbone dinov2_vits14_reg, not dinov2_vitb14_reg"):
        FeatureCache(out, expect={"backbone": "dinov2_vitb14_reg"})
    with pytest.raises(OmamaError, match="pos_resize 'bicubic_antialias', not 'bicubic_offset'"):
        build(root, out, pairs_files, pos_resize="bicubic_offset")
    with pytest.raises(OmamaError, match="--pos-resize must be one of"):
        build(root, out, pairs_files, pos_resize="bilinear")


def resized_root(root: Path, dst: Path, view: str, size_hw: tuple[int, int], limit=None) -> Path:
    """A copy of ``root`` whose ``view`` jpgs (the first ``limit`` of them) are resized."""
    shutil.copytree(root, dst)
    paths = sorted(p for p in dst.glob("processed/*/*/*.jpg") if cam_kind(p.parent.name) == view)
    for path in paths[:limit]:
        image = cv2.imread(str(path))
        cv2.imwrite(str(path), cv2.resize(image, (size_hw[1], size_hw[0])))
    return dst


def test_other_image_size_is_refused(root, pairs_files, full_cache, tmp_path):
    out = copy_cache(full_cache, tmp_path / "cache")
    bigger = resized_root(root, tmp_path / "root", "exo", (140, 252))
    files = [Path(str(p).replace(str(root), str(bigger))) for p in pairs_files]
    with pytest.raises(OmamaError, match=r"exo images of 126x224 px \(9x16 tokens\), not 140x252"):
        build(bigger, out, files)
    with pytest.raises(OmamaError, match="ego images of 224x224 px"):
        FeatureCache(out, expect={"image_sizes": {"ego": (700, 700)}})
    with pytest.raises(OmamaError, match="dtype float16, not float32"):
        FeatureCache(out, expect={"dtype": "float32"})
    FeatureCache(
        out, expect={"image_sizes": SIZES, "dtype": "float16", "backbone": "dinov2_vits14_reg"}
    )


def test_an_image_of_another_size_within_a_view_is_named(root, pairs_files, tmp_path):
    odd = resized_root(root, tmp_path / "root", "exo", (140, 252), limit=1)
    files = [Path(str(p).replace(str(root), str(odd))) for p in pairs_files]
    # The first exo image sets the view's size, so one of the others is named.
    with pytest.raises(
        OmamaError, match=r"cam0\d/\d\.jpg is 126x224 px, the exo images .* 140x252"
    ):
        build(odd, tmp_path / "cache", files)
    assert not (tmp_path / "cache").exists()  # refused before any work


def test_missing_images_are_reported_and_skipped(root, pairs_files, tmp_path):
    gappy = tmp_path / "root"
    shutil.copytree(root, gappy)
    gone = sorted(gappy.glob("processed/*/cam01/3.jpg"))[0]
    gone.unlink()
    report = build(gappy, tmp_path / "cache", pairs_files)
    take = gone.parent.parent.name
    assert report["missing_images"] == [f"{take}/cam01/3"]
    assert report["computed"] == N_IMAGES - 1
    assert (take, "cam01", 3) not in FeatureCache(tmp_path / "cache")


# ---------------------------------------------------------------------- resume and shards


def test_resume_after_an_interrupted_run(root, pairs_files, full_cache, tmp_path, monkeypatch):
    out = tmp_path / "cache"
    calls = {"n": 0}
    real_read = read_rgb

    def failing_read(path):
        calls["n"] += 1
        if calls["n"] > 7:
            raise RuntimeError("simulated crash")
        return real_read(path)

    monkeypatch.setattr(writer, "read_rgb", failing_read)
    with pytest.raises(RuntimeError, match="simulated crash"):
        build(root, out, pairs_files)
    monkeypatch.setattr(writer, "read_rgb", real_read)
    partial = FeatureCache(out)
    # Whole chunks survive; the chunk being written when it failed is gone.
    assert 0 < len(partial) < N_IMAGES
    chunks = out / "chunks"
    assert not [p for p in chunks.iterdir() if p.name.startswith(".")]
    # Leftovers of a hard kill: a temporary chunk, and a data file whose index never came.
    (chunks / ".exo-000of001-00007.npy.tmp123.npy").write_bytes(b"partial")
    np.save(chunks / "exo-000of001-00009.npy", np.zeros((1,), np.float16))

    report = build(root, out, pairs_files)
    assert report["skipped_cached"] == len(partial)
    assert report["computed"] == N_IMAGES - len(partial)
    assert not (chunks / ".exo-000of001-00007.npy.tmp123.npy").exists()
    assert not (chunks / "exo-000of001-00009.npy").exists()
    resumed, full = all_maps(out), all_maps(full_cache)
    assert resumed.keys() == full.keys()
    for key in full:
        np.testing.assert_allclose(resumed[key], full[key], rtol=2e-3, atol=2e-3)
    assert FeatureCache(out).duplicates == 0


def test_limit_stops_early_and_the_next_run_finishes(root, pairs_files, tmp_path):
    out = tmp_path / "cache"
    first = build(root, out, pairs_files, limit=5)
    assert (first["computed"], first["left_for_later"]) == (5, N_IMAGES - 5)
    second = build(root, out, pairs_files)
    assert (second["computed"], second["skipped_cached"]) == (N_IMAGES - 5, 5)
    assert len(FeatureCache(out)) == N_IMAGES


def test_shards_cover_every_image_exactly_once(root, pairs_files, full_cache, tmp_path):
    out = tmp_path / "cache"
    reports = [build(root, out, pairs_files, shard=(i, 3)) for i in range(3)]
    assert [r["computed"] for r in reports] == [4, 4, 4]
    assert all((out / f"report_shard_{i}_3.json").is_file() for i in range(3))
    keys = []
    for part in sorted((out / "chunks").glob("*.json")):
        keys += json.loads(part.read_text())["keys"]
    assert len(keys) == len(set(keys)) == N_IMAGES
    sharded, full = all_maps(out), all_maps(full_cache)
    assert sharded.keys() == full.keys()
    for key in full:
        np.testing.assert_allclose(sharded[key], full[key], rtol=2e-3, atol=2e-3)
    # Re-running a shard finds its work done.
    assert build(root, out, pairs_files, shard=(1, 3))["computed"] == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (the float16 autocast path)")
def test_cuda_autocast_features_agree_with_cpu(root, pairs_files, full_cache, tmp_path):
    out = tmp_path / "cache"
    report = build(root, out, pairs_files, device="cuda", batch_size=None)
    assert report["computed"] == N_IMAGES and report["batch_size"] == 16
    parts = [json.loads(p.read_text()) for p in (out / "chunks").glob("*.json")]
    assert all(p["autocast_float16"] and p["device"] == "cuda" for p in parts)
    gpu, cpu = all_maps(out), all_maps(full_cache)
    for key in cpu:
        a, b = gpu[key].astype(np.float32).ravel(), cpu[key].astype(np.float32).ravel()
        cosine = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
        assert cosine > 0.999, (key, cosine)
        assert np.abs(a - b).max() < 0.05 * np.abs(b).max(), key


# ---------------------------------------------------------------------- reader


def test_reader_maps_rows_without_loading_the_store(full_cache):
    cache = FeatureCache(full_cache)
    take, cam, frame = cache.keys()[0].split("/")
    view = cache.get_array(take, cam, int(frame))
    path, row = cache.locate(take, cam, int(frame))
    assert isinstance(view, np.memmap) and Path(view.filename).resolve() == path.resolve()
    assert not view.flags.owndata and not view.flags.writeable
    assert np.load(path, mmap_mode="r").shape[0] > 1  # the file holds more than that row
    tensor = cache.get(take, cam, int(frame))
    assert not np.shares_memory(tensor.numpy(), view)
    tensor.zero_()  # a copy: the store is untouched
    assert np.abs(cache.get_array(take, cam, int(frame))).max() > 0

    keys = [k for k in cache if "aria" not in k][::-1]
    many = cache.get_many(keys)
    assert many.shape == (len(keys), 768, *GRIDS["exo"]) and many.dtype == torch.float16
    for i, key in enumerate(keys):
        assert torch.equal(many[i], cache.get(*key.split("/")))
    with pytest.raises(OmamaError, match="one view"):
        cache.get_many(cache.keys()[:6])
    with pytest.raises(OmamaError, match="not in the feature cache"):
        cache.get(take, cam, 999)
    assert (take, cam, int(frame)) in cache and f"{take}/{cam}/{frame}" in cache
    assert (take, cam, 999) not in cache
    clone = pickle.loads(pickle.dumps(cache))
    assert torch.equal(clone.get(take, cam, int(frame)), cache.get(take, cam, int(frame)))


def test_missing_cache_is_a_clear_error(tmp_path):
    with pytest.raises(OmamaError, match="no feature cache at .*build it with omama features"):
        FeatureCache(tmp_path)


# ---------------------------------------------------------------------- CLI


def test_cli_builds_resumes_and_refuses(root, tmp_path, capsys):
    """The registered full-depth ViT-S, on the train split's images only (6)."""
    train_pairs = pairs_path(root, "train", "exo2ego")
    n = len(unique_images(read_pairs(train_pairs)))
    app = new_app("test")
    register(app)
    out = tmp_path / "cache"
    common = ["features", "--root", str(root), "--out", str(out), "--no-progress"]
    model = ["--backbone", "dinov2_vits14_reg", "--random-init", "--device", "cpu"]
    by_file = [*common, *model, "--pairs", str(train_pairs), "--batch-size", "4"]
    assert run_app(app, [*by_file, "--limit", "2"]) == 0
    assert f"2 computed, 0 already cached, {n - 2} left for a later run" in capsys.readouterr().out
    by_split = [*common, *model, "--split", "train", "--direction", "exo2ego"]
    assert run_app(app, by_split) == 0
    text = capsys.readouterr().out
    assert f"{n - 2} computed, 2 already cached, 0 left" in text
    assert "MB per 1000 images" in text
    meta = FeatureCache(out).meta
    assert meta["backbone"]["name"] == "dinov2_vits14_reg"
    assert meta["backbone"]["timm_overrides"] == {}
    assert json.loads((out / "report.json").read_text())["computed"] == n - 2
    assert len(FeatureCache(out)) == n

    assert run_app(app, [*by_split, "--seed", "1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "weights sha256" in err[0] and "point --out elsewhere" in err[0]

    assert run_app(app, common) == 1
    assert "either --backbone-weights PATH or --random-init" in capsys.readouterr().err
    assert run_app(app, [*common, "--random-init", "--split", "val", "--direction", "exo2ego"]) == 1
    assert "pairs file not found" in capsys.readouterr().err


# ---------------------------------------------------------------------- backbone file, landscape


def _features(model, rgb: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.from_numpy(preprocess_image(rgb, model.image_size))[None])[0]


def _first_of_view(cache: FeatureCache, view: str) -> tuple[str, str, int]:
    take, cam, frame = next(k for k in cache if cam_kind(k.split("/")[1]) == view).split("/")
    return take, cam, int(frame)


def test_random_init_cache_writes_the_weights_it_used(root, pairs_files, full_cache, tmp_path):
    from omama_train.models.backbone_checkpoints import read_state_dict
    from omama_train.models.backbones import backbone_file_info, build_backbone
    from runtime.manifest import sha256_file

    path = full_cache / BACKBONE_FILE
    cache = FeatureCache(full_cache)
    saved = cache.meta["weights"]["saved_file"]
    assert saved == {"name": "backbone.safetensors", "sha256": sha256_file(path)}
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not safetensors' own 0600
    temporaries = [p.name for p in full_cache.iterdir() if p.name.startswith(".")]
    assert all(name.endswith(".lock") for name in temporaries), temporaries
    state = read_state_dict(path)
    assert state["trunk.pos_embed"].shape == (1, 37 * 37, 384)  # any size can be built from it
    assert {"proj.weight", "proj.bias"} <= set(state)
    assert backbone_file_info(path)["backbone"] == backbone_identity(SMALL, None)
    weights = BackboneWeights.resolve(SMALL, random_init=True, seed=0)
    index = ProcessedRoot(root)
    for view in ("ego", "exo"):
        take, cam, frame = _first_of_view(cache, view)
        rgb = read_rgb(index.image_path(take, cam, frame))
        from_file = _features(build_backbone(SMALL, SIZES[view], path), rgb)
        torch.testing.assert_close(
            from_file, _features(weights.build(SIZES[view]), rgb), rtol=0, atol=1e-5
        )
        torch.testing.assert_close(
            cache.get(take, cam, frame).float(), from_file, rtol=2e-3, atol=2e-3
        )
    # The file as --backbone-weights is the same cache: same sha256, nothing recomputed.
    assert BackboneWeights.resolve(SMALL, path).sha256 == cache.weights_sha256
    copy = copy_cache(full_cache, tmp_path / "cache")
    report = build(
        root, copy, pairs_files, random_init=False, backbone_weights=copy / BACKBONE_FILE
    )
    assert (report["computed"], report["skipped_cached"]) == (0, N_IMAGES)
    # A resumed random-init run keeps the file, rewrites a lost one, refuses another one.
    summary = summary_text(build(root, copy, pairs_files))
    assert f"export with --backbone-weights {copy / BACKBONE_FILE}" in summary
    (copy / BACKBONE_FILE).unlink()
    build(root, copy, pairs_files)
    assert sha256_file(copy / BACKBONE_FILE) == saved["sha256"]
    shutil.copy(path, tmp_path / "kept.safetensors")
    other = BackboneWeights.resolve(SMALL, random_init=True, seed=1)
    write_backbone_file(tmp_path / "other", other)
    shutil.copy(tmp_path / "other" / BACKBONE_FILE, copy / BACKBONE_FILE)
    with pytest.raises(OmamaError, match=r"backbone.safetensors holds other weights .* delete it"):
        build(root, copy, pairs_files)


def test_file_weights_without_projection_name_the_seed_to_export_with(root, pairs_files, tmp_path):
    state = random_backbone_state(SMALL, 0)
    trunk = {k[len("trunk.") :]: v.contiguous() for k, v in state.items() if k.startswith("trunk.")}
    path = tmp_path / "trunk.safetensors"
    save_file(trunk, str(path))
    report = build(
        root, tmp_path / "cache", pairs_files, random_init=False, backbone_weights=path, seed=4
    )
    assert not (tmp_path / "cache" / BACKBONE_FILE).exists()  # the user has the file
    assert f"export with --backbone-weights {path} --seed 4" in summary_text(report)


def test_portrait_frame_is_resized_to_its_views_landscape_size(
    root, pairs_files, full_cache, tmp_path
):
    from omama_train.dataset import ImageFrames, view_image_sizes
    from omama_train.models.backbones import build_backbone
    from runtime.preprocess import model_input_size

    # The first exo frame (the one the view's size is read from) turned portrait: 224x126.
    portrait = resized_root(root, tmp_path / "root", "exo", (224, 126), limit=1)
    files = [Path(str(p).replace(str(root), str(portrait))) for p in pairs_files]
    out = tmp_path / "cache"
    report = build(portrait, out, files)
    assert report["computed"] == N_IMAGES
    assert report["portrait_resized_per_view"] == {"ego": 0, "exo": 1}
    cache = FeatureCache(out)
    assert cache.meta["views"]["exo"]["source_size_hw"] == [126, 224]
    assert cache.image_size("exo") == SIZES["exo"] and cache.grid("exo") == GRIDS["exo"]
    index = ProcessedRoot(portrait)
    pairs = [p for f in files for p in read_pairs(f)]
    # The training dataset derives the same sizes and feeds the same pixels.
    assert view_image_sizes(index, pairs, lambda h, w: model_input_size(h, w, 14)) == SIZES
    take, cam, frame = _first_of_view(cache, "exo")
    rgb = read_rgb(index.image_path(take, cam, frame))
    assert rgb.shape[:2] == (224, 126)
    resized = cv2.resize(rgb, (224, 126), interpolation=cv2.INTER_NEAREST)
    np.testing.assert_array_equal(
        ImageFrames(portrait, SIZES).get(take, cam, frame).numpy(), resized
    )
    model = build_backbone(SMALL, SIZES["exo"], out / BACKBONE_FILE)
    want = _features(model, resized)
    torch.testing.assert_close(cache.get(take, cam, frame).float(), want, rtol=2e-3, atol=2e-3)
    # Its batch-mates (resized on the CPU with it) are what the plain cache holds.
    full, now = all_maps(full_cache), all_maps(out)
    for key in full:
        if key != f"{take}/{cam}/{frame}":
            np.testing.assert_allclose(now[key], full[key], rtol=2e-3, atol=2e-3)
    # A frame whose landscape size is another still is refused, before any work.
    odd = resized_root(root, tmp_path / "odd", "exo", (252, 140), limit=1)
    odd_files = [Path(str(p).replace(str(root), str(odd))) for p in pairs_files]
    refusal = r"is 126x224 px, the exo images .* are 140x252 \(or portrait 252x140"
    with pytest.raises(OmamaError, match=refusal):
        build(odd, tmp_path / "odd_cache", odd_files)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("batch_size", 0, "--batch-size must be at least 1, got 0"),
        ("flush_every", 0, "--flush-every must be at least 1, got 0"),
        ("io_threads", 0, "--io-threads must be at least 1, got 0"),
        ("limit", -1, "--limit must be at least 0, got -1"),
    ],
)
def test_settings_that_make_no_sense_are_refused(
    root, pairs_files, tmp_path, option, value, message
):
    from omama_train.features.build import build_cache

    with pytest.raises(OmamaError, match=message):
        build_cache(root, tmp_path / "cache", pairs_files, backbone=SMALL, random_init=True,
                    device="cpu", progress=False, **{option: value})  # fmt: skip
    assert not (tmp_path / "cache").exists()
