"""Per model kind: the reference record a torch output becomes, and the checks that compare
another backend's output with it.

The export computes reference records from the torch backend's outputs on many inputs and
compares every exported file with them (its parity checks); the golden files store a few of
those records, and ``omama-run verify`` compares with them on the target machine. Both go
through the functions here, so a check means the same thing wherever it ran.

Records are dicts of numpy arrays (what a golden ``.npz`` holds):

- backbone: :func:`feats_reference`: sampled tokens, per-channel and per-token means and the
  peak of ``feats`` (B, 768, h, w) (all tokens for the export's parity, 64 in a golden file);
- matcher: ``{"similarities": (B, N)}``;
- FastSAM: :func:`fastsam_reference`: the raw boxes and scores of every anchor, the anchors
  the runtime's NMS keeps with their coefficients and masks, sampled prototypes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from runtime import rle
from runtime.errors import OmamaError
from runtime.fastsam_masks import box_masks, box_pixel_ranges
from runtime.fastsam_post import (
    Letterbox,
    kept_anchors,
    nms,
    scale_boxes_to_image,
    xywh_to_xyxy,
)
from runtime.manifest import CheckRecord, NmsSettings
from runtime.verification.nms_agreement import (
    KeptComparison,
    compare_kept,
    crop_iou,
    describe_kept,
    map_rows,
)
from runtime.verification.tolerances import check, max_abs_error, worst_error

Record = dict[str, np.ndarray]
FEATS_SAMPLE_TOKENS = 64  # tokens kept (all channels) in a golden file
PROTO_SAMPLE_PIXELS = 1024  # prototype pixels kept (all 32 channels) in a golden file
RAW_CHECK_TOP = 50  # the raw-output NMS check keeps at least this many reference anchors


def model_kind(model: str) -> str:
    """``backbone`` / ``matcher`` / ``fastsam`` of an artifacts model name."""
    if model.startswith("backbone_"):
        return "backbone"
    if model in ("matcher", "fastsam"):
        return model
    raise OmamaError(f"no verification is defined for model {model!r}")


def _sample(count: int, keep: int | None) -> np.ndarray:
    """``keep`` indices spread evenly over ``range(count)`` (all of them for None)."""
    if keep is None or keep >= count:
        return np.arange(count, dtype=np.int64)
    return np.unique(np.linspace(0, count - 1, keep).round().astype(np.int64))


# ----------------------------------------------------------------------------- backbone


def feats_reference(feats: np.ndarray, max_tokens: int | None = FEATS_SAMPLE_TOKENS) -> Record:
    """Record of backbone features (B, C, h, w): ``tokens`` (B, C, K) at ``token_index`` (K,)
    (``max_tokens`` spread evenly, all for None), ``channel_mean`` (B, C) and ``token_mean``
    (B, h*w) in float64 (they see every value), ``peak`` max |feats|, ``shape``."""
    feats = np.asarray(feats, np.float32)
    if feats.ndim != 4:
        raise OmamaError(f"backbone features must be (B, C, h, w), got {feats.shape}")
    b, c, h, w = feats.shape
    flat = feats.reshape(b, c, h * w)
    index = _sample(h * w, max_tokens)
    return {
        "shape": np.asarray(feats.shape, np.int64),
        "token_index": index,
        "tokens": np.ascontiguousarray(flat[:, :, index]),
        "channel_mean": flat.mean(axis=2, dtype=np.float64),
        "token_mean": flat.mean(axis=1, dtype=np.float64),
        "peak": np.float64(np.abs(flat).max(initial=0.0)),
    }


def compare_backbone(
    pairs: Sequence[tuple[Record, np.ndarray]], precision: str, tol: Mapping[str, float], what: str
) -> list[CheckRecord]:
    """Features against their records: the largest error over the sampled tokens and both
    means. fp32: ``max abs err``; fp16: ``max err / peak``. ``what`` describes the inputs."""
    error, peak = 0.0, 0.0
    for ref, got in pairs:
        got = np.asarray(got, np.float32)
        shape = tuple(int(v) for v in ref["shape"])
        if got.shape != shape:
            raise OmamaError(f"output 'feats' has shape {got.shape}, expected {shape}")
        mine = feats_reference(got, None)
        index = ref["token_index"]
        error = worst_error(
            error,
            max_abs_error(mine["tokens"][:, :, index], ref["tokens"]),
            max_abs_error(mine["channel_mean"], ref["channel_mean"]),
            max_abs_error(mine["token_mean"], ref["token_mean"]),
        )
        peak = max(peak, float(ref["peak"]))
    if precision == "fp32":
        return [
            check(
                "feats",
                "max abs err",
                error,
                tol["feats_max_abs"],
                detail=f"max err / peak {error / max(peak, 1e-12):.3e}, peak {peak:.3e}, {what}",
            )
        ]
    return [
        check(
            "feats",
            "max err / peak",
            error / max(peak, 1e-12),
            tol["feats_rel"],
            detail=f"max abs err {error:.3e}, peak {peak:.3e}, {what}",
        )
    ]


# ----------------------------------------------------------------------------- matcher


@dataclass
class MatcherResult:
    """One matcher call: the reference and the backend's similarities (B, N).

    ``agreement``: the call counts for fp16's argmax agreement (it is defined over
    random candidate sets; the fixed edge cases count for fp32 only). ``dst_masks``:
    (N, H, W) candidates, when known, for the final-mask IoU of differing picks.
    """

    expected: np.ndarray
    got: np.ndarray
    agreement: bool = True
    dst_masks: np.ndarray | None = None


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two binary masks; two empty masks count as 1."""
    a, b = a != 0, b != 0
    union = int(np.logical_or(a, b).sum())
    return 1.0 if union == 0 else int(np.logical_and(a, b).sum()) / union


