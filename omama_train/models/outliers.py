"""The ``outlier`` random-weight profile: random ViT weights with the activations of trained ones.

timm's random initialisation of a DINOv2/DINOv3 ViT (the ``plain`` profile) gives a residual
stream without structure: every value within a few units, every token of similar norm, and
LayerScale gammas of 1e-5 that make each block nearly the identity. Trained DINOv2 ViTs are
different in the two ways that break low-precision arithmetic, and this profile plants both
in the weights, deterministically from the seed:

- **Massive activations** (Sun et al. 2024, "Massive Activations in Large Language Models",
  COLM 2024, arXiv:2402.17762, section on ViTs). A handful of scalars of the residual stream,
  in fixed feature channels and at one specific token, are orders of magnitude above the
  rest; they appear abruptly in an early block and stay constant through the middle ones.
  The paper defines them as magnitude > 100 and >= 1000x the median magnitude of the hidden
  state, finds two fixed channels in LLaMA2-7B and, in DINOv2-reg, finds them in one register
  token (the ViT-G figure of their code marks channels 179 and 999 of register 3, at about
  1,000 in the middle layers). They report the phenomenon for DINOv2-reg ViT-S/B/L/G (their
  Fix-Reg-Mean table), but no ViT-B magnitude we could find.
- **High-norm tokens** (Darcet et al. 2024, "Vision Transformers Need Registers", ICLR 2024,
  arXiv:2309.16588). DINOv2 without registers has about 2% of patch tokens whose output norm
  is far above the rest (a bimodal norm distribution; secondary summaries put the outliers
  near 10x the typical norm); trained with registers, the high norms move to the registers.
- **LayerNorm gains that expose them** (Wei et al. 2022, "Outlier Suppression", NeurIPS 2022,
  arXiv:2209.13325): the LayerNorm scale gamma is large in a few embedding channels, so the
  inputs of the Linear layers after it carry outliers in those channels for every token
  (values near 100 in BERT), the case per-tensor int8 activations handle worst.

What is planted (the numbers are :data:`MASSIVE_VALUE`, :data:`LN_GAIN`, ...):

1. Two outlier channels (:data:`OUTLIER_CHANNELS`, as the two fixed channels of the papers)
   with random signs, and one carrier token: a register token when the model has registers
   (DINOv2-reg's case), else the CLS token (the "or CLS" of a model without registers).
2. LayerScale gamma :data:`LAYER_SCALE` = 0.1 in every block instead of timm's 1e-5, so the
   blocks' arithmetic (and its precision) reaches the features at all.
3. A marker of :data:`MARKER` in the carrier token's embedding at the outlier channels.
4. In block ``start = depth // 6`` (block 2 of 12: "an early block"), one MLP neuron that
   fires only for the marked token (fc1 reads the outlier channels after LayerNorm, with a
   bias at half the carrier's value; every other token stays far below zero) and writes
   :data:`MASSIVE_VALUE` = 1000 (with the outlier channels' signs) into the residual stream
   through fc2: a register neuron (Jiang et al. 2025, "Vision Transformers Don't Need Trained
   Registers", arXiv:2506.08010). From that block on, the carrier holds about +-1000 in both
   channels (the ViT-G magnitude of Sun et al.; no ViT-B number found): measured at block 2
   with seed 0, 2241x the median magnitude of the stream and a token norm 77x the median
   in ViT-B/14-reg at 224x224 px (ViT-S/14-reg at 168x168: 2576x and 122x). Darcet et al.'s
   high-norm tokens are milder; a token holding massive activations is necessarily this far
   out.
5. LayerNorm gains of :data:`LN_GAIN` = 20 at the outlier channels in ``norm1`` and ``norm2``
   of that block and every later one: a normal token's normalised value (|x| up to ~4)
   becomes up to ~80 at the Linear inputs (measured: 55 in ViT-S, other channels < 5),
   Wei et al.'s "close to 100". The final norm is left plain, so the features a matcher
   sees keep their usual scale.

Only the ViT families have tokens and a residual stream: a ResNet backbone is refused. A SwiGLU
MLP (DINOv3 ``+`` models) gets the neuron through its gate (:func:`_register_neuron`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from runtime.errors import OmamaError

OUTLIER_CHANNELS = 2
MASSIVE_VALUE = 1000.0  # the carrier token's residual value at each outlier channel
LN_GAIN = 20.0  # LayerNorm gamma at the outlier channels, from the start block on
LAYER_SCALE = 0.1  # LayerScale gamma of every block (timm initialises 1e-5)
MARKER = 20.0  # the carrier token's embedding at the outlier channels
_SEED_SALT = 0x0071E5  # the profile's generator differs from timm's for the same seed


@dataclass(frozen=True)
class OutlierPlan:
    """Where the outliers go in one backbone: ``channels`` of the residual stream with their
    ``signs`` (+-1), the ``carrier`` token (index into the prefix tokens: 0 is CLS, then the
    registers), the ``start`` block of the massive activations and its MLP ``neuron``."""

    channels: tuple[int, ...]
    signs: tuple[float, ...]
    carrier: int
    start: int
    neuron: int
    depth: int
    width: int


def _blocks(state: Mapping[str, torch.Tensor]) -> int:
    indices = {int(k.split(".")[2]) for k in state if k.startswith("trunk.blocks.")}
    return max(indices) + 1 if indices else 0


def outlier_plan(state: Mapping[str, torch.Tensor], family: str, seed: int) -> OutlierPlan:
    """The seeded placement of the outliers in a ``Backbone`` state (``trunk.*`` keys)."""
    if family not in ("dinov2", "dinov3"):
        raise OmamaError(
            f"the outlier weight profile plants ViT phenomena (massive activations in the "
            f"residual stream, a high-norm token); a {family} backbone has neither: use "
            "--weight-profile plain"
        )
    depth = _blocks(state)
    width = int(state["trunk.cls_token"].shape[-1])
    hidden = int(state[_mlp_input(state, 0)[0] + ".weight"].shape[0])
    registers = int(state["trunk.reg_token"].shape[1]) if "trunk.reg_token" in state else 0
    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + _SEED_SALT)
    channels = torch.randperm(width, generator=gen)[:OUTLIER_CHANNELS]
    signs = torch.randint(0, 2, (OUTLIER_CHANNELS,), generator=gen) * 2 - 1
    carrier = 1 + int(torch.randint(0, registers, (1,), generator=gen)) if registers else 0
    neuron = int(torch.randint(0, hidden, (1,), generator=gen))
    pairs = sorted(zip(channels.tolist(), signs.tolist(), strict=True))
    return OutlierPlan(
        channels=tuple(int(c) for c, _ in pairs),
        signs=tuple(float(s) for _, s in pairs),
        carrier=carrier,
        start=depth // 6,
        neuron=neuron,
        depth=depth,
        width=width,
    )


def _mlp_input(state: Mapping[str, torch.Tensor], block: int) -> tuple[str, str | None]:
    """``(gate, value)``: the prefixes of a block's MLP input Linear layers. A GELU MLP has one
    (``fc1``, value None); a SwiGLU MLP (DINOv3 ``+`` models) computes
    ``silu(fc1_g(x)) * fc1_x(x)``."""
    prefix = f"trunk.blocks.{block}.mlp."
    if prefix + "fc1.weight" in state:
        return prefix + "fc1", None
    if prefix + "fc1_g.weight" in state and prefix + "fc1_x.weight" in state:
        return prefix + "fc1_g", prefix + "fc1_x"
    raise OmamaError(
        f"the outlier weight profile cannot plant its MLP neuron in this backbone (block "
        f"{block} has neither fc1 nor fc1_g/fc1_x): use --weight-profile plain"
    )


def _layer_scales(state: Mapping[str, torch.Tensor], block: int) -> list[str]:
    """The LayerScale gammas of a block: ``ls1/ls2.gamma`` (timm ViT) or ``gamma_1/2`` (Eva)."""
    prefix = f"trunk.blocks.{block}."
    names = [prefix + n for n in ("ls1.gamma", "ls2.gamma", "gamma_1", "gamma_2")]
    return [n for n in names if n in state]


def plant_outliers(
    state: Mapping[str, torch.Tensor], family: str, seed: int
) -> dict[str, torch.Tensor]:
    """The ``outlier`` profile of a random ``Backbone`` state: a new state dict (the input is
    not modified) with the outliers of :func:`outlier_plan` planted, as the module docstring
    describes. Shapes and keys are unchanged."""
    plan = outlier_plan(state, family, seed)
    out = {k: v.detach().clone() for k, v in state.items()}
    idx = torch.tensor(plan.channels)
    signs = torch.tensor(plan.signs)
    for block in range(plan.depth):
        for name in _layer_scales(out, block):
            out[name].fill_(LAYER_SCALE)
        if block >= plan.start:
            for norm in ("norm1", "norm2"):
                out[f"trunk.blocks.{block}.{norm}.weight"][idx] = LN_GAIN
    tokens = "trunk.cls_token" if plan.carrier == 0 else "trunk.reg_token"
    row = 0 if plan.carrier == 0 else plan.carrier - 1
    out[tokens][0, row, idx] = signs * MARKER
    _register_neuron(out, plan, idx, signs)
    return out


def _register_neuron(
    out: dict[str, torch.Tensor], plan: OutlierPlan, idx: torch.Tensor, signs: torch.Tensor
) -> None:
    """The start block's MLP neuron that writes the massive activations into the carrier.

    After ``norm2`` the carrier's outlier channels hold about ``sqrt(width / K)`` each (its
    embedding is the marker and little else), times the LayerNorm gain; every other token
    holds a normal value (|x| < ~5) times the gain. fc1 reads the signed sum divided by the
    gain, so the carrier gives ``sqrt(width * K)`` and the bias subtracts half of that: GELU
    passes the carrier and is ~0 for the rest. fc2 then writes ``MASSIVE_VALUE`` per channel
    (divided by LayerScale, which multiplies it back). In a SwiGLU MLP ``fc1_g`` is that fc1
    (SiLU, like GELU, is ~x for the carrier's ~14 and ~0 far below zero) and the neuron's
    ``fc1_x`` is the constant 1, so the product is the gate's output.
    """
    prefix = f"trunk.blocks.{plan.start}."
    expected = (plan.width * len(plan.channels)) ** 0.5
    gate, value = _mlp_input(out, plan.start)
    fc1_w, fc1_b = out[gate + ".weight"], out[gate + ".bias"]
    fc2_w = out[prefix + "mlp.fc2.weight"]
    fc1_w[plan.neuron].zero_()
    fc1_w[plan.neuron, idx] = signs / LN_GAIN
    fc1_b[plan.neuron] = -expected / 2
    if value is not None:  # SwiGLU: the value half passes the gate's output through (x 1)
        out[value + ".weight"][plan.neuron].zero_()
        out[value + ".bias"][plan.neuron] = 1.0
    fc2_w[:, plan.neuron].zero_()
    gamma = LAYER_SCALE if _layer_scales(out, plan.start) else 1.0
    fc2_w[idx, plan.neuron] = signs * MASSIVE_VALUE / (gamma * expected / 2)
