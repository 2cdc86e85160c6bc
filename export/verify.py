"""Verification of exported graphs: structure (checker, shape inference, constant folding)
and parity with the PyTorch models.

Every exported file gets:

- the ONNX checker (full check) and strict shape inference, and constant folding with
  onnxslim, whose node counts before and after are recorded;
- a parity run against the PyTorch model on deterministic inputs. Runners are callables
  ``feeds -> outputs`` (ONNX Runtime here, TensorRT in ``export.tensorrt``), so the same
  checks cover every backend and precision.

Default tolerances (issue 5): fp32 ONNX Runtime 1e-4 abs on backbone features, 1e-5 on
similarities, argmax agreement 100%; fp16 similarities within 5e-3 and argmax agreement
>= 99% on 200 random candidate sets. Where the issue names no number, the choice is
written next to it in :data:`TOLERANCES`.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from runtime.errors import OmamaError
from runtime.manifest import TensorSpec
from runtime.pooling import descriptor_weights, mask_boxes
from runtime.preprocess import normalize_image

Feeds = dict[str, np.ndarray]
Runner = Callable[[Feeds], dict[str, np.ndarray]]

# ONNX protobuf size limit: bigger models keep their weights in one external-data file.
EXTERNAL_DATA_THRESHOLD_BYTES = 1_800_000_000

TOLERANCES: dict[str, dict[str, float]] = {
    "fp32": {
        "feats_max_abs": 1e-4,  # issue 5
        "similarities_max_abs": 1e-5,  # issue 5
        "argmax_agreement": 1.0,  # issue 5
        # FastSAM's output0 holds box coordinates in pixels (up to imgsz): its error is
        # measured relative to the output's peak magnitude.
        "fastsam_rel": 1e-4,
        "detection_agreement": 1.0,
        # In-graph NMS vs the runtime's (issue 5): boxes within 1 px, mask IoU > 0.99.
        "fastsam_box_px": 1.0,
        "fastsam_mask_iou_min": 0.99,
        # Decisions on tied values may go either way (see compare_kept): scores within 1e-6
        # are interchangeable; an IoU within 1e-5 of the threshold is a tie too (the graph
        # computes IoU on boxes divided by imgsz, the runtime on pixels).
        "score_tie": 1e-6,
        "iou_tie": 1e-5,
    },
    "fp16": {
        # Features: no number in the issue; 2% of the peak magnitude, and the matcher
        # checks below are what decide the answer.
        "feats_rel": 2e-2,
        "similarities_max_abs": 5e-3,  # issue 5
        "argmax_agreement": 0.99,  # issue 5
        "fastsam_rel": 2e-2,
        # NMS on slightly different scores may keep a different box now and then.
        "detection_agreement": 0.95,
        # No number in the issue: fp16 boxes at 1024 px carry ~0.5 px of rounding per
        # coordinate; scores tie within ~2 fp16 steps at 0.5. Masks: the mean IoU is gated,
        # as a few tiny masks of a random-weight network lose a third of their pixels in fp16
        # (min 0.90 / 0.65, mean 0.992 / 0.987 on a BatchNorm-calibrated random YOLOv8n-seg
        # at 256 / 1024 px; box errors 3.7 / 0.5 px there, unclipped).
        "fastsam_box_px": 4.0,
        "fastsam_mask_iou_mean": 0.95,
        "score_tie": 1e-3,
        "iou_tie": 2e-3,
    },
}


# ------------------------------------------------------------------------------ checks


@dataclass
class Check:
    """One verified number: ``value`` compared with ``tolerance`` (``<=`` errors, ``>=``
    agreements)."""

    model: str
    file: str
    precision: str
    backend: str
    metric: str
    output: str
    value: float
    tolerance: float
    higher_is_better: bool = False
    detail: str = ""
    gated: bool = True  # False: reported for information, never fails the export

    @property
    def passed(self) -> bool:
        if not self.gated:
            return True
        if math.isnan(self.value):
            return False
        if self.higher_is_better:
            return self.value >= self.tolerance
        return self.value <= self.tolerance

    def describe(self) -> str:
        op = ">=" if self.higher_is_better else "<="
        return (
            f"{self.file} [{self.backend}] output {self.output!r}: {self.metric} "
            f"{_fmt(self.value, self.higher_is_better)} (needs {op} "
            f"{_fmt(self.tolerance, self.higher_is_better)})"
        )

    def to_dict(self) -> dict:
        data = asdict(self)
        data["passed"] = self.passed
        data["value"] = None if math.isnan(self.value) else float(self.value)
        return data


def worst_error(*errors: float) -> float:
    """The largest error; NaN (a broken output) wins over any number."""
    return math.nan if any(math.isnan(e) for e in errors) else max(errors)


def max_abs_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)), initial=0.0))


def _fmt(value: float, percent: bool) -> str:
    if math.isnan(value):
        return "nan"
    return f"{100 * value:.2f}%" if percent else f"{value:.2e}"


def format_table(checks: list[Check]) -> str:
    """The verification table printed by ``omama export``."""
    header = ("file", "backend", "output", "metric", "value", "tolerance", "status")
    rows = [
        (
            c.file,
            c.backend,
            c.output,
            c.metric,
            _fmt(c.value, c.higher_is_better),
            (">= " if c.higher_is_better else "<= ") + _fmt(c.tolerance, c.higher_is_better)
            if c.gated
            else "-",
            "info" if not c.gated else ("ok" if c.passed else "FAIL"),
        )
        for c in checks
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------------------ graphs


@dataclass
class GraphReport:
    """Structure checks of one ONNX file."""

    opset: int
    nodes_exported: int
    nodes_final: int
    folded_with: str
    checker: str = "ok"
    shape_inference: str = "ok"
    external_data: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def onnx_opset(model) -> int:
    """The default-domain opset of an ``onnx.ModelProto``."""
    return next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def save_onnx(model, path: str | os.PathLike) -> list[str]:
    """Write ``model`` to ``path`` atomically; weights go to ``<name>.data`` beside it when the
    model is too big for one protobuf. Returns the external-data file names (relative)."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    external = model.ByteSize() > EXTERNAL_DATA_THRESHOLD_BYTES
    data_name = path.name + ".data"
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        if external:
            # The data file name is recorded inside the graph, so it is written in place.
            (path.parent / data_name).unlink(missing_ok=True)
            onnx.save_model(
                model,
                str(tmp),
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=data_name,
                size_threshold=1024,
            )
        else:
            onnx.save_model(model, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if not external:
        (path.parent / data_name).unlink(missing_ok=True)
    return [data_name] if external else []


def check_onnx(path: str | os.PathLike) -> None:
    """ONNX checker (full check) and strict shape inference; OmamaError naming the file."""
    import onnx

    path = Path(path)
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:  # onnx raises ValidationError and friends
        raise OmamaError(f"{path.name} fails the ONNX checker: {exc}") from exc
    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=path.parent)
    os.close(fd)
    try:
        onnx.shape_inference.infer_shapes_path(str(path), tmp, check_type=True, strict_mode=True)
    except Exception as exc:
        raise OmamaError(f"{path.name} fails ONNX shape inference: {exc}") from exc
    finally:
        Path(tmp).unlink(missing_ok=True)