# Two similarities this close are the same number to float32 rounding (similarities are
# O(1); float32 steps there are ~6e-8): argmax picks either, so a pick among them is a tie at
# any precision. A random small matcher gives such exact ties (3 of 200 sets on the test
# configuration, top-2 gaps of 6e-8).
EXACT_TIE = 1e-6


def tied_best(row: np.ndarray, band: float) -> np.ndarray:
    """Indices of the candidates whose similarity is within ``band`` of the row's best."""
    return np.flatnonzero(row >= row.max() - band)


def compare_matcher(
    results: Sequence[MatcherResult],
    precision: str,
    tol: Mapping[str, float],
    what: str,
    tie_band: float | None = None,
) -> list[CheckRecord]:
    """Similarities against the reference.

    - max abs error over every call (gated);
    - argmax agreement (gated): a pick agrees when it is the reference's best candidate or
      its reference similarity is within ``tie_band`` of the best (tied); ``tie_band``
      defaults to the precision's similarity tolerance (a file's parity: candidates tied at
      the verified precision; random weights give many near-ties). The strict rate is in
      the detail;
    - final-mask IoU between the masks of the two picks (reported, when masks are known).
    """
    band = tol["similarities_max_abs"] if tie_band is None else tie_band
    max_err = 0.0
    strict = tied = decisions = 0
    ious: list[float] = []
    for result in results:
        expected = np.asarray(result.expected, np.float32)
        got = np.asarray(result.got, np.float32)
        if got.shape != expected.shape:
            raise OmamaError(
                f"output 'similarities' has shape {got.shape}, expected {expected.shape} "
                f"(B={expected.shape[0]}, N={expected.shape[1]})"
            )
        max_err = worst_error(max_err, max_abs_error(got, expected))
        if precision != "fp32" and not result.agreement:
            continue
        for row_ref, row_got in zip(expected, got, strict=True):
            best, pick = int(row_ref.argmax()), int(row_got.argmax())
            decisions += 1
            if best == pick:
                strict += 1
            elif row_ref[best] - row_ref[pick] <= band:
                tied += 1
            if result.dst_masks is not None:
                ious.append(mask_iou(result.dst_masks[best], result.dst_masks[pick]))
    total = max(decisions, 1)
    checks = [
        check("similarities", "max abs err", max_err, tol["similarities_max_abs"], detail=what),
        check(
            "similarities",
            "argmax agreement",
            (strict + tied) / total,
            tol["argmax_agreement"],
            higher_is_better=True,
            detail=f"{decisions} picks; strict {100 * strict / total:.2f}%, {tied} other picks "
            f"tied within {band:g} of the best",
        ),
    ]
    if ious:
        checks.append(
            check(
                "similarities",
                "final-mask IoU (mean)",
                float(np.mean(ious)),
                1.0,
                higher_is_better=True,
                gated=False,
                detail="IoU of the reference's and the backend's chosen masks",
            )
        )
    return checks


