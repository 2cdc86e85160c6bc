"""The modules behind each artifact file: what ``omama export`` traces and what the torch
backend runs (kept apart from the training models, like Segment Anything's ``utils/onnx.py``).

One module per model file of an artifacts folder, called with the file's inputs in order and
returning its outputs in order:

- :class:`BackboneOnnx`: ``image`` (B, 3, H, W) -> ``feats`` (B, 768, h, w); the backbone
  already holds its positional table at the fixed size, so the graph has no interpolation.
- :class:`MatcherFromWeights`: descriptor pooling + matcher in one graph, fed with the
  per-mask pooling weights at token resolution (``runtime.pooling.descriptor_weights``).
- :class:`MatcherFromMasks`: the same, fed with masks at image resolution and boxes; the
  weights are computed in the graph by :class:`GraphDescriptorWeights`.
- :class:`FastSAMRaw`: ``images`` -> (``output0``, ``output1``), the network's raw head
  outputs. Ultralytics' exporter traces the network itself (with its NMS module around it
  for ``fastsam.onnx`` files with NMS in the graph); the runtime's NMS applied to these
  raw outputs is what that graph's NMS is verified against.

Both matcher graphs take the features of one frame pair (batch 1) and score N candidates
against B source objects: ``similarities`` (B, N), with B and N dynamic.
:func:`matcher_module` picks the form. ``omama export`` verifies every file against these
very modules run by the torch backend, and ``--backend torch`` rebuilds them from the
manifest (``omama_train.torch_backend``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from omama_train.models.backbones import Backbone
from omama_train.models.matcher import OMaMaMatcher
from runtime.errors import OmamaError
from runtime.manifest import MATCHER_INPUTS
from runtime.pooling import (
    CONTEXT_PX,
    REDUCTION,
    bilinear_matrix,
    bilinear_prefix,
    index_slice,
    pooling_grid,
)
from runtime.preprocess import nearest_indices


class BackboneOnnx(nn.Module):
    """``image`` (B, 3, H, W) normalised float32 -> ``feats`` (B, 768, H/p, W/p)."""

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.backbone(image)


class GraphDescriptorWeights(nn.Module):
    """Pooling weights of masks and their context boxes, written for an ONNX/TensorRT graph.

    Same numbers as ``omama_train.models.descriptors.descriptor_weights`` (see
    ``runtime.pooling`` for the math), with what an engine needs: the resize indices and
    the interpolation tables are constants of the fixed image size, all arithmetic is
    float32 or int64 (TensorRT has no float64), and the box is truncated by an integer cast.

    forward(masks (B, N, H, W) uint8/bool/float, boxes (B, N, 4) x1, y1, w, h px)
    -> (B, N, 2, h*w) float32: mask weights, then context weights.
    """

    def __init__(
        self,
        image_size: tuple[int, int],
        feat_grid: tuple[int, int],
        context_px: int = CONTEXT_PX,
        reduction: int = REDUCTION,
    ) -> None:
        super().__init__()
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.feat_grid = (int(feat_grid[0]), int(feat_grid[1]))
        self.context_px = int(context_px)
        self.reduction = int(reduction)
        grid_h, grid_w = pooling_grid(self.image_size, reduction)
        self.grid = (grid_h, grid_w)
        feat_h, feat_w = self.feat_grid

        def table(array: np.ndarray) -> torch.Tensor:
            return torch.tensor(np.ascontiguousarray(array), dtype=torch.float32)

        self.register_buffer("uy_t", table(bilinear_matrix(feat_h, grid_h).T), persistent=False)
        self.register_buffer("ux", table(bilinear_matrix(feat_w, grid_w)), persistent=False)
        self.register_buffer("prefix_y", table(bilinear_prefix(feat_h, grid_h)), persistent=False)
        self.register_buffer("prefix_x", table(bilinear_prefix(feat_w, grid_w)), persistent=False)
        # Nearest resize to the pooling grid: a strided slice when the ratio is an integer
        # (700 -> 175), otherwise a constant gather.
        self.rows = index_slice(nearest_indices(self.image_size[0], grid_h, "torch"))
        self.cols = index_slice(nearest_indices(self.image_size[1], grid_w, "torch"))
        if not isinstance(self.rows, slice):
            self.register_buffer("row_index", torch.tensor(self.rows), persistent=False)
        if not isinstance(self.cols, slice):
            self.register_buffer("col_index", torch.tensor(self.cols), persistent=False)

    def _resize(self, masks: torch.Tensor) -> torch.Tensor:
        rows = self.rows if isinstance(self.rows, slice) else self.row_index
        cols = self.cols if isinstance(self.cols, slice) else self.col_index
        masks = masks[:, :, rows] if isinstance(rows, slice) else masks.index_select(2, rows)
        if isinstance(cols, slice):
            return masks[:, :, :, cols]
        return masks.index_select(3, cols)

    def forward(self, masks: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        batch, count = masks.shape[0], masks.shape[1]
        grid_h, grid_w = self.grid
        feat_h, feat_w = self.feat_grid
        # Cast before resizing: TensorRT takes uint8 tensors only into a Cast layer.
        small = (self._resize(masks.to(torch.float32)) != 0).to(torch.float32)  # (B,N,H',W')
        area = small.sum(dim=(2, 3))  # (B, N), exact integers
        half = torch.matmul(small, self.ux)  # (B, N, H', w)
        mask_w = torch.matmul(self.uy_t, half)  # (B, N, h, w)
        mask_w = mask_w / area.clamp(min=1.0)[:, :, None, None]

        height, width = self.image_size
        box = boxes.to(torch.int64)  # Cast truncates toward zero, as the reference's int()
        x1, y1, w, h = box[..., 0], box[..., 1], box[..., 2], box[..., 3]
        x2, y2 = x1 + w, y1 + h
        step = self.reduction
        # Clamped to >= 0 first, so truncating division is the floor: one integer Div in
        # the graph instead of the Mod/Where sequence a floor division exports to.
        x1 = torch.div((x1 - self.context_px).clamp(0, width), step, rounding_mode="trunc")
        y1 = torch.div((y1 - self.context_px).clamp(0, height), step, rounding_mode="trunc")
        x2 = torch.div((x2 + self.context_px).clamp(0, width), step, rounding_mode="trunc")
        y2 = torch.div((y2 + self.context_px).clamp(0, height), step, rounding_mode="trunc")
        x2 = torch.maximum(x2, x1 + 1).clamp(0, grid_w)
        y2 = torch.maximum(y2, y1 + 1).clamp(0, grid_h)
        x1 = x1.clamp(0, grid_w - 1)
        y1 = y1.clamp(0, grid_h - 1)
        col_y = self.prefix_y[y2] - self.prefix_y[y1]  # (B, N, h)
        col_x = self.prefix_x[x2] - self.prefix_x[x1]  # (B, N, w)
        cells = ((y2 - y1) * (x2 - x1)).to(torch.float32)  # (B, N)
        ctx_w = (col_y / cells[..., None])[..., :, None] * col_x[..., None, :]  # (B, N, h, w)
        weights = torch.stack([mask_w, ctx_w], dim=2)  # (B, N, 2, h, w)
        return weights.reshape(batch, count, 2, feat_h * feat_w)


def pool_shared_frame(feats: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Descriptors of B x N masks of one frame: feats (1, C, h, w), weights (B, N, 2, h*w)
    -> (B, N, 2C) ``[mask mean | context mean]``; the frame's tokens are not copied per
    object (a broadcast matmul)."""
    channels = feats.shape[1]
    tokens = feats.flatten(2).transpose(1, 2)  # (1, h*w, C)
    batch, count = weights.shape[0], weights.shape[1]
    pooled = torch.matmul(weights.reshape(batch, count * 2, weights.shape[-1]), tokens)
    return pooled.reshape(batch, count, 2 * channels)