def finalize_onnx(
    raw_path: str | os.PathLike, final_path: str | os.PathLike, check: bool = True
) -> GraphReport:
    """Fold constants with onnxslim, save ``final_path``; with ``check``, run the ONNX checker
    and strict shape inference on the result.

    Stale intermediate shapes recorded by the exporter are dropped first (onnxslim infers
    them again), so a dimension traced at export time never looks static downstream.
    """
    import onnx
    import onnxslim

    model = onnx.load(str(raw_path))
    nodes_exported = len(model.graph.node)
    del model.graph.value_info[:]
    slimmed = onnxslim.slim(model)
    external = save_onnx(slimmed, final_path)
    if check:
        check_onnx(final_path)
    return GraphReport(
        opset=onnx_opset(slimmed),
        nodes_exported=nodes_exported,
        nodes_final=len(slimmed.graph.node),
        folded_with=f"onnxslim {onnxslim.__version__}",
        checker="ok" if check else "skipped",
        shape_inference="ok" if check else "skipped",
        external_data=external,
    )


def io_specs(path: str | os.PathLike) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs and outputs of an ONNX file as manifest tensor specs (dynamic axes as names)."""
    import onnx
    from onnx import helper

    model = onnx.load(str(path), load_external_data=False)

    def spec(value) -> TensorSpec:
        tensor = value.type.tensor_type
        shape: list[int | str] = [
            d.dim_param if d.dim_param else (int(d.dim_value) if d.HasField("dim_value") else "?")
            for d in tensor.shape.dim
        ]
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type)).name
        return TensorSpec(value.name, shape, dtype)

    initializers = {init.name for init in model.graph.initializer}
    inputs = [spec(v) for v in model.graph.input if v.name not in initializers]
    return inputs, [spec(v) for v in model.graph.output]


# ------------------------------------------------------------------------------ runners


class OrtRunner:
    """ONNX Runtime session as a runner: ``runner(feeds) -> {output name: array}``."""

    backend = "onnxruntime"

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3  # exporter shape annotations are not worth a warning
        # Parity runs are short calls between PyTorch calls: spinning threads only steal
        # the CPU from them.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.path = Path(path)
        self.session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.output_names = [o.name for o in self.session.get_outputs()]

    def __call__(self, feeds: Feeds) -> dict[str, np.ndarray]:
        outputs = self.session.run(None, feeds)
        return dict(zip(self.output_names, outputs, strict=True))


def median_ms(fn: Callable[[], object], repeats: int = 3, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in milliseconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000.0)
    return float(np.median(times))


# ------------------------------------------------------------------------------ inputs


def random_images(rng: np.random.Generator, count: int, size_hw: tuple[int, int]) -> np.ndarray:
    """Normalised images (count, 3, H, W) float32 from random RGB bytes (reference scaling)."""
    h, w = size_hw
    rgb = rng.integers(0, 256, size=(count, h, w, 3), dtype=np.uint8)
    return np.stack([normalize_image(image) for image in rgb])


def random_masks(
    rng: np.random.Generator, count: int, size_hw: tuple[int, int], empty: tuple[int, ...] = ()
) -> np.ndarray:
    """(count, H, W) uint8 masks: random ellipses and rectangles of 1-60% of each side;
    indices in ``empty`` stay all zero (the empty-candidate case)."""
    h, w = size_hw
    masks = np.zeros((count, h, w), np.uint8)
    yy = np.arange(h, dtype=np.float32)[:, None]
    xx = np.arange(w, dtype=np.float32)[None, :]
    for i in range(count):
        if i in empty:
            continue
        mh = max(1, int(h * rng.uniform(0.01, 0.6)))
        mw = max(1, int(w * rng.uniform(0.01, 0.6)))
        y0 = int(rng.integers(0, h - mh + 1))
        x0 = int(rng.integers(0, w - mw + 1))
        if rng.random() < 0.5:
            masks[i, y0 : y0 + mh, x0 : x0 + mw] = 1
        else:
            cy, cx, ry, rx = y0 + mh / 2, x0 + mw / 2, max(mh / 2, 0.5), max(mw / 2, 0.5)
            inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
            masks[i][inside] = 1
            if not masks[i].any():
                masks[i, int(min(cy, h - 1)), int(min(cx, w - 1))] = 1
    return masks


def candidate_boxes(rng: np.random.Generator, masks: np.ndarray) -> np.ndarray:
    """Detector-like float boxes x1, y1, w, h: the masks' boxes moved by up to 2 px (FastSAM
    boxes are not the masks' tight boxes), never negative; empty masks give zeros."""
    boxes = mask_boxes(masks).astype(np.float32)
    present = masks.reshape(len(masks), -1).any(axis=1)
    jitter = rng.uniform(-2.0, 2.0, size=boxes.shape).astype(np.float32)
    boxes = np.maximum(boxes + jitter, 0.0)
    boxes[~present] = 0.0
    return boxes


