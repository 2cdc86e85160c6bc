"""Backbones at a fixed input size: DINOv2 (O-MaMa's), DINOv3 and DINOv1 ResNet-50, via timm.

``build_backbone(name, image_size=(H, W))`` returns a ``Backbone`` whose forward maps a
normalised image (B, 3, H, W) to patch features (B, 768, H/p, W/p): the final-norm patch
tokens (``x_norm_patchtokens``, CLS and registers dropped) of a ViT, or the last stage of
the ResNet, followed by a trainable 1x1 Conv2d to 768 channels when the width is not 768
(as in the reference study).

Positional embeddings. DINOv2 was pretrained on a 37x37 grid (518x518 px); the official code
interpolates that table bicubically to the actual grid on every forward. The input size is
fixed here, so the interpolated table is computed once, when the weights are loaded, with
the very ``F.interpolate`` call of the official code, and stored in the model: the forward
(and any exported graph) holds no interpolation. Two official variants exist:

- ``"bicubic_offset"``: ``scale_factor=((h + 0.1) / 37, (w + 0.1) / 37)``, no antialias:
  the ``DinoVisionTransformer`` default and the torch-hub models without registers.
- ``"bicubic_antialias"``: ``size=(h, w)``, antialias: what the torch-hub constructors of
  the register models (``dinov2_vit*14_reg``: ``interpolate_antialias=True,
  interpolate_offset=0.0``) use, hence what O-MaMa's ``torch.hub.load(...,
  "dinov2_vitb14_reg")`` computed its features with.

Each registry entry defaults to what its torch-hub constructor does; ``pos_resize=`` picks
the other one. Official checkpoints are read with ``weights_only=True`` only.

Projection. Official files hold no 1x1 projection to 768 channels (ViT-S, ViT-L, DINOv3,
ResNet). Whoever builds a backbone from such a file gets the same one:
``seeded_projection(spec, seed)`` (seed 0 unless said otherwise), so a feature cache
(``omama features --seed``), training and every export of the same file agree.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from runtime.errors import OmamaError

FEATURE_DIM = 768
PRETRAIN_GRID = 37  # DINOv2: 518 px / 14
FILE_METADATA_KEY = "omama_backbone"  # one key: safetensors orders several at random

PosResize = Literal["bicubic_offset", "bicubic_antialias"]
POS_RESIZES: tuple[str, ...] = ("bicubic_offset", "bicubic_antialias")
Family = Literal["dinov2", "dinov3", "resnet"]


@dataclass(frozen=True)
class BackboneSpec:
    """One named backbone: the timm architecture and how its official weights look.

    ``patch_size`` is the token stride in pixels (32 for the ResNet's last stage).
    ``timm_overrides`` changes the timm architecture (e.g. ``{"depth": 2}`` for a small
    test model); the registry entries leave it empty.
    """

    name: str
    family: Family
    timm_name: str
    patch_size: int
    embed_dim: int
    num_register_tokens: int = 0
    pos_resize: PosResize | None = None
    timm_overrides: dict = field(default_factory=dict, hash=False, compare=False)
    description: str = ""


def _dinov2(name: str, size: str, dim: int, reg: bool) -> BackboneSpec:
    timm_name = f"vit_{size}_patch14_{'reg4_' if reg else ''}dinov2"
    kind = {"small": "S", "base": "B", "large": "L", "giant": "g"}[size]
    return BackboneSpec(
        name=name,
        family="dinov2",
        timm_name=timm_name,
        patch_size=14,
        embed_dim=dim,
        num_register_tokens=4 if reg else 0,
        pos_resize="bicubic_antialias" if reg else "bicubic_offset",
        description=f"DINOv2 ViT-{kind}/14{' with 4 registers' if reg else ''}",
    )


BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        _dinov2("dinov2_vits14_reg", "small", 384, True),
        _dinov2("dinov2_vitb14_reg", "base", 768, True),
        _dinov2("dinov2_vitl14_reg", "large", 1024, True),
        _dinov2("dinov2_vitg14_reg", "giant", 1536, True),
        _dinov2("dinov2_vits14", "small", 384, False),
        _dinov2("dinov2_vitb14", "base", 768, False),
        _dinov2("dinov2_vitl14", "large", 1024, False),
        _dinov2("dinov2_vitg14", "giant", 1536, False),
        # The *_qkvb timm variants keep q/v biases, so official checkpoints whose qkv bias is
        # not zero load exactly; files without biases load with zeros.
        BackboneSpec(
            name="dinov3_vits16plus",
            family="dinov3",
            timm_name="vit_small_plus_patch16_dinov3_qkvb",
            patch_size=16,
            embed_dim=384,
            num_register_tokens=4,
            description="DINOv3 ViT-S+/16 (RoPE, 4 storage tokens)",
        ),
        BackboneSpec(
            name="dinov3_vits16",
            family="dinov3",
            timm_name="vit_small_patch16_dinov3_qkvb",
            patch_size=16,
            embed_dim=384,
            num_register_tokens=4,
            description="DINOv3 ViT-S/16 (RoPE, 4 storage tokens)",
        ),
        BackboneSpec(
            name="resnet50_dino",
            family="resnet",
            timm_name="resnet50",
            patch_size=32,
            embed_dim=2048,
            description="DINOv1 ResNet-50, last stage (stride 32)",
        ),
    )
}
DEFAULT_BACKBONE = "dinov2_vitb14_reg"


def backbone_names() -> list[str]:
    """The registered backbone names."""
    return list(BACKBONES)


def get_spec(name: str) -> BackboneSpec:
    if name not in BACKBONES:
        raise OmamaError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    return BACKBONES[name]


def resize_pos_embed(
    patch_pos: torch.Tensor, grid_hw: tuple[int, int], mode: PosResize
) -> torch.Tensor:
    """The official DINOv2 interpolation of a square patch positional table.

    Arguments:
        patch_pos: (1, M*M, C) positional embeddings of the M x M pretraining grid
            (CLS entry removed).
        grid_hw: target token grid (h, w).
        mode: ``"bicubic_offset"`` or ``"bicubic_antialias"`` (see the module docstring).
    Returns:
        float32 (1, h*w, C), row-major over (h, w). The table is returned unchanged when
        the grid already is M x M, as the official code does.
    """
    if mode not in POS_RESIZES:
        raise OmamaError(f"pos_resize must be one of {', '.join(POS_RESIZES)}, got {mode!r}")
    n, dim = patch_pos.shape[1], patch_pos.shape[2]
    side = math.isqrt(n)
    if side * side != n:
        raise OmamaError(f"positional table of {n} entries is not a square grid")
    h, w = int(grid_hw[0]), int(grid_hw[1])
    table = patch_pos.float()
    if (h, w) == (side, side):
        return table
    grid = table.reshape(1, side, side, dim).permute(0, 3, 1, 2)
    if mode == "bicubic_offset":
        # The +0.1 offset changes the scale used for sampling, not only the output size.
        grid = F.interpolate(
            grid,
            scale_factor=(float(h + 0.1) / side, float(w + 0.1) / side),
            mode="bicubic",
            antialias=False,
        )
    else:
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", antialias=True)
    if tuple(grid.shape[-2:]) != (h, w):
        raise OmamaError(f"positional interpolation gave {tuple(grid.shape[-2:])}, not {(h, w)}")
    return grid.permute(0, 2, 3, 1).reshape(1, h * w, dim)


class Backbone(nn.Module):
    """A backbone at one fixed input size.

    Attributes:
        name: registry name; ``spec``: its ``BackboneSpec``.
        patch_size: token stride in pixels; ``image_size``: (H, W) px it accepts;
        grid: (H/p, W/p) tokens; ``embed_dim``: trunk width; ``out_channels``: 768.
        pos_resize: the positional interpolation baked into the weights (DINOv2 only).
        trunk: the timm model; ``proj``: 1x1 Conv2d to 768 (Identity when the width is 768).
        projection_source: where ``proj`` came from: ``"none"`` (Identity), ``"init"``
        (torch's default initialisation), ``"file"`` (the weights file), ``"seeded"``
        (``seeded_projection(spec, projection_seed)``, the file had none).
    """

    def __init__(
        self, spec: BackboneSpec, image_size: tuple[int, int], pos_resize: PosResize | None
    ) -> None:
        super().__init__()
        import timm

        h, w = int(image_size[0]), int(image_size[1])
        p = spec.patch_size
        if h <= 0 or w <= 0 or h % p or w % p:
            raise OmamaError(
                f"{spec.name} needs an image size that is a multiple of {p} px, got {h}x{w} "
                f"(runtime.preprocess.model_input_size gives the right one)"
            )
        if pos_resize is not None and pos_resize not in POS_RESIZES:
            raise OmamaError(
                f"pos_resize must be one of {', '.join(POS_RESIZES)}, got {pos_resize!r}"
            )
        self.spec = spec
        self.name = spec.name
        self.patch_size = p
        self.image_size = (h, w)
        self.grid = (h // p, w // p)
        self.embed_dim = spec.embed_dim
        self.out_channels = FEATURE_DIM
        self.pos_resize: PosResize | None = (
            (pos_resize or spec.pos_resize) if spec.family == "dinov2" else None
        )
        if spec.family == "resnet":
            self.trunk = timm.create_model(
                spec.timm_name,
                pretrained=False,
                num_classes=0,
                global_pool="",
                **spec.timm_overrides,
            )
            self.num_prefix_tokens = 0
        else:
            self.trunk = timm.create_model(
                spec.timm_name,
                pretrained=False,
                num_classes=0,
                img_size=(h, w),
                dynamic_img_size=False,
                **spec.timm_overrides,
            )
            self.num_prefix_tokens = int(self.trunk.num_prefix_tokens)
        width = int(self.trunk.num_features)
        if width != spec.embed_dim:
            raise OmamaError(f"{spec.name}: timm built width {width}, spec says {spec.embed_dim}")
        self.proj: nn.Module = (
            nn.Identity() if width == FEATURE_DIM else nn.Conv2d(width, FEATURE_DIM, 1)
        )
        self.projection_source = "none" if width == FEATURE_DIM else "init"
        self.projection_seed: int | None = None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images: normalised (B, 3, H, W) at ``image_size`` -> features (B, 768, h, w)."""
        # Shapes are static in an export; the tracer would only warn about this check.
        if not torch.jit.is_tracing() and (
            images.dim() != 4 or images.shape[1] != 3 or tuple(images.shape[-2:]) != self.image_size
        ):
            raise OmamaError(
                f"{self.name} was built for images of {self.image_size[0]}x{self.image_size[1]} "
                f"px, (B, 3, H, W); got {tuple(images.shape)}"
            )
        if self.spec.family == "resnet":
            feats = self.trunk.forward_features(images)
        else:
            tokens = self.trunk.forward_features(images)  # (B, prefix + h*w, C), final norm
            patches = tokens[:, self.num_prefix_tokens :, :]
            feats = patches.transpose(1, 2).unflatten(2, self.grid)
        return self.proj(feats)

    def extra_repr(self) -> str:
        return (
            f"name={self.name}, image_size={self.image_size}, grid={self.grid}, "
            f"embed_dim={self.embed_dim}, out_channels={self.out_channels}, "
            f"pos_resize={self.pos_resize}"
        )


def build_backbone(
    name: str | BackboneSpec,
    image_size: tuple[int, int],
    weights: str | Path | None = None,
    pos_resize: PosResize | None = None,
    projection_seed: int | None = 0,
) -> Backbone:
    """Build a registered backbone for images of exactly ``image_size`` = (H, W) px.

    ``weights``: optional checkpoint loaded with ``load_backbone_weights`` (a file without
    the 1x1 projection gets ``seeded_projection(spec, projection_seed)``). Without it the
    trunk has timm's random initialisation. ``pos_resize`` overrides the DINOv2 positional
    interpolation of the registry entry. Returned in eval mode.
    """
    spec = name if isinstance(name, BackboneSpec) else get_spec(name)
    model = Backbone(spec, image_size, pos_resize)
    if weights is not None:
        load_backbone_weights(model, weights, projection_seed=projection_seed)
    return model.eval()


def seeded_projection(spec: BackboneSpec, seed: int) -> dict[str, torch.Tensor]:
    """The 1x1 projection to 768 channels of a backbone whose weights file has none.

    torch's default ``Conv2d`` initialisation under ``torch.manual_seed(seed)`` (the global
    RNG is left as it was). Returns ``{"proj.weight": (768, C, 1, 1), "proj.bias": (768,)}``
    float32, or ``{}`` when the trunk is already 768 wide (no projection).
    """
    if spec.embed_dim == FEATURE_DIM:
        return {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        conv = nn.Conv2d(spec.embed_dim, FEATURE_DIM, 1)
    return {f"proj.{k}": v.detach().clone() for k, v in conv.state_dict().items()}


def random_backbone_state(
    spec: str | BackboneSpec, seed: int, profile: str = "plain"
) -> dict[str, torch.Tensor]:
    """The one random initialisation of a backbone: the whole ``Backbone`` state
    (``trunk.*``, ``proj.*``) of timm's initialisation under ``torch.manual_seed(seed)``,
    built at the pretraining grid (37 x 37 tokens for DINOv2) so that its positional table is
    square and loads at any image size like an official file (the global RNG is left as it
    was).

    ``profile`` (``runtime.manifest.WEIGHT_PROFILES``): ``"plain"`` is that initialisation
    as it is; ``"outlier"`` plants in it the massive activations, LayerNorm-gain outlier
    channels and high-norm token of trained DINOv2 ViTs, from the same seed
    (:mod:`omama_train.models.outliers`).

    ``omama features --random-init``, ``omama export --random-init`` and the torch backend
    rebuilding a random-init export all call :func:`build_random_backbone`, which loads this
    state, so the same seed gives the same tensors everywhere.
    """
    from runtime.preprocess import model_input_size

    spec = spec if isinstance(spec, BackboneSpec) else get_spec(spec)
    check_profile(profile)
    side = PRETRAIN_GRID * 14
    size = model_input_size(side, side, spec.patch_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = Backbone(spec, size, None)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if profile == "plain":
        return state
    from omama_train.models.outliers import plant_outliers

    return plant_outliers(state, spec.family, seed)


def check_profile(profile: str) -> str:
    """``profile`` when it is one of ``runtime.manifest.WEIGHT_PROFILES``, else OmamaError."""
    from runtime.manifest import WEIGHT_PROFILES

    if profile not in WEIGHT_PROFILES:
        raise OmamaError(
            f"weight profile must be one of {', '.join(WEIGHT_PROFILES)}, got {profile!r}"
        )
    return profile


def build_random_backbone(
    spec: str | BackboneSpec,
    image_size: tuple[int, int],
    seed: int,
    pos_resize: PosResize | None = None,
    state: Mapping[str, torch.Tensor] | None = None,
    profile: str = "plain",
) -> Backbone:
    """A random-init backbone for images of ``image_size`` = (H, W) px, in eval mode:
    :func:`random_backbone_state` of ``seed`` and ``profile`` (or ``state``, when already
    computed for them) loaded with the regular loader, which interpolates the square
    positional table to the grid."""
    spec = spec if isinstance(spec, BackboneSpec) else get_spec(spec)
    model = Backbone(spec, image_size, pos_resize)
    load_backbone_state(
        model,
        random_backbone_state(spec, seed, profile) if state is None else state,
        source=f"random init (seed {seed}, {check_profile(profile)} profile)",
    )
    return model.eval()


def save_backbone_weights(
    state: Mapping[str, torch.Tensor], path: str | Path, info: Mapping[str, object]
) -> Path:
    """Write a whole ``Backbone`` state (``trunk.*``, ``proj.*``) as ``.safetensors``, atomically.

    ``load_backbone_weights`` reads it back at any image size (``omama`` layout). ``info``
    (JSON-able: backbone name, positional interpolation, ...) is stored under one metadata
    key as sorted JSON, so the same tensors and info always give the same bytes.
    """
    from safetensors.torch import save_file

    from runtime.atomic import atomic_path

    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    metadata = {FILE_METADATA_KEY: json.dumps(dict(info), sort_keys=True)}
    with atomic_path(path) as tmp:
        mode = tmp.stat().st_mode  # save_file recreates the file as 0600: keep the usual mode
        save_file(tensors, str(tmp), metadata=metadata)
        tmp.chmod(mode)
    return path


def backbone_file_info(path: str | Path) -> dict:
    """The ``info`` a file written by ``save_backbone_weights`` carries; ``{}`` for any other
    file (official, Hugging Face, timm checkpoints, ``.pth``)."""
    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return {}
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            text = (handle.metadata() or {}).get(FILE_METADATA_KEY)
    except (SafetensorError, OSError) as exc:
        raise OmamaError(f"{path} is not a readable safetensors file: {exc}") from exc
    if not text:
        return {}
    try:
        info = json.loads(text)
    except json.JSONDecodeError as exc:
        raise OmamaError(f"{path}: its {FILE_METADATA_KEY} metadata is not JSON: {exc}") from exc
    return info if isinstance(info, dict) else {}


def load_backbone_weights(
    model: Backbone, path: str | Path, projection_seed: int | None = None
) -> str:
    """Load a checkpoint into ``model``; returns the layout that was recognised.

    Accepted layouts of the trunk:
      - ``omama``: a ``Backbone`` state (``trunk.*`` in timm names, ``proj.*``), e.g. a
        fine-tuned backbone or the ``backbone.safetensors`` of a random-init feature cache
        (``save_backbone_weights``). A positional table of another grid is interpolated like
        the timm layout: a square one (the pretraining grid) with the model's rule; a
        non-square one must be the model's grid already.
      - ``official-dinov2``: torch-hub files (``dinov2_vitb14_reg4_pretrain.pth``), original
        key names; the 37x37 positional table is interpolated to ``model.grid``.
      - ``huggingface-dinov2``: ``model.safetensors`` of ``facebook/dinov2-*`` and
        ``facebook/dinov2-with-registers-*`` (separate q/k/v fused here).
      - ``timm``: timm names (e.g. timm's own DINOv2/DINOv3 files), any square positional grid.
      - ``official-dinov3``: DINOv3 release files (``storage_tokens``), through timm's mapping.
      - ``torchvision-resnet``: ``dino_resnet50_pretrain.pth`` (``fc.*`` ignored).
    Projection: top-level ``proj.weight`` / ``proj.bias`` in any of these layouts are loaded
    into ``model.proj``. A file without them (every official file) leaves ``model.proj`` as
    it is with ``projection_seed=None``, or gets ``seeded_projection(model.spec,
    projection_seed)`` (``build_backbone`` passes seed 0 unless told otherwise).
    ``model.projection_source`` / ``model.projection_seed`` record which it was.
    Raises ``OmamaError`` naming the file and up to 10 missing/unexpected keys, or the
    first tensors whose shapes differ.
    """
    from omama_train.models.backbone_checkpoints import read_state_dict

    return load_backbone_state(
        model, read_state_dict(path), source=str(path), projection_seed=projection_seed
    )


def load_backbone_state(
    model: Backbone,
    state: Mapping[str, torch.Tensor],
    source: str = "state dict",
    projection_seed: int | None = None,
) -> str:
    """``load_backbone_weights`` for tensors already in memory; ``source`` names them in
    error messages."""
    from omama_train.models.backbone_checkpoints import (
        dinov2_trunk_state,
        dinov3_trunk_state,
        head_keys,
        resnet_trunk_state,
    )

    sd = dict(state)
    proj_sd = {k[len("proj.") :]: v for k, v in sd.items() if k.startswith("proj.")}
    rest = {k: v for k, v in sd.items() if not k.startswith("proj.")}
    convert = {
        "dinov2": dinov2_trunk_state,
        "dinov3": dinov3_trunk_state,
        "resnet": resnet_trunk_state,
    }[model.spec.family]
    omama = bool(rest) and all(k.startswith("trunk.") for k in rest)
    if omama:
        rest = {k[len("trunk.") :]: v for k, v in rest.items()}
    try:
        layout, trunk_sd = convert(model, rest)
    except OmamaError as exc:
        # A non-square table in an omama file: saved by a model of another fixed size.
        hint = " (was the model built for another image size?)" if omama else ""
        raise OmamaError(f"{source}: {exc}{hint}") from exc
    layout = "omama" if omama else layout
    expected = model.trunk.state_dict()
    missing = set(expected) - set(trunk_sd)
    unexpected = set(trunk_sd) - set(expected)
    if missing or unexpected:
        parts = [f"{source} does not match backbone {model.name} (read as {layout} layout)"]
        if missing:
            parts.append(f"missing {len(missing)} keys: {head_keys(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys: {head_keys(unexpected)}")
        raise OmamaError("; ".join(parts))
    wrong = [
        f"{k} {tuple(trunk_sd[k].shape)} in file vs {tuple(v.shape)} in model"
        for k, v in expected.items()
        if trunk_sd[k].shape != v.shape
    ]
    wrong += _projection_problems(model, proj_sd, source)
    if wrong:
        hint = " (was the model built for another image size?)" if layout == "omama" else ""
        raise OmamaError(
            f"{source} has tensors of other shapes than backbone {model.name}{hint}: "
            + "; ".join(wrong[:5])
            + (f"; ... ({len(wrong) - 5} more)" if len(wrong) > 5 else "")
        )
    provenance = ("file", None) if proj_sd else None
    if not proj_sd and projection_seed is not None and isinstance(model.proj, nn.Conv2d):
        seeded = seeded_projection(model.spec, int(projection_seed))
        proj_sd = {k[len("proj.") :]: v for k, v in seeded.items()}
        provenance = ("seeded", int(projection_seed))
    with torch.no_grad():
        model.trunk.load_state_dict(trunk_sd, strict=True)
        if proj_sd:
            model.proj.load_state_dict(proj_sd, strict=True)
    if provenance is not None:  # else the projection is left as it was, and so is its record
        model.projection_source, model.projection_seed = provenance
    return layout


def _projection_problems(
    model: Backbone, proj_sd: dict[str, torch.Tensor], source: str
) -> list[str]:
    """Shape clauses for the ``proj.*`` tensors of a file (raises for wrong key sets)."""
    from omama_train.models.backbone_checkpoints import head_keys

    if not proj_sd:
        return []
    if not isinstance(model.proj, nn.Conv2d):
        raise OmamaError(
            f"{source} holds a projection (proj.*), but {model.name} is already "
            f"{FEATURE_DIM} wide and has none"
        )
    own = model.proj.state_dict()
    if set(proj_sd) != set(own):
        raise OmamaError(
            f"{source} has projection keys {head_keys('proj.' + k for k in proj_sd)}, "
            f"backbone {model.name} needs {head_keys('proj.' + k for k in own)}"
        )
    return [
        f"proj.{k} {tuple(proj_sd[k].shape)} in file vs {tuple(v.shape)} in model"
        for k, v in own.items()
        if proj_sd[k].shape != v.shape
    ]
