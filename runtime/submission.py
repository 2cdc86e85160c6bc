"""The Ego-Exo4D correspondence challenge submission: one EvalAI file with both directions,
checked against every rule the official evaluator asserts before anything is written.

File (as the challenge's own ``generate_evalai_submission.py`` writes it; its ``"xx"`` values
carry the comment "DO NOT CHANGE")::

    {"exo-ego": {"version": "xx", "challenge": "xx", "results": {take: take_entry}},
     "ego-exo": {"version": "xx", "challenge": "xx", "results": {take: take_entry}}}

``take_entry`` is a results file's (:mod:`runtime.results`). The official evaluator
(``evaluate_exoego.py`` / ``evaluate_egoexo.py``) asserts, per direction:

- exactly the GT's takes (``len(results) == len(annotations)``), each with ``masks`` and
  ``subsample_idx``; exactly the GT's objects per take, even those it never scores (no ego
  or no exo camera);
- for each scored object (one ego camera, at least one exo camera) and exo camera, the
  ``<src>_<dst>`` entry, and in it every frame of the source view's GT masks, each with
  ``pred_mask`` and ``confidence``;
- where the object is visible in the destination GT, a mask of exactly the GT frame's size
  scaled so its longer side is 480 (:func:`runtime.metrics.egoexo4d_size`): any other size
  stops it in its debugger; ``confidence > 0.5`` on a one-element list raises in Python 3.

Source-view frames that are not annotated in the destination view are required but never
scored; when missing they are added as placeholders (empty mask, confidence 0.0), and GT
objects it never scores as empty entries, so results from ``omama-run`` (which predicts only
scored observations) pass. Everything else that is missing is an error naming the first
take / object / camera pair / frame and the rule.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np

from runtime import rle
from runtime.egoexo import DIRECTIONS, is_ego_cam, results_key
from runtime.errors import OmamaError
from runtime.metrics import EGOEXO4D_SIZE_PX, egoexo4d_size, pair_key

# Written as the official generator writes them: the challenge host keys on these values.
CHALLENGE_FIELDS: dict[str, str] = {"version": "xx", "challenge": "xx"}
PLACEHOLDER_CONFIDENCE = 0.0
SIZE_HINT = "rerun omama-run with --mask-size submission"
MAX_FRAME_PX = 16384  # frames up to 16K on the longer side: what "some frame size" ranges over


@dataclass
class DirectionCheck:
    """What the checks of one direction found and changed."""

    direction: str
    takes: int = 0
    objects: int = 0
    entries: int = 0  # prediction entries written
    scored: int = 0  # observations the official evaluator scores
    placeholders: int = 0  # required but unscored entries added (frames and objects)
    list_confidences: int = 0  # one-element list confidences written as floats
    unchecked: list[str] = field(default_factory=list)  # what could not be checked (no GT)

    def summary(self) -> str:
        line = (
            f"{self.direction}: {self.takes} takes, {self.objects} objects, {self.entries} "
            f"entries ({self.scored} scored by the evaluator)"
        )
        if self.placeholders:
            line += (
                f"; {self.placeholders} required but never scored entries (objects, frames) "
                "added as placeholders"
            )
        if self.list_confidences:
            line += f"; {self.list_confidences} one-element list confidences written as floats"
        return line


def _where(direction: str, take: str, obj: str | None = None, key: str | None = None,
           frame: str | None = None) -> str:  # fmt: skip
    parts = [f"{direction}: take {take!r}"]
    if obj is not None:
        parts.append(f"object {obj!r}")
    if key is not None:
        parts.append(f"({key})")
    if frame is not None:
        parts.append(f"frame {frame}")
    return " ".join(parts)


# ----------------------------------------------------------------------------- entries


def _normalised_entry(entry: object, where: str, check: DirectionCheck) -> dict:
    """``{"pred_mask": compressed RLE, "confidence": float}`` of one entry, or an error."""
    if not isinstance(entry, dict):
        raise OmamaError(f"{where}: the entry must be an object with 'pred_mask' and 'confidence'")
    for key in ("pred_mask", "confidence"):
        if key not in entry:
            raise OmamaError(f"{where}: no {key!r} (the evaluator requires it)")
    confidence = entry["confidence"]
    if isinstance(confidence, list | tuple) and len(confidence) == 1:
        confidence = confidence[0]
        check.list_confidences += 1
    if isinstance(confidence, bool) or not isinstance(confidence, int | float):
        raise OmamaError(f"{where}: 'confidence' must be a number, got {str(confidence)[:40]}")
    if not math.isfinite(confidence):
        raise OmamaError(f"{where}: 'confidence' is {confidence} (it must be finite)")
    mask = entry["pred_mask"]
    try:
        if isinstance(mask, dict) and isinstance(mask.get("counts"), list):
            mask = rle.encode(rle.decode(mask))  # the evaluator reads compressed counts only
        rle.area(mask)  # the counts must cover the size exactly
    except OmamaError as exc:
        raise OmamaError(f"{where}: 'pred_mask' {exc}") from exc
    return {
        "pred_mask": {"size": [int(s) for s in mask["size"]], "counts": mask["counts"]},
        "confidence": float(confidence),
    }


def _normalised_takes(takes: dict, direction: str, check: DirectionCheck) -> dict:
    """A copy of ``takes`` with every entry checked and normalised (:func:`_normalised_entry`)."""
    out = {}
    for take, entry in takes.items():
        where = _where(direction, take)
        if not isinstance(entry, dict) or not isinstance(entry.get("masks"), dict):
            raise OmamaError(f"{where}: no 'masks' object (the evaluator requires it)")
        if not isinstance(entry.get("subsample_idx"), list):
            raise OmamaError(f"{where}: no 'subsample_idx' list (the evaluator requires it)")
        masks = {}
        for obj, pairs in entry["masks"].items():
            if not isinstance(pairs, dict):
                raise OmamaError(f"{_where(direction, take, obj)}: must map camera pairs")
            masks[obj] = {}
            for key, frames in pairs.items():
                if not isinstance(frames, dict):
                    raise OmamaError(f"{_where(direction, take, obj, key)}: must map frames")
                masks[obj][key] = {
                    str(frame): _normalised_entry(
                        value, _where(direction, take, obj, key, frame), check
                    )
                    for frame, value in frames.items()
                }
        out[take] = {**entry, "masks": masks, "subsample_idx": list(entry["subsample_idx"])}
    check.entries = _count_entries(out)
    return out


def _count_entries(takes: dict) -> int:
    return sum(len(f) for t in takes.values() for p in t["masks"].values() for f in p.values())


# ----------------------------------------------------------------------------- with GT


def _camera_sizes(gt_take: dict) -> dict[str, tuple[int, int]]:
    """``{cam: (H, W)}`` of the GT frames, from the take's GT masks (one size per camera)."""
    sizes: dict[str, tuple[int, int]] = {}
    for cams in gt_take["masks"].values():
        for cam, frames in cams.items():
            for mask in frames.values():
                sizes.setdefault(cam, (int(mask["size"][0]), int(mask["size"][1])))
                break
    return sizes


