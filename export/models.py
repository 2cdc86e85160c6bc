"""The PyTorch models an export traces, built from weights files or one random initialisation.

The matcher (official ``.pt`` / omama ``.safetensors``, or ``random_matcher``), one backbone
per view at the size its token grid fixes (``build_backbone`` from the weights file, or
``build_random_backbone``), FastSAM (a checkpoint, or a random network of its architecture);
with them the manifest records of their weights. :func:`torch_reference` wraps a model in
the torch backend's session, the reference every exported file is compared with.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from export.config import RANDOM_BACKBONE, ExportConfig
from runtime.egoexo import check_direction, view_kinds
from runtime.errors import OmamaError
from runtime.manifest import BackboneRecord, TensorSpec, ViewSpec, WeightsRecord, sha256_file
from runtime.sessions import Session

if TYPE_CHECKING:
    from omama_train.models.backbones import BackboneSpec


@dataclass
class ExportModels:
    """The models of one export, in eval mode, and the manifest records of their weights."""

    matcher: object
    direction: str
    views: dict[str, ViewSpec]  # "src" / "dst"
    backbones: dict[str, object]  # view kind (ego | exo) -> Backbone, source view first
    spec: object  # the BackboneSpec both backbones are built from
    fastsam_weights: Path | None
    backbone_record: BackboneRecord
    matcher_weights: WeightsRecord
    fastsam_record: WeightsRecord | None
    notes: list[str] = field(default_factory=list)  # warning lines the export prints
    random_label: str = "random weights"  # what random init built (random_weights_label)

    def describe(self, random_init: bool) -> str:
        """One line: the direction, each view's kind, size and token grid, and for random
        init what was built (e.g. ``random weights, official shapes, outlier profile``)."""
        src, dst = self.views["src"], self.views["dst"]
        return (
            f"exporting {self.direction}: source {src.kind} "
            f"{src.image_size[0]}x{src.image_size[1]} px "
            f"({src.feat_grid[0]}x{src.feat_grid[1]} tokens), destination {dst.kind} "
            f"{dst.image_size[0]}x{dst.image_size[1]} px "
            f"({dst.feat_grid[0]}x{dst.feat_grid[1]} tokens)"
            + (f", {self.random_label}" if random_init else "")
        )


def random_weights_label(config: ExportConfig) -> str:
    """``random weights, official shapes`` (``--random-shapes official``) or ``random
    weights``, plus ``, outlier profile`` for ``--weight-profile outlier``."""
    shapes = ", official shapes" if config.random_shapes == "official" else ""
    profile = f", {config.weight_profile} profile" if config.weight_profile != "plain" else ""
    return f"random weights{shapes}{profile}"


def random_setup(config: ExportConfig) -> tuple[str, dict[str, tuple[int, int]]]:
    """The backbone name and token grids per view kind (ego | exo) of a random-init export.

    ``small``: ``config.backbone`` or ViT-S/14-reg, at ``config.random_grids``. ``official``:
    the official structure, ``config.backbone`` or DINOv2 ViT-B/14-reg at the official grids
    (ego 50x50 tokens = 700x700 px, exo 38x68 = 532x952 px); the matcher then has the
    official shapes (``design/matcher_state_dict.txt``) and FastSAM is ``config.fastsam_variant``
    (s unless ``--random-fastsam``). The same as ``ExportConfig(backbone="dinov2_vitb14_reg",
    random_grids=OFFICIAL_GRIDS, random_fastsam=...)`` with small shapes.
    """
    from omama_train.models.matcher import DEFAULT_BACKBONE, OFFICIAL_GRIDS

    chosen = config.backbone
    if config.random_shapes == "official":
        name = DEFAULT_BACKBONE if chosen is None else _name_of(chosen)
        return name, dict(OFFICIAL_GRIDS)
    name = RANDOM_BACKBONE if chosen is None else _name_of(chosen)
    return name, dict(config.random_grids)


def _name_of(backbone) -> str:
    return backbone if isinstance(backbone, str) else backbone.name


def _weights_record(path: Path | None, seed: int, profile: str = "plain") -> WeightsRecord:
    if path is None:
        return WeightsRecord(random=True, seed=seed, profile=profile)
    return WeightsRecord(random=False, file=Path(path).name, sha256=sha256_file(path))


def build_models(config: ExportConfig, workdir: Path) -> ExportModels:
    """The PyTorch models of the export, in eval mode (``workdir``: where a random FastSAM
    checkpoint is written)."""
    from omama_train.models.backbones import backbone_file_info
    from omama_train.models.matcher import load_matcher, random_matcher

    if config.random_init:
        direction = check_direction(config.direction or "exo2ego")
        src_kind, dst_kind = view_kinds(direction)
        default_backbone, grids = random_setup(config)
        matcher = random_matcher(
            direction,
            grids[src_kind],
            grids[dst_kind],
            config.seed,
            attention=config.attention,
            backbone=default_backbone,
        )
    else:
        matcher = load_matcher(config.matcher_weights, config.direction)
        matcher.CROSS_context_attn.mode = config.attention
        direction = matcher.direction
        default_backbone = matcher.backbone
    matcher.eval()
    file_info = {} if config.random_init else backbone_file_info(config.backbone_weights)
    spec, pos_resize = _backbone_spec(config, default_backbone, file_info)
    src_kind, dst_kind = view_kinds(direction)
    grids = {src_kind: matcher.src_grid, dst_kind: matcher.dst_grid}
    views = {
        role: ViewSpec(
            kind, (grids[kind][0] * spec.patch_size, grids[kind][1] * spec.patch_size), grids[kind]
        )
        for role, kind in (("src", src_kind), ("dst", dst_kind))
    }
    backbones = _build_backbones(config, spec, pos_resize, views, matcher.dim)
    fastsam, fastsam_record = _fastsam(config, workdir)
    return ExportModels(
        matcher=matcher,
        direction=direction,
        views=views,
        backbones=backbones,
        spec=spec,
        fastsam_weights=fastsam,
        backbone_record=_backbone_record(config, spec, backbones[src_kind]),
        matcher_weights=_weights_record(
            None if config.random_init else config.matcher_weights, config.seed
        ),
        fastsam_record=fastsam_record,
        notes=_projection_notes(config, backbones[src_kind]),
        random_label=random_weights_label(config),
    )


def _fastsam(config: ExportConfig, workdir: Path) -> tuple[Path | None, WeightsRecord | None]:
    """FastSAM's checkpoint (given, or a random one written to ``workdir``) and its record."""
    if not config.include_fastsam:
        return None, None
    if not config.random_init:
        fastsam = Path(config.fastsam_weights)
        return fastsam, _weights_record(fastsam, config.seed)
    from omama_train.models.fastsam import VARIANT_YAML, build_random_fastsam

    fastsam = build_random_fastsam(
        workdir / f"fastsam-{config.fastsam_variant}-random.pt",
        config.fastsam_variant,
        seed=config.seed,
    )
    architecture = VARIANT_YAML[config.fastsam_variant].removesuffix(".yaml")
    return fastsam, WeightsRecord(random=True, seed=config.seed, architecture=architecture)


