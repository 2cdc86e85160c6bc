"""The O-MaMa pipeline on an artifacts folder: source image + query masks -> destination masks.

:class:`Pipeline` verifies an ``omama export`` folder (a tampered or mismatched folder is
refused with one line), opens one session per model on the chosen backend
(:func:`runtime.sessions.select_backend`), and per frame pair:

1. ``preprocess``: each image is brought to its view's model size the way the reference
   gets there (OMAMA_REFERENCE section 3): first an area downscale by the largest integer
   factor that keeps it at least the model size (what ``omama data prepare`` does to
   Ego-Exo4D frames: 1408 -> 704 ego, 3840x2160 -> 960x540 exo; factor 1 for processed
   frames), giving the *working image*; then a nearest resize (OpenCV rule) to the model
   size (704 -> 700, 540x960 -> 532x952) and ImageNet normalisation. Query masks, at the
   source image's size or any size of the same aspect ratio (e.g. the annotation's full
   resolution), are resized nearest (OpenCV rule) to the model size;
2. ``fastsam``: FastSAM "everything" on the destination working image, once per frame
   (unless precomputed candidates are given); candidates live at the working size;
3. ``backbone_src`` / ``backbone_dst``: the backbone once per view;
4. ``descriptors``: the matcher's descriptor inputs, in the form the manifest names
   (``weights``: pooling weights at token resolution, :func:`runtime.pooling.
   descriptor_weights`; ``masks``: masks at the model size and boxes); candidates are
   resized with the torch rule as O-MaMa resizes FastSAM masks, sampled straight from
   the FastSAM box crops;
5. ``matcher``: ONE call for all query objects of the frame (B objects x N candidates);
6. ``postprocess``: per object the best candidate, its confidence ``sigmoid(best
   similarity)`` (visible when > 0.5) and the top 5; zero candidates give an empty mask
   and confidence 0.

Output mask size (``mask_size``): ``"image"`` (default of ``pair`` and ``video``) gives
the chosen candidate at the destination image's own size (the working-size mask,
nearest-upsampled when the image was downscaled); ``"model"`` gives it at the model's
destination size, e.g. 700x700 ego, which is what O-MaMa wrote and what ``take`` writes
by default. ``omama eval`` (``omama`` protocol) resizes the GT to the prediction's size,
so both score; ``model`` reproduces the published numbers exactly.

Every call records its per-stage latency (:attr:`Pipeline.last_latency_ms`, accumulated in
:attr:`Pipeline.latency`). :func:`run_video` and :func:`run_take` are the loops behind
``omama-run video`` and ``omama-run take``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from runtime import overlay
from runtime.atomic import atomic_path, write_json
from runtime.candidates import Candidates, VideoCandidates, read_candidates, scale_boxes
from runtime.egoexo import ProcessedRoot, candidate_paths, check_direction, is_ego_cam
from runtime.errors import OmamaError, no_fastsam_error
from runtime.fastsam_post import FastSAMResult, nms_thresholds, segment_everything
from runtime.images import read_rgb
from runtime.info import peak_rss_mb
from runtime.manifest import Manifest, ViewSpec, check_artifacts, sha256_file
from runtime.pooling import descriptor_weights, index_slice, mask_boxes, pooling_grid
from runtime.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    nearest_indices,
    preprocess_image,
    resize_mask_nearest,
)
from runtime.results import add_gt_annotation, new_gt, new_results, read_json, write_results
from runtime.sessions import Session, open_artifact, plan_artifacts
from runtime.tracks import TrackSet
from runtime.verification.replay import warn_if_unverified

log = logging.getLogger(__name__)

STAGES: tuple[str, ...] = (
    "preprocess",
    "fastsam",
    "backbone_src",
    "backbone_dst",
    "descriptors",
    "matcher",
    "postprocess",
)
MASK_SIZES: tuple[str, ...] = ("image", "model")
ASPECT_TOLERANCE = 0.03  # 540x960 vs 532x952 differ by 0.7%; a swapped view by 40% or more
TOP_K = 5
VISIBLE_THRESHOLD = 0.5
OVERLAY_HEIGHT_PX = 540
CHECKPOINT_EVERY = 50
SKIPS_LISTED = 100  # skipped items kept by name in a summary; the rest are counted
STATE_NAME = "run_state.json"
RESULTS_NAME = "results.json"
SUMMARY_NAME = "summary.json"
DETAILS_NAME = "predictions.jsonl"


# ----------------------------------------------------------------------------- small parts


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


@dataclass
class Match:
    """The answer for one query object in one frame pair.

    Attributes:
        mask: (H, W) uint8 0/1 at the output size (empty with no candidate).
        confidence: sigmoid of the best similarity; 0 with no candidate.
        candidate: index of the chosen candidate, -1 with none.
        similarity: the best cosine similarity, None with no candidate.
        top: up to 5 ``(candidate, similarity)`` by decreasing similarity.
        n_candidates: candidates of the destination frame.
        box_xywh: the chosen candidate's box ``x1, y1, w, h`` at the output size, px.
    """

    mask: np.ndarray
    confidence: float
    candidate: int
    similarity: float | None
    top: list[tuple[int, float]]
    n_candidates: int
    box_xywh: tuple[float, float, float, float] | None = None

    @property
    def visible(self) -> bool:
        return self.confidence > VISIBLE_THRESHOLD

    def to_json(self) -> dict:
        """Everything but the mask (write it as an RLE or a PNG)."""
        return {
            "confidence": self.confidence,
            "visible": self.visible,
            "candidate": self.candidate,
            "similarity": self.similarity,
            "box_xywh": None if self.box_xywh is None else [float(v) for v in self.box_xywh],
            "top5": [
                {"candidate": i, "similarity": s, "confidence": sigmoid(s)} for i, s in self.top
            ],
            "candidates": self.n_candidates,
            "mask_size_hw": [int(v) for v in self.mask.shape],
        }


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, np.float64), q)) if len(values) else 0.0


class LatencyLog:
    """Per-stage latencies (ms) of every pipeline call, for p50 / p90 summaries."""

    def __init__(self) -> None:
        self.samples: dict[str, list[float]] = {s: [] for s in (*STAGES, "total")}

    def add(self, record: dict[str, float]) -> None:
        for stage, values in self.samples.items():
            values.append(float(record.get(stage, 0.0)))

    def __len__(self) -> int:
        return len(self.samples["total"])

    def summary(self) -> dict[str, dict[str, float]]:
        """``{stage: {"p50_ms", "p90_ms", "mean_ms"}}`` over the calls so far."""
        return {
            stage: {
                "p50_ms": round(percentile(v, 50), 3),
                "p90_ms": round(percentile(v, 90), 3),
                "mean_ms": round(float(np.mean(v)) if v else 0.0, 3),
            }
            for stage, v in self.samples.items()
        }


def format_latency(summary: dict[str, dict[str, float]]) -> str:
    """One line per stage: ``stage  p50  p90`` (ms)."""
    lines = [f"  {'stage':<14} {'p50 ms':>10} {'p90 ms':>10}"]
    for stage, stats in summary.items():
        lines.append(f"  {stage:<14} {stats['p50_ms']:>10.1f} {stats['p90_ms']:>10.1f}")
    return "\n".join(lines)


def aspect_mismatch(a_hw: tuple[int, int], b_hw: tuple[int, int]) -> float:
    """Relative difference of the aspect ratios of two (H, W) sizes (0 = same shape)."""
    return abs((a_hw[0] * b_hw[1]) / (a_hw[1] * b_hw[0]) - 1.0)


def working_size(image_hw: tuple[int, int], model_hw: tuple[int, int]) -> tuple[int, int]:
    """(H // k, W // k) with k the largest integer keeping it at least ``model_hw`` (k >= 1):
    1408x1408 for a 700x700 model -> 704x704; 2160x3840 for 532x952 -> 540x960."""
    k = max(1, min(image_hw[0] // model_hw[0], image_hw[1] // model_hw[1]))
    return image_hw[0] // k, image_hw[1] // k


def working_image(rgb: np.ndarray, model_hw: tuple[int, int]) -> np.ndarray:
    """The image area-downscaled to :func:`working_size` (``omama data prepare``'s step)."""
    size = working_size(rgb.shape[:2], model_hw)
    if size == rgb.shape[:2]:
        return rgb
    return cv2.resize(rgb, (size[1], size[0]), interpolation=cv2.INTER_AREA)


def _check_rgb(image: np.ndarray, what: str) -> np.ndarray:
    image = np.asarray(image)
    if (
        image.ndim != 3
        or image.shape[2] != 3
        or image.dtype != np.uint8
        or min(image.shape[:2]) < 1
    ):
        raise OmamaError(
            f"{what} must be an (H, W, 3) uint8 RGB image, got {image.shape} {image.dtype}"
        )
    return image


# ----------------------------------------------------------------------------- candidates


class CandidateSet:
    """Candidates of one destination frame at its working size: FastSAM box crops or dense
    precomputed masks, behind one interface (boxes, one mask, a nearest resample)."""

    def __init__(self, source: FastSAMResult | Candidates) -> None:
        self._source = source
        if isinstance(source, FastSAMResult):
            self.size_hw = tuple(int(v) for v in source.image_hw)
        else:
            self.size_hw = source.size_hw
        self.boxes = np.asarray(source.boxes, np.float32).reshape(-1, 4)

    def __len__(self) -> int:
        return len(self.boxes)

    def mask(self, i: int) -> np.ndarray:
        """Candidate ``i`` as (H, W) uint8 0/1 at the working size."""
        if isinstance(self._source, FastSAMResult):
            return self._source.mask(i)
        return self._source.masks[i]

    def sample(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """All candidates at the pixels ``rows`` x ``cols``: (N, len(rows), len(cols)) uint8."""
        if isinstance(self._source, FastSAMResult):
            return self._source.sample(rows, cols)
        r, c = index_slice(np.asarray(rows)), index_slice(np.asarray(cols))
        return np.ascontiguousarray(self._source.masks[:, r][:, :, c])


# ----------------------------------------------------------------------------- frames


@dataclass
class ViewFrame:
    """One view of a frame pair after its backbone.

    Attributes:
        image_hw: (H, W) of the image as given, px; work_hw: after the area downscale.
        feats: (1, D, h, w) backbone features.
        latency_ms: stage times of producing it, handed to the first :meth:`Pipeline.match`
            that uses it (a frame reused for other objects or cameras costs nothing again).
    """

    image_hw: tuple[int, int]
    work_hw: tuple[int, int]
    feats: np.ndarray
    latency_ms: dict[str, float] = field(default_factory=dict)

    def take_latency(self) -> dict[str, float]:
        out, self.latency_ms = self.latency_ms, {}
        return out


@dataclass
class DestinationFrame(ViewFrame):
    """The destination view with its candidates and their matcher inputs."""

    candidates: CandidateSet | None = None
    matcher_inputs: dict[str, np.ndarray] = field(default_factory=dict)


# ----------------------------------------------------------------------------- pipeline


class Pipeline:
    """O-MaMa inference on an artifacts folder with one backend (see the module docstring).

    Arguments:
        artifacts_dir: an ``omama export`` folder; its files must match ``manifest.json``.
        backend: ``auto | tensorrt | onnxruntime | torch`` (:func:`select_backend`).
        device: ``auto | cpu | cuda | cuda:N``.
        precision: ``auto`` (fp16 engines for TensorRT, fp32 ONNX otherwise), ``fp32`` or
            ``fp16`` (the export's ``*_fp16`` files).
        threads: intra-op threads per session (None: the backend's default).
        mask_size: ``image`` or ``model`` (see the module docstring).
        weights_dirs: folders holding the original weights (``torch`` backend only; also
            ``$OMAMA_WEIGHTS`` and the artifacts folder are searched).
        check_hashes: verify every file's sha256 (sizes are always checked).
        wrap_session: ``(role, session) -> session`` applied to each opened session, e.g.
            :class:`runtime.sessions.InstrumentedSession` to time every call (``omama
            bench``); roles are ``backbone_src``, ``backbone_dst``, ``matcher``, ``fastsam``.

    Logs one warning when the folder holds no passing verification record for the chosen
    backend, precision and device (``omama-run verify`` writes one).
    """

    def __init__(
        self,
        artifacts_dir: str | os.PathLike,
        backend: str = "auto",
        device: str = "auto",
        precision: str = "auto",
        threads: int | None = None,
        mask_size: str = "image",
        weights_dirs: Sequence[str | os.PathLike] = (),
        check_hashes: bool = True,
        wrap_session: Callable[[str, Session], Session] | None = None,
    ) -> None:
        if mask_size not in MASK_SIZES:
            raise OmamaError(f"mask size must be one of {', '.join(MASK_SIZES)}, got {mask_size!r}")
        self.mask_size = mask_size
        self.manifest = manifest = check_artifacts(artifacts_dir, check_hashes=check_hashes)
        self.direction = check_direction(manifest.direction)
        self.views: dict[str, ViewSpec] = manifest.views
        self.matcher_input = manifest.matcher.input
        self.reduction = manifest.descriptor.reduction
        self.context_px = manifest.descriptor.context_px
        self._check_normalisation(manifest)
        self.plan = plan_artifacts(manifest, backend, device, precision)
        self.choice = self.plan.choice
        self.backend, self.device = self.plan.backend, self.plan.device
        self.precision = self.plan.precision
        self.fastsam_conf, self.fastsam_iou = manifest.fastsam.conf, manifest.fastsam.iou
        self.sessions: dict[str, Session] = {}
        files = []
        try:
            for role, model in manifest.role_models().items():
                entry = manifest.select(model, self.plan.file_format, self.precision)
                files.append(entry.path)
                session = open_artifact(self.choice, manifest, entry, threads, weights_dirs)
                self.sessions[role] = wrap_session(role, session) if wrap_session else session
        except BaseException:
            self.close()
            raise
        warn_if_unverified(manifest, self.plan, files)
        self.latency = LatencyLog()
        self.last_latency_ms: dict[str, float] = {}
        self._upscale_warned: set[str] = set()

    # -- setup ------------------------------------------------------------------------------
    @staticmethod
    def _check_normalisation(manifest: Manifest) -> None:
        mean = [float(v) for v in manifest.preprocess.mean]
        std = [float(v) for v in manifest.preprocess.std]
        if not (np.allclose(mean, IMAGENET_MEAN) and np.allclose(std, IMAGENET_STD)):
            raise OmamaError(
                f"artifacts use normalisation mean {mean} std {std}; this runtime implements "
                "the ImageNet normalisation of the reference only"
            )

    def close(self) -> None:
        for session in self.sessions.values():
            session.close()
        self.sessions = {}

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def describe(self) -> dict:
        """Backend, device, precision, direction, sizes, and each session's providers."""
        return {
            "artifacts": str(self.manifest.root),
            "backend": self.backend,
            "device": self.device,
            "precision": self.precision,
            "direction": self.direction,
            "matcher_input": self.matcher_input,
            "mask_size": self.mask_size,
            # The whole export random (--random-init), or a backbone from a random-init cache.
            "random_weights": self.manifest.random_weights,
            "views": {role: view.to_dict() for role, view in self.views.items()},
            "sessions": {
                role: {
                    "model": s.name,
                    "providers": list(getattr(s, "providers", ()) or (s.backend,)),
                }
                for role, s in self.sessions.items()
            },
        }

    @property
    def has_fastsam(self) -> bool:
        return "fastsam" in self.sessions

    # -- images -----------------------------------------------------------------------------
    def check_image(self, image_hw: tuple[int, int], role: str, what: str) -> None:
        """Refuse an image whose shape does not fit the model's ``role`` view."""
        view = self.views[role]
        if aspect_mismatch(image_hw, view.image_size) > ASPECT_TOLERANCE:
            name, other = ("source", "destination") if role == "src" else ("destination", "source")
            raise OmamaError(
                f"{what} is {image_hw[1]}x{image_hw[0]} px (WxH) but the model's {name} view "
                f"({view.kind}) takes {view.image_size[1]}x{view.image_size[0]} px images: "
                f"aspect ratios differ by {100 * aspect_mismatch(image_hw, view.image_size):.0f}%"
                f" (did you swap {name} and {other}, or export for the other --direction?)"
            )
        if (image_hw[0] < view.image_size[0] or image_hw[1] < view.image_size[1]) and (
            role not in self._upscale_warned
        ):
            self._upscale_warned.add(role)
            log.warning(
                "%s (%dx%d px) is smaller than the model's %s size %dx%d: it is upsampled",
                what,
                image_hw[1],
                image_hw[0],
                role,
                view.image_size[1],
                view.image_size[0],
            )

    def _prepare(self, rgb: np.ndarray, role: str, what: str) -> tuple[np.ndarray, np.ndarray]:
        """(working image, normalised (1, 3, H, W) model input) of one view."""
        rgb = _check_rgb(rgb, what)
        self.check_image(rgb.shape[:2], role, what)
        view = self.views[role]
        work = working_image(rgb, view.image_size)
        return work, preprocess_image(work, view.image_size)[None]

    def _backbone(self, role: str, tensor: np.ndarray) -> np.ndarray:
        session = self.sessions["backbone_src" if role == "src" else "backbone_dst"]
        name = session.inputs[0].name
        out = session.infer({name: tensor})
        return next(iter(out.values())) if len(out) == 1 else out[session.outputs[0].name]

    def encode_source(self, src_rgb: np.ndarray) -> ViewFrame:
        """Preprocess and run the source backbone once (reusable for many objects)."""
        t0 = time.perf_counter()
        work, tensor = self._prepare(src_rgb, "src", "source image")
        t1 = time.perf_counter()
        feats = self._backbone("src", tensor)
        t2 = time.perf_counter()
        return ViewFrame(
            image_hw=tuple(src_rgb.shape[:2]),
            work_hw=tuple(work.shape[:2]),
            feats=feats,
            latency_ms={"preprocess": 1e3 * (t1 - t0), "backbone_src": 1e3 * (t2 - t1)},
        )

    def set_fastsam_thresholds(self, conf: float | None = None, iou: float | None = None) -> None:
        """Run-time FastSAM thresholds (None keeps the current one).

        With NMS in fastsam.onnx (manifest ``nms_in_graph``) conf may only rise above the
        baked one and iou cannot change: anything else is an OmamaError saying to re-export
        with ``--fastsam-nms runtime``.
        """
        conf = self.fastsam_conf if conf is None else conf
        iou = self.fastsam_iou if iou is None else iou
        conf, iou, _ = nms_thresholds(self.manifest.fastsam, conf, iou)
        self.fastsam_conf, self.fastsam_iou = conf, iou

    def fastsam_thresholds(self) -> tuple[float, float, int]:
        """(conf, iou, max_det) that :meth:`segment` uses, checked against the manifest."""
        return nms_thresholds(self.manifest.fastsam, self.fastsam_conf, self.fastsam_iou)

    def segment(self, dst_work_rgb: np.ndarray) -> CandidateSet:
        """FastSAM "everything" on a destination working image.

        With NMS in the graph the session's rows are the kept detections (only a raised conf
        filters them again); a session with raw outputs (``--fastsam-nms runtime`` files, or
        the torch backend, which runs the network without the NMS wrapper) gets the
        runtime's NMS with the same conf / iou / max_det, so both give the same candidates.
        """
        if not self.has_fastsam:
            raise no_fastsam_error(self.manifest.root)
        conf, iou, max_det = self.fastsam_thresholds()
        session = self.sessions["fastsam"]
        input_hw = tuple(int(d) for d in session.inputs[0].shape[2:4])
        result = segment_everything(
            session, dst_work_rgb, input_hw=input_hw, conf=conf, iou=iou, max_det=max_det
        )
        return CandidateSet(result)

    def encode_destination(
        self, dst_rgb: np.ndarray, candidates: Candidates | None = None
    ) -> DestinationFrame:
        """Preprocess, candidates (FastSAM unless given), backbone and the candidates'
        matcher inputs of a destination image (reusable for many objects / source cams).

        ``candidates``: precomputed masks (N, h, w) of this image, at its working size or
        resized to it (torch rule, as O-MaMa resizes FastSAM masks of another size).
        """
        t0 = time.perf_counter()
        work, tensor = self._prepare(dst_rgb, "dst", "destination image")
        if candidates is not None:
            if candidates.size_hw != work.shape[:2]:
                if aspect_mismatch(candidates.size_hw, work.shape[:2]) > ASPECT_TOLERANCE:
                    raise OmamaError(
                        f"candidate masks are {candidates.size_hw[1]}x{candidates.size_hw[0]} "
                        f"px, which does not fit the destination image "
                        f"{dst_rgb.shape[1]}x{dst_rgb.shape[0]}"
                    )
                candidates = candidates.resized(work.shape[:2])
            cand_set = CandidateSet(candidates)
        t1 = time.perf_counter()
        if candidates is None:
            cand_set = self.segment(work)
        t2 = time.perf_counter()
        feats = self._backbone("dst", tensor)
        t3 = time.perf_counter()
        inputs = self._candidate_inputs(cand_set)
        t4 = time.perf_counter()
        return DestinationFrame(
            image_hw=tuple(dst_rgb.shape[:2]),
            work_hw=tuple(work.shape[:2]),
            feats=feats,
            latency_ms={
                "preprocess": 1e3 * (t1 - t0),
                "fastsam": 1e3 * (t2 - t1),
                "backbone_dst": 1e3 * (t3 - t2),
                "descriptors": 1e3 * (t4 - t3),
            },
            candidates=cand_set,
            matcher_inputs=inputs,
        )

    # -- descriptor inputs --------------------------------------------------------------
    def _resize_index(self, size_in: tuple[int, int], size_out: tuple[int, int], rule: str):
        return nearest_indices(size_in[0], size_out[0], rule), nearest_indices(
            size_in[1], size_out[1], rule
        )

    def _candidate_inputs(self, cands: CandidateSet) -> dict[str, np.ndarray]:
        view = self.views["dst"]
        if len(cands) == 0:
            return {}
        boxes = scale_boxes(cands.boxes, cands.size_hw, view.image_size)
        rows, cols = self._resize_index(cands.size_hw, view.image_size, "torch")
        if self.matcher_input == "masks":
            masks = cands.sample(rows, cols)  # (N, H, W) at the model size
            return {"dst_masks": masks[None], "dst_boxes": boxes[None]}
        # Weights: resample straight onto the pooling grid; composing the two nearest
        # index maps (working -> model size -> grid) equals resizing twice, as O-MaMa does.
        grid = pooling_grid(view.image_size, self.reduction)
        grid_rows, grid_cols = self._resize_index(view.image_size, grid, "torch")
        small = cands.sample(rows[grid_rows], cols[grid_cols])
        weights = descriptor_weights(
            small, boxes, view.image_size, view.feat_grid, self.context_px, self.reduction
        )
        return {"dst_weights": weights[None]}

    def query_problem(self, mask: np.ndarray, src_hw: tuple[int, int]) -> str | None:
        """Why ``mask`` cannot be a query for a source image of ``src_hw``, or None."""
        mask = np.asarray(mask)
        if mask.ndim != 2 or min(mask.shape) < 1:
            return f"a query mask must be 2-D (H, W), got shape {mask.shape}"
        if aspect_mismatch(mask.shape, src_hw) > ASPECT_TOLERANCE:
            return (
                f"the query mask is {mask.shape[1]}x{mask.shape[0]} px but the source image is "
                f"{src_hw[1]}x{src_hw[0]}: it must be drawn on the source image (same aspect "
                "ratio, any resolution)"
            )
        if not mask.any():
            return "the query mask is empty"
        view = self.views["src"]
        if not resize_mask_nearest(mask != 0, view.image_size).any():
            return (
                f"the query mask vanishes at the model's source size "
                f"{view.image_size[1]}x{view.image_size[0]} (object too small)"
            )
        return None

    def _query_inputs(self, queries: Sequence[np.ndarray], src_hw: tuple[int, int]):
        view = self.views["src"]
        masks = []
        for i, mask in enumerate(queries):
            problem = self.query_problem(mask, src_hw)
            if problem:
                raise OmamaError(f"query {i}: {problem}")
            small = resize_mask_nearest(np.asarray(mask) != 0, view.image_size, rule="opencv")
            masks.append(small.astype(np.uint8))
        return np.stack(masks), mask_boxes(np.stack(masks))

    # -- matching -----------------------------------------------------------------------
    def _matcher_limits(self) -> tuple[int | None, int | None]:
        """Largest B and N the matcher session accepts at once (TensorRT profiles)."""
        session = self.sessions["matcher"]
        if not hasattr(session, "profile_range"):
            return None, None
        b_name = "src_weights" if self.matcher_input == "weights" else "src_mask"
        n_name = "dst_weights" if self.matcher_input == "weights" else "dst_masks"
        return session.profile_range(b_name)[1][0], session.profile_range(n_name)[1][1]

    def _similarities(self, src: ViewFrame, dst: DestinationFrame, src_inputs: dict) -> np.ndarray:
        session = self.sessions["matcher"]
        batch = len(next(iter(src_inputs.values())))
        count = len(dst.candidates)
        max_b, max_n = self._matcher_limits()
        max_b, max_n = max_b or batch, max_n or count
        out = np.empty((batch, count), np.float32)
        feats = {"src_feats": src.feats, "dst_feats": dst.feats}
        for b0 in range(0, batch, max_b):
            part_src = {k: v[b0 : b0 + max_b] for k, v in src_inputs.items()}
            for n0 in range(0, count, max_n):
                part_dst = {k: v[:, n0 : n0 + max_n] for k, v in dst.matcher_inputs.items()}
                sims = session.infer({**feats, **part_src, **part_dst})
                out[b0 : b0 + max_b, n0 : n0 + max_n] = next(iter(sims.values()))
        return out

    def _output_mask(self, dst: DestinationFrame, index: int) -> tuple[np.ndarray, tuple]:
        cands = dst.candidates
        box = cands.boxes[index]
        if self.mask_size == "model":
            size = self.views["dst"].image_size
            rows, cols = self._resize_index(cands.size_hw, size, "torch")
            mask = cands.mask(index)[np.ix_(rows, cols)]
        else:
            size = dst.image_hw
            mask = cands.mask(index)
            if mask.shape != size:
                mask = resize_mask_nearest(mask, size, rule="opencv")
        scaled = scale_boxes(box[None], cands.size_hw, size)[0]
        return np.ascontiguousarray(mask, dtype=np.uint8), tuple(float(v) for v in scaled)

    def output_size(self, dst_image_hw: tuple[int, int]) -> tuple[int, int]:
        """(H, W) of the output masks for a destination image of ``dst_image_hw``."""
        if self.mask_size == "model":
            return tuple(self.views["dst"].image_size)
        return tuple(dst_image_hw)

    def match(
        self, src: ViewFrame, dst: DestinationFrame, queries: Sequence[np.ndarray]
    ) -> list[Match]:
        """Match B query masks (each (H, W), drawn on the source image) against the
        destination's candidates with one matcher call; one :class:`Match` per query.

        Records the call's per-stage latency (including the stages of producing ``src`` and
        ``dst`` the first time they are used) in :attr:`last_latency_ms` and :attr:`latency`.
        """
        if not queries:
            raise OmamaError("match needs at least one query mask")
        record = {stage: 0.0 for stage in STAGES}
        for part in (src.take_latency(), dst.take_latency()):
            for stage, value in part.items():
                record[stage] += value
        t0 = time.perf_counter()
        masks, boxes = self._query_inputs(queries, src.image_hw)
        t1 = time.perf_counter()
        view = self.views["src"]
        count = len(dst.candidates)
        src_inputs: dict[str, np.ndarray] = {}
        if count and self.matcher_input == "masks":
            src_inputs = {"src_mask": masks[:, None], "src_box": boxes[:, None]}
        elif count:
            weights = descriptor_weights(
                masks, boxes, view.image_size, view.feat_grid, self.context_px, self.reduction
            )
            src_inputs = {"src_weights": weights[:, None]}
        t2 = time.perf_counter()
        sims = self._similarities(src, dst, src_inputs) if count else None
        t3 = time.perf_counter()
        matches = []
        out_hw = self.output_size(dst.image_hw)
        for b in range(len(queries)):
            if not count:
                matches.append(Match(np.zeros(out_hw, np.uint8), 0.0, -1, None, [], 0))
                continue
            row = sims[b].astype(np.float64)
            order = np.argsort(-row, kind="stable")[:TOP_K]
            best = int(order[0])
            mask, box = self._output_mask(dst, best)
            matches.append(
                Match(
                    mask=mask,
                    confidence=sigmoid(float(row[best])),
                    candidate=best,
                    similarity=float(row[best]),
                    top=[(int(i), float(row[i])) for i in order],
                    n_candidates=count,
                    box_xywh=box,
                )
            )
        t4 = time.perf_counter()
        record["preprocess"] += 1e3 * (t1 - t0)
        record["descriptors"] += 1e3 * (t2 - t1)
        record["matcher"] += 1e3 * (t3 - t2)
        record["postprocess"] += 1e3 * (t4 - t3)
        record["total"] = sum(record[s] for s in STAGES)
        self.last_latency_ms = record
        self.latency.add(record)
        return matches

    def match_frame(
        self,
        src_rgb: np.ndarray,
        dst_rgb: np.ndarray,
        queries: Sequence[np.ndarray],
        candidates: Candidates | None = None,
    ) -> list[Match]:
        """One frame pair: FastSAM on the destination (unless ``candidates``), the backbone
        once per view, the matcher once for all ``queries``; one :class:`Match` per query.

        Arguments:
            src_rgb, dst_rgb: (H, W, 3) uint8 RGB images.
            queries: (H, W) masks on the source image (any resolution of its aspect ratio).
            candidates: precomputed candidates of the destination image.
        """
        if not queries:
            raise OmamaError("match_frame needs at least one query mask")
        src = self.encode_source(src_rgb)
        dst = self.encode_destination(dst_rgb, candidates)
        return self.match(src, dst, queries)


# ----------------------------------------------------------------------------- overlays

_PALETTE = (
    (235, 60, 60),
    (60, 200, 90),
    (70, 130, 240),
    (240, 200, 40),
    (200, 80, 220),
    (40, 210, 220),
    (250, 140, 40),
    (160, 160, 160),
)


def render_overlay(
    src_rgb: np.ndarray,
    dst_rgb: np.ndarray,
    names: Sequence[str],
    queries: Sequence[np.ndarray],
    matches: Sequence[Match],
    height_px: int | None = None,
) -> np.ndarray:
    """Queries on the source, predictions on the destination, confidences in the corner.

    One object: :func:`runtime.overlay.render_pair`. Several: one colour per object, a
    legend of ``name conf`` lines on the destination; predictions that are not visible
    (confidence <= 0.5) are drawn as an outline only.
    """
    if len(names) == 1:
        return overlay.render_pair(
            src_rgb, queries[0], dst_rgb, matches[0].mask, matches[0].confidence, height_px
        )
    src, dst = np.array(src_rgb), np.array(dst_rgb)
    for i, (query, match) in enumerate(zip(queries, matches, strict=True)):
        color = _PALETTE[i % len(_PALETTE)]
        src = overlay.overlay_mask(src, query, color)
        if match.candidate >= 0:
            dst = overlay.overlay_mask(dst, match.mask, color, alpha=0.45 if match.visible else 0.0)
    src = overlay.draw_label(src, "source")
    dst = overlay.draw_label(dst, "destination", corner="bottom-left")
    scale = overlay.text_scale(dst.shape[:2]) * 0.8
    thickness = max(1, round(scale * 1.5))
    y = 0
    for i, (name, match) in enumerate(zip(names, matches, strict=True)):
        text = f"{name}: {overlay.confidence_text(match.confidence)}"
        text = text.encode("ascii", "replace").decode("ascii")
        (tw, th), base = cv2.getTextSize(text, overlay.FONT, scale, thickness)
        pad = max(2, round(4 * scale))
        x0 = max(dst.shape[1] - tw - 2 * pad, 0)
        region = dst[y : y + th + base + 2 * pad, x0:]
        region[:] = (region.astype(np.uint16) * 3 // 10).astype(np.uint8)
        cv2.putText(dst, text, (x0 + pad, y + pad + th), overlay.FONT, scale,
                    _PALETTE[i % len(_PALETTE)], thickness, cv2.LINE_AA)  # fmt: skip
        y += th + base + 2 * pad
    return overlay.side_by_side(src, dst, height_px=height_px)


# ----------------------------------------------------------------------------- video runs


# Where a video frame's candidates came from -> its counter in the run state.
CANDIDATE_COUNTS = {
    "precomputed": "precomputed_frames",
    "fastsam": "fastsam_frames",
    "none": "no_candidate_frames",
}


@dataclass
class VideoRun:
    """What ``omama-run video`` runs.

    Attributes:
        src_video, dst_video: the two videos (frames paired by index).
        tracks: the query tracks (:func:`runtime.tracks.load_tracks`).
        out_dir: results.json, summary.json, run_state.json, overlay.mp4 go here.
        take, src_cam, dst_cam: names in the results JSON.
        max_frames: read at most this many frames (from the start, or the resume point).
        resume: continue from ``out_dir``'s partial results.
        overlay: write an overlay MP4.
        checkpoint_every: write the partial results every this many frames.
        queue_size: frame pairs decoded ahead / outputs waiting to be written.
        candidates: precomputed candidates of the destination video
            (:func:`runtime.candidates.open_video_candidates`); frames with queries but no
            entry get FastSAM, or zero candidates when the artifacts hold no FastSAM.
    """

    src_video: Path
    dst_video: Path
    tracks: TrackSet
    out_dir: Path
    take: str
    src_cam: str
    dst_cam: str
    max_frames: int | None = None
    resume: bool = False
    overlay: bool = False
    checkpoint_every: int = CHECKPOINT_EVERY
    queue_size: int = 8
    candidates: VideoCandidates | None = None


def default_cams(direction: str, src_video: Path, dst_video: Path) -> tuple[str, str]:
    """Camera names for the results JSON: the video file names when they say ego (aria) /
    exo the way the direction needs, else ``aria`` / ``exo``."""
    src_ego = direction == "ego2exo"
    src = (
        src_video.stem if is_ego_cam(src_video.stem) == src_ego else ("aria" if src_ego else "exo")
    )
    dst = (
        dst_video.stem if is_ego_cam(dst_video.stem) != src_ego else ("exo" if src_ego else "aria")
    )
    return src, dst


class _Skips:
    """Counted, partly listed, reasons why something was not predicted."""

    def __init__(self, listed: list | None = None, count: int = 0) -> None:
        self.listed = list(listed or [])
        self.count = count

    def add(self, **item) -> None:
        self.count += 1
        if len(self.listed) < SKIPS_LISTED:
            self.listed.append(item)
        if self.count <= 5:
            log.warning("skipped: %s", ", ".join(f"{k} {v}" for k, v in item.items()))
        elif self.count == 6:
            log.warning("further skips are counted in the summary")


class _Sink:
    """Writer thread of a video run: RLE-encodes predictions into the results, renders and
    encodes the overlay, and checkpoints the partial results atomically every K frames."""

    def __init__(self, run: VideoRun, results: dict, state: dict, writer, queue_size: int) -> None:
        self.run, self.results, self.state = run, results, state
        self.writer = writer
        self._details = open(run.out_dir / DETAILS_NAME, "a", encoding="utf-8")  # noqa: SIM115
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self.error: BaseException | None = None
        self._since_checkpoint = 0
        self.frames_rendered = 0
        self._thread = threading.Thread(target=self._work, name="omama-sink", daemon=True)
        self._thread.start()

    def put(self, item: tuple) -> None:
        while True:
            if self.error is not None:
                raise OmamaError(f"writing outputs failed: {self.error}") from self.error
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _work(self) -> None:
        from runtime.results import add_prediction

        try:
            while True:
                item = self._queue.get()
                if item is None:
                    break
                index, src, dst, names, queries, matches, source = item
                counts = self.state["counts"]
                if source is not None:
                    key = CANDIDATE_COUNTS[source]
                    counts[key] = counts.get(key, 0) + 1
                for name, match in zip(names, matches, strict=True):
                    run = self.run
                    add_prediction(
                        self.results, run.take, name, run.src_cam, run.dst_cam, index,
                        match.mask, match.confidence,
                    )  # fmt: skip
                    line = {"frame": index, "object": name, **match.to_json()}
                    self._details.write(json.dumps(line) + "\n")
                    counts["predictions"] += 1
                    counts["visible"] += int(match.visible)
                    counts["no_candidates"] += int(match.candidate < 0)
                if self.writer is not None:
                    if names:
                        frame = render_overlay(src, dst, names, queries, matches, OVERLAY_HEIGHT_PX)
                    else:
                        frame = overlay.side_by_side(
                            overlay.draw_label(src, "source: no query"), dst, OVERLAY_HEIGHT_PX
                        )
                    self.writer.write(frame)
                    self.frames_rendered += 1
                self.state["next_frame"] = index + 1
                self.state["counts"]["frames"] += 1
                self._since_checkpoint += 1
                if self._since_checkpoint >= self.run.checkpoint_every:
                    self.checkpoint()
        except BaseException as exc:
            self.error = exc
            while True:  # unblock a producer waiting on a full queue
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    break

    def checkpoint(self) -> None:
        """Partial results first, then the state that points past them (both atomic)."""
        self._details.flush()
        os.fsync(self._details.fileno())
        write_results(self.run.out_dir / RESULTS_NAME, self.results)
        write_json(self.run.out_dir / STATE_NAME, self.state, indent=1)
        self._since_checkpoint = 0

    def close(self) -> None:
        """Drain the queue and stop; re-raise a failure of the writer thread."""
        while self._thread.is_alive():
            try:
                self._queue.put(None, timeout=0.1)
                break
            except queue.Full:
                continue
        self._thread.join()
        if self.error is not None:
            raise OmamaError(f"writing outputs failed: {self.error}") from self.error

    def finish(self) -> None:
        """Final checkpoint and release of the details file (after :meth:`close`)."""
        self.checkpoint()
        self._details.close()


def _run_inputs(run: VideoRun, pipeline: Pipeline, src_info, dst_info) -> dict:
    """What identifies a video run, compared on ``--resume``."""
    return {
        "src_video": str(Path(run.src_video).resolve()),
        "dst_video": str(Path(run.dst_video).resolve()),
        "src_frames": src_info.frame_count,
        "dst_frames": dst_info.frame_count,
        "tracks": run.tracks.digest(),
        "manifest_sha256": sha256_file(Path(pipeline.manifest.root) / "manifest.json"),
        "direction": pipeline.direction,
        "mask_size": pipeline.mask_size,
        "take": run.take,
        "src_cam": run.src_cam,
        "dst_cam": run.dst_cam,
        # None = FastSAM only, which also matches states written before --candidates existed
        "candidates": run.candidates.digest() if run.candidates is not None else None,
    }


def _new_state(inputs: dict) -> dict:
    counts = {"frames": 0, "predictions": 0, "visible": 0, "no_candidates": 0,
              **dict.fromkeys(CANDIDATE_COUNTS.values(), 0)}  # fmt: skip
    return {"inputs": inputs, "next_frame": 0, "complete": False, "counts": counts,
            "skipped_frames": [], "query_skips": {"count": 0, "listed": []},
            "candidate_skips": {"count": 0, "listed": []}}  # fmt: skip


def _load_resume(run: VideoRun, inputs: dict) -> tuple[dict, dict]:
    """(state, partial results) of an interrupted run in ``run.out_dir``, or a clear error."""
    state_path = run.out_dir / STATE_NAME
    if not state_path.is_file():
        raise OmamaError(
            f"--resume: {run.out_dir} holds no {STATE_NAME} of an earlier run; run without --resume"
        )
    state = read_json(state_path, "run state")
    differs = [k for k in inputs if state.get("inputs", {}).get(k) != inputs[k]]
    if differs:
        raise OmamaError(
            f"--resume: {state_path} belongs to a run with other inputs ({', '.join(differs)} "
            "differ); use another --out or run without --resume"
        )
    results_path = run.out_dir / RESULTS_NAME
    if results_path.is_file():
        results = read_json(results_path, "partial results")
    elif state.get("next_frame", 0) == 0:
        results = new_results(inputs["direction"])
    else:
        raise OmamaError(f"--resume: {results_path} is missing; run without --resume")
    _trim_details(run.out_dir / DETAILS_NAME, int(state.get("next_frame", 0)))
    return state, results


def _trim_details(path: Path, next_frame: int) -> None:
    """Drop the per-frame lines written after the last checkpoint (they are redone)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if int(json.loads(line)["frame"]) < next_frame:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue  # a line cut by the interruption
    with atomic_path(path) as tmp:
        tmp.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")


def _queries_fit(run: VideoRun, pipeline: Pipeline, src_hw: tuple[int, int]) -> None:
    """Refuse tracks whose masks do not fit the source video (checked on their first frame)."""
    for track in run.tracks:
        frame = track.first_frame()
        mask = track.mask(frame)
        if mask is not None and aspect_mismatch(mask.shape, src_hw) > ASPECT_TOLERANCE:
            raise OmamaError(
                f"query masks of object {track.name!r} ({track.origin}) are "
                f"{mask.shape[1]}x{mask.shape[0]} px but the source video is "
                f"{src_hw[1]}x{src_hw[0]}: masks must be drawn on the source video's frames"
            )


def _candidate_misfit(cands_hw: tuple[int, int], dst_hw: tuple[int, int]) -> str | None:
    """Why candidates of ``cands_hw`` cannot serve a destination image of ``dst_hw`` (the
    rule of :meth:`Pipeline.encode_destination`: same aspect ratio, then resized), or None."""
    if aspect_mismatch(cands_hw, dst_hw) <= ASPECT_TOLERANCE:
        return None
    return (
        f"candidate masks are {cands_hw[1]}x{cands_hw[0]} px, which does not fit the "
        f"destination video {dst_hw[1]}x{dst_hw[0]} (aspect ratios differ by "
        f"{100 * aspect_mismatch(cands_hw, dst_hw):.0f}%)"
    )


def _candidates_fit(source: VideoCandidates, dst_hw: tuple[int, int]) -> None:
    """Refuse, before any work, a candidate source whose first frame does not fit the
    destination video (a frame that cannot be read is left to the per-frame report)."""
    first = source.frames()[0]
    try:
        size = source.size_hw(first)
    except OmamaError:
        return
    problem = size and _candidate_misfit(size, dst_hw)
    if problem:
        raise OmamaError(f"--candidates {source.path} (frame {first}): {problem}")


def _frame_candidates(
    source: VideoCandidates, frame: int, dst_hw: tuple[int, int], work_hw: tuple[int, int]
) -> Candidates:
    """Precomputed candidates of one destination frame at their stored size (the pipeline
    resizes them to the working size); OmamaError naming the source and frame otherwise."""
    cands = source.load(frame, work_hw)
    problem = _candidate_misfit(cands.size_hw, dst_hw)
    if problem:
        raise OmamaError(f"{source.path} frame {frame}: {problem}")
    return cands


def run_video(
    pipeline: Pipeline, run: VideoRun, progress: bool = True, echo: Callable[[str], None] = print
) -> dict:
    """Match every query of ``run.tracks`` through a video pair; returns the summary.

    A reader thread decodes both videos ahead (bounded queue), this thread infers (frames
    with no query of any object are not inferred), a writer thread records predictions,
    encodes the overlay and checkpoints ``results.json`` + ``run_state.json`` every
    ``run.checkpoint_every`` frames, so an interrupted run continues with ``resume``.
    Frames that fail to decode and queries that cannot be used are reported and skipped.

    Candidates: ``run.candidates`` where it has an entry for the frame, else FastSAM, else
    (artifacts without FastSAM) zero candidates: empty masks with confidence 0, without
    running the models. A frame whose precomputed candidates cannot be read is reported and
    skipped, as :func:`run_take` does; the summary counts the frames of each kind.
    """
    from tqdm import tqdm

    from runtime.video import PrefetchReader, VideoWriter, read_video_info

    if run.candidates is None and not pipeline.has_fastsam:
        raise no_fastsam_error(pipeline.manifest.root)
    started = time.perf_counter()
    out = Path(run.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Sizes and counts first (to check the inputs and find the resume point); the reader
    # below opens both videos again and refuses truncated ones.
    src_info, dst_info = read_video_info(run.src_video), read_video_info(run.dst_video)
    src_hw, dst_hw = (src_info.height, src_info.width), (dst_info.height, dst_info.width)
    pipeline.check_image(src_hw, "src", f"source video {run.src_video}")
    pipeline.check_image(dst_hw, "dst", f"destination video {run.dst_video}")
    _queries_fit(run, pipeline, src_hw)
    if run.candidates is not None:
        _candidates_fit(run.candidates, dst_hw)
    work_hw = working_size(dst_hw, pipeline.views["dst"].image_size)
    inputs = _run_inputs(run, pipeline, src_info, dst_info)
    if run.resume:
        state, results = _load_resume(run, inputs)
        if state.get("complete"):
            echo(f"{out}: this run is already complete ({state['counts']['frames']} frames)")
            return (
                read_json(out / SUMMARY_NAME, "summary")
                if (out / SUMMARY_NAME).is_file()
                else state
            )
    else:
        if (out / STATE_NAME).is_file():
            log.info("%s holds an earlier run: starting over (use --resume to continue it)", out)
        (out / DETAILS_NAME).unlink(missing_ok=True)
        state, results = _new_state(inputs), new_results(pipeline.direction)
    start = int(state["next_frame"])
    frames_before = int(state["counts"]["frames"])
    end = min(src_info.frame_count, dst_info.frame_count)
    outside = sum(1 for t in run.tracks for f in t.frames if f >= end)
    if outside:
        log.warning("%d query masks are for frames past the end of the videos (%d frames)",
                    outside, end)  # fmt: skip
    reader = PrefetchReader(run.src_video, run.dst_video, queue_size=run.queue_size, start=start,
                            max_frames=run.max_frames)  # fmt: skip
    writer = None
    if run.overlay:
        name = "overlay.mp4" if start == 0 else f"overlay_from_{start}.mp4"
        writer = VideoWriter(out / name, fps=src_info.fps or 30.0, queue_size=run.queue_size)
    sink = _Sink(run, results, state, writer, run.queue_size)
    query_skips = _Skips(state["query_skips"]["listed"], state["query_skips"]["count"])
    old_skips = state.get("candidate_skips") or {"count": 0, "listed": []}
    candidate_skips = _Skips(old_skips["listed"], old_skips["count"])
    pipeline.latency = LatencyLog()
    bar = tqdm(total=len(reader), desc="video", unit="frame", disable=not progress)
    inferred = 0
    infer_s = 0.0
    finished = False
    try:
        for pair in reader:
            names, masks = [], []
            for track in run.tracks:
                if pair.index not in track:
                    continue
                try:
                    mask = track.mask(pair.index)
                    problem = pipeline.query_problem(mask, src_hw)
                except OmamaError as exc:
                    problem = str(exc)
                if problem == "the query mask is empty":
                    continue  # the object is not in the source view at this frame
                if problem:
                    query_skips.add(object=track.name, frame=pair.index, reason=problem)
                    continue
                names.append(track.name)
                masks.append(mask)
            matches: list[Match] = []
            source = None
            if names:
                cands, source = None, "fastsam"
                if run.candidates is not None and pair.index in run.candidates:
                    try:
                        cands = _frame_candidates(run.candidates, pair.index, dst_hw, work_hw)
                        source = "precomputed"
                    except OmamaError as exc:
                        candidate_skips.add(frame=pair.index, reason=str(exc))
                        names, masks, source = [], [], None
                elif not pipeline.has_fastsam:
                    source = "none"
                    out_hw = pipeline.output_size(dst_hw)
                    matches = [Match(np.zeros(out_hw, np.uint8), 0.0, -1, None, [], 0)
                               for _ in names]  # fmt: skip
            if source in ("fastsam", "precomputed"):
                t0 = time.perf_counter()
                matches = pipeline.match_frame(pair.src, pair.dst, masks, candidates=cands)
                infer_s += time.perf_counter() - t0
                inferred += 1
            keep_frames = writer is not None
            sink.put((pair.index, pair.src if keep_frames else None,
                      pair.dst if keep_frames else None, names, masks, matches,
                      source))  # fmt: skip
            bar.update(1)
        finished = True
    finally:
        bar.close()
        reader.close()
        try:
            sink.close()
        finally:
            state["skipped_frames"] = (state["skipped_frames"] + [
                {"frame": s.index, "video": s.video, "reason": s.reason}
                for s in reader.stats.skipped
            ])[:SKIPS_LISTED]  # fmt: skip
            state["counts"]["skipped_frames"] = state["counts"].get("skipped_frames", 0) + len(
                reader.stats.skipped
            )
            state["query_skips"] = {"count": query_skips.count, "listed": query_skips.listed}
            state["candidate_skips"] = {"count": candidate_skips.count,
                                        "listed": candidate_skips.listed}  # fmt: skip
            # Complete = the end of the shorter video was reached (a --max-frames run is not).
            state["complete"] = finished and reader.stop >= end
            if finished and sink.error is None:
                state["next_frame"] = max(state["next_frame"], reader.stop)
            sink.finish()
            if writer is not None:
                if finished and sink.error is None and sink.frames_rendered:
                    writer.close()
                else:
                    writer.abort()
    wall_s = time.perf_counter() - started
    counts = state["counts"]
    summary = {
        "results": str(out / RESULTS_NAME),
        "details": str(out / DETAILS_NAME),
        "overlay": str(writer.path) if writer is not None else None,
        **pipeline.describe(),
        "take": run.take,
        "src_cam": run.src_cam,
        "dst_cam": run.dst_cam,
        "objects": run.tracks.names,
        "src_video": {"path": str(run.src_video), "frames": src_info.frame_count,
                      "fps": src_info.fps, "size_wh": [src_info.width, src_info.height]},
        "dst_video": {"path": str(run.dst_video), "frames": dst_info.frame_count,
                      "fps": dst_info.fps, "size_wh": [dst_info.width, dst_info.height]},
        "resumed_from_frame": start if run.resume else None,
        "complete": state["complete"],
        "next_frame": state["next_frame"],
        "frames": counts["frames"],
        "frames_this_run": counts["frames"] - frames_before,
        "frames_inferred_this_run": inferred,
        "predictions": counts["predictions"],
        "visible": counts["visible"],
        "no_candidates": counts["no_candidates"],
        "skipped_frames": {"count": counts.get("skipped_frames", 0),
                           "listed": state["skipped_frames"]},
        "query_skips": state["query_skips"],
        "candidates": {
            "source": run.candidates.describe() if run.candidates is not None else "fastsam",
            **{key: counts.get(key, 0) for key in CANDIDATE_COUNTS.values()},
            "unreadable_frames": state["candidate_skips"],
        },
        "query_frames_past_the_end": outside,
        "wall_s": round(wall_s, 3),
        "fps_inferred": round(inferred / infer_s, 3) if infer_s else None,
        "fps_end_to_end": round((counts["frames"] - frames_before) / wall_s, 3),
        "latency_ms": pipeline.latency.summary(),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }  # fmt: skip
    write_json(out / SUMMARY_NAME, summary, indent=2)
    return summary


def format_video_summary(summary: dict) -> str:
    """The lines ``omama-run video`` prints after a run."""
    skipped = summary["skipped_frames"]["count"]
    lines = [
        f"omama-run video: {summary['frames']} frames ({summary['frames_inferred_this_run']} "
        f"inferred this run), {len(summary['objects'])} objects, {summary['predictions']} "
        f"predictions ({summary['visible']} visible, {summary['no_candidates']} without "
        f"candidates) on {summary['backend']} ({summary['device']}, {summary['precision']})",
        f"  speed: {summary['fps_inferred'] or 0:.2f} inferred frames/s, "
        f"{summary['fps_end_to_end']:.2f} frames/s end to end; peak memory "
        f"{summary['peak_rss_mb']:.0f} MB",
        f"  skipped: {skipped} frames that failed to decode, "
        f"{summary['query_skips']['count']} unusable queries",
        "  latency per inferred frame:",
        format_latency(summary["latency_ms"]),
        f"  results: {summary['results']}",
    ]
    cands = summary.get("candidates")  # absent from summaries written before --candidates
    if cands:
        lines.insert(3, (
            f"  candidates: {cands['precomputed_frames']} frames precomputed, "
            f"{cands['fastsam_frames']} by FastSAM, {cands['no_candidate_frames']} with none; "
            f"{cands['unreadable_frames']['count']} frames skipped for unreadable candidates"
        ))  # fmt: skip
    if summary.get("overlay"):
        lines.append(f"  overlay: {summary['overlay']}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- takes


@dataclass(frozen=True)
class Observation:
    """One (object, source cam, destination cam, frame) of a processed take."""

    obj: str
    src_cam: str
    dst_cam: str
    frame: int


def take_observations(index: ProcessedRoot, take: str, direction: str) -> list[Observation]:
    """Every observation of a processed take, as ``omama data pairs`` lists them: per object
    and exo camera, the frames where the source view has a mask and the destination view is
    annotated."""
    check_direction(direction)
    ego = index.ego_cam(take)
    observations = []
    for obj in index.objects(take):
        for exo in index.object_cams(take, obj):
            if exo == ego:
                continue
            src, dst = (exo, ego) if direction == "exo2ego" else (ego, exo)
            dst_frames = set(index.frames(take, obj, dst))
            observations.extend(
                Observation(obj, src, dst, frame)
                for frame in index.mask_frames(take, obj, src)
                if frame in dst_frames
            )
    return observations


def run_take(
    pipeline: Pipeline,
    take_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    max_frames: int | None = None,
    use_candidates: bool = True,
    gt: bool = False,
    progress: bool = True,
) -> dict:
    """Every object and camera pair of a processed take (``ROOT/processed/<take>``).

    Frames are visited in order; for each frame the destination (exo2ego: the ego frame)
    or source view is encoded once for all cameras and objects, and each (source cam,
    destination cam) pair is one matcher call for all its objects. Precomputed candidates
    (``ROOT/Masks_<SPLIT>_<DIRECTION>/...``) are used where present, FastSAM elsewhere.
    Writes ``results.json`` and ``summary.json`` (and with ``gt``, ``gt.json`` and
    ``metrics.json``) to ``out_dir``; returns the summary.
    """
    from tqdm import tqdm

    from runtime.results import add_prediction

    started = time.perf_counter()
    take_dir = Path(take_dir)
    root, take = take_dir.parent.parent, take_dir.name
    index = ProcessedRoot(root)
    if not index.has_take(take):
        raise OmamaError(
            f"{take_dir} is not a processed take (no annotation.json): give "
            "ROOT/processed/<take> as written by `omama data prepare`"
        )
    direction = pipeline.direction
    observations = take_observations(index, take, direction)
    if not observations:
        raise OmamaError(f"take {take} has no {direction} observations (no masked frames)")
    frames = sorted({o.frame for o in observations})
    if max_frames is not None:
        frames = frames[: max(int(max_frames), 0)]
        observations = [o for o in observations if o.frame in set(frames)]
    split = index.split_of(take) if index.split_json.is_file() else None
    groups: dict[tuple[int, str, str], list[Observation]] = {}
    for obs in observations:
        groups.setdefault((obs.frame, obs.src_cam, obs.dst_cam), []).append(obs)
    results = new_results(direction)
    gt_data = new_gt()
    skips = _Skips()
    counts = {"observations": 0, "visible": 0, "no_candidates": 0, "precomputed_frames": 0,
              "fastsam_frames": 0}  # fmt: skip
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pipeline.latency = LatencyLog()
    cache: dict[tuple[str, str, int], ViewFrame] = {}
    cache_frame = None
    bar = tqdm(total=len(observations), desc=f"take {take[:8]}", unit="obs", disable=not progress)
    try:
        for (frame, src_cam, dst_cam), group in sorted(groups.items()):
            if frame != cache_frame:  # a frame's views are reused across cameras only
                cache, cache_frame = {}, frame
            try:
                src = cache.get(("src", src_cam, frame))
                if src is None:
                    src = pipeline.encode_source(read_rgb(index.image_path(take, src_cam, frame)))
                    cache[("src", src_cam, frame)] = src
                dst = cache.get(("dst", dst_cam, frame))
                if dst is None:
                    dst_rgb = read_rgb(index.image_path(take, dst_cam, frame))
                    candidates = None
                    if use_candidates and split is not None:
                        masks_path, boxes_path = candidate_paths(root, split, direction, take,
                                                                 dst_cam, frame)  # fmt: skip
                        if masks_path.is_file() and boxes_path.is_file():
                            model_hw = pipeline.views["dst"].image_size
                            work_hw = working_size(dst_rgb.shape[:2], model_hw)
                            candidates = read_candidates(masks_path, boxes_path, work_hw)
                    dst = pipeline.encode_destination(dst_rgb, candidates)
                    counts[
                        "precomputed_frames" if candidates is not None else "fastsam_frames"
                    ] += 1
                    cache[("dst", dst_cam, frame)] = dst
            except OmamaError as exc:
                for obs in group:
                    skips.add(object=obs.obj, cams=f"{src_cam}->{dst_cam}", frame=frame,
                              reason=str(exc))  # fmt: skip
                bar.update(len(group))
                continue
            usable, queries = [], []
            for obs in group:
                query = rle_decode_or_none(index.mask_rle(take, obs.obj, src_cam, frame))
                problem = (
                    "no query mask"
                    if query is None
                    else pipeline.query_problem(query, src.image_hw)
                )
                if problem:
                    skips.add(object=obs.obj, cams=f"{src_cam}->{dst_cam}", frame=frame,
                              reason=problem)  # fmt: skip
                    continue
                usable.append(obs)
                queries.append(query)
            if usable:
                matches = pipeline.match(src, dst, queries)
                for obs, query, match in zip(usable, queries, matches, strict=True):
                    add_prediction(results, take, obs.obj, src_cam, dst_cam, frame, match.mask,
                                   match.confidence)  # fmt: skip
                    counts["observations"] += 1
                    counts["visible"] += int(match.visible)
                    counts["no_candidates"] += int(match.candidate < 0)
                    if gt:
                        add_gt_annotation(gt_data, take, obs.obj, src_cam, frame, query)
                        target = index.mask_rle(take, obs.obj, dst_cam, frame)
                        add_gt_annotation(gt_data, take, obs.obj, dst_cam, frame, target)
            bar.update(len(group))
    finally:
        bar.close()
    write_results(out / RESULTS_NAME, results)
    summary = {
        "results": str(out / RESULTS_NAME),
        **pipeline.describe(),
        "take": take,
        "split": split,
        "frames": len(frames),
        "observations_total": len(observations),
        **counts,
        "skipped": {"count": skips.count, "listed": skips.listed},
        "wall_s": round(time.perf_counter() - started, 3),
        "latency_ms": pipeline.latency.summary(),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    if gt:
        from runtime.evaluate import evaluate_report

        for entry in gt_data["annotations"].values():  # frame order, as `omama data gt`
            for per_cam in entry["annotated_frames"].values():
                for frame_list in per_cam.values():
                    frame_list.sort()
        write_json(out / "gt.json", gt_data)
        if counts["observations"]:
            predictions = results[next(iter(results))]["results"]
            report = evaluate_report(gt_data["annotations"], predictions, direction, workers=1)
            write_json(out / "metrics.json", report, indent=2)
            summary["metrics"] = report["aggregated_metrics"]
            summary["report"] = report
        summary["gt"] = str(out / "gt.json")
    write_json(out / SUMMARY_NAME, {k: v for k, v in summary.items() if k != "report"}, indent=2)
    return summary


def rle_decode_or_none(rle_dict: dict | None) -> np.ndarray | None:
    """Decode an annotation RLE, or None when absent."""
    if rle_dict is None:
        return None
    from runtime import rle

    return rle.decode(rle_dict)


def format_take_summary(summary: dict) -> str:
    lines = [
        f"omama-run take {summary['take']}: {summary['observations']} of "
        f"{summary['observations_total']} observations in {summary['frames']} frames "
        f"({summary['visible']} predicted visible, {summary['no_candidates']} without "
        f"candidates) on {summary['backend']} ({summary['device']}, {summary['precision']})",
        f"  candidates: {summary['precomputed_frames']} destination frames precomputed, "
        f"{summary['fastsam_frames']} by FastSAM; skipped observations: "
        f"{summary['skipped']['count']}; {summary['wall_s']:.1f} s",
        "  latency per matcher call (a frame's views counted once):",
        format_latency(summary["latency_ms"]),
        f"  results: {summary['results']}",
    ]
    return "\n".join(lines)