# ------------------------------------------------------------------------------ backbone


def backbone_parity(
    backbone,
    runner: Runner,
    file: str,
    model_name: str,
    precision: str,
    backend: str,
    seed: int = 0,
) -> list[Check]:
    """Features of 2 random images, batch 2 and batch 1, against the PyTorch backbone."""
    import torch

    rng = np.random.default_rng(seed)
    images = random_images(rng, 2, backbone.image_size)
    with torch.no_grad():
        expected = backbone(torch.from_numpy(images)).numpy()
    got2 = runner({"image": images})["feats"]
    got1 = runner({"image": images[:1]})["feats"]
    if got2.shape != expected.shape or got1.shape != expected[:1].shape:
        raise OmamaError(
            f"{file}: output 'feats' has shape {got2.shape} / {got1.shape}, expected "
            f"{expected.shape} / {expected[:1].shape}"
        )
    error = worst_error(max_abs_error(got2, expected), max_abs_error(got1, expected[:1]))
    peak = float(np.abs(expected).max())
    tol = TOLERANCES[precision]
    common = dict(model=model_name, file=file, precision=precision, backend=backend)
    if precision == "fp32":
        return [
            Check(
                **common,
                metric="max abs err",
                output="feats",
                value=error,
                tolerance=tol["feats_max_abs"],
                detail=f"max err / peak {error / max(peak, 1e-12):.3e}, peak {peak:.3e}, "
                "batch 2 and batch 1",
            )
        ]
    return [
        Check(
            **common,
            metric="max err / peak",
            output="feats",
            value=error / max(peak, 1e-12),
            tolerance=tol["feats_rel"],
            detail=f"max abs err {error:.3e}, peak {peak:.3e}",
        )
    ]


# ------------------------------------------------------------------------------ matcher


@dataclass(frozen=True)
class ViewGeometry:
    """Image size (H, W) px and token grid (h, w) of one view."""

    image_size: tuple[int, int]
    feat_grid: tuple[int, int]


@dataclass
class MatcherCase:
    """One matcher call: B source objects against N candidates of one frame pair."""

    src_feats: np.ndarray  # (1, D, hs, ws)
    dst_feats: np.ndarray  # (1, D, hd, wd)
    src_masks: np.ndarray  # (B, Hs, Ws) uint8
    src_boxes: np.ndarray  # (B, 4)
    dst_masks: np.ndarray  # (N, Hd, Wd) uint8
    dst_boxes: np.ndarray  # (N, 4)


