"""The O-MaMa reference shape: how the published code runs a frame pair, as a bench row.

O-MaMa answers one object at a time. For every query object it preprocesses both images,
gets the destination's FastSAM candidates, runs the backbone on both views, computes each
candidate's descriptor with a Python loop over the masks on the bilinearly upsampled
feature map (:func:`loop_reference`, docs/reference.md, section 4 word for word), and calls
the matcher with one object (B = 1) in the standard attention order. Nothing is shared
between the objects of a frame.

:class:`ReferencePipeline` does exactly that with the *same* PyTorch models as the torch
backend of an artifacts folder (the sessions of a ``torch`` :class:`runtime.pipeline.
Pipeline`), so the bench's ``reference`` row differs from the ``torch fp32`` row only in
the shape of the computation: the speed-up it shows is the deployment's, and the fidelity
columns show that both give the same answers. ``benchmarks.bench_pair`` and
``benchmarks.bench_descriptors`` time :func:`loop_reference` too.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from runtime.candidates import Candidates, CandidateSet, scale_boxes
from runtime.pipeline import STAGES, Match, sigmoid
from runtime.pooling import mask_boxes
from runtime.preprocess import nearest_indices, preprocess_image, resize_mask_nearest
from runtime.sizing import working_image

TOP_K = 5


def loop_reference(feats, masks, boxes, image_size, context_px: int = 100, reduction: int = 4):
    """O-MaMa-style descriptors: feats (1, C, h, w), masks (N, H, W), boxes (N, 4) -> (N, 2C).

    The map is upsampled once to (H / reduction, W / reduction); then per mask a nearest
    resize, a masked mean over the whole map, and the mean of the box grown by
    ``context_px`` (torch tensors in, torch tensor out).
    """
    import torch
    import torch.nn.functional as F

    height, width = image_size
    grid_h, grid_w = height // reduction, width // reduction
    up = F.interpolate(feats, size=(grid_h, grid_w), mode="bilinear", align_corners=False)[0]
    out = []
    for mask, box in zip(masks, boxes, strict=True):
        small = F.interpolate(mask[None, None].float(), size=(grid_h, grid_w), mode="nearest")[0]
        area = small.sum()
        # A masked sum over the whole upsampled map per mask: the reference's main cost.
        masked_sum = (up * small).sum(dim=(1, 2))
        mask_desc = masked_sum / area if area > 0 else torch.zeros_like(masked_sum)
        x1, y1, w, h = (int(v) for v in box.tolist())
        x2, y2 = x1 + w, y1 + h
        x1 = min(max(x1 - context_px, 0), width) // reduction
        y1 = min(max(y1 - context_px, 0), height) // reduction
        x2 = min(max(x2 + context_px, 0), width) // reduction
        y2 = min(max(y2 + context_px, 0), height) // reduction
        x2, y2 = max(x2, x1 + 1), max(y2, y1 + 1)
        x1, y1 = min(x1, grid_w - 1), min(y1, grid_h - 1)
        x2, y2 = min(x2, grid_w), min(y2, grid_h)
        out.append(torch.cat([mask_desc, up[:, y1:y2, x1:x2].mean(dim=(1, 2))]))
    return torch.stack(out)


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

    def _candidates(self, dst_work: np.ndarray, candidates: Candidates | None) -> CandidateSet:
        """FastSAM on the working image, or the given candidates at its size."""
        if candidates is None:
            return self.pipeline.segment(dst_work)
        if candidates.size_hw != dst_work.shape[:2]:
            candidates = candidates.resized(dst_work.shape[:2])
        return CandidateSet(candidates)

    def _descriptors(self, src_feats, dst_feats, query_small: np.ndarray, cands: CandidateSet):
        """(src (1, 2C), dst (N, 2C), src map, dst map) as torch tensors on the device, by
        the per-mask loop."""
        import torch

        dst_size, src_size = self.dst_view.image_size, self.src_view.image_size
        rows = nearest_indices(cands.size_hw[0], dst_size[0], "torch")
        cols = nearest_indices(cands.size_hw[1], dst_size[1], "torch")
        masks = torch.from_numpy(cands.sample(rows, cols)).to(self.device)
        boxes = torch.from_numpy(scale_boxes(cands.boxes, cands.size_hw, dst_size))
        src_t = torch.from_numpy(src_feats).to(self.device)
        dst_t = torch.from_numpy(dst_feats).to(self.device)
        dst_desc = loop_reference(dst_t, masks, boxes, dst_size, self.context_px, self.reduction)
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
        return src_desc, dst_desc, src_t, dst_t

    def _match(self, sims: np.ndarray, cands: CandidateSet, dst_hw: tuple[int, ...]) -> Match:
        """The best candidate as a :class:`runtime.pipeline.Match` at the image size."""
        if not len(cands):
            return Match(np.zeros(dst_hw, np.uint8), 0.0, -1, None, [], 0)
        row = sims.astype(np.float64)
        order = np.argsort(-row, kind="stable")[:TOP_K]
        best = int(order[0])
        mask = cands.mask(best)
        if mask.shape != tuple(dst_hw):
            mask = resize_mask_nearest(mask, dst_hw, rule="opencv")
        box = scale_boxes(cands.boxes[best][None], cands.size_hw, dst_hw)[0]
        return Match(
            mask=np.ascontiguousarray(mask, np.uint8),
            confidence=sigmoid(float(row[best])),
            candidate=best,
            similarity=float(row[best]),
            top=[(int(i), float(row[i])) for i in order],
            n_candidates=len(cands),
            box_xywh=tuple(float(v) for v in box),
        )

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
        cands = self._candidates(dst_work, candidates)
        t2 = time.perf_counter()
        src_feats = self._features("src", src_tensor)
        t3 = time.perf_counter()
        dst_feats = self._features("dst", dst_tensor)
        t4 = time.perf_counter()
        sims = np.zeros(0, np.float32)
        with torch.inference_mode():
            if len(cands):
                descriptors = self._descriptors(src_feats, dst_feats, query_small, cands)
            t5 = time.perf_counter()
            if len(cands):
                src_desc, dst_desc, src_t, dst_t = descriptors
                sims = self.matcher(src_desc[None], dst_desc[None], src_t, dst_t)[0]
                sims = sims.float().cpu().numpy()
        t6 = time.perf_counter()
        match = self._match(sims, cands, dst_rgb.shape[:2])
        t7 = time.perf_counter()
        # The clocks bound the pipeline's stages in their order (runtime.pipeline.STAGES).
        clocks = (t0, t1, t2, t3, t4, t5, t6, t7)
        record = {
            stage: 1e3 * (end - start)
            for stage, start, end in zip(STAGES, clocks[:-1], clocks[1:], strict=True)
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
