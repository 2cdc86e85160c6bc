"""The matcher graph's input form, chosen by measurement: pooling weights or masks.

``weights``: the runtime computes ``runtime.pooling.descriptor_weights`` (numpy) and feeds
them at token resolution; ``masks``: the graph takes the masks at image size and the boxes
and pools inside. Both forms are exported, timed on one frame pair, and the faster kept.
"""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np

from export.graphs import onnxruntime_cpu
from runtime.manifest import InputDecision, ViewSpec
from runtime.pooling import descriptor_weights
from runtime.timing import median_ms
from runtime.verification.inputs import candidate_boxes, random_masks

DECISION_CANDIDATES = 64  # the TensorRT profile's opt N: what the decision is timed at
DECISION_MARGIN = 0.10  # within 10%, weights win: they move N*2*h*w floats, not N*H*W bytes


def measure_matcher_inputs(
    paths: dict[str, Path], src: ViewSpec, dst: ViewSpec, dim: int, count: int = DECISION_CANDIDATES
) -> InputDecision:
    """Time both matcher forms on one frame pair with ``count`` candidates (ONNX Runtime).

    ``paths``: the graph file of each form (``weights``, ``masks``). ``weights``: the
    runtime's numpy pooling weights + the graph; ``masks``: the graph fed with masks at
    image size and boxes. Returns medians (ms), the bytes each form feeds, and the choice:
    the faster form, with ties (within 10%) going to ``weights``.
    """
    rng = np.random.default_rng(1)
    src_masks = random_masks(rng, 1, src.image_size)
    dst_masks = random_masks(rng, count, dst.image_size)
    src_boxes = candidate_boxes(rng, src_masks)
    dst_boxes = candidate_boxes(rng, dst_masks)
    feats = {
        "src_feats": rng.standard_normal((1, dim, *src.feat_grid), dtype=np.float32),
        "dst_feats": rng.standard_normal((1, dim, *dst.feat_grid), dtype=np.float32),
    }

    def weights_feeds() -> dict:
        return {
            **feats,
            "src_weights": descriptor_weights(src_masks, src_boxes, src.image_size, src.feat_grid)[
                :, None
            ],
            "dst_weights": descriptor_weights(dst_masks, dst_boxes, dst.image_size, dst.feat_grid)[
                None
            ],
        }

    masks_feeds = {
        **feats,
        "src_mask": src_masks[:, None],
        "src_box": src_boxes[:, None],
        "dst_masks": dst_masks[None],
        "dst_boxes": dst_boxes[None],
    }
    with (
        onnxruntime_cpu(paths["weights"], "matcher") as by_weights,
        onnxruntime_cpu(paths["masks"], "matcher") as by_masks,
    ):
        weights_ms = median_ms(lambda: by_weights.infer(weights_feeds()))
        masks_ms = median_ms(lambda: by_masks.infer(masks_feeds))
    weights_bytes = sum(v.nbytes for k, v in weights_feeds().items() if k not in feats)
    masks_bytes = sum(v.nbytes for k, v in masks_feeds.items() if k not in feats)
    chosen = "weights" if weights_ms <= masks_ms * (1 + DECISION_MARGIN) else "masks"
    return InputDecision(
        chosen=chosen,
        rule="lower median latency (pooling inputs + graph); within 10% weights win, "
        "as they move far fewer bytes to the device",
        candidates=count,
        backend="onnxruntime CPUExecutionProvider",
        machine=platform.processor() or platform.machine(),
        weights_ms=round(weights_ms, 3),
        masks_ms=round(masks_ms, 3),
        weights_input_bytes=int(weights_bytes),
        masks_input_bytes=int(masks_bytes),
    )