class MatcherParity:
    """Parity of a matcher graph with the PyTorch descriptors + matcher.

    Cases: fixed shapes (B=1, N=1; B=2, N=7 with an empty candidate; B=1, N=``large_n``)
    and ``random_sets`` random candidate sets (B=1, N in 2..64). The PyTorch reference of
    every case is computed once and reused for every runner; inputs are regenerated from
    the seed (they can be large) rather than kept.
    """

    def __init__(
        self,
        matcher,
        src: ViewGeometry,
        dst: ViewGeometry,
        matcher_input: str,
        random_sets: int = 200,
        large_n: int = 256,
        seed: int = 0,
    ) -> None:
        self.matcher = matcher
        self.src, self.dst = src, dst
        self.matcher_input = matcher_input
        self.seed = seed
        self.shapes: list[tuple[int, int, tuple[int, ...]]] = [
            (1, 1, ()),
            (2, 7, (3,)),
            (1, large_n, ()),
        ]
        shape_rng = np.random.default_rng([seed, 1])
        self.shapes += [(1, int(shape_rng.integers(2, 65)), ()) for _ in range(random_sets)]
        self.n_fixed = 3
        self._reference: list[np.ndarray] = []

    def case(self, index: int) -> MatcherCase:
        batch, count, empty = self.shapes[index]
        rng = np.random.default_rng([self.seed, 2, index])
        dim = self.matcher.dim
        src_masks = random_masks(rng, batch, self.src.image_size)
        dst_masks = random_masks(rng, count, self.dst.image_size, empty=empty)
        return MatcherCase(
            src_feats=rng.standard_normal((1, dim, *self.src.feat_grid), dtype=np.float32),
            dst_feats=rng.standard_normal((1, dim, *self.dst.feat_grid), dtype=np.float32),
            src_masks=src_masks,
            src_boxes=mask_boxes(src_masks),  # the query box is the mask's own box
            dst_masks=dst_masks,
            dst_boxes=candidate_boxes(rng, dst_masks),
        )

    def reference(self, case: MatcherCase) -> np.ndarray:
        """Similarities (B, N) from the training code: descriptors, then the matcher."""
        import torch

        from omama_train.models.descriptors import object_descriptors

        batch = len(case.src_masks)
        with torch.no_grad():
            src_feats = torch.from_numpy(case.src_feats)
            dst_feats = torch.from_numpy(case.dst_feats)
            src_desc = object_descriptors(
                src_feats.expand(batch, -1, -1, -1),
                torch.from_numpy(case.src_masks)[:, None],
                torch.from_numpy(case.src_boxes)[:, None],
                self.src.image_size,
            )
            dst_desc = object_descriptors(
                dst_feats,
                torch.from_numpy(case.dst_masks)[None],
                torch.from_numpy(case.dst_boxes)[None],
                self.dst.image_size,
            )
            return self.matcher(src_desc, dst_desc, src_feats, dst_feats).numpy()

    def feeds(self, case: MatcherCase) -> Feeds:
        """What the runtime feeds the graph for this case."""
        feeds = {"src_feats": case.src_feats, "dst_feats": case.dst_feats}
        if self.matcher_input == "weights":
            feeds["src_weights"] = descriptor_weights(
                case.src_masks, case.src_boxes, self.src.image_size, self.src.feat_grid
            )[:, None]
            feeds["dst_weights"] = descriptor_weights(
                case.dst_masks, case.dst_boxes, self.dst.image_size, self.dst.feat_grid
            )[None]
        else:
            feeds["src_mask"] = case.src_masks[:, None]
            feeds["src_box"] = case.src_boxes[:, None].astype(np.float32)
            feeds["dst_masks"] = case.dst_masks[None]
            feeds["dst_boxes"] = case.dst_boxes[None].astype(np.float32)
        return feeds

    def _references(self) -> list[np.ndarray]:
        if not self._reference:
            self._reference = [self.reference(self.case(i)) for i in range(len(self.shapes))]
        return self._reference

    def run(
        self,
        runner: Runner,
        file: str,
        precision: str,
        backend: str,
        model_name: str = "matcher",
    ) -> list[Check]:
        """Checks of one runner against the PyTorch reference.

        - max abs error of the similarities over every case (gated);
        - argmax agreement over the random candidate sets (fp16) or every case (fp32),
          gated. A pick counts as agreeing when it is the reference's best candidate or its
          reference similarity is within the precision's similarity tolerance of the best:
          such candidates are tied at the verified precision (random weights give many
          near-ties). The strict rate is in the check's detail;
        - final-mask agreement: mean IoU between the masks of the two picks (reported).
        """
        tol = TOLERANCES[precision]
        band = tol["similarities_max_abs"]
        max_err = 0.0
        strict = tied = decisions = 0
        ious: list[float] = []
        for index, expected in enumerate(self._references()):
            case = self.case(index)
            got = runner(self.feeds(case))["similarities"]
            if got.shape != expected.shape:
                raise OmamaError(
                    f"{file}: output 'similarities' has shape {got.shape}, expected "
                    f"{expected.shape} (B={expected.shape[0]}, N={expected.shape[1]})"
                )
            max_err = worst_error(max_err, max_abs_error(got, expected))
            if precision == "fp16" and index < self.n_fixed:
                continue  # fp16 agreement is defined over the random candidate sets
            for row_ref, row_got in zip(expected, got, strict=True):
                best, pick = int(row_ref.argmax()), int(row_got.argmax())
                decisions += 1
                if best == pick:
                    strict += 1
                elif row_ref[best] - row_ref[pick] <= band:
                    tied += 1
                ious.append(mask_iou(case.dst_masks[best], case.dst_masks[pick]))
        common = dict(
            model=model_name, file=file, precision=precision, backend=backend, output="similarities"
        )
        total = max(decisions, 1)
        detail = (
            f"{decisions} picks; strict {100 * strict / total:.2f}%, {tied} other picks tied "
            f"within {band:g} of the best"
        )
        return [
            Check(
                **common,
                metric="max abs err",
                value=max_err,
                tolerance=tol["similarities_max_abs"],
                detail=f"{len(self.shapes)} cases incl. N=1, an empty candidate, "
                f"N={self.shapes[2][1]}",
            ),
            Check(
                **common,
                metric="argmax agreement",
                value=(strict + tied) / total,
                tolerance=tol["argmax_agreement"],
                higher_is_better=True,
                detail=detail,
            ),
            Check(
                **common,
                metric="final-mask IoU (mean)",
                value=float(np.mean(ious)),
                tolerance=1.0,
                higher_is_better=True,
                gated=False,
                detail="IoU of the reference's and the runner's chosen masks",
            ),
        ]


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two binary masks; two empty masks count as 1."""
    a, b = a != 0, b != 0
    union = int(np.logical_or(a, b).sum())
    return 1.0 if union == 0 else int(np.logical_and(a, b).sum()) / union


# ------------------------------------------------------------------------------ FastSAM


def nms_keep(output0: np.ndarray, conf: float, iou: float, max_det: int | None = None) -> list[int]:
    """Anchors kept by class-agnostic NMS on raw FastSAM ``output0`` (1, 4+1+32, A), by
    decreasing score, at most ``max_det`` of them (torchvision's NMS, the reference's)."""
    import torch
    from torchvision.ops import nms

    pred = torch.from_numpy(np.ascontiguousarray(output0[0, :5].T.astype(np.float32)))
    scores = pred[:, 4]
    candidates = torch.nonzero(scores > conf).flatten()
    xywh = pred[candidates, :4]
    xyxy = torch.cat([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], dim=1)
    keep = nms(xyxy, scores[candidates], iou)[:max_det]
    return [int(i) for i in candidates[keep]]


@dataclass
class KeptComparison:
    """Agreement of two NMS results over the same candidate anchors.

    ``reference`` / ``other``: anchors each kept (``other`` includes detections that map to
    no candidate); ``both``: kept by both; ``explained``: kept by one side only where a tie
    decided it (counts by rule in ``reasons``); ``unexplained``: the rest, described.
    """

    reference: int
    other: int
    both: int
    explained: int
    reasons: dict[str, int]
    unexplained: list[str]

    @property
    def agreement(self) -> float:
        """Kept-set Jaccard in which tie-decided differences count as agreeing: 1.0 exactly
        when every difference is explained by a tie."""
        union = self.reference + self.other - self.both
        return 1.0 if union == 0 else (self.both + self.explained) / union


def compare_kept(
    reference_keep,
    other_keep,
    boxes_xyxy: np.ndarray,
    scores: np.ndarray,
    conf: float,
    iou: float,
    max_det: int | None,
    score_tie: float,
    iou_tie: float,
    unmapped: Sequence[str] = (),
) -> KeptComparison:
    """Compare the anchors two NMS runs kept, tolerating decisions made on ties.

    Arguments:
        reference_keep, other_keep: kept anchor indices (into ``boxes_xyxy`` / ``scores``).
        boxes_xyxy: (A, 4) and scores (A,): the reference's values of every anchor; all
            rules below use them, so both sides are judged on the same numbers.
        conf, iou, max_det: the NMS settings both runs used (``max_det`` None: no cap).
        score_tie, iou_tie: values this close are ties.
        unmapped: descriptions of the other side's detections that match no anchor (always
            unexplained: a box the reference never proposed).

    An anchor kept by one side only is explained when a tie could have decided it:
    ``threshold`` (its score is within ``score_tie`` of conf), ``cut`` (the other side is
    full at max_det and the anchor's score is not above its lowest kept score by more than
    ``score_tie``), or ``suppression`` (the other side kept an overlapping anchor that may
    suppress it: score at least as high up to ``score_tie``, IoU above ``iou - iou_tie``,
    and either the scores or the IoU-vs-threshold comparison tied). Anything else, and
    every unmapped detection, is a real disagreement.
    """
    ref = [int(a) for a in reference_keep]
    other = [int(a) for a in other_keep]
    ref_set, other_set = set(ref), set(other)
    boxes = np.asarray(boxes_xyxy, dtype=np.float32)
    scores = np.asarray(scores, dtype=np.float64)
    reasons = {"threshold": 0, "cut": 0, "suppression": 0}
    unexplained = list(unmapped)

    def reason(anchor: int, kept_by_other: list[int]) -> str | None:
        score = scores[anchor]
        if abs(score - conf) <= score_tie:
            return "threshold"
        full = bool(kept_by_other) and max_det is not None and len(kept_by_other) >= max_det
        if full and score <= scores[kept_by_other].min() + score_tie:
            return "cut"
        rivals = np.asarray([b for b in kept_by_other if b != anchor], np.int64)
        if len(rivals):
            overlap = _pair_iou(boxes[anchor], boxes[rivals])
            delta = scores[rivals] - score
            may_suppress = (delta >= -score_tie) & (overlap > iou - iou_tie)
            tied = (np.abs(delta) <= score_tie) | (overlap <= iou + iou_tie)
            if (may_suppress & tied).any():
                return "suppression"
        return None

    explained = 0
    for anchors, kept_by_other, side in (
        ([a for a in ref if a not in other_set], other, "reference"),
        ([a for a in other if a not in ref_set], ref, "other"),
    ):
        for anchor in anchors:
            why = reason(anchor, kept_by_other)
            if why is None:
                unexplained.append(
                    f"anchor {anchor} (score {scores[anchor]:.6g}) kept by {side} only"
                )
            else:
                reasons[why] += 1
                explained += 1
    return KeptComparison(
        reference=len(ref_set),
        other=len(other_set) + len(unmapped),
        both=len(ref_set & other_set),
        explained=explained,
        reasons=reasons,
        unexplained=unexplained,
    )


def _pair_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU (M,) of one corner box (4,) with (M, 4) boxes, float64."""
    box = box.astype(np.float64)
    boxes = boxes.astype(np.float64)
    wh = np.clip(np.minimum(box[2:], boxes[:, 2:]) - np.maximum(box[:2], boxes[:, :2]), 0, None)
    inter = wh[:, 0] * wh[:, 1]
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-12)


