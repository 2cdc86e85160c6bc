"""Fixtures of the runtime tests: the shared assets (:mod:`tests.runtime.assets`, built once
per test process), a frame pair of the synthetic take and an ONNX Runtime pipeline."""

from __future__ import annotations

import pytest

from runtime import rle


@pytest.fixture(scope="session")
def assets(tmp_path_factory):
    pytest.importorskip("torch")
    from tests.runtime.assets import build_assets

    return build_assets(tmp_path_factory.getbasetemp() / "pipeline_assets")


@pytest.fixture(scope="module")
def frames(assets):
    """(source exo frame, destination ego frame, query masks by object) at frame 2."""
    from runtime.egoexo import ProcessedRoot
    from runtime.video import VideoReader
    from tests.runtime.assets import EGO, EXO

    with VideoReader(assets.video(EXO)) as src, VideoReader(assets.video(EGO)) as dst:
        src_rgb, dst_rgb = src.read(2), dst.read(2)
    index = ProcessedRoot(assets.root)
    queries = {
        obj: rle.decode(index.mask_rle(assets.take, obj, EXO, 2))
        for obj in index.objects(assets.take)
        if index.mask_rle(assets.take, obj, EXO, 2) is not None
    }
    gt_dst = {
        obj: rle.decode(r)
        for obj in index.objects(assets.take)
        if (r := index.mask_rle(assets.take, obj, EGO, 2)) is not None
    }
    return src_rgb, dst_rgb, queries, gt_dst


@pytest.fixture(scope="module")
def ort_pipe(assets):
    from runtime.pipeline import Pipeline

    with Pipeline(assets.weights, backend="onnxruntime", device="cpu", threads=1) as pipe:
        yield pipe
