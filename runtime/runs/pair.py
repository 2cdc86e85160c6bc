"""``omama-run pair``: the query object(s) of a source image found in a destination image.

Writes ``<query>_mask.png`` per query (the predicted mask, 0/255), ``overlay.png`` (queries
on the source, predictions on the destination, confidences in the corner) and
``result.json`` (RLE, confidence, visibility, chosen candidate, top-5, per-stage latency).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from runtime import rle
from runtime.atomic import atomic_path, write_json
from runtime.candidates import Candidates, read_candidates
from runtime.errors import OmamaError
from runtime.images import read_rgb
from runtime.overlay import render_objects
from runtime.pipeline import Pipeline
from runtime.tracks import read_mask_png


@dataclass
class PairInputs:
    """The files of a pair run, read and checked before any model is loaded.

    Attributes:
        src_image, dst_image: the image files; src_rgb, dst_rgb: (H, W, 3) uint8 RGB.
        query_paths: the query mask PNGs; queries: their (H, W) masks on the source image.
        candidates_path: a ``<frame>_masks.npz`` of the destination image (its
            ``<frame>_boxes.npy`` beside it), or None for FastSAM; candidates: what it holds.
    """

    src_image: Path
    dst_image: Path
    query_paths: list[Path]
    candidates_path: Path | None
    src_rgb: np.ndarray
    dst_rgb: np.ndarray
    queries: list[np.ndarray]
    candidates: Candidates | None


def read_pair_inputs(src_image: Path, dst_image: Path, query_paths: list[Path],
                     candidates_path: Path | None = None) -> PairInputs:  # fmt: skip
    """Read both images, the query masks and the candidates file (OmamaError naming a bad one)."""
    src_rgb, dst_rgb = read_rgb(src_image), read_rgb(dst_image)
    queries = [read_mask_png(path) for path in query_paths]
    candidates = None
    if candidates_path is not None:
        name = candidates_path.name
        if not name.endswith("_masks.npz"):
            raise OmamaError(
                f"--candidates must name a <frame>_masks.npz file, got {candidates_path}"
            )
        boxes = candidates_path.with_name(name.removesuffix("_masks.npz") + "_boxes.npy")
        candidates = read_candidates(candidates_path, boxes)
    return PairInputs(src_image, dst_image, list(query_paths), candidates_path, src_rgb, dst_rgb,
                      queries, candidates)  # fmt: skip


def unique_names(paths: list[Path]) -> list[str]:
    """The file stems of ``paths``, with ``_2``, ``_3``... added to repeated ones."""
    names: list[str] = []
    for path in paths:
        name, k = path.stem, 2
        while name in names:
            name, k = f"{path.stem}_{k}", k + 1
        names.append(name)
    return names


def _write_png(path: Path, image: np.ndarray) -> None:
    """``image`` (H, W) gray or (H, W, 3) BGR uint8, written atomically."""
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), image):
            raise OmamaError(f"could not write {path}")


def run_pair(pipeline: Pipeline, inputs: PairInputs, out_dir: Path) -> dict:
    """Match every query of ``inputs`` with one matcher call, write the outputs to
    ``out_dir`` and return ``result.json``'s content."""
    src_image, dst_image = inputs.src_image, inputs.dst_image
    pipeline.check_image(inputs.src_rgb.shape[:2], "src", f"source image {src_image}")
    pipeline.check_image(inputs.dst_rgb.shape[:2], "dst", f"destination image {dst_image}")
    for path, mask in zip(inputs.query_paths, inputs.queries, strict=True):
        problem = pipeline.query_problem(mask, inputs.src_rgb.shape[:2])
        if problem:
            raise OmamaError(f"{path}: {problem}")
    matches = pipeline.match_frame(inputs.src_rgb, inputs.dst_rgb, inputs.queries,
                                   candidates=inputs.candidates)  # fmt: skip
    latency = pipeline.last_latency_ms
    out_dir.mkdir(parents=True, exist_ok=True)
    names = unique_names(inputs.query_paths)
    objects = []
    for path, name, match in zip(inputs.query_paths, names, matches, strict=True):
        mask_path = out_dir / f"{name}_mask.png"
        _write_png(mask_path, (match.mask != 0).astype("uint8") * 255)
        objects.append({"name": name, "query": str(path), "mask_png": str(mask_path),
                        "rle": rle.encode(match.mask), **match.to_json()})  # fmt: skip
    overlay_path = out_dir / "overlay.png"
    image = render_objects(inputs.src_rgb, inputs.dst_rgb, names, inputs.queries, matches)
    _write_png(overlay_path, image[:, :, ::-1])
    result = {
        "src_image": str(src_image),
        "dst_image": str(dst_image),
        "candidates": str(inputs.candidates_path) if inputs.candidates_path else "fastsam",
        **pipeline.describe(),
        "objects": objects,
        "latency_ms": {k: round(v, 3) for k, v in latency.items()},
        "overlay_png": str(overlay_path),
    }
    write_json(out_dir / "result.json", result, indent=2)
    return result


def format_pair_result(result: dict, out_dir: Path) -> str:
    """The lines ``omama-run pair`` prints: one per object, the latency, the files."""
    lines = []
    for obj in result["objects"]:
        seen = "visible" if obj["visible"] else "not visible"
        chosen = (
            f"candidate {obj['candidate']} of {obj['candidates']}"
            if obj["candidate"] >= 0
            else "no candidates"
        )
        lines.append(f"{obj['name']}: {seen}, confidence {obj['confidence']:.3f}, {chosen} -> "
                     f"{obj['mask_png']}")  # fmt: skip
    latency = result["latency_ms"]
    stages = ", ".join(f"{k} {v:.0f}" for k, v in latency.items() if k != "total")
    lines.append(f"latency {latency['total']:.0f} ms on {result['backend']} "
                 f"({result['device']}): {stages}")  # fmt: skip
    lines.append(f"wrote {result['overlay_png']} and {out_dir / 'result.json'}")
    return "\n".join(lines)