def _describe_kept(comparisons: list[KeptComparison], score_tie: float) -> str:
    ref = sum(c.reference for c in comparisons)
    other = sum(c.other for c in comparisons)
    both = sum(c.both for c in comparisons)
    reasons = {k: sum(c.reasons[k] for c in comparisons) for k in comparisons[0].reasons}
    tied = ", ".join(f"{k} {v}" for k, v in reasons.items() if v) or "none"
    bad = [text for c in comparisons for text in c.unexplained]
    text = (
        f"kept: reference {ref}, other {other}, both {both}; tie-decided: {tied} "
        f"(scores within {score_tie:g}); unexplained: {len(bad)}"
    )
    return text + (f" ({'; '.join(bad[:3])})" if bad else "")


def fastsam_parity(
    net,
    runner: Runner,
    imgsz: int,
    file: str,
    precision: str,
    backend: str,
    conf: float,
    iou: float,
    seed: int = 0,
    images: int = 2,
) -> list[Check]:
    """Raw outputs of random images against the PyTorch network, and the agreement of the
    detections NMS keeps from them (:func:`compare_kept`: tie-tolerant kept-set Jaccard).

    With random weights few anchors pass the real threshold; the detection check then
    uses the 50th best reference score as threshold so it compares real NMS decisions.
    """
    import torch

    from runtime.fastsam_post import xywh_to_xyxy

    rng = np.random.default_rng(seed)
    tol = TOLERANCES[precision]
    worst = {"output0": 0.0, "output1": 0.0}
    worst_abs = {"output0": 0.0, "output1": 0.0}
    comparisons = []
    thresholds = []
    for _ in range(images):
        x = rng.random((1, 3, imgsz, imgsz), dtype=np.float32)
        with torch.no_grad():
            out = net(torch.from_numpy(x))
        first = out[0] if isinstance(out, (tuple, list)) else out
        expected = {"output0": first[0].numpy(), "output1": first[1].numpy()}
        got = runner({"images": x})
        for name in worst:
            ref = expected[name]
            err = max_abs_error(got[name], ref)
            worst_abs[name] = worst_error(worst_abs[name], err)
            worst[name] = worst_error(worst[name], err / max(float(np.abs(ref).max()), 1.0))
        scores = expected["output0"][0, 4]
        threshold = min(conf, float(np.sort(scores)[-min(50, len(scores))]) - 1e-6)
        thresholds.append(threshold)
        comparisons.append(
            compare_kept(
                nms_keep(expected["output0"], threshold, iou),
                nms_keep(got["output0"], threshold, iou),
                xywh_to_xyxy(expected["output0"][0, :4].T),
                scores,
                threshold,
                iou,
                None,
                tol["score_tie"],
                tol["iou_tie"],
            )
        )
    common = dict(model="fastsam", file=file, precision=precision, backend=backend)
    checks = [
        Check(
            **common,
            metric="max err / max(1, peak)",
            output=name,
            value=value,
            tolerance=tol["fastsam_rel"],
            detail=f"max abs err {worst_abs[name]:.3e} over {images} images",
        )
        for name, value in worst.items()
    ]
    checks.append(
        Check(
            **common,
            metric="NMS detection agreement",
            output="output0",
            value=float(min(c.agreement for c in comparisons)),
            tolerance=tol["detection_agreement"],
            higher_is_better=True,
            detail=f"conf {min(thresholds):.4g}..{max(thresholds):.4g}, iou {iou}; "
            + _describe_kept(comparisons, tol["score_tie"]),
        )
    )
    return checks


