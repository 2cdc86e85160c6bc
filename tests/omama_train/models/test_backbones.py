"""Backbones: official DINOv2 parity (positional interpolation, key formats), other families.

The "official implementation" cannot be downloaded, so ``official_dinov2_forward`` below
re-implements the official DINOv2 ``forward_features`` with plain functional ops on a state
dict in the official key format (torch-hub ``*_pretrain.pth``), interpolating the 37x37
positional table at run time exactly as ``DinoVisionTransformer.interpolate_pos_encoding``.
Weights are random; ViT-S with 2 blocks keeps the 700x700 / 532x952 cases fast (every block
is the same code, so depth adds nothing to the check).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from omama_train.models.backbones import (
    BACKBONES,
    FEATURE_DIM,
    backbone_names,
    build_backbone,
    load_backbone_weights,
    resize_pos_embed,
)
from runtime.errors import OmamaError

torch.set_num_threads(1)

DEPTH = 2
SMALL = dataclasses.replace(
    BACKBONES["dinov2_vits14_reg"], timm_overrides={"depth": DEPTH}, name="dinov2_vits14_reg"
)
SMALL_NOREG = dataclasses.replace(BACKBONES["dinov2_vits14"], timm_overrides={"depth": DEPTH})


# ----------------------------------------------------------------- official format + forward


def official_dinov2_state_dict(
    dim: int = 384, depth: int = DEPTH, n_reg: int = 4, swiglu: bool = False, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Random weights with the key names and shapes of ``dinov2_vit*14[_reg4]_pretrain.pth``."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, std=1.0, mean=0.0):
        return torch.randn(*shape, generator=g) * std + mean

    sd = {
        "cls_token": rnd(1, 1, dim),
        "pos_embed": rnd(1, 1 + 37 * 37, dim, std=0.5),
        "mask_token": rnd(1, dim),
        "patch_embed.proj.weight": rnd(dim, 3, 14, 14, std=0.02),
        "patch_embed.proj.bias": rnd(dim, std=0.1),
        "norm.weight": rnd(dim, std=0.1, mean=1.0),
        "norm.bias": rnd(dim, std=0.1),
    }
    if n_reg:
        sd["register_tokens"] = rnd(1, n_reg, dim)
    hidden = 4 * dim
    for i in range(depth):
        b = f"blocks.{i}."
        sd |= {
            b + "norm1.weight": rnd(dim, std=0.1, mean=1.0),
            b + "norm1.bias": rnd(dim, std=0.1),
            b + "attn.qkv.weight": rnd(3 * dim, dim, std=0.06),
            b + "attn.qkv.bias": rnd(3 * dim, std=0.1),
            b + "attn.proj.weight": rnd(dim, dim, std=0.05),
            b + "attn.proj.bias": rnd(dim, std=0.1),
            b + "ls1.gamma": rnd(dim, std=0.2, mean=0.5),
            b + "norm2.weight": rnd(dim, std=0.1, mean=1.0),
            b + "norm2.bias": rnd(dim, std=0.1),
            b + "ls2.gamma": rnd(dim, std=0.2, mean=0.5),
        }
        if swiglu:
            swi = (int(hidden * 2 / 3) + 7) // 8 * 8
            sd |= {
                b + "mlp.w12.weight": rnd(2 * swi, dim, std=0.05),
                b + "mlp.w12.bias": rnd(2 * swi, std=0.1),
                b + "mlp.w3.weight": rnd(dim, swi, std=0.05),
                b + "mlp.w3.bias": rnd(dim, std=0.1),
            }
        else:
            sd |= {
                b + "mlp.fc1.weight": rnd(hidden, dim, std=0.05),
                b + "mlp.fc1.bias": rnd(hidden, std=0.1),
                b + "mlp.fc2.weight": rnd(dim, hidden, std=0.05),
                b + "mlp.fc2.bias": rnd(dim, std=0.1),
            }
    return sd


def official_dinov2_forward(
    sd: dict[str, torch.Tensor],
    images: torch.Tensor,
    num_heads: int,
    interpolate_offset: float,
    interpolate_antialias: bool,
) -> torch.Tensor:
    """``x_norm_patchtokens`` of the official DINOv2 reshaped to (B, C, h, w)."""
    patch = sd["patch_embed.proj.weight"].shape[-1]
    n_reg = sd["register_tokens"].shape[1] if "register_tokens" in sd else 0
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    x = F.conv2d(images, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=patch)
    b, dim, h0, w0 = x.shape
    x = torch.cat([sd["cls_token"].expand(b, -1, -1), x.flatten(2).transpose(1, 2)], dim=1)
    # interpolate_pos_encoding
    pos = sd["pos_embed"].float()
    n = pos.shape[1] - 1
    if h0 * w0 == n and images.shape[-1] == images.shape[-2]:
        pos_now = pos
    else:
        m = int(math.sqrt(n))
        if interpolate_offset:
            kwargs = {
                "scale_factor": (
                    float(h0 + interpolate_offset) / m,
                    float(w0 + interpolate_offset) / m,
                )
            }
        else:
            kwargs = {"size": (h0, w0)}
        patch_pos = F.interpolate(
            pos[:, 1:].reshape(1, m, m, dim).permute(0, 3, 1, 2),
            mode="bicubic",
            antialias=interpolate_antialias,
            **kwargs,
        )
        assert patch_pos.shape[-2:] == (h0, w0)
        pos_now = torch.cat([pos[:, :1], patch_pos.permute(0, 2, 3, 1).reshape(1, -1, dim)], 1)
    x = x + pos_now
    if n_reg:
        x = torch.cat([x[:, :1], sd["register_tokens"].expand(b, -1, -1), x[:, 1:]], dim=1)
    t = x.shape[1]
    head_dim = dim // num_heads
    for i in range(depth):
        p = f"blocks.{i}."
        y = F.layer_norm(x, (dim,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], eps=1e-6)
        qkv = F.linear(y, sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"])
        q, k, v = qkv.reshape(b, t, 3, num_heads, head_dim).permute(2, 0, 3, 1, 4)
        attn = (q * head_dim**-0.5) @ k.transpose(-2, -1)
        a = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, t, dim)
        a = F.linear(a, sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
        x = x + sd[p + "ls1.gamma"] * a
        y = F.layer_norm(x, (dim,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], eps=1e-6)
        if p + "mlp.w12.weight" in sd:  # ViT-g SwiGLU
            x1, x2 = F.linear(y, sd[p + "mlp.w12.weight"], sd[p + "mlp.w12.bias"]).chunk(2, -1)
            m_out = F.linear(F.silu(x1) * x2, sd[p + "mlp.w3.weight"], sd[p + "mlp.w3.bias"])
        else:
            hid = F.gelu(F.linear(y, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"]))
            m_out = F.linear(hid, sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])
        x = x + sd[p + "ls2.gamma"] * m_out
    x = F.layer_norm(x, (dim,), sd["norm.weight"], sd["norm.bias"], eps=1e-6)
    return x[:, 1 + n_reg :].reshape(b, h0, w0, dim).permute(0, 3, 1, 2)


HUB_FLAGS = {  # (interpolate_offset, interpolate_antialias) per pos_resize
    "bicubic_offset": (0.1, False),
    "bicubic_antialias": (0.0, True),
}


@pytest.fixture(scope="module")
def official_sd():
    return official_dinov2_state_dict()


@pytest.fixture(scope="module")
def official_pth(tmp_path_factory, official_sd):
    path = tmp_path_factory.mktemp("w") / "dinov2_vits14_reg4_pretrain.pth"
    torch.save(official_sd, path)
    return path


def _trunk_features(model, images):
    """Features before the projection to 768 (the ViT-S trunk is 384 wide)."""
    with torch.no_grad():
        tokens = model.trunk.forward_features(images)
        return tokens[:, model.num_prefix_tokens :].transpose(1, 2).unflatten(2, model.grid)


# ----------------------------------------------------------------- parity with the official code


@pytest.mark.parametrize("pos_resize", ["bicubic_offset", "bicubic_antialias"])
@pytest.mark.parametrize("image_size", [(700, 700), (532, 952)])
def test_official_parity_at_reference_sizes(official_sd, official_pth, image_size, pos_resize):
    model = build_backbone(SMALL, image_size, weights=official_pth, pos_resize=pos_resize)
    assert model.grid == (image_size[0] // 14, image_size[1] // 14)
    images = torch.randn(1, 3, *image_size, generator=torch.Generator().manual_seed(1))
    offset, antialias = HUB_FLAGS[pos_resize]
    with torch.no_grad():
        expected = official_dinov2_forward(official_sd, images, 6, offset, antialias)
    got = _trunk_features(model, images)
    assert got.shape == expected.shape == (1, 384, *model.grid)
    assert (got - expected).abs().max().item() <= 1e-4
    # The full forward adds the trainable 1x1 projection to 768 channels.
    with torch.no_grad():
        out = model(images)
    assert out.shape == (1, FEATURE_DIM, *model.grid)
    torch.testing.assert_close(out, model.proj(got), rtol=0, atol=1e-5)


def test_interpolation_variants_differ_and_match_torch_hub_defaults(official_sd):
    patch_pos = official_sd["pos_embed"][:, 1:]
    a = resize_pos_embed(patch_pos, (50, 50), "bicubic_offset")
    b = resize_pos_embed(patch_pos, (50, 50), "bicubic_antialias")
    assert a.shape == b.shape == (1, 2500, 384)
    assert (a - b).abs().max().item() > 1e-2  # the choice matters for the features
    # 37x37 (518 px) is returned untouched, as the official code skips interpolation.
    assert torch.equal(resize_pos_embed(patch_pos, (37, 37), "bicubic_offset"), patch_pos)
    # Registry defaults follow the torch-hub constructors.
    assert BACKBONES["dinov2_vitb14_reg"].pos_resize == "bicubic_antialias"
    assert BACKBONES["dinov2_vitb14"].pos_resize == "bicubic_offset"
    with pytest.raises(OmamaError, match="pos_resize"):
        resize_pos_embed(patch_pos, (50, 50), "bilinear")


def test_no_register_model_parity(tmp_path):
    sd = official_dinov2_state_dict(n_reg=0, seed=5)
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(sd, path)
    model = build_backbone(SMALL_NOREG, (98, 154), weights=path)
    assert model.pos_resize == "bicubic_offset" and model.num_prefix_tokens == 1
    images = torch.randn(2, 3, 98, 154, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = official_dinov2_forward(sd, images, 6, 0.1, False)
    assert (_trunk_features(model, images) - expected).abs().max().item() <= 1e-4


def test_giant_swiglu_and_chunked_block_layout(tmp_path):
    # ViT-g layout (SwiGLU w12/w3, FSDP-chunked block names) at ViT-S width to stay small.
    spec = dataclasses.replace(
        BACKBONES["dinov2_vitg14_reg"],
        embed_dim=384,
        timm_overrides={"depth": DEPTH, "embed_dim": 384, "num_heads": 6},
    )
    sd = official_dinov2_state_dict(swiglu=True, seed=7)
    chunked = {
        (f"blocks.0.{k[len('blocks.') :]}" if k.startswith("blocks.") else k): v
        for k, v in sd.items()
    }
    torch.save(chunked, tmp_path / "g.pth")
    model = build_backbone(spec, (42, 56), weights=tmp_path / "g.pth")
    images = torch.randn(1, 3, 42, 56, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = official_dinov2_forward(sd, images, 6, 0.0, True)
    assert (_trunk_features(model, images) - expected).abs().max().item() <= 1e-4


# ----------------------------------------------------------------- other weight layouts


def official_to_hf(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The Hugging Face ``Dinov2WithRegistersModel`` file naming, written out explicitly."""
    top = {
        "cls_token": "embeddings.cls_token",
        "mask_token": "embeddings.mask_token",
        "pos_embed": "embeddings.position_embeddings",
        "register_tokens": "embeddings.register_tokens",
        "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
        "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
        "norm.weight": "layernorm.weight",
        "norm.bias": "layernorm.bias",
    }
    per_block = {
        "norm1": "norm1",
        "norm2": "norm2",
        "attn.proj": "attention.output.dense",
        "mlp.fc1": "mlp.fc1",
        "mlp.fc2": "mlp.fc2",
    }
    out = {}
    for key, value in sd.items():
        if key in top:
            out[top[key]] = value
            continue
        _, i, rest = key.split(".", 2)
        layer = f"encoder.layer.{i}."
        module, leaf = rest.rsplit(".", 1)
        if module == "attn.qkv":
            for name, part in zip(("query", "key", "value"), value.chunk(3, dim=0), strict=True):
                out[f"{layer}attention.attention.{name}.{leaf}"] = part.clone()
        elif module in ("ls1", "ls2"):
            out[f"{layer}layer_scale{module[-1]}.lambda1"] = value
        else:
            out[f"{layer}{per_block[module]}.{leaf}"] = value
    return out


