"""The backbone and weights a cache is computed with, and their sha256.

Random initialisation (tests, demos, benchmarks; no checkpoint needed): the backbone is
built at its pretraining grid (37 x 37 tokens) under ``torch.manual_seed(seed)``, and that
state is loaded into each view's model through the regular checkpoint loader, so both views
share one set of weights with the official positional interpolation; ``profile``
(``plain`` | ``outlier``, ``omama_train.models.outliers``) says which random weights. That
state is also
written to ``CACHE/backbone.safetensors`` (recorded in ``meta.json`` with its sha256; a
resumed run checks it), the file to export the cache's backbone with (``omama export
--backbone-weights``); read back by ``--backbone-weights`` it gives the same weights sha256, so the
cache accepts it as its own.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from omama_train.features.meta import BACKBONE_FILE, short_sha
from runtime.errors import OmamaError

if TYPE_CHECKING:
    import torch

    from omama_train.models.backbones import Backbone, BackboneSpec


def weights_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 over a state dict: for each key in sorted order, its name, dtype, shape, bytes."""
    import torch

    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(memoryview(tensor.reshape(-1).view(torch.uint8).numpy()))
    return digest.hexdigest()


@dataclass
class BackboneWeights:
    """One backbone and one set of weights, buildable at any image size.

    ``resolve`` reads (or, with ``random_init``, creates) the weights once and hashes them;
    ``build(image_size_hw)`` returns a ``Backbone`` for that size holding exactly those
    weights (the positional table interpolated by the regular loader). ``projection_seeded``:
    the file has no 1x1 projection to 768, so ``seeded_projection(spec, seed)`` is used.
    ``profile``: the random weights' profile (``plain`` for a weights file).
    """

    spec: BackboneSpec
    pos_resize: str | None
    file: Path | None
    random_init: bool
    seed: int
    sha256: str
    projection_seeded: bool = False
    _state: dict[str, torch.Tensor] | None = field(default=None, repr=False)
    profile: str = "plain"

    @classmethod
    def resolve(
        cls,
        backbone: str | BackboneSpec,
        backbone_weights: str | Path | None = None,
        *,
        random_init: bool = False,
        seed: int = 0,
        pos_resize: str | None = None,
        profile: str = "plain",
    ) -> BackboneWeights:
        from omama_train.models.backbone_checkpoints import read_state_dict
        from omama_train.models.backbones import (
            POS_RESIZES,
            check_profile,
            get_spec,
            random_backbone_state,
            seeded_projection,
        )

        spec = backbone if not isinstance(backbone, str) else get_spec(backbone)
        if pos_resize is not None and pos_resize not in POS_RESIZES:
            raise OmamaError(
                f"--pos-resize must be one of {', '.join(POS_RESIZES)}, got {pos_resize!r}"
            )
        if random_init == (backbone_weights is not None):
            raise OmamaError(
                "pass either --backbone-weights PATH or --random-init (not both, not neither)"
            )
        if check_profile(profile) != "plain" and not random_init:
            raise OmamaError(
                f"--weight-profile {profile} shapes the random weights of --random-init; a "
                "weights file is what it is: add --random-init or drop --weight-profile"
            )
        if random_init:
            state = random_backbone_state(spec, seed, profile)
            sha = weights_sha256(state)
            return cls(spec, pos_resize, None, True, seed, sha, False, state, profile)
        path = Path(backbone_weights)  # type: ignore[arg-type]
        state = read_state_dict(path)
        proj = {} if any(k.startswith("proj.") for k in state) else seeded_projection(spec, seed)
        # The hash covers the projection the features are computed with, file or seeded.
        state = {**state, **{f"omama.{k}": v for k, v in proj.items()}}
        return cls(spec, pos_resize, path, False, seed, weights_sha256(state), bool(proj))

    @property
    def state(self) -> dict[str, torch.Tensor] | None:
        """The whole ``Backbone`` state of a random initialisation (``None`` for a file)."""
        return self._state

    def build(self, image_size_hw: tuple[int, int]) -> Backbone:
        """A ``Backbone`` in eval mode for images of exactly ``image_size_hw`` = (H, W) px."""
        from omama_train.models.backbones import build_backbone, build_random_backbone

        if self._state is None:
            return build_backbone(
                self.spec, image_size_hw, self.file, self.pos_resize, projection_seed=self.seed
            )
        return build_random_backbone(
            self.spec,
            image_size_hw,
            self.seed,
            self.pos_resize,
            state=self._state,
            profile=self.profile,
        )

    def describe(self) -> dict:
        """The ``weights`` entry of ``meta.json``."""
        return {
            "sha256": self.sha256,
            "random_init": self.random_init,
            "seed": self.seed if self.random_init or self.projection_seeded else None,
            "file": None if self.file is None else str(self.file),
            "profile": self.profile,
        }


def backbone_identity(spec: BackboneSpec, pos_resize: str | None) -> dict:
    """The ``backbone`` entry of ``meta.json``: what, besides weights, shapes the features."""
    from omama_train.models.backbones import FEATURE_DIM

    resolved = (pos_resize or spec.pos_resize) if spec.family == "dinov2" else None
    return {
        "name": spec.name,
        "family": spec.family,
        "timm_name": spec.timm_name,
        "timm_overrides": dict(spec.timm_overrides),
        "patch_size": spec.patch_size,
        "embed_dim": spec.embed_dim,
        "out_channels": FEATURE_DIM,
        "pos_resize": resolved,
    }


def write_backbone_file(out: Path, bw: BackboneWeights) -> dict:
    """``CACHE/backbone.safetensors``: the exact weights of a ``--random-init`` cache.

    The whole ``Backbone`` state (trunk at the 37 x 37 pretraining grid, projection), so
    ``build_backbone(spec, any_size, file)`` rebuilds what computed the features and
    ``omama export --backbone-weights`` exports it; ``omama features --backbone-weights`` on
    it gives the cache's weights sha256. Written atomically; a file already there is kept when it
    holds these weights and refused otherwise. Returns ``{"name", "sha256"}`` (sha256 of
    the file's bytes, as an export manifest records it).
    """
    from omama_train.models.backbone_checkpoints import read_state_dict
    from omama_train.models.backbones import save_backbone_weights
    from runtime.manifest import sha256_file

    if bw.state is None:
        raise OmamaError("only --random-init weights are written into the cache")
    path = Path(out) / BACKBONE_FILE
    if path.exists():
        held = weights_sha256(read_state_dict(path))
        if held != bw.sha256:
            raise OmamaError(
                f"{path} holds other weights (sha256 {short_sha(held)}...) than this cache "
                f"({short_sha(bw.sha256)}...): delete it and run again to rewrite it"
            )
    else:
        info = {
            "format": "omama-backbone",
            "backbone": backbone_identity(bw.spec, bw.pos_resize),
            "random_init": True,
            "seed": bw.seed,
            "profile": bw.profile,
            "weights_sha256": bw.sha256,
        }
        save_backbone_weights(bw.state, path, info)
    return {"name": BACKBONE_FILE, "sha256": sha256_file(path)}