def synthetic_scene(rng: np.random.Generator, size_hw: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 RGB: a smooth two-colour gradient with 6-12 flat-coloured rectangles
    and ellipses (:func:`random_masks`) and mild noise: objects for a segmenter to find."""
    h, w = size_hw
    ramp = np.linspace(0.0, 1.0, w, dtype=np.float32)[None, :, None]
    ramp = ramp * np.linspace(0.5, 1.0, h, dtype=np.float32)[:, None, None]
    c0, c1 = rng.uniform(0, 255, (2, 3)).astype(np.float32)
    image = c0 + (c1 - c0) * ramp
    for mask in random_masks(rng, int(rng.integers(6, 13)), (h, w)):
        image[mask.astype(bool)] = rng.uniform(0, 255, 3)
    image += rng.normal(0.0, 4.0, image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def _crop_iou(crop_a, range_a, crop_b, range_b) -> float:
    """IoU of two masks given as box crops and their pixel ranges ``r0, r1, c0, c1``."""
    r0, c0 = min(range_a[0], range_b[0]), min(range_a[2], range_b[2])
    r1, c1 = max(range_a[1], range_b[1]), max(range_a[3], range_b[3])
    planes = np.zeros((2, r1 - r0, c1 - c0), bool)
    for plane, crop, (a0, a1, b0, b1) in zip(
        planes, (crop_a, crop_b), (range_a, range_b), strict=True
    ):
        plane[a0 - r0 : a1 - r0, b0 - c0 : b1 - c0] = crop != 0
    union = int(np.logical_or(planes[0], planes[1]).sum())
    return 1.0 if union == 0 else int(np.logical_and(planes[0], planes[1]).sum()) / union


def _map_rows(
    rows: np.ndarray,
    boxes: np.ndarray,
    eligible: np.ndarray,
    radius_px: float,
) -> tuple[list[int], list[int], list[str]]:
    """Anchor of each in-graph detection row: the eligible anchor whose box is nearest
    (max abs corner difference, input px) within ``radius_px``, each anchor used once.
    Returns (row indices, their anchors, descriptions of the rows that map to none)."""
    pool = np.flatnonzero(eligible)
    pool_boxes = boxes[pool].astype(np.float64)
    used: set[int] = set()
    row_ids, anchors, unmapped = [], [], []
    for j, row in enumerate(rows):
        dist = np.abs(pool_boxes - row[:4].astype(np.float64)).max(axis=1)
        k = int(np.argmin(dist)) if len(pool) else -1
        if k >= 0 and dist[k] <= radius_px and int(pool[k]) not in used:
            used.add(int(pool[k]))
            row_ids.append(j)
            anchors.append(int(pool[k]))
        else:
            near = f"{dist[k]:.3g} px" if k >= 0 else "no candidate"
            unmapped.append(f"graph row {j} (score {row[4]:.6g}) matches no anchor ({near})")
    return row_ids, anchors, unmapped


def fastsam_nms_parity(
    net,
    runner: Runner,
    imgsz: int,
    file: str,
    precision: str,
    backend: str,
    conf: float,
    iou: float,
    max_det: int,
    seed: int = 0,
    images: int = 2,
) -> list[Check]:
    """A FastSAM graph with NMS inside against the runtime's path on the PyTorch network.

    ``images`` synthetic scenes (:func:`synthetic_scene`, 3:4 and 4:3, letterboxed to
    ``imgsz``) go through the runner and through the network; the reference is what
    ``--fastsam-nms runtime`` artifacts give: ``runtime.fastsam_post`` (score filter,
    class-agnostic NMS, masks) on the raw torch outputs. Each graph row is mapped to the
    reference anchor with the nearest box; then (gated):

    - ``output1``: prototypes, max err / max(1, peak);
    - ``detection agreement``: the kept sets, tie-tolerant (:func:`compare_kept`); a row
      that maps to no anchor within 4x the box tolerance counts against it;
    - ``box max err px`` (network input pixels, unclipped) and ``score max abs err`` of the
      anchors both kept;
    - ``mask IoU (min)`` (fp32) / ``(mean)`` (fp16): masks of those anchors assembled by
      ``runtime.fastsam_post`` from each side's own coefficients, prototypes and box; the
      other statistic is reported.
    """
    import torch

    from runtime import fastsam_post as fp

    rng = np.random.default_rng([seed, 7])
    tol = TOLERANCES[precision]
    proto_err = proto_rel = 0.0
    box_err = score_err = 0.0
    ious: list[float] = []
    comparisons: list[KeptComparison] = []
    masks = [0, 0]
    for index in range(images):
        hw = (imgsz * 3 // 4, imgsz) if index % 2 == 0 else (imgsz, imgsz * 3 // 4)
        x, geom = fp.letterbox(synthetic_scene(rng, hw), imgsz)
        with torch.no_grad():
            out = net(torch.from_numpy(x))
        first = out[0] if isinstance(out, (tuple, list)) else out
        raw0, raw1 = first[0].numpy()[0], first[1].numpy()
        got = runner({"images": x})
        err = max_abs_error(got["output1"], raw1)
        proto_err = worst_error(proto_err, err)
        proto_rel = worst_error(proto_rel, err / max(float(np.abs(raw1).max()), 1.0))
        n_coeffs = raw1.shape[1]
        n_classes = raw0.shape[0] - 4 - n_coeffs
        scores = raw0[4 : 4 + n_classes].max(axis=0)
        boxes = fp.xywh_to_xyxy(raw0[:4].T)
        ref_keep = fp.kept_anchors(raw0, n_coeffs, conf, iou, max_det)
        rows = got["output0"][0]
        rows = rows[rows[:, 4] > np.float32(conf)]  # as the runtime reads the graph's rows
        row_ids, anchors, unmapped = _map_rows(
            rows, boxes, scores > conf - tol["score_tie"], 4 * tol["fastsam_box_px"]
        )
        comparisons.append(
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
            )
        )
        # Anchors both kept: boxes, scores, masks (each side's own numbers).
        ref_pos = {int(a): k for k, a in enumerate(ref_keep)}
        pairs = [(ref_pos[a], j) for j, a in zip(row_ids, anchors, strict=True) if a in ref_pos]
        ref_rows = np.asarray([p[0] for p in pairs], np.int64)
        got_rows = np.asarray([p[1] for p in pairs], np.int64)
        if len(pairs):  # input pixels, before clipping to the image could hide a shift
            ref_anchors = ref_keep[ref_rows]
            box_err = worst_error(box_err, max_abs_error(boxes[ref_anchors], rows[got_rows, :4]))
            score_err = worst_error(
                score_err, max_abs_error(scores[ref_anchors], rows[got_rows, 4])
            )
        # Every kept detection's mask (runtime.fastsam_post, each side's own numbers): the
        # candidates a run would get; the pairs' IoU compares them.
        sides = []
        for protos, coeffs, kept_boxes in (
            (raw1[0], raw0[4 + n_classes :, ref_keep].T, boxes[ref_keep]),
            (got["output1"][0], rows[:, 6:], rows[:, :4]),
        ):
            image_boxes = fp.scale_boxes_to_image(kept_boxes, geom)
            crops = fp.box_masks(protos, coeffs, image_boxes, geom.image_hw)
            sides.append((crops, fp.box_pixel_ranges(image_boxes, geom.image_hw)))
        (ref_crops, ref_ranges), (got_crops, got_ranges) = sides
        ious += [
            _crop_iou(ref_crops[a], ref_ranges[a], got_crops[b], got_ranges[b])
            for a, b in zip(ref_rows, got_rows, strict=True)
        ]
        masks[0] += sum(bool(c.any()) for c in ref_crops)
        masks[1] += sum(bool(c.any()) for c in got_crops)
    common = dict(model="fastsam", file=file, precision=precision, backend=backend)
    settings = f"conf {conf:g}, iou {iou:g}, max_det {max_det}, {images} synthetic scenes"
    compared = f"{len(ious)} detections kept by both"
    return [
        Check(
            **common,
            metric="max err / max(1, peak)",
            output="output1",
            value=proto_rel,
            tolerance=tol["fastsam_rel"],
            detail=f"max abs err {proto_err:.3e} over {images} images",
        ),
        Check(
            **common,
            metric="detection agreement",
            output="output0",
            value=float(min(c.agreement for c in comparisons)),
            tolerance=tol["detection_agreement"],
            higher_is_better=True,
            detail=f"in-graph NMS vs runtime NMS on torch outputs ({settings}); masks: "
            f"reference {masks[0]}, graph {masks[1]}; "
            + _describe_kept(comparisons, tol["score_tie"]),
        ),
        Check(
            **common,
            metric="box max err px",
            output="output0",
            value=box_err,
            tolerance=tol["fastsam_box_px"],
            detail=f"network input pixels, before clipping; {compared}",
        ),
        Check(
            **common,
            metric="score max abs err",
            output="output0",
            value=score_err,
            tolerance=tol["fastsam_rel"],
            detail=compared,
        ),
        *(
            Check(
                **common,
                metric=f"mask IoU ({stat})",
                output="output0",
                value=float(fn(ious)) if ious else 1.0,
                tolerance=tol.get(f"fastsam_mask_iou_{stat}", 1.0),
                higher_is_better=True,
                gated=f"fastsam_mask_iou_{stat}" in tol,
                detail=f"runtime.fastsam_post masks, {compared}"
                + ("" if ious else " (none to compare)"),
            )
            for stat, fn in (("min", np.min), ("mean", np.mean))
        ),
    ]


@contextlib.contextmanager
def temporary_dir(parent: str | os.PathLike | None = None) -> Iterator[Path]:
    """A temporary folder (inside ``parent`` when given), removed afterwards."""
    with tempfile.TemporaryDirectory(dir=parent, prefix=".omama-export-") as tmp:
        yield Path(tmp)