@pytest.fixture(scope="module")
def small_reference(official_pth):
    model = build_backbone(SMALL, (56, 70), weights=official_pth)
    images = torch.randn(2, 3, 56, 70, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        return images, model(images), model


def test_huggingface_safetensors_layout(tmp_path, official_sd, small_reference):
    images, expected, _ = small_reference
    hf = official_to_hf(official_sd)
    assert "encoder.layer.1.attention.attention.value.weight" in hf
    save_file(hf, str(tmp_path / "model.safetensors"))
    model = build_backbone(SMALL, (56, 70))
    model.proj.load_state_dict(small_reference[2].proj.state_dict())
    assert load_backbone_weights(model, tmp_path / "model.safetensors") == "huggingface-dinov2"
    with torch.no_grad():
        assert torch.equal(model(images), expected)
    # Newer transformers name the projections q_proj / k_proj / v_proj.
    renamed = {
        k.replace("attention.attention.query", "attention.q_proj")
        .replace("attention.attention.key", "attention.k_proj")
        .replace("attention.attention.value", "attention.v_proj"): v
        for k, v in hf.items()
    }
    save_file({f"dinov2.{k}": v for k, v in renamed.items()}, str(tmp_path / "v5.safetensors"))
    assert load_backbone_weights(model, tmp_path / "v5.safetensors") == "huggingface-dinov2"
    with torch.no_grad():
        assert torch.equal(model(images), expected)


def test_timm_layout_converted_by_timm_itself(tmp_path, official_sd, small_reference):
    # timm's own DINOv2 converter is an independent check of the official key mapping.
    import timm
    from timm.models.vision_transformer import checkpoint_filter_fn

    images, expected, reference = small_reference
    at_518 = timm.create_model(
        "vit_small_patch14_reg4_dinov2", pretrained=False, num_classes=0, depth=DEPTH
    )
    timm_sd = checkpoint_filter_fn(dict(official_sd), at_518)
    at_518.load_state_dict(timm_sd)
    save_file({k: v.contiguous() for k, v in timm_sd.items()}, str(tmp_path / "timm.safetensors"))
    model = build_backbone(SMALL, (56, 70))
    model.proj.load_state_dict(reference.proj.state_dict())
    assert load_backbone_weights(model, tmp_path / "timm.safetensors") == "timm"
    with torch.no_grad():
        torch.testing.assert_close(model(images), expected, rtol=0, atol=1e-6)


def test_own_state_dict_round_trip_and_size_mismatch(tmp_path, small_reference):
    images, expected, reference = small_reference
    save_file(reference.state_dict(), str(tmp_path / "backbone.safetensors"))
    model = build_backbone(SMALL, (56, 70), weights=tmp_path / "backbone.safetensors")
    with torch.no_grad():
        assert torch.equal(model(images), expected)  # projection restored too
    other = build_backbone(SMALL, (70, 70))
    with pytest.raises(OmamaError, match="another image size"):
        load_backbone_weights(other, tmp_path / "backbone.safetensors")


# ----------------------------------------------------------------- errors


def test_missing_and_unexpected_keys_are_listed(tmp_path, official_sd):
    sd = dict(official_sd)
    del sd["norm.weight"]
    sd["head.weight"] = torch.zeros(3)
    path = tmp_path / "broken.pth"
    torch.save(sd, path)
    model = build_backbone(SMALL, (28, 28))
    with pytest.raises(OmamaError) as err:
        load_backbone_weights(model, path)
    msg = str(err.value)
    assert "broken.pth" in msg and "official-dinov2" in msg
    assert "missing 1 keys: norm.weight" in msg and "unexpected 1 keys: head.weight" in msg


def test_wrong_model_size_is_reported(tmp_path):
    base = official_dinov2_state_dict(dim=768, seed=9)  # a ViT-B file into a ViT-S model
    torch.save(base, tmp_path / "dinov2_vitb14_reg4_pretrain.pth")
    model = build_backbone(SMALL, (28, 28))
    with pytest.raises(OmamaError, match=r"other shapes than backbone dinov2_vits14_reg"):
        load_backbone_weights(model, tmp_path / "dinov2_vitb14_reg4_pretrain.pth")


class _Payload:
    pass


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state": _Payload()}, path)
    model = build_backbone(SMALL, (28, 28))
    with pytest.raises(OmamaError, match="evil.pth could not be read as a weights-only"):
        load_backbone_weights(model, path)
    with pytest.raises(OmamaError, match="not found"):
        load_backbone_weights(model, tmp_path / "absent.pth")


def test_build_and_forward_errors():
    with pytest.raises(OmamaError, match="unknown backbone"):
        build_backbone("dinov2_vitx14", (28, 28))
    with pytest.raises(OmamaError, match="multiple of 14"):
        build_backbone(SMALL, (704, 704))
    model = build_backbone(SMALL, (28, 42))
    with pytest.raises(OmamaError, match="built for images of 28x42"):
        model(torch.zeros(1, 3, 42, 28))


# ----------------------------------------------------------------- other families


def test_registry_names_and_attributes():
    names = backbone_names()
    for required in (
        "dinov2_vits14_reg",
        "dinov2_vitb14_reg",
        "dinov2_vitl14_reg",
        "dinov2_vits14",
        "dinov2_vitb14",
        "dinov2_vitl14",
        "dinov3_vits16plus",
        "resnet50_dino",
    ):
        assert required in names
    model = build_backbone(
        dataclasses.replace(BACKBONES["dinov2_vitb14_reg"], timm_overrides={"depth": 1}), (28, 42)
    )
    assert (model.patch_size, model.image_size, model.grid) == (14, (28, 42), (2, 3))
    assert (model.embed_dim, model.out_channels) == (768, 768)
    assert isinstance(model.proj, torch.nn.Identity)  # ViT-B is already 768 wide


def test_dinov3_official_layout(tmp_path):
    spec = dataclasses.replace(BACKBONES["dinov3_vits16plus"], timm_overrides={"depth": DEPTH})
    source = build_backbone(spec, (32, 48))
    with torch.no_grad():
        for name, p in source.trunk.named_parameters():
            if name.endswith(("q_bias", "v_bias")):
                p.normal_(0, 0.1)
    images = torch.randn(1, 3, 32, 48, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = source(images)
    assert expected.shape == (1, 768, 2, 3) and source.embed_dim == 384
    # Release-file names (storage tokens, ls*.gamma, fused qkv bias with a zero k part).
    official = {"mask_token": torch.zeros(1, 384), "rope_embed.periods": torch.ones(16)}
    trunk = source.trunk.state_dict()
    for key, value in trunk.items():
        if key.endswith("attn.q_bias"):
            blk = key[: -len("q_bias")]
            bias = torch.cat([value, torch.zeros_like(value), trunk[blk + "v_bias"]])
            official[blk + "qkv.bias"] = bias
            official[blk + "qkv.bias_mask"] = torch.ones_like(bias)
        elif key.endswith("attn.v_bias"):
            continue
        else:
            key = key.replace("reg_token", "storage_tokens").replace("gamma_1", "ls1.gamma")
            key = key.replace("gamma_2", "ls2.gamma").replace("mlp.fc1_g", "mlp.w1")
            official[key.replace("mlp.fc1_x", "mlp.w2").replace("mlp.fc2", "mlp.w3")] = value
    torch.save(official, tmp_path / "dinov3_vits16plus_pretrain.pth")
    model = build_backbone(spec, (32, 48))
    model.proj.load_state_dict(source.proj.state_dict())
    assert load_backbone_weights(model, tmp_path / "dinov3_vits16plus_pretrain.pth") == (
        "official-dinov3"
    )
    with torch.no_grad():
        assert torch.equal(model(images), expected)


def test_resnet50_dino_matches_torchvision(tmp_path):
    import torchvision

    tv = torchvision.models.resnet50(weights=None).eval()
    with torch.no_grad():
        for m in tv.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    sd = {k: v for k, v in tv.state_dict().items() if not k.startswith("fc.")}
    torch.save(sd, tmp_path / "dino_resnet50_pretrain.pth")
    model = build_backbone(
        "resnet50_dino", (64, 96), weights=tmp_path / "dino_resnet50_pretrain.pth"
    )
    assert (model.patch_size, model.grid, model.embed_dim) == (32, (2, 3), 2048)
    images = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        x = tv.maxpool(tv.relu(tv.bn1(tv.conv1(images))))
        expected = tv.layer4(tv.layer3(tv.layer2(tv.layer1(x))))
        got = model.trunk.forward_features(images)
        out = model(images)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert out.shape == (1, 768, 2, 3)
    assert isinstance(model.proj, torch.nn.Conv2d) and model.proj.kernel_size == (1, 1)


# ----------------------------------------------------------------- export


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # timm's own shape asserts
def test_onnx_export_has_no_interpolation(tmp_path, small_reference):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    images, expected, model = small_reference
    path = tmp_path / "backbone.onnx"
    torch.onnx.export(
        model, (images[:1],), str(path), input_names=["images"], output_names=["features"],
        opset_version=17, dynamo=False,
    )  # fmt: skip
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert not ops & {"Resize", "Upsample"}, ops
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"images": images[:1].numpy()})
    np.testing.assert_allclose(got, expected[:1].numpy(), rtol=0, atol=1e-4)