def _check_size(entry: dict, gt_size_hw: tuple[int, int] | None, where: str) -> None:
    if gt_size_hw is None:
        return
    expected = egoexo4d_size(gt_size_hw)
    h, w = entry["pred_mask"]["size"]
    if (h, w) != expected:
        raise OmamaError(
            f"{where}: mask is {h}x{w} but the official evaluator compares it with the GT "
            f"({gt_size_hw[0]}x{gt_size_hw[1]}) resized to {expected[0]}x{expected[1]} "
            f"(longer side {EGOEXO4D_SIZE_PX}): {SIZE_HINT}"
        )


def _placeholder(size_hw: tuple[int, int]) -> dict:
    return {
        "pred_mask": rle.encode(np.zeros(size_hw, np.uint8)),
        "confidence": PLACEHOLDER_CONFIDENCE,
    }


def _check_track(pred_frames: dict, gt_take: dict, obj: str, src: str, dst: str,
                 cam_size: tuple[int, int] | None, where: str,
                 check: DirectionCheck) -> None:  # fmt: skip
    """Every source-view GT frame of one (object, camera pair) is in ``pred_frames`` at the
    480-rule size (``cam_size``: the destination camera's GT frame size, if any mask gives
    it); unscored missing frames are filled with placeholders."""
    annotated = gt_take["annotated_frames"].get(obj, {}).get(dst)
    if annotated is None:
        raise OmamaError(f"GT: no annotated_frames for object {obj!r} camera {dst!r} ({where})")
    annotated = {int(f) for f in annotated}
    dst_masks = gt_take["masks"][obj].get(dst, {})
    for frame in gt_take["masks"][obj].get(src, {}):
        at = f"{where} frame {frame}"
        scored = int(frame) in annotated
        if frame in dst_masks:
            gt_size = (int(dst_masks[frame]["size"][0]), int(dst_masks[frame]["size"][1]))
        else:
            gt_size = cam_size
        if frame not in pred_frames:
            if scored:
                raise OmamaError(f"{at}: missing (rule: every annotated frame of the GT)")
            if gt_size is None:
                raise OmamaError(f"{at}: missing, and the GT gives no frame size to fill it")
            pred_frames[frame] = _placeholder(egoexo4d_size(gt_size))
            check.placeholders += 1
            continue
        _check_size(pred_frames[frame], gt_size, at)
        check.scored += int(scored)


