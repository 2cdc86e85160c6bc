"""Golden files: inputs at the real sizes and the torch fp32 reference records, per model.

``omama export`` writes ``golden/<model>.npz`` (hashed in the manifest) so that any machine
can re-verify the artifacts without torch (``omama-run verify``), as polygraphy saves
reference outputs to compare with later. A file holds a few cases; each case has the
model's feeds, stored compactly but exactly:

- ``rgb``: uint8 images (B, H, W, 3) whose feed is ``runtime.preprocess.normalize_image``
  of each (the backbone's input, from a noise-free synthetic scene: a few kB);
- ``unit``: uint8 (B, 3, H, W) whose feed is ``/ 255`` in float32 (FastSAM's letterboxed
  input);
- ``lowrank``: matcher features rebuilt exactly from integer factors
  (:func:`runtime.verification.inputs.lowrank_features`);
- ``array``: stored as is (pooling weights, masks, boxes: they compress well).

and the reference record of :mod:`runtime.verification.compare`. The ``.npz`` is written
with ``numpy.savez_compressed`` and read with ``allow_pickle=False``: a golden file cannot
execute code. Its ``meta`` entry is JSON: format version, model, kind, and per case the
feed encodings and the case's facts (e.g. which calls count for fp16 agreement).
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runtime.atomic import write_bytes
from runtime.errors import OmamaError
from runtime.pooling import descriptor_weights, mask_boxes
from runtime.preprocess import normalize_image
from runtime.verification.inputs import (
    candidate_boxes,
    lowrank_factors,
    lowrank_features,
    random_masks,
    synthetic_scene,
)

GOLDEN_DIR = "golden"
FORMAT = "omama.golden"
FORMAT_VERSION = 1
# Matcher calls of a golden file: (objects B, candidates N, empty candidate indices).
MATCHER_CASES: tuple[tuple[int, int, tuple[int, ...]], ...] = (
    (1, 1, ()),
    (2, 7, (3,)),
    (1, 48, ()),
    (3, 24, ()),
)


@dataclass
class GoldenCase:
    """One call of a model: its stored inputs (``stored``, decoded by ``encodings``),
    the reference record and JSON-able facts (``info``)."""

    stored: dict[str, np.ndarray]
    encodings: dict[str, str]
    reference: dict[str, np.ndarray] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def feeds(self) -> dict[str, np.ndarray]:
        """The exact arrays the model's session is fed."""
        feeds = {}
        for name, how in self.encodings.items():
            if how == "array":
                feeds[name] = self.stored[name]
            elif how == "rgb":
                feeds[name] = np.stack([normalize_image(image) for image in self.stored[name]])
            elif how == "unit":
                feeds[name] = self.stored[name].astype(np.float32) / np.float32(255.0)
            elif how == "lowrank":
                grid = tuple(int(v) for v in self.info["grids"][name])
                feeds[name] = lowrank_features(
                    self.stored[f"{name}.u"], self.stored[f"{name}.v"], grid
                )
            else:
                raise OmamaError(f"golden input {name!r} has unknown encoding {how!r}")
        return feeds


def write_golden(path: str | os.PathLike, model: str, kind: str, cases: list[GoldenCase]) -> Path:
    """Write ``cases`` of ``model`` to ``path`` (compressed ``.npz``), atomically."""
    arrays: dict[str, np.ndarray] = {}
    described = []
    for i, case in enumerate(cases):
        for key, value in case.stored.items():
            arrays[f"case{i}/in/{key}"] = np.asarray(value)
        for key, value in case.reference.items():
            arrays[f"case{i}/ref/{key}"] = np.asarray(value)
        described.append(
            {
                "encodings": case.encodings,
                "info": case.info,
                "stored": sorted(case.stored),
                "reference": sorted(case.reference),
            }
        )
    meta = {"format": FORMAT, "version": FORMAT_VERSION, "model": model, "kind": kind,
            "cases": described}  # fmt: skip
    arrays["meta"] = np.asarray(json.dumps(meta, sort_keys=True))
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(path, buffer.getvalue())
    return path