# ----------------------------------------------------------------- projection and omama files


def test_seeded_projection_is_one_function_of_spec_and_seed():
    from omama_train.models.backbones import seeded_projection

    before = torch.random.get_rng_state()
    zero = seeded_projection(SMALL, 0)
    assert torch.equal(torch.random.get_rng_state(), before)  # the global RNG is untouched
    assert {k: tuple(v.shape) for k, v in zero.items()} == {
        "proj.weight": (FEATURE_DIM, 384, 1, 1),
        "proj.bias": (FEATURE_DIM,),
    }
    again, other = seeded_projection(SMALL, 0), seeded_projection(SMALL, 1)
    assert all(torch.equal(zero[k], again[k]) for k in zero)
    assert not torch.equal(zero["proj.weight"], other["proj.weight"])
    assert seeded_projection(BACKBONES["dinov2_vitb14_reg"], 0) == {}  # already 768 wide


def test_a_file_without_projection_gets_the_seeded_one(official_pth):
    from omama_train.models.backbones import seeded_projection

    default = build_backbone(SMALL, (28, 42), official_pth)
    seeded3 = build_backbone(SMALL, (42, 28), official_pth, projection_seed=3)
    for model, seed in ((default, 0), (seeded3, 3)):
        want = seeded_projection(SMALL, seed)
        assert torch.equal(model.proj.weight, want["proj.weight"])
        assert torch.equal(model.proj.bias, want["proj.bias"])
        assert (model.projection_source, model.projection_seed) == ("seeded", seed)
    # The bare loader leaves a projection the file lacks as it was.
    model = build_backbone(SMALL, (28, 42))
    kept = model.proj.weight.detach().clone()
    assert load_backbone_weights(model, official_pth) == "official-dinov2"
    assert torch.equal(model.proj.weight, kept) and model.projection_source == "init"