def _check_take(pred_take: dict, gt_take: dict, direction: str, take: str,
                check: DirectionCheck) -> None:  # fmt: skip
    masks = pred_take["masks"]
    cam_sizes = _camera_sizes(gt_take)
    extra = [obj for obj in masks if obj not in gt_take["masks"]]
    if extra:
        raise OmamaError(
            f"{_where(direction, take, extra[0])}: not in the GT (rule: exactly the GT's objects)"
        )
    for obj, cams in gt_take["masks"].items():
        ego = [c for c in cams if is_ego_cam(c)]
        exo = [c for c in cams if not is_ego_cam(c)]
        if len(ego) > 1:
            raise OmamaError(f"GT: {_where(direction, take, obj)} has several ego cams: {ego}")
        if obj not in masks:
            if ego and exo:
                raise OmamaError(
                    f"{_where(direction, take, obj)}: missing (rule: every object of the GT)"
                )
            masks[obj] = {}  # required by the evaluator, never scored
            check.placeholders += 1
            continue
        if not ego:
            continue
        for cam in exo:
            src, dst = (cam, ego[0]) if direction == "exo2ego" else (ego[0], cam)
            key = pair_key(src, dst)
            where = _where(direction, take, obj, key)
            if key not in masks[obj]:
                raise OmamaError(f"{where}: missing (rule: every camera pair of the GT)")
            _check_track(masks[obj][key], gt_take, obj, src, dst, cam_sizes.get(dst), where, check)
    check.objects += len(gt_take["masks"])


def check_with_gt(takes: dict, gt_annotations: dict, direction: str) -> tuple[dict, DirectionCheck]:
    """Check one direction's ``{take: entry}`` against its GT; returns the entries to write
    (normalised, placeholders added) and what was found. Raises on the first broken rule."""
    check = DirectionCheck(direction)
    out = _normalised_takes(takes, direction, check)
    extra = [t for t in out if t not in gt_annotations]
    if extra:
        raise OmamaError(
            f"{_where(direction, extra[0])}: not in the GT (rule: exactly the GT's "
            f"{len(gt_annotations)} takes)"
        )
    for take, gt_take in gt_annotations.items():
        if take not in out:
            raise OmamaError(f"{_where(direction, take)}: missing (rule: every take of the GT)")
        _check_take(out[take], gt_take, direction, take, check)
    check.takes = len(gt_annotations)
    check.entries = _count_entries(out)
    return out, check