def read_golden(path: str | os.PathLike) -> tuple[dict[str, Any], list[GoldenCase]]:
    """(meta, cases) of a golden file; OmamaError naming the file when it is not one."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            if meta.get("format") != FORMAT or meta.get("version") != FORMAT_VERSION:
                raise OmamaError(f"{path} is not an omama golden file (version {FORMAT_VERSION})")
            cases = []
            for i, case in enumerate(meta["cases"]):
                cases.append(
                    GoldenCase(
                        stored={k: data[f"case{i}/in/{k}"] for k in case["stored"]},
                        encodings=dict(case["encodings"]),
                        reference={k: data[f"case{i}/ref/{k}"] for k in case["reference"]},
                        info=dict(case["info"]),
                    )
                )
    except OmamaError:
        raise
    except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise OmamaError(f"{path} is not a readable golden file: {exc}") from exc
    return meta, cases


# ----------------------------------------------------------------------------- inputs


def backbone_cases(image_size: tuple[int, int], seed: int) -> list[GoldenCase]:
    """One noise-free synthetic scene at the view's model size (batch 1)."""
    rng = np.random.default_rng([seed, 11, *image_size])
    scene = synthetic_scene(rng, image_size, noise=0.0)
    return [GoldenCase({"image": scene[None]}, {"image": "rgb"})]


def matcher_cases(
    form: str,
    src: tuple[tuple[int, int], tuple[int, int]],
    dst: tuple[tuple[int, int], tuple[int, int]],
    dim: int,
    seed: int,
    max_candidates: int | None = None,
) -> list[GoldenCase]:
    """:data:`MATCHER_CASES` for a matcher graph of input ``form`` (``weights`` / ``masks``).

    ``src`` / ``dst``: (image size (H, W), token grid (h, w)) of each view. Features are
    low-rank integer products shared by every case (:func:`lowrank_features`); query
    boxes are the masks' own boxes, candidate boxes detector-like. ``max_candidates``
    caps N (a TensorRT profile's maximum).
    """
    rng = np.random.default_rng([seed, 12])
    (src_size, src_grid), (dst_size, dst_grid) = src, dst
    factors = {
        "src_feats": lowrank_factors(rng, dim, src_grid[0] * src_grid[1]),
        "dst_feats": lowrank_factors(rng, dim, dst_grid[0] * dst_grid[1]),
    }
    grids = {"src_feats": list(src_grid), "dst_feats": list(dst_grid)}
    cases = []
    for batch, count, empty in MATCHER_CASES:
        count = min(count, max_candidates) if max_candidates else count
        src_masks = random_masks(rng, batch, src_size)
        dst_masks = random_masks(rng, count, dst_size, empty=tuple(e for e in empty if e < count))
        src_boxes = mask_boxes(src_masks).astype(np.float32)
        dst_boxes = candidate_boxes(rng, dst_masks)
        stored: dict[str, np.ndarray] = {}
        encodings = {}
        for name, (u, v) in factors.items():
            stored[f"{name}.u"], stored[f"{name}.v"] = u, v
            encodings[name] = "lowrank"
        if form == "weights":
            stored["src_weights"] = descriptor_weights(src_masks, src_boxes, src_size, src_grid)[
                :, None
            ]
            stored["dst_weights"] = descriptor_weights(dst_masks, dst_boxes, dst_size, dst_grid)[
                None
            ]
        else:
            stored.update(
                src_mask=src_masks[:, None],
                src_box=src_boxes[:, None],
                dst_masks=dst_masks[None],
                dst_boxes=dst_boxes[None],
            )
        encodings.update({k: "array" for k in stored if "." not in k})
        cases.append(GoldenCase(stored, encodings, info={"grids": grids, "agreement": True}))
    return cases


def fastsam_cases(imgsz: int, seed: int) -> list[GoldenCase]:
    """One noise-free synthetic scene (4:3) letterboxed to ``imgsz``; the letterbox
    geometry goes into the reference record."""
    from runtime.fastsam_post import letterbox

    rng = np.random.default_rng([seed, 13])
    scene = synthetic_scene(rng, (imgsz * 3 // 4, imgsz), noise=0.0)
    tensor, geom = letterbox(scene, imgsz)
    stored = np.round(tensor * 255.0).astype(np.uint8)  # exact: the letterbox is uint8 / 255
    case = GoldenCase({"images": stored}, {"images": "unit"})
    case.info["geometry"] = [*geom.image_hw, *geom.input_hw, *geom.resized_hw, geom.top, geom.left]
    return [case]
