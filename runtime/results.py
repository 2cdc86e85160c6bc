"""Results JSON (Ego-Exo4D submission format) and correspondence GT JSON: read, build, validate.

Results (docs/reference.md, section 7)::

    {"exo-ego": {"results": {take: {"masks": {obj: {"<srccam>_<dstcam>": {frame:
        {"pred_mask": RLE, "confidence": float}}}}, "subsample_idx": [frame, ...]}}}}

(``ego-exo`` and ``<egocam>_<exocam>`` for the other direction). ``confidence`` may also be a
one-element list, as the O-MaMa scripts write it. GT::

    {"annotations": {take: {"masks": {obj: {cam: {frame: RLE}}},
                            "annotated_frames": {obj: {cam: [int, ...]}}}}}

A frame listed in ``annotated_frames[obj][cam]`` without a mask in ``masks[obj][cam]`` is
an annotated frame where the object is not visible in that camera.
"""

from __future__ import annotations

import os

import numpy as np

from runtime import rle
from runtime.atomic import write_json
from runtime.egoexo import DIRECTIONS, check_direction, is_ego_cam, results_key
from runtime.errors import OmamaError
from runtime.jsonrecords import read_json_object
from runtime.metrics import confidence_value, pair_key, track_order

# ----------------------------------------------------------------------------- results


def new_results(direction: str) -> dict:
    """An empty results dict for ``direction`` (``exo2ego`` | ``ego2exo``)."""
    return {results_key(direction): {"results": {}}}


def results_direction(results: dict) -> str:
    """The direction of a results dict, from its top-level key."""
    found = [d for d in DIRECTIONS if results_key(d) in results]
    if len(found) != 1:
        raise OmamaError(
            "a results dict holds exactly one of the keys 'exo-ego' or 'ego-exo', "
            f"got {sorted(results)[:4]}"
        )
    return found[0]


def add_prediction(
    results: dict,
    take: str,
    obj: str,
    src_cam: str,
    dst_cam: str,
    frame: int | str,
    mask: np.ndarray | dict,
    confidence: float,
) -> None:
    """Record one predicted mask (H, W) (or its RLE) and visibility confidence in ``results``.

    ``results`` comes from :func:`new_results`; the source/destination cams must fit its
    direction (exo2ego: source exo, destination ego). The frame is added to the take's
    ``subsample_idx`` once.
    """
    direction = results_direction(results)
    src_is_ego = is_ego_cam(src_cam)
    if src_is_ego == is_ego_cam(dst_cam) or src_is_ego != (direction == "ego2exo"):
        raise OmamaError(
            f"cameras {src_cam} -> {dst_cam} do not fit a {direction} results file "
            "(exo2ego: exo source, ego destination)"
        )
    rle_dict = mask if isinstance(mask, dict) else rle.encode(np.asarray(mask))
    take_entry = results[results_key(direction)]["results"].setdefault(
        take, {"masks": {}, "subsample_idx": []}
    )
    frame_key = str(int(frame))
    obj_entry = take_entry["masks"].setdefault(obj, {})
    obj_entry.setdefault(pair_key(src_cam, dst_cam), {})[frame_key] = {
        "pred_mask": {"size": list(rle_dict["size"]), "counts": rle_dict["counts"]},
        "confidence": float(confidence),
    }
    if frame_key not in take_entry["subsample_idx"]:
        take_entry["subsample_idx"].append(frame_key)


def write_results(path: str | os.PathLike, results: dict) -> None:
    """Write a results dict atomically."""
    results_direction(results)
    write_json(path, results)


def results_takes(data: dict, direction: str, path: str | os.PathLike = "predictions") -> dict:
    """``{take: take_entry}`` of a loaded results file for ``direction``, or a clear error."""
    key = results_key(check_direction(direction))
    if key not in data:
        other = [d for d in DIRECTIONS if results_key(d) in data]
        hint = (
            f"; it holds {results_key(other[0])!r} results (--direction {other[0]})"
            if other
            else ""
        )
        raise OmamaError(f"predictions file {path} has no {key!r} results{hint}")
    block = data[key]
    if not isinstance(block, dict) or not isinstance(block.get("results"), dict):
        raise OmamaError(f"predictions file {path}: {key!r} must hold a 'results' object")
    return block["results"]