# ----------------------------------------------------------------------------- FastSAM


def geometry_array(geom: Letterbox) -> np.ndarray:
    return np.asarray([*geom.image_hw, *geom.input_hw, *geom.resized_hw, geom.top, geom.left])


def geometry_of(values: np.ndarray) -> Letterbox:
    v = [int(x) for x in values]
    return Letterbox((v[0], v[1]), (v[2], v[3]), (v[4], v[5]), v[6], v[7])


def fastsam_reference(
    output0: np.ndarray,
    output1: np.ndarray,
    geom: Letterbox,
    settings: NmsSettings,
    max_proto_pixels: int | None = PROTO_SAMPLE_PIXELS,
) -> Record:
    """Record of raw FastSAM outputs (what the torch backend gives: ``output0`` (1, 4 + 1 +
    C, A), ``output1`` (1, C, mh, mw)) for a letterboxed image of geometry ``geom``.

    ``anchors`` (5, A): every anchor's raw box cx, cy, w, h and score; ``kept`` (K,): the
    anchors the runtime's NMS keeps with ``settings`` and their ``coeffs`` (K, C); their
    masks as box crops (``mask_ranges`` (K, 4), COCO RLE ``mask_counts`` (K,)), computed
    by ``runtime.fastsam_post`` as a run computes them; ``protos`` (C, S) at
    ``proto_index`` (S,) of the flattened prototypes; the outputs' peaks.
    """
    raw0 = np.asarray(output0, np.float32)[0]
    raw1 = np.asarray(output1, np.float32)[0]
    n_coeffs = raw1.shape[0]
    n_classes = raw0.shape[0] - 4 - n_coeffs
    kept = kept_anchors(raw0, n_coeffs, settings.conf, settings.iou, settings.max_det)
    coeffs = np.ascontiguousarray(raw0[4 + n_classes :, kept].T)
    image_boxes = scale_boxes_to_image(xywh_to_xyxy(raw0[:4, kept].T), geom)
    crops = box_masks(raw1, coeffs, image_boxes, geom.image_hw)
    flat = raw1.reshape(n_coeffs, -1)
    index = _sample(flat.shape[1], max_proto_pixels)
    return {
        "geometry": geometry_array(geom),
        "anchors": np.ascontiguousarray(
            np.concatenate([raw0[:4], raw0[4 : 4 + n_classes].max(axis=0, keepdims=True)])
        ),
        "kept": kept.astype(np.int64),
        "coeffs": coeffs,
        "mask_ranges": box_pixel_ranges(image_boxes, geom.image_hw),
        "mask_counts": np.asarray([_crop_counts(crop) for crop in crops], dtype=str),
        "proto_shape": np.asarray(raw1.shape, np.int64),
        "proto_index": index,
        "protos": np.ascontiguousarray(flat[:, index]),
        "output0_peak": np.float64(np.abs(raw0).max(initial=0.0)),
        "output1_peak": np.float64(np.abs(raw1).max(initial=0.0)),
    }


