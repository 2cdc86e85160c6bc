"""The ``outlier`` random-weight profile: the planted phenomena show in the torch model's
activations, the ``plain`` profile is today's initialisation bit for bit.

Thresholds come from the sources in ``omama_train/models/outliers.py``: a massive activation
is > 100 and >= 1000x the median magnitude of the hidden state (Sun et al. 2024); a
high-norm token is about 10x the typical token norm (Darcet et al. 2024); LayerNorm gains
put outliers into every token's Linear inputs (Wei et al. 2022).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from omama_train.features.weights import weights_sha256
from omama_train.models.backbones import (
    BACKBONES,
    build_random_backbone,
    random_backbone_state,
)
from omama_train.models.outliers import LN_GAIN, MASSIVE_VALUE, outlier_plan
from runtime.errors import OmamaError

torch.set_num_threads(1)

# Six blocks: the massive activations start at block 6 // 6 = 1, so block 0 shows "before".
VITS6 = dataclasses.replace(BACKBONES["dinov2_vits14_reg"], timm_overrides={"depth": 6})
VITS2 = dataclasses.replace(BACKBONES["dinov2_vits14_reg"], timm_overrides={"depth": 2})
# weights_sha256 of random_backbone_state(VITS2, 7) as it was before profiles existed
# (timm 1.0.31, torch 2.14): feature caches, exports and golden files depend on it.
PLAIN_VITS2_SEED7 = "9f3a9848fc0b6f2e8fbfcc9a9f76e7b35b8bf79a1e50d057f550e196cd926c73"


def _activations(spec, seed: int, size=(168, 168)):
    """(plan, residual stream after each block (T, C), norm2 outputs (T, C), features)."""
    state = random_backbone_state(spec, seed, profile="outlier")
    plan = outlier_plan(state, spec.family, seed)
    model = build_random_backbone(spec, size, seed, state=state)
    blocks, norms = [], []
    for block in model.trunk.blocks:
        block.register_forward_hook(lambda m, i, o: blocks.append(o[0].detach()))
        block.norm2.register_forward_hook(lambda m, i, o: norms.append(o[0].detach()))
    image = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        feats = model(image)
    return plan, blocks, norms, feats


def test_plain_profile_is_todays_initialisation_bit_for_bit():
    state = random_backbone_state(VITS2, 7)
    assert weights_sha256(state) == PLAIN_VITS2_SEED7
    plain = random_backbone_state(VITS2, 7, profile="plain")
    assert all(torch.equal(plain[k], state[k]) for k in state)


def test_outlier_profile_plants_massive_activations_and_a_high_norm_token():
    plan, blocks, norms, feats = _activations(VITS6, seed=0)
    assert plan.start == 1 and len(plan.channels) == 2 and 1 <= plan.carrier <= 4  # a register
    channels = list(plan.channels)
    for index, stream in enumerate(blocks):
        magnitude = stream.abs()
        median = magnitude.median()
        peak = magnitude[:, channels].max(dim=0).values  # per planted channel
        norms_of_tokens = stream.norm(dim=-1)
        if index < plan.start:  # before the start block: no massive activation yet
            assert peak.max() < 100
            continue
        # Sun et al.'s definition, in both planted channels, at the carrier token only.
        assert (peak > 100).all() and (peak >= 1000 * median).all(), (index, peak, median)
        assert (magnitude[:, channels].argmax(dim=0) == plan.carrier).all()
        assert peak.min() == pytest.approx(MASSIVE_VALUE, rel=0.05)
        # Darcet et al.: one token's norm far above the rest (>= 10x the median token norm).
        assert norms_of_tokens.argmax() == plan.carrier
        assert norms_of_tokens.max() >= 10 * norms_of_tokens.median()
        others = torch.cat([norms_of_tokens[: plan.carrier], norms_of_tokens[plan.carrier + 1 :]])
        assert others.max() < 3 * norms_of_tokens.median()  # one high-norm token, not many
    # Wei et al.: the LayerNorm gains put the outlier channels into every token's Linear
    # inputs, at >= 10x any other channel (the carrier excluded: its row is the massive one).
    later = norms[plan.start + 1]
    rest = torch.cat([later[: plan.carrier], later[plan.carrier + 1 :]]).abs()
    other_channels = [c for c in range(rest.shape[1]) if c not in channels]
    assert rest[:, channels].max() >= 10 * rest[:, other_channels].max()
    assert rest[:, channels].max() <= 5 * LN_GAIN  # ~ "close to 100", not beyond
    # The output features stay finite, of the plain scale, and differ between tokens.
    assert torch.isfinite(feats).all() and feats.abs().max() < 10
    unit = torch.nn.functional.normalize(feats[0].flatten(1), dim=0)
    assert (unit.T @ unit).mean() < 0.5


def test_outlier_profile_is_seeded_and_leaves_the_global_rng_alone():
    before = torch.random.get_rng_state()
    first = random_backbone_state(VITS2, 3, profile="outlier")
    assert torch.equal(torch.random.get_rng_state(), before)
    again = random_backbone_state(VITS2, 3, profile="outlier")
    assert all(torch.equal(first[k], again[k]) for k in first)
    plain = random_backbone_state(VITS2, 3)
    changed = {k for k in first if not torch.equal(first[k], plain[k])}
    # Planted in the weights: LayerScale, LayerNorm gains, the register, one MLP neuron.
    assert "trunk.reg_token" in changed and "trunk.blocks.0.mlp.fc2.weight" in changed
    assert "trunk.blocks.1.ls2.gamma" in changed and "trunk.norm.weight" not in changed
    other = outlier_plan(random_backbone_state(VITS2, 4, profile="outlier"), "dinov2", 4)
    assert other != outlier_plan(first, "dinov2", 3)


def test_a_model_without_registers_carries_the_outliers_in_cls():
    spec = dataclasses.replace(BACKBONES["dinov2_vits14"], timm_overrides={"depth": 2})
    plan, blocks, _, feats = _activations(spec, seed=1, size=(112, 112))
    assert plan.carrier == 0
    assert blocks[-1].norm(dim=-1).argmax() == 0 and torch.isfinite(feats).all()


def test_dinov3_gets_the_profile_too():
    spec = dataclasses.replace(BACKBONES["dinov3_vits16"], timm_overrides={"depth": 2})
    plan, blocks, _, feats = _activations(spec, seed=0, size=(64, 64))
    peak = blocks[-1].abs()[:, list(plan.channels)].max()
    assert peak >= 1000 * blocks[-1].abs().median() and torch.isfinite(feats).all()


def test_a_swiglu_backbone_gets_the_register_neuron_through_its_gate():
    # dinov3_vits16plus's MLP is SwiGLU (fc1_g, fc1_x): its neuron is planted through both.
    spec = dataclasses.replace(BACKBONES["dinov3_vits16plus"], timm_overrides={"depth": 2})
    plan, blocks, _, feats = _activations(spec, seed=0, size=(64, 64))
    assert plan.carrier >= 1  # a register
    for stream in blocks[plan.start :]:
        peak = stream.abs()[:, list(plan.channels)]
        assert (peak.argmax(dim=0) == plan.carrier).all()
        assert peak.max(dim=0).values.min() == pytest.approx(MASSIVE_VALUE, rel=0.05)
    assert torch.isfinite(feats).all()


def test_profiles_that_cannot_be_planted_are_refused():
    with pytest.raises(OmamaError, match="resnet backbone has neither"):
        random_backbone_state("resnet50_dino", 0, profile="outlier")
    with pytest.raises(OmamaError, match="weight profile must be one of plain, outlier"):
        random_backbone_state(VITS2, 0, profile="spiky")


def test_every_builder_of_a_recorded_outlier_state_says_outlier(monkeypatch):
    # The features cache, the export and the torch backend hand build_random_backbone the
    # state they computed; its messages ("random init (seed 0, ... profile)") must name it.
    from types import SimpleNamespace

    from export.models import _build_backbones
    from omama_train import torch_backend
    from omama_train.features.weights import BackboneWeights
    from omama_train.models import backbones
    from runtime.manifest import BackboneRecord, ViewSpec, WeightsRecord

    profiles = []
    real = backbones.build_random_backbone

    def spy(*args, **kwargs):
        profiles.append(kwargs.get("profile", "plain"))
        return real(*args, **kwargs)

    monkeypatch.setattr(backbones, "build_random_backbone", spy)
    views = {"src": ViewSpec("exo", (28, 28), (2, 2)), "dst": ViewSpec("ego", (28, 28), (2, 2))}
    BackboneWeights.resolve(VITS2, random_init=True, profile="outlier").build((28, 28))
    config = SimpleNamespace(random_init=True, seed=0, weight_profile="outlier")
    _build_backbones(config, VITS2, None, views, 768)  # type: ignore[arg-type]
    weights = WeightsRecord(random=True, seed=0, profile="outlier")
    record = BackboneRecord("dinov2_vits14_reg", "dinov2", 384, 768, weights,
                            architecture_overrides={"depth": 2})  # fmt: skip
    torch_backend._backbones(SimpleNamespace(backbone=record, views=views), ())
    assert profiles == ["outlier"] * 5
