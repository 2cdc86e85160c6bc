"""The O-MaMa pipeline on an artifacts folder: source image + query masks -> destination masks.

:class:`Pipeline` verifies an ``omama export`` folder (a tampered or mismatched folder is
refused with one line), opens one session per model on the chosen backend
(:func:`runtime.sessions.select_backend`), and per frame pair:

1. ``preprocess``: each image is brought to its view's model size the way the reference
   gets there (docs/reference.md, section 2): the area downscale to the *working image*
   (:mod:`runtime.sizing`), then a nearest resize (OpenCV rule) to the model size
   (704 -> 700, 540x960 -> 532x952) and ImageNet normalisation. Query masks, at the
   source image's size or any size of the same aspect ratio (e.g. the annotation's full
   resolution), are resized nearest (OpenCV rule) to the model size;
2. ``fastsam``: FastSAM "everything" on the destination working image, once per frame
   (unless precomputed candidates are given); candidates live at the working size;
3. ``backbone_src`` / ``backbone_dst``: the backbone once per view;
4. ``descriptors``: the matcher's descriptor inputs, in the form the manifest names
   (``weights``: pooling weights at token resolution, :func:`runtime.pooling.
   descriptor_weights`; ``masks``: masks at the model size and boxes); candidates are
   resized with the torch rule as O-MaMa resizes FastSAM masks, from the box crops;
5. ``matcher``: ONE call for all query objects of the frame (B objects x N candidates);
6. ``postprocess``: per object the best candidate, its confidence ``sigmoid(best
   similarity)`` (visible when > 0.5) and the top 5; zero candidates give an empty mask
   and confidence 0.

Output mask size (``mask_size``): ``"image"`` (default of ``pair`` and ``video``) gives
the chosen candidate at the destination image's own size (the working-size mask,
nearest-upsampled when the image was downscaled); ``"model"`` gives it at the model's
destination size, e.g. 700x700 ego, which is what O-MaMa wrote and what ``take`` writes
by default. ``omama eval`` (``omama`` protocol) resizes the GT to the prediction's size,
so both score; ``model`` reproduces the published numbers exactly. ``"submission"``: the
model-size mask resized nearest (OpenCV rule, as the official evaluator resizes) to each
query's ``mask_hw`` (:mod:`runtime.runs.frame_sizes`), scored as ``model`` is by ``egoexo4d``.

Every call records its per-stage latency (:attr:`Pipeline.last_latency_ms`, accumulated in
:attr:`Pipeline.latency`). The runs of ``omama-run`` are in :mod:`runtime.runs`.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from runtime.candidates import Candidates, CandidateSet, scale_boxes
from runtime.egoexo import check_direction
from runtime.errors import OmamaError, no_fastsam_error
from runtime.fastsam_post import nms_thresholds, segment_everything
from runtime.images import check_rgb
from runtime.latency import LatencyLog
from runtime.manifest import Manifest, ViewSpec, check_artifacts
from runtime.pooling import descriptor_weights, mask_boxes, pooling_grid
from runtime.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    nearest_indices,
    preprocess_image,
    resize_mask_nearest,
)
from runtime.sessions import Session, open_artifact, plan_artifacts
from runtime.sizing import ASPECT_TOLERANCE, aspect_mismatch, working_image
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
MASK_SIZES: tuple[str, ...] = ("image", "model", "submission")
TOP_K = 5
VISIBLE_THRESHOLD = 0.5


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


def _index_maps(size_in: tuple[int, int], size_out: tuple[int, int], rule: str) -> tuple:
    """(rows, cols): the nearest index maps from an (H, W) grid to another (``rule``)."""
    return tuple(nearest_indices(a, b, rule) for a, b in zip(size_in, size_out, strict=True))


class Pipeline:
    """O-MaMa inference on an artifacts folder with one backend (see the module docstring).

    Arguments:
        artifacts_dir: an ``omama export`` folder; its files must match ``manifest.json``.
        backend: ``auto | tensorrt | onnxruntime | torch`` (:func:`select_backend`).
        device: ``auto | cpu | cuda | cuda:N``.
        precision: ``auto`` (fp16 engines for TensorRT, fp32 ONNX otherwise), ``fp32`` or
            ``fp16`` (the export's ``*_fp16`` files).
        threads: intra-op threads per session (None: the backend's default).
        mask_size: ``image``, ``model`` or ``submission`` (see the module docstring).
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
                entry = manifest.run_file(model, self.plan.file_format, self.precision)
                files.append(entry.path)
                session = open_artifact(self.choice, manifest, entry, threads, weights_dirs)
                self.sessions[role] = wrap_session(role, session) if wrap_session else session
        except BaseException:
            self.close()
            raise
        warn_if_unverified(manifest, self.plan, files)
        self.latency = LatencyLog(STAGES)
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

    def reset_latency(self) -> None:
        """Start a new :attr:`latency` log (a run summarises its own calls only)."""
        self.latency = LatencyLog(STAGES)

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
                "source" if role == "src" else "destination",
                view.image_size[1],
                view.image_size[0],
            )

    def _prepare(self, rgb: np.ndarray, role: str, what: str) -> tuple[np.ndarray, np.ndarray]:
        """(working image, normalised (1, 3, H, W) model input) of one view."""
        rgb = check_rgb(rgb, what)
        self.check_image(rgb.shape[:2], role, what)
        view = self.views[role]
        work = working_image(rgb, view.image_size)
        return work, preprocess_image(work, view.image_size)[None]

    def _backbone(self, role: str, tensor: np.ndarray) -> np.ndarray:
        session = self.sessions["backbone_src" if role == "src" else "backbone_dst"]
        name = session.inputs[0].name
        out = session.infer({name: tensor})
        return next(iter(out.values())) if len(out) == 1 else out[session.outputs[0].name]

    def encode_src(self, src_rgb: np.ndarray) -> ViewFrame:
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

    def encode_dst(
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
    def _candidate_inputs(self, cands: CandidateSet) -> dict[str, np.ndarray]:
        view = self.views["dst"]
        if len(cands) == 0:
            return {}
        boxes = scale_boxes(cands.boxes, cands.size_hw, view.image_size)
        rows, cols = _index_maps(cands.size_hw, view.image_size, "torch")
        if self.matcher_input == "masks":
            masks = cands.sample(rows, cols)  # (N, H, W) at the model size
            return {"dst_masks": masks[None], "dst_boxes": boxes[None]}
        # Weights: resample straight onto the pooling grid; composing the two nearest
        # index maps (working -> model size -> grid) equals resizing twice, as O-MaMa does.
        grid = pooling_grid(view.image_size, self.reduction)
        grid_rows, grid_cols = _index_maps(view.image_size, grid, "torch")
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

    def _output_mask(
        self, dst: DestinationFrame, index: int, size: tuple[int, int]
    ) -> tuple[np.ndarray, tuple]:
        cands = dst.candidates
        box = cands.boxes[index]
        if self.mask_size in ("model", "submission"):
            model_hw = self.views["dst"].image_size
            rows, cols = _index_maps(cands.size_hw, model_hw, "torch")
            if self.mask_size == "submission":
                # Composing the nearest index maps equals resizing the model-size mask.
                out_rows, out_cols = _index_maps(model_hw, size, "opencv")
                rows, cols = rows[out_rows], cols[out_cols]
            mask = cands.mask(index)[np.ix_(rows, cols)]
        else:
            size = dst.image_hw
            mask = cands.mask(index)
            if mask.shape != size:
                mask = resize_mask_nearest(mask, size, rule="opencv")
        scaled = scale_boxes(box[None], cands.size_hw, size)[0]
        return np.ascontiguousarray(mask, dtype=np.uint8), tuple(float(v) for v in scaled)

    def output_sizes(
        self, dst_image_hw: tuple[int, int], count: int,
        mask_hw: Sequence[tuple[int, int]] | None = None,
    ) -> list[tuple[int, int]]:  # fmt: skip
        """(H, W) of each of ``count`` queries' output masks for a destination image of
        ``dst_image_hw``; ``submission`` writes ``mask_hw`` (one size per query)."""
        if self.mask_size == "submission":
            if mask_hw is None or len(mask_hw) != count:
                got = "none" if mask_hw is None else len(mask_hw)
                raise OmamaError(
                    f"mask size submission needs one mask size per query ({count}), got {got}"
                )
            return [(int(h), int(w)) for h, w in mask_hw]
        size = self.views["dst"].image_size if self.mask_size == "model" else dst_image_hw
        return [tuple(size)] * count

    def match(self, src: ViewFrame, dst: DestinationFrame, queries: Sequence[np.ndarray],
              mask_hw: Sequence[tuple[int, int]] | None = None) -> list[Match]:  # fmt: skip
        """Match B query masks (each (H, W), drawn on the source image) against the
        destination's candidates with one matcher call; one :class:`Match` per query.

        ``mask_hw``: with mask size ``submission``, the (H, W) of each query's output mask.
        Records the call's per-stage latency (including the stages of producing ``src`` and
        ``dst`` the first time they are used) in :attr:`last_latency_ms` and :attr:`latency`.
        """
        if not queries:
            raise OmamaError("match needs at least one query mask")
        out_sizes = self.output_sizes(dst.image_hw, len(queries), mask_hw)
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
        for b, out_hw in enumerate(out_sizes):
            if not count:
                matches.append(Match(np.zeros(out_hw, np.uint8), 0.0, -1, None, [], 0))
                continue
            row = sims[b].astype(np.float64)
            order = np.argsort(-row, kind="stable")[:TOP_K]
            best = int(order[0])
            mask, box = self._output_mask(dst, best, out_hw)
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
        mask_hw: Sequence[tuple[int, int]] | None = None,
    ) -> list[Match]:
        """One frame pair: FastSAM on the destination (unless ``candidates``), the backbone
        once per view, the matcher once for all ``queries``; one :class:`Match` per query.

        Arguments:
            src_rgb, dst_rgb: (H, W, 3) uint8 RGB images.
            queries: (H, W) masks on the source image (any resolution of its aspect ratio).
            candidates: precomputed candidates of the destination image.
            mask_hw: with mask size ``submission``, each query's output (H, W).
        """
        if not queries:
            raise OmamaError("match_frame needs at least one query mask")
        self.output_sizes(tuple(dst_rgb.shape[:2]), len(queries), mask_hw)  # before any work
        src = self.encode_src(src_rgb)
        dst = self.encode_dst(dst_rgb, candidates)
        return self.match(src, dst, queries, mask_hw)