def reference_record(
    kind: str,
    outputs: Mapping[str, np.ndarray],
    info: Mapping,
    settings: NmsSettings | None = None,
) -> Record:
    """The record a golden file keeps of the torch outputs of one case of a ``kind`` model
    (``info``: the case's facts; FastSAM's letterbox ``geometry``; ``settings``: its NMS)."""
    if kind == "backbone":
        return feats_reference(outputs["feats"])
    if kind == "matcher":
        return {"similarities": np.asarray(outputs["similarities"], np.float32)}
    geom = geometry_of(np.asarray(info["geometry"]))
    return fastsam_reference(outputs["output0"], outputs["output1"], geom, settings)


def _crop_counts(crop: np.ndarray) -> str:
    """COCO RLE counts of a box crop ("" for a crop of zero size)."""
    return rle.encode(crop)["counts"] if crop.size else ""


def _ref_crops(ref: Record) -> list[np.ndarray]:
    """The reference's kept masks as box crops (the ranges of ``mask_ranges``)."""
    crops = []
    for (r0, r1, c0, c1), counts in zip(ref["mask_ranges"], ref["mask_counts"], strict=True):
        size = [int(r1 - r0), int(c1 - c0)]
        if min(size) > 0:
            crops.append(rle.decode({"size": size, "counts": str(counts)}))
        else:
            crops.append(np.zeros(size, np.uint8))
    return crops


def _protos_error(ref: Record, got1: np.ndarray) -> float:
    got1 = np.asarray(got1, np.float32)
    shape = tuple(int(v) for v in ref["proto_shape"])
    if got1.shape[1:] != shape:
        raise OmamaError(f"output 'output1' has shape {got1.shape}, expected (1, {shape})")
    return max_abs_error(got1[0].reshape(shape[0], -1)[:, ref["proto_index"]], ref["protos"])


def compare_fastsam(
    pairs: Sequence[tuple[Record, Mapping[str, np.ndarray]]],
    settings: NmsSettings,
    nms_in_graph: bool,
    precision: str,
    tol: Mapping[str, float],
    what: str,
) -> list[CheckRecord]:
    """FastSAM outputs against their records.

    NMS in the graph (rows of kept detections): each row is mapped to the reference anchor
    with the nearest box; then ``output1`` prototypes (max err / max(1, peak)), detection
    agreement (tie-tolerant kept-set comparison; a row that maps to no anchor within 4x the
    box tolerance counts against it), box max err px and score max abs err of the anchors
    both kept, and mask IoU (min for fp32, mean for fp16 gated; the other reported) of
    their masks, each side's assembled by ``runtime.fastsam_post`` from its own numbers.

    Raw outputs (the runtime runs NMS): ``output0`` boxes and scores of every anchor and
    coefficients of the kept ones, and ``output1`` (max err / max(1, peak)), and the
    agreement of the runtime's NMS on both. With random weights few anchors pass the real
    threshold, so that check lowers it to the 50th best reference score.
    """
    if nms_in_graph:
        return _compare_graph_nms(pairs, settings, precision, tol, what)
    return _compare_raw(pairs, settings, precision, tol, what)


def _scores_boxes(ref: Record) -> tuple[np.ndarray, np.ndarray]:
    anchors = ref["anchors"]
    return anchors[4], xywh_to_xyxy(anchors[:4].T)


