"""The O-MaMa matcher (docs/reference.md, section 5), loadable from the official weights.

Submodule and parameter names follow the official state_dict, so
``load_state_dict(official, strict=True)`` works: ``pos_embed_T`` (destination tokens),
``pos_embed_Q`` (source tokens), ``CROSS_context_attn`` (one cross-attention block shared
by both sides), ``mlp.mlp`` (the projection to the matching space) and ``mlp_visible``
(present in the checkpoint, unused by the forward pass).

Several source objects can be matched against one destination frame in one call: a
batch of 1 in ``dst_desc``, ``src_feats`` or ``dst_feats`` is shared by all B objects,
and the work that depends only on shared inputs (the normalised token maps and their
keys/values, and the whole candidate side when both ``dst_desc`` and ``src_feats`` are
shared) is done once.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from runtime import __version__ as omama_version
from runtime.atomic import atomic_path
from runtime.egoexo import check_direction
from runtime.errors import OmamaError

OFFICIAL_GRIDS: dict[str, tuple[int, int]] = {"ego": (50, 50), "exo": (38, 68)}
TEMPERATURE = 0.07
METADATA_FORMAT = "omama.matcher"
DEFAULT_BACKBONE = "dinov2_vitb14_reg"


def official_grids(direction: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """(source grid, destination grid) of the official setup: exo 38x68, ego 50x50."""
    if check_direction(direction) == "exo2ego":
        return OFFICIAL_GRIDS["exo"], OFFICIAL_GRIDS["ego"]
    return OFFICIAL_GRIDS["ego"], OFFICIAL_GRIDS["exo"]


ATTENTION_MODES = ("auto", "standard", "folded")


class CrossContextAttention(nn.Module):
    """Multi-head cross-attention of query vectors to a token map, then a GELU MLP.

    ``y = project(softmax(q k^T / sqrt(d_head)) v)`` with q, k, v computed from the
    ``norm_input``-normalised queries and tokens (no residual on the input), then
    ``y + mlp(norm_output(y))``.

    Two evaluation orders give the same numbers (up to rounding):

    * ``standard``: project every token to keys and values (2 T D^2 multiply-adds);
    * ``folded``: move the key and value matrices to the query side. Per head,
      ``q . (W_k t + b_k) = (W_k^T q) . t + const`` (the constant cancels in the softmax)
      and ``sum_t a_t (W_v t + b_v) = W_v (sum_t a_t t) + b_v`` (the weights sum to 1), so
      each query attends to the normalised tokens directly: about 2 Q heads T D
      multiply-adds for Q queries per token map, far less than the projections while
      Q (heads - 1) < D (O-MaMa: 1 source object and 32-128 candidates per frame).

    ``mode="auto"`` picks the cheaper order per call from the shapes.
    """

    def __init__(
        self, dim: int = 768, heads: int = 4, dropout: float = 0.0, mode: str = "auto"
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        if mode not in ATTENTION_MODES:
            raise ValueError(f"mode must be one of {ATTENTION_MODES}, got {mode!r}")
        self.heads = heads
        self.head_dim = dim // heads
        self.mode = mode
        self.norm_input = nn.LayerNorm(dim)
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.project = nn.Sequential(nn.Linear(dim, dim), nn.Dropout(dropout))
        self.norm_output = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, D) -> (B, heads, L, d_head)."""
        return x.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)

    def use_folded(self, queries_per_map: int, maps: int, outputs: int, tokens: int) -> bool:
        """Whether the folded order costs fewer multiply-adds for these shapes."""
        if self.mode != "auto":
            return self.mode == "folded"
        dim = self.heads * self.head_dim
        standard = 2 * maps * tokens * dim * dim + 2 * outputs * queries_per_map * tokens * dim
        folded = 2 * outputs * queries_per_map * self.heads * tokens * dim
        return folded < standard

    def _attend_standard(self, q: torch.Tensor, normed_tokens: torch.Tensor) -> torch.Tensor:
        k = self._split(self.key(normed_tokens))
        v = self._split(self.value(normed_tokens))
        attn = torch.softmax((q * self.head_dim**-0.5) @ k.transpose(-2, -1), dim=-1)
        return (attn @ v).transpose(1, 2).flatten(2)

    def _attend_folded(self, q: torch.Tensor, normed_tokens: torch.Tensor) -> torch.Tensor:
        dim = self.heads * self.head_dim
        w_key = self.key.weight.view(self.heads, self.head_dim, dim)
        w_value = self.value.weight.view(self.heads, self.head_dim, dim)
        q_in = torch.einsum("bhlk,hkd->bhld", q * self.head_dim**-0.5, w_key)  # (B, h, L, D)
        tokens = normed_tokens[:, None]  # (Bt, 1, T, D)
        attn = torch.softmax(q_in @ tokens.transpose(-2, -1), dim=-1)  # (B, h, L, T)
        mixed = attn @ tokens  # (B, h, L, D): attention-weighted normalised tokens
        out = torch.einsum("bhld,hkd->bhlk", mixed, w_value)
        out = out + self.value.bias.view(1, self.heads, 1, self.head_dim)
        return out.transpose(1, 2).flatten(2)

    def forward(self, queries: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """queries (Bq, L, D) attend to tokens (Bt, T, D) -> (max(Bq, Bt), L, D).

        Bt == 1 shares the tokens (and their key/value work) across all Bq query sets;
        Bq == 1 shares the queries across all Bt token maps.
        """
        batch_q, batch_t = queries.shape[0], tokens.shape[0]
        if batch_q != batch_t and 1 not in (batch_q, batch_t):
            raise ValueError(f"query batch {batch_q} and token batch {batch_t} do not broadcast")
        length = queries.shape[1]
        fold_batch = batch_t == 1 and batch_q > 1
        if fold_batch:
            # Attention is independent per query: one sequence of Bq * L queries.
            queries = queries.reshape(1, batch_q * length, -1)
        q = self._split(self.query(self.norm_input(queries)))
        normed_tokens = self.norm_input(tokens)
        outputs = max(queries.shape[0], batch_t)
        if self.use_folded(queries.shape[1], batch_t, outputs, tokens.shape[1]):
            y = self._attend_folded(q, normed_tokens)
        else:
            y = self._attend_standard(q, normed_tokens)
        if fold_batch:
            y = y.reshape(batch_q, length, -1)
        y = self.project(y)
        return y + self.mlp(self.norm_output(y))


class ProjectionMLP(nn.Module):
    """Linear(3D, D)-ReLU-Linear(D, D)-ReLU-Linear(D, D) (checkpoint keys ``mlp.mlp.*``)."""

    def __init__(self, dim: int = 768) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(3 * dim, dim), nn.ReLU(), nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


class OMaMaMatcher(nn.Module):
    """Scores destination candidates against a source object (cosine similarity).

    Args:
        direction: ``exo2ego`` or ``ego2exo`` (recorded; the tables fix the grids).
        src_grid: (h, w) token grid of the source view; default: the official grid of the
            direction's source view (exo 38 x 68, ego 50 x 50).
        dst_grid: (h, w) token grid of the destination view; default: the official one.
        dim: feature width D; descriptors are 2D wide.
        heads: attention heads of ``CROSS_context_attn``.
        dropout: dropout after the attention projection (training only).
        backbone: name of the backbone whose features the matcher expects (metadata).
        attention: evaluation order of the cross-attention, ``auto`` | ``standard`` |
            ``folded`` (same numbers; see :class:`CrossContextAttention`).
    """

    def __init__(
        self,
        direction: str = "exo2ego",
        src_grid: tuple[int, int] | None = None,
        dst_grid: tuple[int, int] | None = None,
        dim: int = 768,
        heads: int = 4,
        dropout: float = 0.0,
        backbone: str = DEFAULT_BACKBONE,
        attention: str = "auto",
    ) -> None:
        super().__init__()
        self.direction = check_direction(direction)
        official_src, official_dst = official_grids(direction)
        src_grid = official_src if src_grid is None else src_grid
        dst_grid = official_dst if dst_grid is None else dst_grid
        self.src_grid = (int(src_grid[0]), int(src_grid[1]))
        self.dst_grid = (int(dst_grid[0]), int(dst_grid[1]))
        self.dim = dim
        self.heads = heads
        self.backbone = backbone
        self.pos_embed_T = nn.Parameter(torch.zeros(1, self.dst_grid[0] * self.dst_grid[1], dim))
        self.pos_embed_Q = nn.Parameter(torch.zeros(1, self.src_grid[0] * self.src_grid[1], dim))
        nn.init.trunc_normal_(self.pos_embed_T, std=0.02)
        nn.init.trunc_normal_(self.pos_embed_Q, std=0.02)
        self.mlp = ProjectionMLP(dim)
        self.mlp_visible = nn.Sequential(
            nn.Linear(2 * dim, dim),
            nn.ReLU(),
            nn.Linear(dim, 256),
            nn.ReLU(),
            nn.Linear(256, 128),
            nn.ReLU(),
            nn.Linear(128, 2),
        )
        self.CROSS_context_attn = CrossContextAttention(dim, heads, dropout, mode=attention)

    def _tokens(
        self, feats: torch.Tensor, table: torch.Tensor, grid: tuple[int, int], side: str
    ) -> torch.Tensor:
        """(B, D, h, w) features -> (B, h*w, D) tokens plus their positional table."""
        if tuple(feats.shape[1:]) != (self.dim, *grid):
            raise OmamaError(
                f"{side} features have shape {tuple(feats.shape[1:])} but this {self.direction} "
                f"matcher's positional table expects ({self.dim}, {grid[0]}, {grid[1]}): use "
                "the image size the matcher was trained for"
            )
        return feats.flatten(2).transpose(1, 2) + table

    def embed(self, context: torch.Tensor, desc: torch.Tensor) -> torch.Tensor:
        """Matching-space vectors (..., D) from cross-attention output (..., D) and
        descriptors (..., 2D)."""
        return self.mlp(torch.cat([context, desc], dim=-1))

    def forward(
        self,
        src_desc: torch.Tensor,
        dst_desc: torch.Tensor,
        src_feats: torch.Tensor,
        dst_feats: torch.Tensor,
    ) -> torch.Tensor:
        """Cosine similarity of each candidate to its source object.

        Args:
            src_desc: (B, 1, 2D) source object descriptors.
            dst_desc: (B, N, 2D) candidate descriptors, or (1, N, 2D) shared by all objects.
            src_feats: (B or 1, D, hs, ws) source features at token resolution.
            dst_feats: (B or 1, D, hd, wd) destination features at token resolution.

        Returns:
            (B, N) similarities in [-1, 1].
        """
        batch = src_desc.shape[0]
        for name, tensor in (
            ("dst_desc", dst_desc),
            ("src_feats", src_feats),
            ("dst_feats", dst_feats),
        ):
            if tensor.shape[0] not in (1, batch):
                raise ValueError(f"{name} has batch {tensor.shape[0]}; expected 1 or {batch}")
        dim = self.dim
        dst_tokens = self._tokens(dst_feats, self.pos_embed_T, self.dst_grid, "destination")
        src_tokens = self._tokens(src_feats, self.pos_embed_Q, self.src_grid, "source")

        # Source side: the object's mask descriptor looks at the destination frame.
        src_context = self.CROSS_context_attn(src_desc[..., :dim], dst_tokens)  # (B, 1, D)
        src_vec = self.embed(src_context, src_desc)
        # Destination side: each candidate looks at the source frame; computed once when
        # both the candidates and the source frame are shared by all objects.
        dst_context = self.CROSS_context_attn(dst_desc[..., :dim], src_tokens)
        dst_vec = self.embed(dst_context, dst_desc.expand(dst_context.shape[0], -1, -1))

        src_unit = F.normalize(src_vec, dim=-1)  # (B, 1, D)
        dst_unit = F.normalize(dst_vec, dim=-1)  # (B or 1, N, D)
        return torch.matmul(src_unit, dst_unit.transpose(-2, -1)).squeeze(1)


def random_matcher(
    direction: str,
    src_grid: tuple[int, int],
    dst_grid: tuple[int, int],
    seed: int,
    attention: str = "auto",
    backbone: str = DEFAULT_BACKBONE,
    dim: int = 768,
    heads: int = 4,
) -> OMaMaMatcher:
    """The one random initialisation of a matcher: torch's under ``torch.manual_seed(seed)``
    (the global RNG is left as it was), in eval mode. ``omama export --random-init`` and the
    torch backend rebuilding such an export both call it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = OMaMaMatcher(direction, src_grid, dst_grid, dim=dim, heads=heads,
                             backbone=backbone, attention=attention)  # fmt: skip
    return model.eval()


def matcher_loss(
    similarities: torch.Tensor,
    positive_index: torch.Tensor,
    visible: torch.Tensor,
    temperature: float = TEMPERATURE,
) -> torch.Tensor:
    """Cross-entropy of ``similarities / temperature`` (B, N) against the positive (B,),
    multiplied by the visibility flag (B,) and averaged over the batch -> scalar.
    """
    per_object = F.cross_entropy(
        similarities / temperature, positive_index.long(), reduction="none"
    )
    return (per_object * visible.to(per_object.dtype)).mean()


def predict(similarities: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, N) similarities -> best index (B,), confidence sigmoid(best) (B,), top-5 (B, k).

    ``k = min(5, N)``; top-5 indices are sorted by decreasing similarity.
    """
    best_sim, best_index = similarities.max(dim=-1)
    top = similarities.topk(min(5, similarities.shape[-1]), dim=-1).indices
    return best_index, torch.sigmoid(best_sim), top


# -- checkpoints ----------------------------------------------------------------------------


def _format_grid(grid: tuple[int, int]) -> str:
    return f"{grid[0]}x{grid[1]}"


def _parse_grid(text: str, path: Path) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise OmamaError(f"{path}: metadata grid {text!r} is not of the form HxW") from exc
    return height, width


def _short_list(items: list[str], limit: int = 6) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


def _check_state_dict(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k} {tuple(state[k].shape)} != {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(state))
        if tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_short_list(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_short_list(unexpected)}")
    if wrong:
        problems.append(f"wrong shapes: {_short_list(wrong)}")
    if problems:
        raise OmamaError(f"{path} is not a compatible O-MaMa matcher: " + "; ".join(problems))


def _unwrap_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for wrapper in ("state_dict", "model"):
            if isinstance(obj.get(wrapper), dict):
                obj = obj[wrapper]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise OmamaError(f"{path} does not hold a state_dict of tensors")
    state = dict(obj)
    if state and all(k.startswith("module.") for k in state):  # saved from a DDP wrapper
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def _grids_from_tables(
    state: dict[str, torch.Tensor], direction: str | None, path: Path
) -> tuple[str, tuple[int, int], tuple[int, int]]:
    """Direction and grids of a checkpoint without metadata, from its table sizes."""
    for key in ("pos_embed_T", "pos_embed_Q"):
        if key not in state or state[key].dim() != 3:
            raise OmamaError(
                f"{path} has no (1, tokens, dim) tensor {key!r}: not an O-MaMa matcher"
            )
    dst_rows, src_rows = state["pos_embed_T"].shape[1], state["pos_embed_Q"].shape[1]
    by_rows = {h * w: name for name, (h, w) in OFFICIAL_GRIDS.items()}
    views = (by_rows.get(src_rows), by_rows.get(dst_rows))
    table_direction = {("exo", "ego"): "exo2ego", ("ego", "exo"): "ego2exo"}.get(views)
    if table_direction is None:
        raise OmamaError(
            f"{path}: token tables of {src_rows} (source) and {dst_rows} (destination) rows are "
            "not the official 38x68 / 50x50 grids; only omama .safetensors checkpoints record "
            "other grids"
        )
    if direction is not None and check_direction(direction) != table_direction:
        raise OmamaError(
            f"{path} is a {table_direction} matcher (destination table {dst_rows} rows), "
            f"not {direction}"
        )
    src_grid, dst_grid = official_grids(table_direction)
    return table_direction, src_grid, dst_grid


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
        return load_file(str(path)), metadata
    except (SafetensorError, OSError) as exc:
        raise OmamaError(f"cannot read {path} as safetensors: {exc}") from exc


def matcher_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata an omama ``.safetensors`` matcher checkpoint records (empty for .pt)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return {}
    return _read_safetensors(path)[1]


def load_matcher(
    path: str | os.PathLike, direction: str | None = None, map_location: str = "cpu"
) -> OMaMaMatcher:
    """Load a matcher from the official ``.pt``/``.pth`` state_dict or an omama
    ``.safetensors`` checkpoint, in eval mode.

    ``.pt`` files are read with ``torch.load(weights_only=True)`` (a plain state_dict, or
    one under "state_dict"/"model"); their direction and grids come from the table sizes
    (official grids only). ``.safetensors`` files carry direction, grids, width, heads and
    backbone in their metadata. ``direction``, when given, must agree with the checkpoint.
    Keys or shapes that do not fit raise an OmamaError listing them.
    """
    path = Path(path)
    if not path.is_file():
        raise OmamaError(f"matcher checkpoint not found: {path}")
    metadata: dict[str, str] = {}
    if path.suffix in (".pt", ".pth"):
        try:
            loaded = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as exc:  # unpickling errors have many types
            raise OmamaError(f"cannot read {path} as a PyTorch weights file: {exc}") from exc
        state = _unwrap_state_dict(loaded, path)
    elif path.suffix == ".safetensors":
        state, metadata = _read_safetensors(path)
    else:
        raise OmamaError(f"{path}: unknown matcher checkpoint type (use .pt, .pth or .safetensors)")

    if metadata.get("format") == METADATA_FORMAT:
        stored = check_direction(metadata["direction"])
        if direction is not None and check_direction(direction) != stored:
            raise OmamaError(f"{path} is a {stored} matcher, not {direction}")
        model = OMaMaMatcher(
            direction=stored,
            src_grid=_parse_grid(metadata["src_grid"], path),
            dst_grid=_parse_grid(metadata["dst_grid"], path),
            dim=int(metadata.get("dim", 768)),
            heads=int(metadata.get("heads", 4)),
            backbone=metadata.get("backbone", DEFAULT_BACKBONE),
        )
    else:
        stored, src_grid, dst_grid = _grids_from_tables(state, direction, path)
        dim = state["pos_embed_T"].shape[2]
        model = OMaMaMatcher(direction=stored, src_grid=src_grid, dst_grid=dst_grid, dim=dim)
    _check_state_dict(model, state, path)
    model.load_state_dict(state, strict=True)
    return model.to(map_location).eval()


def save_matcher(
    model: OMaMaMatcher,
    path: str | os.PathLike,
    extra_metadata: dict[str, object] | None = None,
) -> Path:
    """Write ``model`` as ``.safetensors`` (atomically) with the metadata ``load_matcher``
    needs: format, direction, grids, width, heads, backbone and the omama version.
    ``extra_metadata`` values are stored as strings and may not override those keys.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise OmamaError(f"matcher checkpoints are written as .safetensors, got {path}")
    metadata = {
        "format": METADATA_FORMAT,
        "direction": model.direction,
        "src_grid": _format_grid(model.src_grid),
        "dst_grid": _format_grid(model.dst_grid),
        "dim": str(model.dim),
        "heads": str(model.heads),
        "backbone": model.backbone,
        "omama_version": omama_version,
    }
    clashes = sorted(set(extra_metadata or {}) & set(metadata))
    if clashes:
        raise ValueError(f"extra_metadata may not override {', '.join(clashes)}")
    metadata.update({str(k): str(v) for k, v in (extra_metadata or {}).items()})
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path
