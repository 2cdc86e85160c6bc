"""The O-MaMa reference shape: how the published code runs a frame pair, as a bench row.

O-MaMa answers one object at a time. For every query object it preprocesses both images,
gets the destination's FastSAM candidates, runs the backbone on both views, computes each
candidate's descriptor with a Python loop over the masks on the bilinearly upsampled
feature map (:func:`benchmarks.bench_descriptors.loop_reference`, section 5 of
OMAMA_REFERENCE word for word), and calls the matcher with one object (B = 1) in the
standard attention order. Nothing is shared between the objects of a frame.

:class:`ReferencePipeline` does exactly that with the *same* PyTorch models as the torch
backend of an artifacts folder (the sessions of a ``torch`` :class:`runtime.pipeline.
Pipeline`), so the bench's ``reference`` row differs from the ``torch fp32`` row only in
the shape of the computation: the speed-up it shows is the deployment's, and the fidelity
columns show that both give the same answers.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bench_descriptors import loop_reference
from runtime.candidates import Candidates, scale_boxes
from runtime.pipeline import STAGES, CandidateSet, Match, sigmoid, working_image
from runtime.pooling import mask_boxes
from runtime.preprocess import nearest_indices, preprocess_image, resize_mask_nearest

TOP_K = 5


class ReferencePipeline:
    """O-MaMa's per-object loop on the models of a torch-backend pipeline.

    Arguments:
        pipeline: a :class:`runtime.pipeline.Pipeline` opened with ``backend="torch"``
            (fp32); its sessions provide FastSAM and the backbones, and its matcher module
            is copied and run in the standard attention order.
        weights_dirs: the folders the pipeline was opened with, so the matcher comes from
            the same build.
    """

    def __init__(self, pipeline: Any, weights_dirs: Sequence[str] = ()) -> None:
        from omama_train.torch_backend import build_artifact_module

        if pipeline.backend != "torch":
            raise ValueError(f"the reference runs on the torch backend, got {pipeline.backend}")
        self.pipeline = pipeline
        manifest = pipeline.manifest
        self.device = pipeline.sessions["backbone_src"].device
        entry = manifest.select(manifest.matcher.model, "onnx", "fp32")
        graph = build_artifact_module(manifest, entry, tuple(Path(d) for d in weights_dirs))
        self.matcher = copy.deepcopy(graph.matcher).to(self.device).eval()
        self.matcher.CROSS_context_attn.mode = "standard"  # O-MaMa's order: keys of every token
        self.src_view = pipeline.views["src"]
        self.dst_view = pipeline.views["dst"]
        self.context_px = pipeline.context_px
        self.reduction = pipeline.reduction
        self.last_latency_ms: dict[str, float] = {}

    def _features(self, role: str, tensor: np.ndarray) -> np.ndarray:
        session = self.pipeline.sessions["backbone_src" if role == "src" else "backbone_dst"]
        out = session.infer({session.inputs[0].name: tensor})
        return out[session.outputs[0].name]

    def match_object(
        self,
        src_rgb: np.ndarray,
        dst_rgb: np.ndarray,
        query: np.ndarray,
        candidates: Candidates | None = None,
    ) -> tuple[Match, np.ndarray, dict[str, float]]:
        """One object, everything recomputed: (match, similarities (N,), stage ms)."""
        import torch

        src_size, dst_size = self.src_view.image_size, self.dst_view.image_size
        t0 = time.perf_counter()
        src_work = working_image(src_rgb, src_size)
        dst_work = working_image(dst_rgb, dst_size)
        src_tensor = preprocess_image(src_work, src_size)[None]
        dst_tensor = preprocess_image(dst_work, dst_size)[None]
        query_small = resize_mask_nearest(np.asarray(query) != 0, src_size, rule="opencv")
        query_small = query_small.astype(np.uint8)
        t1 = time.perf_counter()
        if candidates is None:
            cands = self.pipeline.segment(dst_work)
        else:
            if candidates.size_hw != dst_work.shape[:2]:
                candidates = candidates.resized(dst_work.shape[:2])
            cands = CandidateSet(candidates)
        t2 = time.perf_counter()
        src_feats = self._features("src", src_tensor)
        t3 = time.perf_counter()
        dst_feats = self._features("dst", dst_tensor)
        t4 = time.perf_counter()
        count = len(cands)
        sims = np.zeros(0, np.float32)
        with torch.inference_mode():
            if count:
                rows = nearest_indices(cands.size_hw[0], dst_size[0], "torch")
                cols = nearest_indices(cands.size_hw[1], dst_size[1], "torch")
                masks = torch.from_numpy(cands.sample(rows, cols)).to(self.device)
                boxes = torch.from_numpy(scale_boxes(cands.boxes, cands.size_hw, dst_size))
                src_t = torch.from_numpy(src_feats).to(self.device)
                dst_t = torch.from_numpy(dst_feats).to(self.device)
                dst_desc = loop_reference(
                    dst_t, masks, boxes, dst_size, self.context_px, self.reduction
                )
                src_desc = loop_reference(
                    src_t,
                    torch.from_numpy(query_small[None]).to(self.device),
                    torch.from_numpy(mask_boxes(query_small[None])),
                    src_size,
                    self.context_px,
                    self.reduction,
                )
                if str(self.device).startswith("cuda"):  # stage boundary: finish queued kernels
                    torch.cuda.synchronize(self.device)
            t5 = time.perf_counter()
            if count:
                sims = self.matcher(src_desc[None], dst_desc[None], src_t, dst_t)[0]
                sims = sims.float().cpu().numpy()
        t6 = time.perf_counter()
        if count:
            row = sims.astype(np.float64)
            order = np.argsort(-row, kind="stable")[:TOP_K]
            best = int(order[0])
            mask = cands.mask(best)
            if mask.shape != tuple(dst_rgb.shape[:2]):
                mask = resize_mask_nearest(mask, dst_rgb.shape[:2], rule="opencv")
            box = scale_boxes(cands.boxes[best][None], cands.size_hw, dst_rgb.shape[:2])[0]
            match = Match(
                mask=np.ascontiguousarray(mask, np.uint8),
                confidence=sigmoid(float(row[best])),
                candidate=best,
                similarity=float(row[best]),
                top=[(int(i), float(row[i])) for i in order],
                n_candidates=count,
                box_xywh=tuple(float(v) for v in box),
            )
        else:
            match = Match(np.zeros(dst_rgb.shape[:2], np.uint8), 0.0, -1, None, [], 0)
        t7 = time.perf_counter()
        record = {
            "preprocess": 1e3 * (t1 - t0),
            "fastsam": 1e3 * (t2 - t1),
            "backbone_src": 1e3 * (t3 - t2),
            "backbone_dst": 1e3 * (t4 - t3),
            "descriptors": 1e3 * (t5 - t4),
            "matcher": 1e3 * (t6 - t5),
            "postprocess": 1e3 * (t7 - t6),
        }
        return match, sims, record

    def match_frame(
        self,
        src_rgb: np.ndarray,
        dst_rgb: np.ndarray,
        queries: Sequence[np.ndarray],
        candidates: Candidates | None = None,
    ) -> tuple[list[Match], list[np.ndarray]]:
        """Every query as its own O-MaMa run; stage times summed in :attr:`last_latency_ms`."""
        record = {stage: 0.0 for stage in STAGES}
        matches, sims = [], []
        for query in queries:
            match, row, part = self.match_object(src_rgb, dst_rgb, query, candidates)
            matches.append(match)
            sims.append(row)
            for stage, value in part.items():
                record[stage] += value
        self.last_latency_ms = record
        return matches, sims


class ReferenceRunner:
    """:class:`ReferencePipeline` behind the bench's runner interface (see
    :class:`benchmarks.harness.PipelineRunner`)."""

    def __init__(self, pipeline: Any, weights_dirs: Sequence[str] = ()) -> None:
        self.reference = ReferencePipeline(pipeline, weights_dirs)

    def run(self, pair, candidates: Candidates | None) -> tuple[dict, list[Match]]:
        matches, _ = self.reference.match_frame(
            pair.src_rgb, pair.dst_rgb, pair.queries, candidates
        )
        return {"host": dict(self.reference.last_latency_ms), "device": {}}, matches

    def similarities(self, pair) -> tuple[np.ndarray, list[Match]]:
        matches, sims = self.reference.match_frame(
            pair.src_rgb, pair.dst_rgb, pair.queries, pair.candidates
        )
        return np.stack(sims).astype(np.float32), matches