def _projection_notes(config: ExportConfig, backbone) -> list[str]:
    """The warning for a weights file without the 1x1 projection (both views get the seeded
    one); none otherwise."""
    if backbone.projection_source != "seeded":
        return []
    name = Path(config.backbone_weights).name  # type: ignore[arg-type]
    return [
        f"warning: {name} has no 1x1 projection to 768 channels; both views use the one "
        f"seeded with --seed {config.seed}, as omama features --seed {config.seed} does "
        "(a matcher trained on a cache of another seed would get other features)"
    ]


def _backbone_spec(
    config: ExportConfig, default: str, file_info: dict
) -> tuple[BackboneSpec, str | None]:
    """The backbone to build and its positional interpolation (``None``: the registry's).

    A file written by ``omama features --random-init`` (``save_backbone_weights``) names its
    backbone, architecture overrides and interpolation: the export builds exactly that,
    unless ``config.backbone`` is a ``BackboneSpec`` (then it must carry the same name).
    """
    from omama_train.models.backbones import get_spec

    chosen = config.backbone if config.backbone is not None else default
    spec = get_spec(chosen) if isinstance(chosen, str) else chosen
    held = file_info.get("backbone") or {}
    if not held:
        return spec, None
    if held.get("name") != spec.name:
        raise OmamaError(
            f"{config.backbone_weights} holds {held.get('name')} weights, but the export builds "
            f"{spec.name} (the matcher's backbone, or --backbone)"
        )
    overrides = held.get("timm_overrides") or {}
    if isinstance(chosen, str) and overrides:  # an explicit BackboneSpec is kept as given
        spec = dataclasses.replace(spec, timm_overrides=dict(overrides))
    return spec, held.get("pos_resize")