class MatcherFromWeights(nn.Module):
    """Pooling + matcher, fed with pooling weights at token resolution.

    forward(src_feats (1, D, hs, ws), dst_feats (1, D, hd, wd),
            src_weights (B, 1, 2, hs*ws), dst_weights (1, N, 2, hd*wd)) -> (B, N).
    """

    input_names = ("src_feats", "dst_feats", "src_weights", "dst_weights")

    def __init__(self, matcher: OMaMaMatcher) -> None:
        super().__init__()
        self.matcher = matcher

    def forward(
        self,
        src_feats: torch.Tensor,
        dst_feats: torch.Tensor,
        src_weights: torch.Tensor,
        dst_weights: torch.Tensor,
    ) -> torch.Tensor:
        src_desc = pool_shared_frame(src_feats, src_weights)  # (B, 1, 2D)
        dst_desc = pool_shared_frame(dst_feats, dst_weights)  # (1, N, 2D)
        return self.matcher(src_desc, dst_desc, src_feats, dst_feats)


class MatcherFromMasks(nn.Module):
    """Pooling weights + pooling + matcher, fed with masks at image size and their boxes.

    forward(src_feats (1, D, hs, ws), dst_feats (1, D, hd, wd), src_mask (B, 1, Hs, Ws)
            uint8, src_box (B, 1, 4), dst_masks (1, N, Hd, Wd) uint8, dst_boxes (1, N, 4))
    -> (B, N); boxes are x1, y1, w, h in pixels of the view's image.
    """

    input_names = ("src_feats", "dst_feats", "src_mask", "src_box", "dst_masks", "dst_boxes")

    def __init__(
        self,
        matcher: OMaMaMatcher,
        src_image_size: tuple[int, int],
        dst_image_size: tuple[int, int],
        context_px: int = CONTEXT_PX,
        reduction: int = REDUCTION,
    ) -> None:
        super().__init__()
        self.matcher = matcher
        self.src_weights = GraphDescriptorWeights(
            src_image_size, matcher.src_grid, context_px, reduction
        )
        self.dst_weights = GraphDescriptorWeights(
            dst_image_size, matcher.dst_grid, context_px, reduction
        )

    def forward(
        self,
        src_feats: torch.Tensor,
        dst_feats: torch.Tensor,
        src_mask: torch.Tensor,
        src_box: torch.Tensor,
        dst_masks: torch.Tensor,
        dst_boxes: torch.Tensor,
    ) -> torch.Tensor:
        src_desc = pool_shared_frame(src_feats, self.src_weights(src_mask, src_box))
        dst_desc = pool_shared_frame(dst_feats, self.dst_weights(dst_masks, dst_boxes))
        return self.matcher(src_desc, dst_desc, src_feats, dst_feats)


class FastSAMRaw(nn.Module):
    """``images`` (1, 3, S, S) float32 in [0, 1] -> (``output0`` (1, 4 + 1 + 32, A) raw
    boxes cx, cy, w, h, scores and mask coefficients, ``output1`` (1, 32, S/4, S/4) mask
    prototypes) of an ultralytics FastSAM / YOLOv8-seg network, in eval mode."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.net(images)
        first = out[0] if isinstance(out, (tuple, list)) else out
        return first[0], first[1]


def matcher_module(
    matcher: OMaMaMatcher,
    form: str,
    src_image_size: tuple[int, int],
    dst_image_size: tuple[int, int],
    context_px: int = CONTEXT_PX,
    reduction: int = REDUCTION,
) -> nn.Module:
    """The pooling + matcher module of input ``form``: ``weights`` or ``masks``."""
    if form == "weights":
        return MatcherFromWeights(matcher).eval()
    if form == "masks":
        return MatcherFromMasks(
            matcher, src_image_size, dst_image_size, context_px, reduction
        ).eval()
    raise OmamaError(f"matcher input form must be one of {MATCHER_INPUTS}, got {form!r}")
