"""The module that training wraps: matcher (+ backbones when fine-tuning), its loss, its init.

Per pair, the source object and ``n`` destination masks chosen by hard-negative adjacent
mining (:mod:`omama_train.sampling`, :mod:`omama_train.dataset`); descriptors by separable
pooling on the training device; loss = cross-entropy of cosine / temperature against the
positive, times visibility, averaged (docs/reference.md, sections 5 and 6). Padding slots
(frames with fewer than ``n`` candidates) are masked out of the softmax.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from runtime.egoexo import view_kinds
from runtime.errors import OmamaError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from omama_train.train.config import TrainConfig
    from omama_train.train.data import RunData

MASKED_SIMILARITY = -1e4  # padding slots: exp(-1e4 / T) is 0, and the loss stays finite


def tie_backbones(main: nn.Module, other: nn.Module) -> None:
    """Make ``other`` use ``main``'s parameters and buffers wherever the shapes agree (all but
    the positional table baked for each image size), so both views train one backbone."""
    for name, param in list(other.named_parameters()):
        shared = main.get_parameter(name)
        if shared.shape == param.shape:
            owner_name, _, leaf = name.rpartition(".")
            setattr(other.get_submodule(owner_name) if owner_name else other, leaf, shared)
    for name, buffer in list(other.named_buffers()):
        shared = main.get_buffer(name)
        if shared.shape == buffer.shape:
            owner_name, _, leaf = name.rpartition(".")
            owner = other.get_submodule(owner_name) if owner_name else other
            owner._buffers[leaf] = shared


def build_train_model(geometry, matcher, backbones: dict | None = None, train_backbone=False):
    """The module that training wraps (and DDP synchronises): matcher + optional backbones."""
    import torch
    from torch import nn

    from omama_train.dataset import batch_descriptors
    from omama_train.models.preprocess import preprocess_image_torch

    class TrainModel(nn.Module):
        """Batch of :class:`omama_train.dataset.TrainingPairs` -> similarities (B, N).

        Inputs are cached features (B, C, h, w) or, with backbones, images (B, H, W, 3)
        uint8 that are normalised and encoded here (with gradients when
        ``train_backbone``)."""

        def __init__(self) -> None:
            super().__init__()
            self.geometry = geometry
            self.matcher = matcher
            self.backbones = nn.ModuleDict(backbones) if backbones else None
            self.train_backbone = train_backbone
            self.kinds = dict(zip(("src", "dst"), view_kinds(geometry.direction), strict=True))

        def features(self, inputs: torch.Tensor, side: str) -> torch.Tensor:
            device = next(self.matcher.parameters()).device
            inputs = inputs.to(device, non_blocking=True)
            if self.backbones is None:
                return inputs.float()
            size = self.geometry.src_image if side == "src" else self.geometry.dst_image
            images = preprocess_image_torch(inputs, size_hw=size)
            backbone = self.backbones[self.kinds[side]]
            if self.train_backbone:
                return backbone(images)
            with torch.no_grad():
                return backbone(images)

        def descriptors(self, feats, bits, boxes, side: str) -> torch.Tensor:
            g = self.geometry
            if side == "src":
                return batch_descriptors(feats, bits, boxes, g.src_image, g.src_pool)
            return batch_descriptors(feats, bits, boxes, g.dst_image, g.dst_pool)

        def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
            src = self.features(batch["src_input"], "src")
            dst = self.features(batch["dst_input"], "dst")
            src_desc = self.descriptors(src, batch["src_bits"], batch["src_boxes"], "src")
            dst_desc = self.descriptors(dst, batch["dst_bits"], batch["dst_boxes"], "dst")
            return self.matcher(src_desc, dst_desc, src, dst)

    return TrainModel()


def masked_loss(
    similarities: torch.Tensor,
    valid: torch.Tensor,
    positive: torch.Tensor,
    visible: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """:func:`matcher_loss` with padding slots (``valid`` False) out of the softmax; fp32."""
    from omama_train.models.matcher import matcher_loss

    logits = similarities.float().masked_fill(~valid.to(similarities.device), MASKED_SIMILARITY)
    device = similarities.device
    return matcher_loss(logits, positive.to(device), visible.to(device), temperature)


def load_init(matcher, path: Path) -> None:
    """Copy the weights of an official ``.pt`` or omama ``.safetensors`` matcher.

    A matcher of the other direction (O-MaMa released exo2ego weights only) starts this one
    with its two positional tables swapped, so that each stays with its camera kind: ``T``
    belongs to the destination tokens and ``Q`` to the source tokens, so exo2ego's ``T`` is
    the ego table that ego2exo calls ``Q``. The cross-attention block and the MLPs serve both
    sides alike and are copied as they are.
    """
    from omama_train.models.matcher import load_matcher

    loaded = load_matcher(path)
    state = loaded.state_dict()
    grids = (loaded.src_grid, loaded.dst_grid)
    swapped = loaded.direction != matcher.direction
    if swapped:
        state["pos_embed_T"], state["pos_embed_Q"] = state["pos_embed_Q"], state["pos_embed_T"]
        grids = grids[::-1]
    if (*grids, loaded.dim) != (matcher.src_grid, matcher.dst_grid, matcher.dim):
        as_read = f" (read as {matcher.direction}: {grids[0]} -> {grids[1]})" if swapped else ""
        raise OmamaError(
            f"--init {path} is an {loaded.direction} matcher with token grids {loaded.src_grid} "
            f"-> {loaded.dst_grid}{as_read} (dim {loaded.dim}); the features give "
            f"{matcher.src_grid} -> {matcher.dst_grid} (dim {matcher.dim}): use a cache at the "
            "sizes the checkpoint was trained for"
        )
    matcher.load_state_dict(state, strict=True)
    if swapped:
        print(
            f"--init {path}: an {loaded.direction} matcher, its view tables swapped to start "
            f"{matcher.direction} training",
            file=sys.stderr,
        )


def build_models(config: TrainConfig, data: RunData, device) -> tuple[nn.Module, list[dict]]:
    """The training module (matcher, plus backbones when fine-tuning) on ``device`` and the
    AdamW parameter groups (matcher; backbone)."""
    import torch

    from omama_train.models.matcher import OMaMaMatcher

    g = data.geometry
    torch.manual_seed(config.seed)
    matcher = OMaMaMatcher(
        config.direction,
        src_grid=g.src_grid,
        dst_grid=g.dst_grid,
        dropout=config.dropout,
        backbone=data.backbone_name,
    )
    if config.init is not None and not config.resume:
        load_init(matcher, config.init)
    # Frozen, so DDP sees no trainable parameter without a gradient: mlp_visible is not
    # part of the forward pass, and the key bias adds the same q.b to every attention logit
    # of a query, which the softmax cancels (its gradient is exactly zero; the folded
    # attention order does not even read it).
    matcher.mlp_visible.requires_grad_(False)
    matcher.CROSS_context_attn.key.bias.requires_grad_(False)
    backbones = None
    if config.finetune_backbone:
        from omama_train.models.backbones import build_backbone

        weights = config.backbone_weights
        ego_size = g.dst_image if g.direction == "exo2ego" else g.src_image
        exo_size = g.src_image if g.direction == "exo2ego" else g.dst_image
        ego = build_backbone(data.backbone_spec, ego_size, weights)
        if exo_size == ego.image_size:
            exo = ego
        else:
            exo = build_backbone(data.backbone_spec, exo_size, weights)
            tie_backbones(ego, exo)
        backbones = {"ego": ego.train(), "exo": exo.train()}
    model = build_train_model(g, matcher, backbones, config.finetune_backbone).to(device)

    matcher_params = [p for p in model.matcher.parameters() if p.requires_grad]
    groups = [{"params": matcher_params, "lr": config.base_lr, "name": "matcher"}]
    if backbones:
        backbone_lr = config.backbone_lr or config.base_lr
        params = list(model.backbones.parameters())  # shared tensors appear once
        groups.append({"params": params, "lr": backbone_lr, "name": "backbone"})
    for group in groups:
        group["base_lr"] = group["lr"]
    return model, groups
