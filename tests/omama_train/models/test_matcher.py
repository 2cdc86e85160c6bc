"""The O-MaMa matcher: official state_dict layout, forward semantics, batching, checkpoints."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from omama_train.models.matcher import (
    OMaMaMatcher,
    load_matcher,
    matcher_loss,
    matcher_metadata,
    predict,
    save_matcher,
)
from runtime.errors import OmamaError

torch.set_num_threads(1)

STATE_DICT_LISTING = Path(__file__).resolve().parents[2] / "fixtures" / "matcher_state_dict.txt"
OFFICIAL_PARAMETERS = 11_812_994
DIM, HEADS = 32, 4
SRC_GRID, DST_GRID = (3, 5), (4, 4)


def official_listing() -> dict[str, dict[str, tuple[int, ...]]]:
    """Keys and shapes per direction from ``matcher_state_dict.txt``."""
    listing: dict[str, dict[str, tuple[int, ...]]] = {}
    current = None
    for line in STATE_DICT_LISTING.read_text().splitlines():
        header = re.match(r"# direction (\w+)", line)
        if header:
            current = listing.setdefault(header.group(1), {})
        elif line and not line.startswith("#") and current is not None:
            key, shape = line.split("\t")
            current[key] = tuple(int(v) for v in re.findall(r"\d+", shape))
    return listing


def small_matcher(seed: int = 0, attention: str = "auto") -> OMaMaMatcher:
    torch.manual_seed(seed)
    return OMaMaMatcher(
        "exo2ego", src_grid=SRC_GRID, dst_grid=DST_GRID, dim=DIM, heads=HEADS, attention=attention
    )


def small_inputs(batch: int, count: int, seed: int = 1, feats_batch: int | None = None):
    g = torch.Generator().manual_seed(seed)
    fb = batch if feats_batch is None else feats_batch
    return (
        torch.randn(batch, 1, 2 * DIM, generator=g),
        torch.randn(batch, count, 2 * DIM, generator=g),
        torch.randn(fb, DIM, *SRC_GRID, generator=g),
        torch.randn(fb, DIM, *DST_GRID, generator=g),
    )


def reference_similarities(model, src_desc, dst_desc, src_feats, dst_feats):
    """Section 6 spelled out one object, one candidate and one head at a time."""
    attn_block = model.CROSS_context_attn
    heads, head_dim = model.heads, model.dim // model.heads

    def cross(query, tokens):  # (D,), (T, D) -> (D,)
        q = attn_block.query(attn_block.norm_input(query))
        k = attn_block.key(attn_block.norm_input(tokens))
        v = attn_block.value(attn_block.norm_input(tokens))
        parts = []
        for h in range(heads):
            sl = slice(h * head_dim, (h + 1) * head_dim)
            scores = (k[:, sl] @ q[sl]) / math.sqrt(head_dim)
            parts.append(torch.softmax(scores, dim=0) @ v[:, sl])
        y = attn_block.project(torch.cat(parts))
        return y + attn_block.mlp(attn_block.norm_output(y))

    out = torch.zeros(src_desc.shape[0], dst_desc.shape[1])
    for b in range(src_desc.shape[0]):
        dst_tokens = dst_feats[b].flatten(1).T + model.pos_embed_T[0]
        src_tokens = src_feats[b].flatten(1).T + model.pos_embed_Q[0]
        s = src_desc[b, 0]
        src_vec = model.mlp(torch.cat([cross(s[: model.dim], dst_tokens), s]))
        for n in range(dst_desc.shape[1]):
            d = dst_desc[b, n]
            dst_vec = model.mlp(torch.cat([cross(d[: model.dim], src_tokens), d]))
            out[b, n] = F.cosine_similarity(src_vec, dst_vec, dim=0)
    return out


def test_official_config_has_the_published_size_and_exact_keys():
    listing = official_listing()
    for direction, expected in listing.items():
        model = OMaMaMatcher(direction)
        assert model.src_grid == ({"exo2ego": (38, 68), "ego2exo": (50, 50)}[direction])
        assert sum(p.numel() for p in model.parameters()) == OFFICIAL_PARAMETERS
        got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        assert got == expected


@pytest.mark.parametrize("attention", ["standard", "folded", "auto"])
def test_forward_matches_section_6_written_out(attention):
    model = small_matcher(attention=attention).eval()
    inputs = small_inputs(batch=2, count=3)
    with torch.no_grad():
        got = model(*inputs)
        expected = reference_similarities(model, *inputs)
    assert got.shape == (2, 3)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert got.abs().max() <= 1.0 + 1e-6


@pytest.mark.parametrize("attention", ["standard", "folded"])
@pytest.mark.parametrize(
    "shared",
    ["frame", "frame_and_candidates", "destination_only", "nothing"],
)
def test_batched_objects_equal_one_at_a_time(shared, attention):
    """B objects against one destination frame give the same numbers as B single calls."""
    model = small_matcher(attention=attention).eval()
    batch, count = 4, 5
    src_desc, dst_desc, src_feats, dst_feats = small_inputs(batch, count, feats_batch=1)
    if shared == "frame":  # same source and destination frame, own candidates
        pass
    elif shared == "frame_and_candidates":  # the inference case: everything shared
        dst_desc = dst_desc[:1]
    elif shared == "destination_only":  # objects from different source frames
        src_feats = torch.randn(batch, DIM, *SRC_GRID)
        dst_desc = dst_desc[:1]
    else:
        src_feats = torch.randn(batch, DIM, *SRC_GRID)
        dst_feats = torch.randn(batch, DIM, *DST_GRID)
    with torch.no_grad():
        batched = model(src_desc, dst_desc, src_feats, dst_feats)
        singles = torch.cat(
            [
                model(
                    src_desc[b : b + 1],
                    dst_desc[min(b, dst_desc.shape[0] - 1)][None],
                    src_feats[min(b, src_feats.shape[0] - 1)][None],
                    dst_feats[min(b, dst_feats.shape[0] - 1)][None],
                )
                for b in range(batch)
            ]
        )
    assert batched.shape == (batch, count)
    torch.testing.assert_close(batched, singles, atol=1e-5, rtol=1e-5)


def test_auto_attention_picks_the_cheaper_order():
    attn = OMaMaMatcher("exo2ego").CROSS_context_attn
    assert attn.use_folded(queries_per_map=33, maps=1, outputs=1, tokens=2500)
    assert attn.use_folded(queries_per_map=128, maps=1, outputs=1, tokens=2584)
    assert not attn.use_folded(queries_per_map=8 * 128, maps=1, outputs=1, tokens=2584)


def test_wrong_feature_grid_and_batch_are_reported():
    model = small_matcher()
    src_desc, dst_desc, src_feats, dst_feats = small_inputs(2, 3)
    with pytest.raises(OmamaError, match="destination features"):
        model(src_desc, dst_desc, src_feats, torch.randn(2, DIM, 5, 5))
    with pytest.raises(ValueError, match="dst_desc has batch 3"):
        model(src_desc, torch.randn(3, 3, 2 * DIM), src_feats, dst_feats)


def test_loss_is_visibility_weighted_cross_entropy():
    sims = torch.tensor([[0.9, 0.1, -0.2], [0.3, 0.8, 0.0], [0.2, 0.2, 0.9]])
    positive = torch.tensor([0, 2, 1])
    visible = torch.tensor([1.0, 1.0, 0.0])
    logits = sims / 0.07
    per_object = torch.logsumexp(logits, dim=1) - logits[torch.arange(3), positive]
    expected = (per_object[0] + per_object[1]) / 3  # the invisible object adds 0
    torch.testing.assert_close(matcher_loss(sims, positive, visible), expected)
    assert matcher_loss(sims, positive, torch.zeros(3)).item() == 0.0


def test_predict_best_confidence_and_top5():
    sims = torch.tensor(
        [[0.1, 0.7, -0.3, 0.5, 0.2, 0.6, 0.0], [0.4, -0.1, 0.0, 0.0, 0.0, 0.0, 0.0]]
    )
    best, confidence, top = predict(sims)
    assert best.tolist() == [1, 0]
    torch.testing.assert_close(confidence, torch.sigmoid(torch.tensor([0.7, 0.4])))
    assert top.shape == (2, 5)
    assert top[0].tolist() == [1, 5, 3, 4, 0]
    _, _, top_few = predict(sims[:, :3])
    assert top_few.shape == (2, 3)


def official_like_state_dict(direction: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return {
        k: torch.randn(shape, generator=g) * 0.02
        for k, shape in official_listing()[direction].items()
    }


@pytest.mark.parametrize("direction", ["exo2ego", "ego2exo"])
def test_official_pt_loads_strictly_with_inferred_direction(tmp_path, direction):
    state = official_like_state_dict(direction)
    path = tmp_path / "official.pt"
    torch.save(state, path)
    model = load_matcher(path)
    assert model.direction == direction
    assert not model.training
    loaded = model.state_dict()
    assert set(loaded) == set(state)
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key
    torch.save({"state_dict": state}, tmp_path / "wrapped.pth")
    assert load_matcher(tmp_path / "wrapped.pth", direction=direction).direction == direction
    other = "ego2exo" if direction == "exo2ego" else "exo2ego"
    with pytest.raises(OmamaError, match=f"is a {direction} matcher"):
        load_matcher(path, direction=other)


def test_wrong_keys_and_shapes_are_listed(tmp_path):
    state = official_like_state_dict("exo2ego")
    del state["mlp.mlp.4.bias"]
    state["mlp_visible.0.weight"] = torch.zeros(768, 1535)
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pt"
    torch.save(state, path)
    with pytest.raises(OmamaError) as err:
        load_matcher(path)
    message = str(err.value)
    assert "missing keys: mlp.mlp.4.bias" in message
    assert "unexpected keys: extra.weight" in message
    assert "mlp_visible.0.weight (768, 1535) != (768, 1536)" in message


def test_unknown_grids_in_pt_need_metadata(tmp_path):
    torch.save(small_matcher().state_dict(), tmp_path / "small.pt")
    with pytest.raises(OmamaError, match="not the official 38x68 / 50x50"):
        load_matcher(tmp_path / "small.pt")
    with pytest.raises(OmamaError, match="not found"):
        load_matcher(tmp_path / "missing.pt")


def test_safetensors_round_trip_keeps_weights_and_metadata(tmp_path):
    model = small_matcher(seed=5)
    model.backbone = "dinov3_vits16plus"
    path = save_matcher(model, tmp_path / "m.safetensors", extra_metadata={"epoch": 3})
    metadata = matcher_metadata(path)
    assert metadata["direction"] == "exo2ego"
    assert (metadata["src_grid"], metadata["dst_grid"]) == ("3x5", "4x4")
    assert metadata["backbone"] == "dinov3_vits16plus" and metadata["epoch"] == "3"
    assert metadata["omama_version"]
    loaded = load_matcher(path)
    assert (loaded.src_grid, loaded.dst_grid, loaded.dim, loaded.heads) == (
        SRC_GRID,
        DST_GRID,
        DIM,
        HEADS,
    )
    assert loaded.backbone == "dinov3_vits16plus"
    inputs = small_inputs(2, 3)
    with torch.no_grad():
        torch.testing.assert_close(loaded(*inputs), model.eval()(*inputs), atol=0, rtol=0)
    with pytest.raises(OmamaError, match="is a exo2ego matcher, not ego2exo"):
        load_matcher(path, direction="ego2exo")
    with pytest.raises(ValueError, match="may not override direction"):
        save_matcher(model, tmp_path / "x.safetensors", extra_metadata={"direction": "ego2exo"})


def test_gradients_reach_every_trained_parameter():
    model = small_matcher().train()
    src_desc, dst_desc, src_feats, dst_feats = small_inputs(3, 4, feats_batch=1)
    sims = model(src_desc, dst_desc, src_feats, dst_feats)
    matcher_loss(sims, torch.tensor([0, 1, 2]), torch.ones(3)).backward()
    without_grad = [
        name for name, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)
    ]
    assert all(name.startswith("mlp_visible.") for name in without_grad)
    assert any(name.startswith("mlp_visible.") for name in without_grad)