def _compare_raw(pairs, settings, precision, tol, what) -> list[CheckRecord]:
    worst = {"output0": 0.0, "output1": 0.0}
    worst_abs = {"output0": 0.0, "output1": 0.0}
    comparisons: list[KeptComparison] = []
    thresholds = []
    for ref, got in pairs:
        raw0 = np.asarray(got["output0"], np.float32)
        if raw0.ndim != 3 or raw0.shape[2] != ref["anchors"].shape[1]:
            raise OmamaError(
                f"output 'output0' has shape {raw0.shape}, expected raw anchors "
                f"(1, 4 + 1 + 32, {ref['anchors'].shape[1]})"
            )
        raw0 = raw0[0]
        n_coeffs = int(ref["proto_shape"][0])
        n_classes = raw0.shape[0] - 4 - n_coeffs
        mine = np.concatenate([raw0[:4], raw0[4 : 4 + n_classes].max(axis=0, keepdims=True)])
        err0 = worst_error(
            max_abs_error(mine, ref["anchors"]),
            max_abs_error(raw0[4 + n_classes :, ref["kept"]].T, ref["coeffs"]),
        )
        err1 = _protos_error(ref, got["output1"])
        for name, err, peak in (
            ("output0", err0, ref["output0_peak"]),
            ("output1", err1, ref["output1_peak"]),
        ):
            worst_abs[name] = worst_error(worst_abs[name], err)
            worst[name] = worst_error(worst[name], err / max(float(peak), 1.0))
        scores, boxes = _scores_boxes(ref)
        top = float(np.sort(scores)[-min(RAW_CHECK_TOP, len(scores))])
        threshold = min(settings.conf, top - 1e-6)
        thresholds.append(threshold)
        eligible = np.flatnonzero(scores > np.float32(threshold))
        ref_keep = eligible[nms(boxes[eligible], scores[eligible], settings.iou, settings.max_det)]
        got_keep = kept_anchors(raw0, n_coeffs, threshold, settings.iou, settings.max_det)
        comparisons.append(
            compare_kept(
                ref_keep,
                got_keep,
                boxes,
                scores,
                threshold,
                settings.iou,
                settings.max_det,
                tol["score_tie"],
                tol["iou_tie"],
            )  # fmt: skip
        )
    checks = [
        check(
            name,
            "max err / max(1, peak)",
            value,
            tol["fastsam_rel"],
            detail=f"max abs err {worst_abs[name]:.3e}; {what}"
            + (
                "; boxes and scores of every anchor, coefficients of the kept"
                if name == "output0"
                else ""
            ),  # fmt: skip
        )
        for name, value in worst.items()
    ]
    checks.append(
        check(
            "output0",
            "NMS detection agreement",
            float(min(c.agreement for c in comparisons)),
            tol["detection_agreement"],
            higher_is_better=True,
            detail=f"conf {min(thresholds):.4g}..{max(thresholds):.4g}, iou {settings.iou}; "
            + describe_kept(comparisons, tol["score_tie"]),
        )
    )
    return checks


@dataclass
class _GraphNmsErrors:
    """What :func:`_compare_graph_nms` gathers over the golden cases."""

    proto_err: float = 0.0  # prototypes: max abs error, and relative to the peak
    proto_rel: float = 0.0
    box_err: float = 0.0  # detections kept by both: box (input px) and score max abs error
    score_err: float = 0.0
    ious: list[float] = field(default_factory=list)  # mask IoU of each detection kept by both
    comparisons: list[KeptComparison] = field(default_factory=list)
    masks: list[int] = field(default_factory=lambda: [0, 0])  # non-empty: reference, graph


