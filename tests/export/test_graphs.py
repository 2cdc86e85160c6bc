"""The exported graphs: shapes and dtypes, folding and checks, dynamic axes, and the
engine-friendly pooling weights against the training code."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from export.graphs import onnxruntime_cpu
from omama_train.models.artifact_modules import GraphDescriptorWeights
from omama_train.models.descriptors import descriptor_weights as torch_descriptor_weights
from runtime.manifest import TensorSpec, load_manifest
from runtime.verification.inputs import candidate_boxes, random_images, random_masks
from tests.export.helpers import (
    matcher_parity,
    rebuilt_matcher,
    reference_case,
    small_config,
    training_similarities,
)


def test_manifest_shapes_and_dtypes(exo2ego):
    manifest = load_manifest(exo2ego[2])
    backbone = manifest.select("backbone_exo")
    assert backbone.inputs == (TensorSpec("image", ("batch", 3, 56, 84), "float32"),)
    assert backbone.outputs == (TensorSpec("feats", ("batch", 768, 4, 6), "float32"),)
    matcher = manifest.select("matcher")
    specs = {t.name: t for t in matcher.inputs}
    assert list(specs) == [
        "src_feats",
        "dst_feats",
        "src_mask",
        "src_box",
        "dst_masks",
        "dst_boxes",
    ]
    assert specs["src_feats"].shape == (1, 768, 4, 6)
    assert specs["src_mask"] == TensorSpec("src_mask", ("B", 1, 56, 84), "uint8")
    assert specs["dst_masks"] == TensorSpec("dst_masks", (1, "N", 70, 70), "uint8")
    assert specs["dst_boxes"] == TensorSpec("dst_boxes", (1, "N", 4), "float32")
    assert matcher.outputs == (TensorSpec("similarities", ("B", "N"), "float32"),)
    fastsam = manifest.select("fastsam")
    assert [t.shape for t in fastsam.outputs] == [(1, 300, 38), (1, 32, 32, 32)]
    # fp16 variants keep float32 inputs and outputs.
    for entry in manifest.files:
        if entry.precision == "fp16":
            fp32 = manifest.select(entry.model)
            assert entry.inputs == fp32.inputs and entry.outputs == fp32.outputs


def test_graphs_are_folded_checked_and_free_of_interpolation(exo2ego):
    manifest = load_manifest(exo2ego[2])
    for entry in manifest.files:
        if entry.precision == "fp32":
            assert entry.graph.checker == "ok" and entry.graph.shape_inference == "ok"
            assert entry.graph.nodes_final <= entry.graph.nodes_exported
    graph = manifest.select("backbone_ego").graph
    assert graph.nodes_final < graph.nodes_exported  # constant folding did something
    ops = {n.op_type for n in onnx.load(exo2ego[2] / "backbone_ego.onnx").graph.node}
    assert not ops & {"Resize", "Upsample", "If", "Loop"}  # baked positional table


@pytest.mark.parametrize("count", [1, 7, 300])
@pytest.mark.parametrize("batch", [1, 3])
def test_dynamic_candidates_and_objects(exo2ego, ego2exo, count, batch):
    for out in (exo2ego[2], ego2exo[3]):
        manifest = load_manifest(out)
        matcher = rebuilt_matcher(manifest)
        parity = matcher_parity(manifest, matcher)
        case = reference_case(matcher, parity.src, parity.dst, batch, count, count + 10 * batch)
        with onnxruntime_cpu(out / "matcher.onnx", threads=1) as session:
            got = session.infer(parity.feeds(case))["similarities"]
        expected = training_similarities(matcher, parity, case)
        assert got.shape == (batch, count)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_backbone_runs_at_other_batch_sizes(exo2ego):
    from export.models import build_models

    out = exo2ego[2]
    config = small_config(out, direction="exo2ego", include_fastsam=False)
    backbone = build_models(config, out).backbones["ego"]
    images = random_images(np.random.default_rng(3), 3, backbone.image_size)
    with onnxruntime_cpu(out / "backbone_ego.onnx", threads=1) as session:
        got = session.infer({"image": images})["feats"]
    with torch.no_grad():
        expected = backbone(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("image_size", [(42, 70), (56, 84)])
def test_graph_descriptor_weights_equal_the_training_code(image_size):
    """The engine-friendly weights (float32, integer box math) equal the reference's, also
    when the pooling grid is not an integer fraction of the image (42 -> 10 rows)."""
    grid = (image_size[0] // 14, image_size[1] // 14)
    rng = np.random.default_rng(5)
    masks = random_masks(rng, 9, image_size, empty=(4,))
    boxes = candidate_boxes(rng, masks)
    boxes[0] = [0.0, 0.0, image_size[1] + 50.0, image_size[0] + 50.0]  # clamped on all sides
    module = GraphDescriptorWeights(image_size, grid)
    masks_t, boxes_t = torch.from_numpy(masks)[None], torch.from_numpy(boxes)[None]
    got = module(masks_t, boxes_t)
    expected = torch_descriptor_weights(masks_t, boxes_t, image_size, grid)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert torch.all(got[0, 4, 0] == 0)  # the empty mask has no mask weights
