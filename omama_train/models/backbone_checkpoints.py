"""Backbone checkpoints: reading a file of any published layout, and renaming its keys to
the timm names of :class:`omama_train.models.backbones.Backbone`'s trunk.

Layouts: official DINOv2 (torch hub), Hugging Face DINOv2 (with or without registers),
timm, official DINOv3, torchvision/DINO ResNet-50, and omama's own ``Backbone`` state
(see :func:`omama_train.models.backbones.load_backbone_weights`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from omama_train.models.backbones import PosResize, resize_pos_embed
from runtime.errors import OmamaError

if TYPE_CHECKING:
    from omama_train.models.backbones import Backbone

# ------------------------------------------------------------------ checkpoint reading


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or a weights-only ``.pth``/``.pt`` checkpoint.

    Containers are unwrapped (``state_dict``, ``model``, ``teacher``) and ``module.`` /
    ``backbone.`` prefixes carried by every key are stripped. Nothing but tensors and
    plain containers is ever unpickled.
    """
    path = Path(path)
    if not path.is_file():
        raise OmamaError(f"backbone weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise OmamaError(f"{path} is not a readable safetensors file: {exc}") from exc
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle errors of many kinds; the message says which
            text = str(exc).strip()
            first_line = text.splitlines()[0] if text else type(exc).__name__
            raise OmamaError(
                f"{path} could not be read as a weights-only PyTorch checkpoint "
                f"(only tensors are accepted): {first_line}"
            ) from exc
    while isinstance(obj, dict) and not _is_tensor_dict(obj):
        inner = [k for k in ("state_dict", "model", "teacher") if isinstance(obj.get(k), dict)]
        if not inner:
            raise OmamaError(f"{path} holds no state dict of tensors (keys: {head_keys(obj)})")
        obj = obj[inner[0]]
    if not isinstance(obj, dict) or not obj:
        raise OmamaError(f"{path} holds no state dict of tensors")
    for prefix in ("module.", "backbone."):
        if all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix) :]: v for k, v in obj.items()}
    return dict(obj)


def _is_tensor_dict(obj: dict) -> bool:
    return bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def head_keys(keys, limit: int = 10) -> str:
    keys = sorted(map(str, keys))
    more = f", ... ({len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


# ------------------------------------------------------------------ key mappings

_HF_PREFIXES = ("dinov2.", "model.", "backbone.")
# Hugging Face Dinov2Model / Dinov2WithRegistersModel -> official DINOv2 names, per block.
_HF_BLOCK_MAP = {
    "norm1": "norm1",
    "norm2": "norm2",
    "layer_scale1": "ls1.gamma",
    "layer_scale2": "ls2.gamma",
    "attention.output.dense": "attn.proj",
    "attention.o_proj": "attn.proj",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "mlp.weights_in": "mlp.w12",
    "mlp.weights_out": "mlp.w3",
}
_HF_QKV = {
    "attention.attention.query": "q",
    "attention.attention.key": "k",
    "attention.attention.value": "v",
    "attention.q_proj": "q",
    "attention.k_proj": "k",
    "attention.v_proj": "v",
}
_HF_TOP_MAP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.mask_token": "mask_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.register_tokens": "register_tokens",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
_HF_LAYER = re.compile(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias|lambda1)$")