def _graph_nms_case(ref, got, settings, tol, errors: _GraphNmsErrors) -> None:
    """Compare one golden case's graph detections with the reference NMS into ``errors``."""
    conf, iou, max_det = settings.conf, settings.iou, settings.max_det
    geom = geometry_of(ref["geometry"])
    err = _protos_error(ref, got["output1"])
    errors.proto_err = worst_error(errors.proto_err, err)
    errors.proto_rel = worst_error(errors.proto_rel, err / max(float(ref["output1_peak"]), 1.0))
    scores, boxes = _scores_boxes(ref)
    ref_keep = ref["kept"]
    rows = np.asarray(got["output0"], np.float32)
    if rows.ndim != 3 or rows.shape[2] != 6 + ref["protos"].shape[0]:
        raise OmamaError(
            f"output 'output0' has shape {rows.shape}, expected detection rows "
            f"(1, max_det, 6 + {ref['protos'].shape[0]})"
        )
    rows = rows[0]
    rows = rows[rows[:, 4] > np.float32(conf)]  # as the runtime reads the graph's rows
    row_ids, anchors, unmapped = map_rows(
        rows, boxes, scores > conf - tol["score_tie"], 4 * tol["fastsam_box_px"]
    )
    errors.comparisons.append(
        compare_kept(
            ref_keep,
            anchors,
            boxes,
            scores,
            conf,
            iou,
            max_det,
            tol["score_tie"],
            tol["iou_tie"],
            unmapped,
        )  # fmt: skip
    )
    ref_pos = {int(a): k for k, a in enumerate(ref_keep)}
    matched = [(ref_pos[a], j) for j, a in zip(row_ids, anchors, strict=True) if a in ref_pos]
    ref_rows = np.asarray([m[0] for m in matched], np.int64)
    got_rows = np.asarray([m[1] for m in matched], np.int64)
    if len(matched):  # input pixels, before clipping to the image could hide a shift
        ref_anchors = ref_keep[ref_rows]
        errors.box_err = worst_error(
            errors.box_err, max_abs_error(boxes[ref_anchors], rows[got_rows, :4])
        )
        errors.score_err = worst_error(
            errors.score_err, max_abs_error(scores[ref_anchors], rows[got_rows, 4])
        )
    ref_crops = _ref_crops(ref)
    protos = np.asarray(got["output1"], np.float32)[0]
    image_boxes = scale_boxes_to_image(rows[:, :4], geom)
    got_crops = box_masks(protos, rows[:, 6:], image_boxes, geom.image_hw)
    got_ranges = box_pixel_ranges(image_boxes, geom.image_hw)
    errors.ious += [
        crop_iou(ref_crops[a], ref["mask_ranges"][a], got_crops[b], got_ranges[b])
        for a, b in zip(ref_rows, got_rows, strict=True)
    ]
    errors.masks[0] += sum(bool(c.any()) for c in ref_crops)
    errors.masks[1] += sum(bool(c.any()) for c in got_crops)


def _compare_graph_nms(pairs, settings, precision, tol, what) -> list[CheckRecord]:
    errors = _GraphNmsErrors()
    for ref, got in pairs:
        _graph_nms_case(ref, got, settings, tol, errors)
    conf, iou, max_det = settings.conf, settings.iou, settings.max_det
    proto_err, proto_rel, box_err, score_err = (
        errors.proto_err, errors.proto_rel, errors.box_err, errors.score_err
    )  # fmt: skip
    ious, comparisons, masks = errors.ious, errors.comparisons, errors.masks
    settings_text = f"conf {conf:g}, iou {iou:g}, max_det {max_det}, {what}"
    compared = f"{len(ious)} detections kept by both"
    checks = [
        check(
            "output1",
            "max err / max(1, peak)",
            proto_rel,
            tol["fastsam_rel"],
            detail=f"max abs err {proto_err:.3e}; {what}",
        ),
        check(
            "output0",
            "detection agreement",
            float(min(c.agreement for c in comparisons)),
            tol["detection_agreement"],
            higher_is_better=True,
            detail=f"in-graph NMS vs runtime NMS on torch outputs ({settings_text}); masks: "
            f"reference {masks[0]}, graph {masks[1]}; "
            + describe_kept(comparisons, tol["score_tie"]),
        ),
        check(
            "output0",
            "box max err px",
            box_err,
            tol["fastsam_box_px"],
            detail=f"network input pixels, before clipping; {compared}",
        ),
        check("output0", "score max abs err", score_err, tol["fastsam_rel"], detail=compared),
    ]
    for stat, fn in (("min", np.min), ("mean", np.mean)):
        key = f"fastsam_mask_iou_{stat}"
        checks.append(
            check(
                "output0",
                f"mask IoU ({stat})",
                float(fn(ious)) if ious else 1.0,
                tol.get(key, 1.0),
                higher_is_better=True,
                gated=key in tol,
                detail=f"runtime.fastsam_post masks, {compared}"
                + ("" if ious else " (none to compare)"),
            )
        )
    return checks