def test_omama_file_at_the_pretraining_grid_loads_at_any_size(tmp_path, official_pth):
    from omama_train.models.backbones import (
        backbone_file_info,
        save_backbone_weights,
        seeded_projection,
    )

    square = build_backbone(SMALL, (518, 518), official_pth, projection_seed=7)
    info = {"backbone": {"name": SMALL.name, "pos_resize": "bicubic_antialias"}, "seed": 7}
    path = save_backbone_weights(square.state_dict(), tmp_path / "backbone.safetensors", info)
    again = save_backbone_weights(square.state_dict(), tmp_path / "again.safetensors", info)
    assert path.read_bytes() == again.read_bytes()  # same tensors and info, same bytes
    assert backbone_file_info(path) == info and backbone_file_info(official_pth) == {}
    images = torch.randn(1, 3, 56, 70, generator=torch.Generator().manual_seed(2))
    for pos_resize in ("bicubic_antialias", "bicubic_offset"):
        model = build_backbone(SMALL, (56, 70), path, pos_resize=pos_resize)
        reference = build_backbone(
            SMALL, (56, 70), official_pth, pos_resize=pos_resize, projection_seed=7
        )
        assert model.projection_source == "file"
        assert torch.equal(model.proj.weight, seeded_projection(SMALL, 7)["proj.weight"])
        with torch.no_grad():  # interpolated from 37x37 with the model's rule, like the original
            torch.testing.assert_close(model(images), reference(images), rtol=0, atol=1e-6)
    # A known trunk layout plus the projection (proj.*) loads both.
    official = torch.load(official_pth, weights_only=True)
    save_file({**official, **seeded_projection(SMALL, 7)}, str(tmp_path / "plus.safetensors"))
    model = build_backbone(SMALL, (56, 70), tmp_path / "plus.safetensors")
    reference = build_backbone(SMALL, (56, 70), official_pth, projection_seed=7)
    assert model.projection_source == "file"
    with torch.no_grad():
        assert torch.equal(model(images), reference(images))
    bad = {**official, "proj.weight": torch.zeros(FEATURE_DIM, 384, 1, 1)}
    save_file(bad, str(tmp_path / "half.safetensors"))
    with pytest.raises(OmamaError, match="projection keys proj.weight, backbone .* needs"):
        build_backbone(SMALL, (56, 70), tmp_path / "half.safetensors")
