"""Fixtures of the ``omama serve`` tests: a frame pair of the synthetic take as files."""

from __future__ import annotations

import pytest

from runtime import rle


@pytest.fixture(scope="module")
def pair_files(assets, tmp_path_factory):
    """exo.png, ego.png and two query PNGs (the take's objects at frame 2)."""
    import cv2

    from runtime.egoexo import ProcessedRoot
    from runtime.video import VideoReader
    from tests.runtime.assets import EGO, EXO

    folder = tmp_path_factory.mktemp("serve_inputs")
    with VideoReader(assets.video(EXO)) as src, VideoReader(assets.video(EGO)) as dst:
        cv2.imwrite(str(folder / "exo.png"), src.read(2)[:, :, ::-1])
        cv2.imwrite(str(folder / "ego.png"), dst.read(2)[:, :, ::-1])
    index = ProcessedRoot(assets.root)
    queries = []
    for obj in index.objects(assets.take):
        found = index.mask_rle(assets.take, obj, EXO, 2)
        if found is not None and len(queries) < 2:
            queries.append(folder / f"query{len(queries)}.png")
            cv2.imwrite(str(queries[-1]), rle.decode(found) * 255)
    return folder / "exo.png", folder / "ego.png", queries