def _build_backbones(
    config: ExportConfig,
    spec: BackboneSpec,
    pos_resize: str | None,
    views: dict[str, ViewSpec],
    channels: int,
) -> dict[str, object]:
    """One ``Backbone`` per view kind (source first), in eval mode.

    Real weights: both views load the file; a file without the 1x1 projection gets
    ``seeded_projection(spec, config.seed)`` in both (what ``omama features --seed`` computes
    a cache with). Random init: the registry's one random initialisation for ``config.seed``
    and ``config.weight_profile`` (``build_random_backbone``, as ``omama features
    --random-init --seed --weight-profile`` builds it), at each view's size.
    """
    from omama_train.models.backbones import (
        build_backbone,
        build_random_backbone,
        random_backbone_state,
    )

    state = (
        random_backbone_state(spec, config.seed, config.weight_profile)
        if config.random_init
        else None
    )
    backbones: dict[str, object] = {}
    for view in views.values():
        if config.random_init:
            model = build_random_backbone(
                spec,
                view.image_size,
                config.seed,
                pos_resize,
                state=state,  # type: ignore[arg-type]
                profile=config.weight_profile,
            )
        else:
            model = build_backbone(
                spec,
                view.image_size,
                config.backbone_weights,
                pos_resize=pos_resize,  # type: ignore[arg-type]
                projection_seed=config.seed,
            )
        if model.out_channels != channels:
            raise OmamaError(
                f"backbone {spec.name} gives {model.out_channels} channels, the matcher expects "
                f"{channels}"
            )
        backbones[view.kind] = model.eval()
    return backbones


def _backbone_record(config: ExportConfig, spec: BackboneSpec, model) -> BackboneRecord:
    """The manifest's ``backbone`` record (``model``: the source view's ``Backbone``)."""
    from omama_train.models.backbones import FEATURE_DIM, backbone_file_info

    weights = _weights_record(None if config.random_init else config.backbone_weights,
                              config.seed, config.weight_profile)  # fmt: skip
    description = spec.description
    if config.random_init:
        description = f"{spec.description}; {random_weights_label(config)}"
    else:
        # A file written by `omama features --random-init` (or a fine-tuning run) says what
        # it holds: carry that over, so a random-weight backbone is never taken for a real one.
        info = backbone_file_info(config.backbone_weights)
        if info.get("random_init"):
            weights = WeightsRecord(
                random=False,
                file=weights.file,
                sha256=weights.sha256,
                from_random_init=True,
                seed=info.get("seed"),
                profile=str(info.get("profile", "plain")),
            )
    projection, projection_seed = None, None
    if spec.embed_dim != FEATURE_DIM:
        if config.random_init:
            projection = "1x1 Conv2d to 768 (random init)"
        elif model.projection_source == "seeded":
            projection = (
                f"seeded 1x1 Conv2d to 768 (seed {model.projection_seed}; not in the weights file)"
            )
            projection_seed = model.projection_seed
        else:
            projection = "from the weights file"
    return BackboneRecord(
        name=spec.name,
        family=spec.family,
        embed_dim=spec.embed_dim,
        out_channels=FEATURE_DIM,
        weights=weights,
        description=description,
        projection=projection,
        projection_seed=projection_seed,
        pos_resize=model.pos_resize,
        architecture_overrides=dict(spec.timm_overrides),
    )


def torch_reference(
    models: ExportModels,
    model: str,
    matcher_form: str,
    io: tuple[list[TensorSpec], list[TensorSpec]],
) -> Session:
    """The torch backend's session of ``model`` (``backbone_<kind>``, ``matcher`` of input
    ``matcher_form``, or ``fastsam``): a ``TorchSession`` of the module of
    ``omama_train.models.artifact_modules`` the file is traced from, with the file's ``io``
    (inputs, outputs)."""
    from omama_train.models.artifact_modules import BackboneOnnx, FastSAMRaw, matcher_module
    from omama_train.torch_backend import TorchSession

    if model == "fastsam":
        from export.fastsam import load_fastsam_network

        module = FastSAMRaw(load_fastsam_network(models.fastsam_weights))
    elif model == "matcher":
        src, dst = models.views["src"], models.views["dst"]
        module = matcher_module(models.matcher, matcher_form, src.image_size, dst.image_size)
    else:
        module = BackboneOnnx(models.backbones[model.removeprefix("backbone_")])
    inputs, outputs = io
    return TorchSession(module, inputs, outputs, device="cpu", name=model)