def hf_dinov2_to_official(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hugging Face DINOv2 names -> official names; q, k, v are fused into ``attn.qkv``.

    Keys that match no rule are kept as they are, so the caller reports them as unexpected.
    """
    for prefix in _HF_PREFIXES:
        if any(k.startswith(prefix + "embeddings.") for k in sd):
            sd = {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in sd.items()}
            break
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        if key in _HF_TOP_MAP:
            out[_HF_TOP_MAP[key]] = value
            continue
        m = _HF_LAYER.match(key)
        if m is None:
            out[key] = value
            continue
        layer, module, leaf = int(m.group(1)), m.group(2), m.group(3)
        if module in _HF_QKV:
            qkv.setdefault((layer, leaf), {})[_HF_QKV[module]] = value
        elif module in _HF_BLOCK_MAP and leaf == "lambda1":
            out[f"blocks.{layer}.{_HF_BLOCK_MAP[module]}"] = value
        elif module in _HF_BLOCK_MAP:
            out[f"blocks.{layer}.{_HF_BLOCK_MAP[module]}.{leaf}"] = value
        else:
            out[key] = value
    for (layer, leaf), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            for name, value in parts.items():  # incomplete: surface as unexpected keys
                out[f"encoder.layer.{layer}.attention.{name}_proj.{leaf}"] = value
            continue
        out[f"blocks.{layer}.attn.qkv.{leaf}"] = torch.cat([parts[c] for c in "qkv"], dim=0)
    return out


_CHUNKED_BLOCK = re.compile(r"^blocks\.\d+\.(\d+)\.")


def official_dinov2_to_timm(
    sd: dict[str, torch.Tensor], no_embed_class: bool
) -> dict[str, torch.Tensor]:
    """Official DINOv2 names -> timm ``VisionTransformer`` names (positional grid unchanged).

    - ``register_tokens`` -> ``reg_token``; ``mask_token`` (pretraining only) is dropped.
    - Register models are timm ``no_embed_class`` models: the official code adds
      ``pos_embed[:, 0]`` to the CLS token, so it is folded into ``cls_token`` and
      ``pos_embed`` keeps only the patch entries (1, M*M, C).
    - FSDP-chunked ``blocks.<chunk>.<i>.`` -> ``blocks.<i>.``; ViT-g ``mlp.w12`` / ``mlp.w3``
      -> ``mlp.fc1`` / ``mlp.fc2`` (timm's packed SwiGLU).
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key == "mask_token":
            continue
        key = _CHUNKED_BLOCK.sub(r"blocks.\1.", key)
        key = key.replace(".mlp.w12.", ".mlp.fc1.").replace(".mlp.w3.", ".mlp.fc2.")
        out["reg_token" if key == "register_tokens" else key] = value
    if no_embed_class and "pos_embed" in out and "cls_token" in out:
        pos = out["pos_embed"]
        out["cls_token"] = out["cls_token"] + pos[:, :1]
        out["pos_embed"] = pos[:, 1:]
    return out


def _pos_embed_for_grid(
    pos: torch.Tensor, prefix_in_pos: int, grid_hw: tuple[int, int], mode: PosResize
) -> torch.Tensor:
    """timm ``pos_embed`` (1, prefix + N, C) -> the model's grid.

    A table with h*w patch entries is taken to be at the model's grid already (a saved
    fixed-size model); any other size must be a square pretraining grid and is interpolated.
    """
    head, patches = pos[:, :prefix_in_pos], pos[:, prefix_in_pos:]
    if patches.shape[1] == grid_hw[0] * grid_hw[1]:
        return pos
    resized = resize_pos_embed(patches, grid_hw, mode).to(pos.dtype)
    return torch.cat([head, resized], dim=1)


def dinov2_trunk_state(model: Backbone, sd: dict[str, torch.Tensor]) -> tuple[str, dict]:
    trunk = model.trunk
    no_embed_class = bool(getattr(trunk, "no_embed_class", False))
    if any(k.startswith("embeddings.") or ".embeddings." in k for k in sd):
        layout = "huggingface-dinov2"
        sd = official_dinov2_to_timm(hf_dinov2_to_official(sd), no_embed_class)
    elif "reg_token" in sd or not any(k in sd for k in ("mask_token", "register_tokens")):
        layout = "timm"
        sd = official_dinov2_to_timm(sd, no_embed_class=False)  # only renames ViT-g / chunks
    else:
        layout, sd = "official-dinov2", official_dinov2_to_timm(sd, no_embed_class)
    if "pos_embed" in sd:
        prefix_in_pos = 0 if no_embed_class else int(trunk.num_prefix_tokens)
        sd["pos_embed"] = _pos_embed_for_grid(
            sd["pos_embed"], prefix_in_pos, model.grid, model.pos_resize
        )
    return layout, sd


def dinov3_trunk_state(model: Backbone, sd: dict[str, torch.Tensor]) -> tuple[str, dict]:
    if "storage_tokens" in sd:
        from timm.models.eva import checkpoint_filter_fn

        layout, sd = "official-dinov3", checkpoint_filter_fn(sd, model.trunk)
    else:
        layout = "timm"
    # Checkpoints of the bias-free timm variant: their q/v biases are zero by construction.
    for key, value in model.trunk.state_dict().items():
        qkv_weight = key[: -len("q_bias")] + "qkv.weight"
        if key.endswith(("attn.q_bias", "attn.v_bias")) and key not in sd and qkv_weight in sd:
            sd[key] = torch.zeros_like(value)
    return layout, sd


def resnet_trunk_state(model: Backbone, sd: dict[str, torch.Tensor]) -> tuple[str, dict]:
    # torchvision and timm ResNet-50 share their names; the classifier is not part of it.
    sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    # BatchNorm step counters only matter for training with momentum=None; files saved
    # without them load with zeros.
    for key, value in model.trunk.state_dict().items():
        mean_key = key.replace("num_batches_tracked", "running_mean")
        if key.endswith("num_batches_tracked") and key not in sd and mean_key in sd:
            sd[key] = torch.zeros_like(value)
    return "torchvision-resnet", sd
