"""fp16 ONNX variants: fp16 weights, fp32 I/O, within the fp16 tolerances."""

from __future__ import annotations

import numpy as np
import onnx

from export.graphs import onnxruntime_cpu
from runtime.manifest import load_manifest
from runtime.verification.tolerances import TOLERANCES
from tests.export.helpers import (
    matcher_parity,
    rebuilt_matcher,
    records,
    reference_case,
    training_similarities,
)


def test_fp16_variant_holds_fp16_weights_and_meets_fp16_tolerances(exo2ego):
    result, _, out = exo2ego
    model = onnx.load(out / "matcher_fp16.onnx")
    types = {init.data_type for init in model.graph.initializer if len(init.dims) >= 2}
    assert onnx.TensorProto.FLOAT16 in types
    assert (out / "matcher_fp16.onnx").stat().st_size < 0.6 * (out / "matcher.onnx").stat().st_size
    (record,) = records(result, "matcher_fp16.onnx")
    by_metric = {c.metric: c for c in record.checks if c.gated}
    assert by_metric["max abs err"].value <= TOLERANCES["fp16"]["similarities_max_abs"] == 5e-3
    assert by_metric["argmax agreement"].value >= 0.99
    assert by_metric["argmax agreement"].detail.startswith("200 picks")
    # And independently of the export's own check: a few fresh sets, fp16 ORT vs the
    # training code's descriptors and matcher.
    manifest = load_manifest(out)
    matcher = rebuilt_matcher(manifest)
    parity = matcher_parity(manifest, matcher)
    with onnxruntime_cpu(out / "matcher_fp16.onnx", threads=1) as session:
        for seed in range(5):
            case = reference_case(matcher, parity.src, parity.dst, 2, 16, seed=100 + seed)
            got = session.infer(parity.feeds(case))["similarities"]
            expected = training_similarities(matcher, parity, case)
            np.testing.assert_allclose(got, expected, rtol=0, atol=5e-3)


def test_fp16_graph_records_what_stayed_fp32(exo2ego):
    manifest = load_manifest(exo2ego[2])
    matcher = manifest.select("matcher", precision="fp16").graph
    assert matcher.converter.startswith("onnxconverter-common ")
    assert matcher.fp32_ops["LayerNormalization"] >= 1
    assert matcher.fp32_nodes_by_prefix > 0  # the masks-input pooling weights
    assert matcher.opset == manifest.select("matcher").graph.opset
    assert any(line.startswith("  matcher_fp16.onnx: fp16 weights, fp32 I/O; kept fp32: ")
               and "nodes by name (pooling weights / NMS)" in line
               for line in exo2ego[1])  # fmt: skip