def load_results(path: str | os.PathLike, direction: str) -> dict:
    """Read a results JSON and return its ``{take: take_entry}`` for ``direction``."""
    return results_takes(read_json_object(path, "predictions file"), direction, path)


def validate_results(gt_annotations: dict, takes: dict, direction: str) -> int:
    """Check that ``takes`` (from :func:`load_results`) has an entry for every observation.

    Every GT take, object, ``<src>_<dst>`` pair and evaluated frame must be present with a
    ``pred_mask`` RLE and a numeric ``confidence``; the first missing piece raises an
    :class:`OmamaError` naming it. Extra takes or frames are allowed (not evaluated).
    Returns the number of observations.
    """
    n = 0
    for take, gt_take in gt_annotations.items():
        if take not in takes:
            raise OmamaError(f"predictions have no take {take!r} (it is in the GT)")
        pred_take = takes[take]
        if not isinstance(pred_take, dict) or not isinstance(pred_take.get("masks"), dict):
            raise OmamaError(f"predictions for take {take!r} lack a 'masks' object")
        for obj, src, dst, frames in track_order(gt_take, direction, take):
            objs = pred_take["masks"]
            if obj not in objs:
                raise OmamaError(f"predictions have no object {obj!r} in take {take!r}")
            key = pair_key(src, dst)
            if key not in objs[obj]:
                raise OmamaError(
                    f"predictions have no {key!r} entry for object {obj!r} in take {take!r}"
                )
            for frame in frames:
                where = f"take {take!r} object {obj!r} ({key}) frame {frame}"
                entry = objs[obj][key].get(frame)
                if entry is None:
                    raise OmamaError(
                        f"predictions have no frame {frame} for object {obj!r} ({key}) "
                        f"in take {take!r}"
                    )
                if not isinstance(entry, dict) or "pred_mask" not in entry:
                    raise OmamaError(f"prediction for {where} has no 'pred_mask'")
                if "confidence" not in entry:
                    raise OmamaError(f"prediction for {where} has no 'confidence'")
                confidence_value(entry["confidence"], f"prediction for {where}")
                mask = entry["pred_mask"]
                if not isinstance(mask, dict) or "size" not in mask or "counts" not in mask:
                    raise OmamaError(f"prediction for {where}: 'pred_mask' is not an RLE dict")
                n += 1
    return n


# ----------------------------------------------------------------------------- ground truth


def new_gt() -> dict:
    """An empty correspondence GT dict."""
    return {"annotations": {}}


def add_gt_annotation(
    gt: dict, take: str, obj: str, cam: str, frame: int | str, mask: np.ndarray | dict | None
) -> None:
    """Mark ``frame`` annotated for ``obj`` in ``cam`` and store its mask (H, W) or RLE.

    ``mask`` None (or an empty mask) records an annotated frame where the object is not
    visible in that camera.
    """
    take_entry = gt["annotations"].setdefault(take, {"masks": {}, "annotated_frames": {}})
    frames = take_entry["annotated_frames"].setdefault(obj, {}).setdefault(cam, [])
    cam_masks = take_entry["masks"].setdefault(obj, {}).setdefault(cam, {})
    if int(frame) not in frames:
        frames.append(int(frame))
    if mask is None:
        return
    rle_dict = mask if isinstance(mask, dict) else rle.encode(np.asarray(mask))
    if rle.area(rle_dict) > 0:
        cam_masks[str(int(frame))] = {"size": list(rle_dict["size"]), "counts": rle_dict["counts"]}


def load_gt(path: str | os.PathLike) -> dict:
    """Read a correspondence GT JSON and return its ``annotations`` ({take: entry})."""
    data = read_json_object(path, "GT file")
    annotations = data.get("annotations")
    if not isinstance(annotations, dict):
        raise OmamaError(f"GT file {path} has no 'annotations' object")
    for take, entry in annotations.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("masks"), dict):
            raise OmamaError(f"GT file {path}: take {take!r} has no 'masks' object")
        if not isinstance(entry.get("annotated_frames"), dict):
            raise OmamaError(f"GT file {path}: take {take!r} has no 'annotated_frames' object")
    return annotations