# ----------------------------------------------------------------------------- without GT


@functools.cache
def rule_longer_sides_px() -> frozenset[int]:
    """Longer sides the 480 rule gives a frame of up to :data:`MAX_FRAME_PX`: 480, and 479
    where the float scale truncates (1919 * (1.0 / 1919 * 480) = 479.99999999999994)."""
    return frozenset(egoexo4d_size((side, 1))[0] for side in range(1, MAX_FRAME_PX + 1))


def rule_can_produce(size_hw: tuple[int, int]) -> bool:
    """Whether some frame size maps to ``size_hw`` (H, W) under the 480 rule, which is all that
    can be checked without the frame size: its longer side is one the rule gives
    (:func:`rule_longer_sides_px`), and its shorter side is at least 1 px. Frames over 480 px
    scale by less than 1 px per px, so they reach every shorter side up to the longer one; a
    0-px side is a frame whose GT the evaluator cannot resize."""
    return max(size_hw) in rule_longer_sides_px() and min(size_hw) >= 1


def _longer_sides_text() -> str:
    return " or ".join(str(side) for side in sorted(rule_longer_sides_px(), reverse=True))


def _size_error(where: str, size_hw: tuple[int, int]) -> OmamaError:
    return OmamaError(
        f"{where}: mask is {size_hw[0]}x{size_hw[1]}, but no frame size gives it under the "
        f"official evaluator's rule (longer side {_longer_sides_text()}, the other at least "
        f"1 px): {SIZE_HINT}"
    )


def check_without_gt(takes: dict, direction: str) -> tuple[dict, DirectionCheck]:
    """What can be checked without the GT (the hidden test split): the structure, every entry,
    and masks of one size per camera pair that some frame size gives (:func:`rule_can_produce`)."""
    check = DirectionCheck(direction)
    out = _normalised_takes(takes, direction, check)
    for take, entry in out.items():
        for obj, pairs in entry["masks"].items():
            for key, frames in pairs.items():
                sizes = {tuple(e["pred_mask"]["size"]): f for f, e in frames.items()}
                where = _where(direction, take, obj, key)
                for size_hw, frame in sizes.items():
                    if not rule_can_produce(size_hw):
                        raise _size_error(f"{where} frame {frame}", size_hw)
                if len(sizes) > 1:
                    (a, fa), (b, fb) = list(sizes.items())[:2]
                    raise OmamaError(
                        f"{where}: frame {fa} is {a[0]}x{a[1]} but frame {fb} is {b[0]}x{b[1]} "
                        "(one camera has one frame size)"
                    )
        check.objects += len(entry["masks"])
    check.takes = len(out)
    check.unchecked = [
        "that every take, object, camera pair and annotated frame is present (needs the GT)",
        f"each mask's exact size (only that some frame size gives it: longer side "
        f"{_longer_sides_text()}, one size per camera pair)",
        "which entries the evaluator scores (all are counted as entries)",
    ]
    return out, check


# ----------------------------------------------------------------------------- the file


def build_submission(checked: dict[str, dict]) -> dict:
    """``{direction: {take: entry}}`` (checked) -> the EvalAI submission dict."""
    if not checked:
        raise OmamaError("a submission needs at least one direction (--exo2ego or --ego2exo)")
    return {
        results_key(direction): {**CHALLENGE_FIELDS, "results": checked[direction]}
        for direction in DIRECTIONS
        if direction in checked
    }


def file_directions(data: dict) -> list[str]:
    """Directions a results or submission dict holds, in :data:`DIRECTIONS` order."""
    return [d for d in DIRECTIONS if results_key(d) in data]
