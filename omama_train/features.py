"""``omama features``: backbone feature maps computed once per image, cached as fp16.

Every unique image of the pairs files, i.e. every ``(take, cam, frame)`` over both views of
every pair, goes through the backbone once; the (768, h, w) maps are stored in float16 in a
memory-mappable store that training reads instead of running DINOv2 again every epoch.

Store layout (``CACHE``)::

    CACHE/meta.json                        what built it: backbone, weights sha256, sizes, dtype
    CACHE/chunks/<view>-<i>of<n>-<seq>.npy  float16 (rows, C, h, w): the maps of up to K images
    CACHE/chunks/<view>-<i>of<n>-<seq>.json index part: the "take/cam/frame" key of every row
    CACHE/report[_shard_i_n].json           the last run's summary (counts, MB per 1000 images)
    CACHE/backbone.safetensors              --random-init only: the weights it computed with

``<view>`` is ``ego`` or ``exo`` (the two views have different token grids, so they never
share a file), ``<i>of<n>`` the shard that wrote it and ``<seq>`` a per-shard counter.

Writing. Images are sorted; shard ``i/n`` takes ``[i::n]`` of that list, so shards on
several machines partition the images without talking to each other. Within a shard the
images of one view go through the backbone in batches; every ``flush_every`` (K) images
form a chunk: its rows are written into a temporary ``.npy`` (an ``open_memmap``, so a
chunk never sits in RAM), which is renamed onto its final name once complete, and only then
is its index part written (atomically). An index part therefore always describes a complete
data file, and an interrupted run loses at most the chunk it was writing: the next run
skips every key already indexed (by any shard) and goes on. Leftovers of this shard's
interrupted chunks (temporary files, data files without an index part) are removed at the
start. One process per shard at a time.

Compatibility. ``meta.json`` is created once, by the first run (``os.link``, so concurrent
shards cannot overwrite each other), and records the backbone (name, timm overrides, patch
size, positional interpolation), the sha256 of the weights, whether they are a seeded
random initialisation, each view's image sizes (the processed jpg's landscape size, and the
model input: that rounded down to the patch-14 grid, times the backbone's patch) and token
grid, the channels and the dtype. A later run, or a reader given ``expect``, with other weights,
another backbone, other sizes or another dtype is refused with a message naming what
differs. The weights hash covers the tensors actually loaded: the checkpoint's tensors as
read (sorted key order: name, dtype, shape, bytes) plus, for backbones whose 1x1 projection
to 768 channels is not in the file, that projection's seeded initialisation
(``omama_train.models.backbones.seeded_projection(spec, seed)``, which ``omama export``
uses too); for ``random_init`` the whole seeded state. So a file replaced under the same
name is noticed.

Random initialisation (tests, demos, benchmarks; no checkpoint needed): the backbone is
built at its pretraining grid (37 x 37 tokens) under ``torch.manual_seed(seed)``, and that
state is loaded into each view's model through the regular checkpoint loader, so both views
share one set of weights with the official positional interpolation. That state is also
written to ``CACHE/backbone.safetensors`` (recorded in ``meta.json`` with its sha256; a
resumed run checks it), the file to export the cache's backbone with (``omama export
--backbone-weights``); read back by ``--weights`` it gives the same weights sha256, so the
cache accepts it as its own.

Landscape rule (OMAMA_REFERENCE.md section 7): a view's model input size comes from the
landscape size of its images; a portrait frame of that view is resized (nearest, not
rotated) straight to it, as the training dataset does. Frames whose landscape size is not
the view's are refused.

Reading. :class:`FeatureCache` merges every index part present (shards included) and opens
each data file with ``np.load(mmap_mode="r")`` on first use: nothing is read until a key is
asked for, and then only that key's rows. ``get_array`` returns a read-only view into the
memory map (no copy); ``get`` / ``get_many`` return torch tensors that own a copy of just
the requested maps. The reader needs numpy only; torch is imported by ``get``/``get_many``.

Compute: ``torch.inference_mode``; on CUDA under ``torch.autocast(float16)``, on CPU in
float32; stored as float16 either way (non-finite values are refused). JPEGs are decoded by
a small thread pool ahead of the model; preprocessing (nearest resize to the model input
size, ImageNet normalisation) runs on the device with the torch twin of
``runtime.preprocess``, which is bit-identical to it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import cv2
import numpy as np
import typer

from omama_train.data.masks import parse_shard, select_shard
from runtime.atomic import atomic_path, temp_path_beside, write_json
from runtime.egoexo import (
    DIRECTIONS,
    Pair,
    ProcessedRoot,
    check_direction,
    is_ego_cam,
    pairs_path,
    read_pairs,
)
from runtime.errors import OmamaError
from runtime.preprocess import model_input_size, resize_nearest_hw

if TYPE_CHECKING:  # torch stays out of module import (omama --help must be fast)
    import torch

    from omama_train.models.backbones import Backbone, BackboneSpec

FORMAT = "omama-feature-cache"
FORMAT_VERSION = 1
DTYPE = "float16"
META_NAME = "meta.json"
CHUNKS_DIR = "chunks"
BACKBONE_FILE = "backbone.safetensors"  # the weights of a --random-init cache
VIEWS: tuple[str, ...] = ("ego", "exo")
DEFAULT_FLUSH_EVERY = 256
PREFETCH_BATCHES = 2  # batches decoded ahead of the model


# ------------------------------------------------------------------------------- images


class ImageKey(NamedTuple):
    """One processed image; the cache key is ``"take/cam/frame"``."""

    take: str
    cam: str
    frame: int

    def __str__(self) -> str:
        return f"{self.take}/{self.cam}/{int(self.frame)}"

    @property
    def view(self) -> str:
        return view_of(self.cam)


def view_of(cam: str) -> str:
    """``"ego"`` for Aria cameras, ``"exo"`` otherwise."""
    return "ego" if is_ego_cam(cam) else "exo"


def key_text(key: ImageKey | tuple | str) -> str:
    """Normalise ``(take, cam, frame)`` or ``"take/cam/frame"`` to the cache key string."""
    if isinstance(key, str):
        return key
    take, cam, frame = key
    return f"{take}/{cam}/{int(frame)}"


def unique_images(pairs: Iterable[Pair]) -> list[ImageKey]:
    """Sorted unique images over both views of every pair."""
    keys = set()
    for p in pairs:
        keys.add(ImageKey(p.take, p.ego_cam, int(p.frame)))
        keys.add(ImageKey(p.take, p.exo_cam, int(p.frame)))
    return sorted(keys)


def jpeg_size_hw(path: Path) -> tuple[int, int]:
    """(H, W) of an image from its header only (no decoding)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            w, h = im.size
    except (OSError, UnidentifiedImageError) as exc:
        raise OmamaError(f"image {path} is not readable: {exc}") from exc
    return int(h), int(w)


def read_rgb(path: Path) -> np.ndarray:
    """Decoded RGB uint8 (H, W, 3) of ``path``; OmamaError when it cannot be decoded."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise OmamaError(f"image {path} could not be decoded; prepare that take again")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def resolve_pairs_files(
    root: Path,
    pairs: Sequence[Path] = (),
    splits: Sequence[str] | None = None,
    direction: str = "all",
) -> list[Path]:
    """The pairs files to take images from.

    Explicit ``pairs`` files are used as given. ``splits`` (or, when neither is given, every
    split of ``ROOT/split.json``) adds ``ROOT/dataset_jsons/<split>_<tag>_pairs.json`` for
    ``direction`` (``exo2ego``, ``ego2exo`` or ``all``). With ``all``, a direction whose
    file is absent is passed over; a named direction must have its file.
    """
    root = Path(root)
    files = [Path(p) for p in pairs]
    if splits is None and not files:
        splits = ProcessedRoot(root).splits()
    directions = DIRECTIONS if direction == "all" else (check_direction(direction),)
    looked: list[Path] = []
    for split in splits or ():
        for d in directions:
            path = pairs_path(root, split, d)
            looked.append(path)
            if path.is_file():
                files.append(path)
            elif direction != "all":
                raise OmamaError(f"pairs file not found: {path} (run omama data pairs first)")
    if not files:
        where = ", ".join(str(p) for p in looked) or str(root / "dataset_jsons")
        raise OmamaError(f"no pairs file found ({where}); run omama data pairs first")
    return list(dict.fromkeys(files))


# ------------------------------------------------------------------------------- weights


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
    """

    spec: BackboneSpec
    pos_resize: str | None
    file: Path | None
    random_init: bool
    seed: int
    sha256: str
    projection_seeded: bool = False
    _state: dict[str, torch.Tensor] | None = field(default=None, repr=False)

    @classmethod
    def resolve(
        cls,
        backbone: str | BackboneSpec,
        weights: str | Path | None = None,
        *,
        random_init: bool = False,
        seed: int = 0,
        pos_resize: str | None = None,
    ) -> BackboneWeights:
        from omama_train.models.backbones import (
            POS_RESIZES,
            get_spec,
            random_backbone_state,
            read_state_dict,
            seeded_projection,
        )

        spec = backbone if not isinstance(backbone, str) else get_spec(backbone)
        if pos_resize is not None and pos_resize not in POS_RESIZES:
            raise OmamaError(
                f"--pos-resize must be one of {', '.join(POS_RESIZES)}, got {pos_resize!r}"
            )
        if random_init == (weights is not None):
            raise OmamaError("pass either --weights PATH or --random-init (not both, not neither)")
        if random_init:
            state = random_backbone_state(spec, seed)
            return cls(spec, pos_resize, None, True, seed, weights_sha256(state), False, state)
        path = Path(weights)  # type: ignore[arg-type]
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
            self.spec, image_size_hw, self.seed, self.pos_resize, state=self._state
        )

    def describe(self) -> dict:
        """The ``weights`` entry of ``meta.json``."""
        return {
            "sha256": self.sha256,
            "random_init": self.random_init,
            "seed": self.seed if self.random_init or self.projection_seeded else None,
            "file": None if self.file is None else str(self.file),
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


def view_sizes(source_size_hw: tuple[int, int], patch_size: int) -> dict:
    """A view's entry in ``meta["views"]``: jpg size (landscape: a portrait jpg's size is
    swapped, ``omama_train.sampling.landscape_size``), model input size and token grid."""
    from omama_train.sampling import landscape_size

    h, w = landscape_size(source_size_hw)
    image = model_input_size(h, w, patch_size)
    return {
        "source_size_hw": [h, w],
        "image_size_hw": list(image),
        "grid_hw": [image[0] // patch_size, image[1] // patch_size],
    }


def write_backbone_file(out: Path, bw: BackboneWeights) -> dict:
    """``CACHE/backbone.safetensors``: the exact weights of a ``--random-init`` cache.

    The whole ``Backbone`` state (trunk at the 37 x 37 pretraining grid, projection), so
    ``build_backbone(spec, any_size, file)`` rebuilds what computed the features and
    ``omama export --backbone-weights`` exports it; ``omama features --weights`` on it gives
    the cache's weights sha256. Written atomically; a file already there is kept when it
    holds these weights and refused otherwise. Returns ``{"name", "sha256"}`` (sha256 of
    the file's bytes, as an export manifest records it).
    """
    from omama_train.models.backbones import read_state_dict, save_backbone_weights
    from runtime.manifest import sha256_file

    if bw.state is None:
        raise OmamaError("only --random-init weights are written into the cache")
    path = Path(out) / BACKBONE_FILE
    if path.exists():
        held = weights_sha256(read_state_dict(path))
        if held != bw.sha256:
            raise OmamaError(
                f"{path} holds other weights (sha256 {_short(held)}...) than this cache "
                f"({_short(bw.sha256)}...): delete it and run again to rewrite it"
            )
    else:
        info = {
            "format": "omama-backbone",
            "backbone": backbone_identity(bw.spec, bw.pos_resize),
            "random_init": True,
            "seed": bw.seed,
            "weights_sha256": bw.sha256,
        }
        save_backbone_weights(bw.state, path, info)
    return {"name": BACKBONE_FILE, "sha256": sha256_file(path)}


# ------------------------------------------------------------------------------- meta


def _omama_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("omama")
    except PackageNotFoundError:
        return None


def _fmt_hw(hw: Sequence[int]) -> str:
    return f"{int(hw[0])}x{int(hw[1])}"


def _short(sha: str | None) -> str:
    return "none" if sha is None else sha[:12]


def compatibility_problems(
    meta: dict,
    *,
    backbone: str | dict | None = None,
    weights_sha256: str | None = None,
    image_sizes: Mapping[str, Sequence[int]] | None = None,
    dtype: str | None = None,
    pos_resize: str | None = None,
) -> list[str]:
    """What differs between a cache's ``meta`` and what a user of it expects.

    ``backbone``: a name, or a ``backbone_identity`` dict (then timm overrides, patch size
    and positional interpolation count too). ``image_sizes``: model input (H, W) per view.
    Returns one clause per difference (empty: compatible).
    """
    problems: list[str] = []
    have_bb = meta.get("backbone", {})
    if backbone is not None:
        want = {"name": backbone} if isinstance(backbone, str) else backbone
        if want.get("name") != have_bb.get("name"):
            problems.append(f"backbone {have_bb.get('name')}, not {want.get('name')}")
        else:
            for key in ("timm_overrides", "patch_size", "out_channels", "pos_resize"):
                if key in want and want[key] != have_bb.get(key):
                    problems.append(
                        f"backbone {key} {have_bb.get(key)!r}, not {want[key]!r} "
                        f"({want.get('name')})"
                    )
    if pos_resize is not None and pos_resize != have_bb.get("pos_resize"):
        problems.append(f"pos_resize {have_bb.get('pos_resize')!r}, not {pos_resize!r}")
    have_sha = meta.get("weights", {}).get("sha256")
    if weights_sha256 is not None and weights_sha256 != have_sha:
        problems.append(
            f"weights sha256 {_short(have_sha)}..., these weights are {_short(weights_sha256)}..."
        )
    for view, size in (image_sizes or {}).items():
        have = meta.get("views", {}).get(view)
        if have is None:
            problems.append(f"no {view} view")
        elif [int(s) for s in size] != list(have["image_size_hw"]):
            problems.append(
                f"{view} images of {_fmt_hw(have['image_size_hw'])} px "
                f"({_fmt_hw(have['grid_hw'])} tokens), not {_fmt_hw(size)} px"
            )
    if dtype is not None and dtype != meta.get("dtype"):
        problems.append(f"dtype {meta.get('dtype')}, not {dtype}")
    return problems


def _incompatible(path: Path, problems: list[str], option: str = "--cache") -> OmamaError:
    return OmamaError(
        f"feature cache at {path} was built with {'; '.join(problems)}: rebuild it with "
        f"omama features or point {option} elsewhere"
    )


def read_meta(path: Path) -> dict:
    """``CACHE/meta.json``; OmamaError when absent, unreadable or not a feature cache."""
    meta_path = Path(path) / META_NAME
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise OmamaError(
            f"no feature cache at {path} ({META_NAME} missing): build it with omama features"
        ) from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OmamaError(f"{meta_path} is not readable JSON: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise OmamaError(f"{meta_path} does not describe an omama feature cache")
    if meta.get("format_version") != FORMAT_VERSION:
        raise OmamaError(
            f"{meta_path} has format version {meta.get('format_version')}, this omama reads "
            f"{FORMAT_VERSION}: rebuild the cache with omama features"
        )
    return meta


def create_or_check_meta(path: Path, meta: dict) -> dict:
    """Write ``meta`` as ``CACHE/meta.json`` unless one exists; an existing one must agree.

    Creation is a hard link of a finished temporary file, so two shards starting at once
    cannot overwrite each other: the second one checks against the first one's file.
    Returns the meta in force.
    """
    path = Path(path)
    meta_path = path / META_NAME
    if not meta_path.exists():
        tmp = temp_path_beside(meta_path)  # removed below: only meta.json stays
        try:
            tmp.write_text(json.dumps(meta, indent=2), encoding="utf-8")
            try:
                os.link(tmp, meta_path)
            except FileExistsError:
                pass  # another shard was first: check against its file below
            except OSError:  # a file system without hard links
                if not meta_path.exists():
                    os.replace(tmp, meta_path)
            else:
                return meta
        finally:
            tmp.unlink(missing_ok=True)
    existing = read_meta(path)
    problems = compatibility_problems(
        existing,
        backbone=meta["backbone"],
        weights_sha256=meta["weights"]["sha256"],
        image_sizes={v: s["image_size_hw"] for v, s in meta["views"].items()},
        dtype=meta["dtype"],
    )
    if problems:
        raise _incompatible(path, problems, "--out")
    return existing


# ------------------------------------------------------------------------------- reader


@dataclass
class _Chunk:
    name: str
    view: str
    data: Path
    keys: list[str]


def _read_index_part(path: Path, chunks_dir: Path) -> _Chunk:
    try:
        part = json.loads(path.read_text(encoding="utf-8"))
        keys, view, data = part["keys"], part["view"], part["file"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise OmamaError(f"index part {path} is not readable: {exc}") from exc
    return _Chunk(path.stem, str(view), chunks_dir / data, [str(k) for k in keys])


def _index_parts(chunks_dir: Path) -> list[Path]:
    if not chunks_dir.is_dir():
        return []
    # Dot-files are temporaries of a write in progress.
    return sorted(p for p in chunks_dir.glob("*.json") if not p.name.startswith("."))


class FeatureCache:
    """Read a feature cache: ``(C, h, w)`` float16 maps by ``(take, cam, frame)``.

    Arguments:
        path: the ``CACHE`` folder written by ``omama features``.
        expect: optional keyword arguments of :meth:`check_compatible` (``backbone``,
            ``weights_sha256``, ``image_sizes``, ``dtype``, ``pos_resize``), checked now.

    Every index part present is merged (shards included; a key written twice keeps its
    first part in name order). Data files are memory-mapped on first use; nothing else is
    read. Pickles without its open maps (fine for DataLoader workers).
    """

    def __init__(self, path: str | os.PathLike, expect: dict | None = None) -> None:
        self.path = Path(path)
        self.meta: dict = read_meta(self.path)
        self._chunks: list[_Chunk] = []
        self._index: dict[str, tuple[int, int]] = {}
        self._maps: dict[int, np.ndarray] = {}
        self.duplicates = 0
        self.reload()
        if expect:
            self.check_compatible(**expect)

    def reload(self) -> None:
        """Re-read the index parts (picks up chunks written since, e.g. by other shards)."""
        self._chunks, self._index, self._maps, self.duplicates = [], {}, {}, 0
        chunks_dir = self.path / CHUNKS_DIR
        for part in _index_parts(chunks_dir):
            chunk = _read_index_part(part, chunks_dir)
            if chunk.view not in self.meta["views"]:
                raise OmamaError(f"index part {part} is for view {chunk.view!r}, not in meta")
            number = len(self._chunks)
            self._chunks.append(chunk)
            for row, key in enumerate(chunk.keys):
                if key in self._index:
                    self.duplicates += 1
                else:
                    self._index[key] = (number, row)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_maps"] = {}
        return state

    def __repr__(self) -> str:
        bb = self.meta["backbone"]["name"]
        return f"FeatureCache({str(self.path)!r}, {len(self)} images, {bb})"

    # Metadata ----------------------------------------------------------------------------
    @property
    def views(self) -> list[str]:
        return list(self.meta["views"])

    @property
    def backbone(self) -> str:
        """Registered name of the backbone that computed the maps."""
        return self.meta["backbone"]["name"]

    @property
    def channels(self) -> int:
        return int(self.meta["channels"])

    @property
    def weights_sha256(self) -> str:
        return self.meta["weights"]["sha256"]

    def grid(self, view: str) -> tuple[int, int]:
        """Token grid (h, w) of ``view`` (``"ego"``/``"exo"``, or a camera name)."""
        return tuple(self._view(view)["grid_hw"])  # type: ignore[return-value]

    def image_size(self, view: str) -> tuple[int, int]:
        """Model input size (H, W) px of ``view`` (``"ego"``/``"exo"``, or a camera name)."""
        return tuple(self._view(view)["image_size_hw"])  # type: ignore[return-value]

    def _view(self, view: str) -> dict:
        name = view if view in VIEWS else view_of(view)
        if name not in self.meta["views"]:
            raise OmamaError(f"feature cache at {self.path} has no {name} view")
        return self.meta["views"][name]

    def check_compatible(
        self,
        backbone: str | dict | None = None,
        weights_sha256: str | None = None,
        image_sizes: Mapping[str, Sequence[int]] | None = None,
        dtype: str | None = None,
        pos_resize: str | None = None,
    ) -> None:
        """Raise OmamaError naming what differs (backbone, weights, size, dtype)."""
        problems = compatibility_problems(
            self.meta,
            backbone=backbone,
            weights_sha256=weights_sha256,
            image_sizes=image_sizes,
            dtype=dtype,
            pos_resize=pos_resize,
        )
        if problems:
            raise _incompatible(self.path, problems)

    # Keys --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: object) -> bool:
        try:
            return key_text(key) in self._index  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return False

    def keys(self) -> list[str]:
        """Every cached ``"take/cam/frame"`` key, sorted."""
        return sorted(self._index)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def locate(self, take: str, cam: str, frame: int) -> tuple[Path, int]:
        """(data file, row) holding the map of that image."""
        number, row = self._lookup(key_text((take, cam, frame)))
        return self._chunks[number].data, row

    def _lookup(self, key: str) -> tuple[int, int]:
        try:
            return self._index[key]
        except KeyError:
            raise OmamaError(
                f"image {key} is not in the feature cache at {self.path}; run omama features "
                "with pairs files that include it"
            ) from None

    def _map(self, number: int) -> np.ndarray:
        mapped = self._maps.get(number)
        if mapped is None:
            chunk = self._chunks[number]
            try:
                mapped = np.load(chunk.data, mmap_mode="r")
            except (OSError, ValueError) as exc:
                raise OmamaError(f"feature file {chunk.data} is not readable: {exc}") from exc
            grid = self.meta["views"][chunk.view]["grid_hw"]
            expected = (len(chunk.keys), self.channels, *grid)
            if mapped.shape != expected or mapped.dtype != np.dtype(self.meta["dtype"]):
                raise OmamaError(
                    f"feature file {chunk.data} holds {mapped.dtype} {mapped.shape}, its index "
                    f"part says {self.meta['dtype']} {expected}: rebuild the cache"
                )
            self._maps[number] = mapped
        return mapped

    # Maps --------------------------------------------------------------------------------
    def get_array(self, take: str, cam: str, frame: int) -> np.ndarray:
        """float16 (C, h, w): a read-only view into the memory map (no copy, no torch)."""
        number, row = self._lookup(key_text((take, cam, frame)))
        return self._map(number)[row]

    def get_many_array(self, keys: Sequence[ImageKey | tuple | str]) -> np.ndarray:
        """float16 (n, C, h, w) of ``keys`` (one view), in order: a copy of those rows only.

        Rows of one file are gathered in file order, so sorted keys read sequentially.
        """
        texts = [key_text(k) for k in keys]
        located = [self._lookup(t) for t in texts]
        views = {self._chunks[n].view for n, _ in located}
        if len(views) > 1:
            raise OmamaError(f"get_many needs keys of one view (one token grid), got {views}")
        view = views.pop() if views else self.views[0]
        out = np.empty((len(texts), self.channels, *self.grid(view)), dtype=self.meta["dtype"])
        by_file: dict[int, list[tuple[int, int]]] = {}
        for position, (number, row) in enumerate(located):
            by_file.setdefault(number, []).append((row, position))
        for number, rows in by_file.items():
            rows.sort()
            out[[p for _, p in rows]] = self._map(number)[[r for r, _ in rows]]
        return out

    def get(self, take: str, cam: str, frame: int) -> torch.Tensor:
        """float16 tensor (C, h, w) of one image: owns a copy of that one map (writable)."""
        import torch

        return torch.from_numpy(np.array(self.get_array(take, cam, frame)))

    def get_many(self, keys: Sequence[ImageKey | tuple | str]) -> torch.Tensor:
        """float16 tensor (n, C, h, w) of ``keys`` (one view), in order; a copy of those maps."""
        import torch

        return torch.from_numpy(self.get_many_array(keys))

    # Size --------------------------------------------------------------------------------
    def disk_usage(self) -> dict[str, dict[str, float]]:
        """Per view: images, bytes of its data files, MB per 1000 images (1 MB = 1e6 B)."""
        out: dict[str, dict[str, float]] = {}
        for chunk in self._chunks:
            entry = out.setdefault(chunk.view, {"images": 0, "bytes": 0})
            entry["images"] += len(chunk.keys)
            entry["bytes"] += chunk.data.stat().st_size if chunk.data.is_file() else 0
        for entry in out.values():
            entry["mb_per_1000_images"] = (
                round(entry["bytes"] / entry["images"] * 1000 / 1e6, 2) if entry["images"] else 0.0
            )
        return out


# ------------------------------------------------------------------------------- writer


def _chunk_prefix(view: str, shard: tuple[int, int]) -> str:
    return f"{view}-{shard[0]:03d}of{shard[1]:03d}-"


def _clean_and_next_seq(chunks_dir: Path, prefix: str) -> int:
    """Remove this shard's leftovers of an interrupted chunk; the next free sequence number."""
    if not chunks_dir.is_dir():
        return 0
    for tmp in chunks_dir.glob(f".{prefix}*"):
        tmp.unlink(missing_ok=True)
    seqs = [-1]
    for data in chunks_dir.glob(f"{prefix}*.npy"):
        if not data.with_suffix(".json").is_file():
            data.unlink(missing_ok=True)  # renamed, but its index part was never written
            continue
        seqs.append(int(data.stem[len(prefix) :]))
    for part in chunks_dir.glob(f"{prefix}*.json"):
        seqs.append(int(part.stem[len(prefix) :]))
    return max(seqs) + 1


def _decoded_batches(batches: Sequence[Sequence[Path]], threads: int) -> Iterator[list[np.ndarray]]:
    """Decoded RGB images batch by batch, ``PREFETCH_BATCHES`` batches read ahead."""
    with ThreadPoolExecutor(max_workers=threads) as pool:
        pending: deque[list[Future]] = deque()
        upcoming = iter(batches)
        for batch in upcoming:
            pending.append([pool.submit(read_rgb, p) for p in batch])
            if len(pending) > PREFETCH_BATCHES:
                break
        while pending:
            futures = pending.popleft()
            nxt = next(upcoming, None)
            if nxt is not None:
                pending.append([pool.submit(read_rgb, p) for p in nxt])
            yield [f.result() for f in futures]


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _batches(items: Sequence, size: int) -> list[Sequence]:
    return [items[i : i + size] for i in range(0, len(items), size)]


@dataclass
class _RunStats:
    computed: dict[str, int] = field(default_factory=lambda: {v: 0 for v in VIEWS})
    compute_s: dict[str, float] = field(default_factory=lambda: {v: 0.0 for v in VIEWS})
    portrait: dict[str, int] = field(default_factory=lambda: {v: 0 for v in VIEWS})
    chunks: list[str] = field(default_factory=list)


def _compute_view(
    model: Backbone,
    view: str,
    keys: list[ImageKey],
    index: ProcessedRoot,
    out: Path,
    *,
    shard: tuple[int, int],
    source_size_hw: tuple[int, int],
    device: str,
    batch_size: int,
    flush_every: int,
    io_threads: int,
    bar,
    stats: _RunStats,
) -> None:
    """Features of ``keys`` (one view) in chunks of ``flush_every`` images (see module doc)."""
    import torch

    from omama_train.models.preprocess import preprocess_image_torch
    from omama_train.sampling import landscape_size

    chunks_dir = out / CHUNKS_DIR
    prefix = _chunk_prefix(view, shard)
    seq = _clean_and_next_seq(chunks_dir, prefix)
    grid = model.grid
    cuda = device.startswith("cuda")
    amp = torch.autocast("cuda", dtype=torch.float16) if cuda else contextlib.nullcontext()
    chunks = _batches(keys, flush_every)
    batches = [batch for chunk in chunks for batch in _batches(chunk, batch_size)]
    decoded = _decoded_batches([[index.image_path(*k) for k in b] for b in batches], io_threads)
    with contextlib.closing(decoded):
        for chunk in chunks:
            name = f"{prefix}{seq:05d}"
            seq += 1
            data_path = chunks_dir / f"{name}.npy"
            with atomic_path(data_path) as tmp:
                rows = np.lib.format.open_memmap(
                    tmp, mode="w+", dtype=np.float16, shape=(len(chunk), model.out_channels, *grid)
                )
                start = 0
                while start < len(chunk):
                    rgbs = next(decoded)
                    batch = chunk[start : start + len(rgbs)]
                    for key, rgb in zip(batch, rgbs, strict=True):
                        if landscape_size(rgb.shape[:2]) != tuple(source_size_hw):
                            raise OmamaError(
                                f"image {index.image_path(*key)} is {_fmt_hw(rgb.shape[:2])} px, "
                                f"the {view} images of the cache at {out} are "
                                f"{_fmt_hw(source_size_hw)} (or portrait {source_size_hw[1]}x"
                                f"{source_size_hw[0]})"
                            )
                    portrait = sum(rgb.shape[0] > rgb.shape[1] for rgb in rgbs)
                    if portrait:
                        # Resized (not rotated) straight to the model size, as the dataset
                        # does; the rest of the batch too, so it stacks (same indices as
                        # the device resize, so landscape images are unchanged by this).
                        rgbs = [
                            resize_nearest_hw(rgb, model.image_size, axes=(0, 1), rule="opencv")
                            for rgb in rgbs
                        ]
                        stats.portrait[view] += portrait
                    t0 = time.perf_counter()
                    with torch.inference_mode(), amp:
                        x = torch.from_numpy(np.stack(rgbs)).to(device, non_blocking=True)
                        x = preprocess_image_torch(x, size_hw=model.image_size)
                        feats = model(x).to(torch.float16)
                    if not bool(torch.isfinite(feats).all()):
                        raise OmamaError(
                            f"features of {batch[0]} (batch of {len(batch)}) are not finite in "
                            "float16; check the weights"
                        )
                    rows[start : start + len(batch)] = feats.cpu().numpy()
                    stats.compute_s[view] += time.perf_counter() - t0
                    start += len(batch)
                    stats.computed[view] += len(batch)
                    bar.update(len(batch))
                rows.flush()
                del rows
                with open(tmp, "rb+") as fh:
                    os.fsync(fh.fileno())
            write_json(
                chunks_dir / f"{name}.json",
                {
                    "view": view,
                    "file": data_path.name,
                    "keys": [str(k) for k in chunk],
                    "shape": [len(chunk), model.out_channels, *grid],
                    "device": device,
                    "autocast_float16": cuda,
                    "written_at": datetime.now().astimezone().isoformat(timespec="seconds"),
                },
            )
            stats.chunks.append(name)


def report_path(out: Path, shard: tuple[int, int] = (0, 1)) -> Path:
    """``CACHE/report[_shard_i_n].json``."""
    suffix = "" if shard[1] == 1 else f"_shard_{shard[0]}_{shard[1]}"
    return Path(out) / f"report{suffix}.json"


def build_cache(
    root: str | os.PathLike,
    out: str | os.PathLike,
    pairs_files: Sequence[str | os.PathLike],
    backbone: str | BackboneSpec = "dinov2_vitb14_reg",
    *,
    weights: str | os.PathLike | None = None,
    random_init: bool = False,
    seed: int = 0,
    pos_resize: str | None = None,
    device: str | None = None,
    batch_size: int | None = None,
    shard: tuple[int, int] = (0, 1),
    flush_every: int = DEFAULT_FLUSH_EVERY,
    io_threads: int = 4,
    limit: int | None = None,
    progress: bool = True,
) -> dict:
    """Compute and store the features of this shard's images not cached yet.

    ``pairs_files``: the pairs JSON files whose images (both views) are cached.
    ``weights`` (a checkpoint ``load_backbone_weights`` reads) or ``random_init`` (seeded by
    ``seed``). ``device`` defaults to cuda when available; ``batch_size`` to 16 on CUDA, 4
    on CPU. ``limit`` stops after that many new images (a trial run; the rest follows on
    the next run). Returns the report (also written to ``report_path(out, shard)``).
    """
    import torch
    from tqdm import tqdm

    from omama_train.sampling import landscape_size

    started = time.perf_counter()
    root, out = Path(root), Path(out)
    device = device or default_device()
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise OmamaError(f"--device {device} asked for, but torch sees no CUDA GPU")
    batch_size = batch_size or (16 if device.startswith("cuda") else 4)
    for name, value in (("--batch-size", batch_size), ("--flush-every", flush_every)):
        if value < 1:
            raise OmamaError(f"{name} must be at least 1, got {value}")
    if io_threads < 1:
        raise OmamaError(f"--io-threads must be at least 1, got {io_threads}")
    if limit is not None and limit < 0:
        raise OmamaError(f"--limit must be at least 0, got {limit}")
    if out.exists() and not out.is_dir():
        raise OmamaError(f"--out {out} exists and is not a folder")

    pairs_files = [Path(p) for p in pairs_files]
    pairs = [pair for path in pairs_files for pair in read_pairs(path)]
    images = unique_images(pairs)
    index = ProcessedRoot(root)
    # Shards split the pairs' images, present or not, so every machine agrees on them.
    shard_images = select_shard(images, *shard)
    present = [k for k in shard_images if index.image_path(*k).is_file()]
    missing = [str(k) for k in shard_images if not index.image_path(*k).is_file()]

    bw = BackboneWeights.resolve(
        backbone, weights, random_init=random_init, seed=seed, pos_resize=pos_resize
    )
    identity = backbone_identity(bw.spec, pos_resize)
    # A view's size is its first present image's over all shards (so they agree on it);
    # every image computed is checked against it.
    firsts: dict[str, ImageKey] = {}
    for key in images:
        if key.view not in firsts and index.image_path(*key).is_file():
            firsts[key.view] = key
    views = {
        view: view_sizes(jpeg_size_hw(index.image_path(*firsts[view])), bw.spec.patch_size)
        for view in VIEWS
        if view in firsts
    }
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "backbone": identity,
        "weights": bw.describe(),
        "dtype": DTYPE,
        "channels": identity["out_channels"],
        "views": views,
        "omama_version": _omama_version(),
        "torch_version": torch.__version__,
        "created_at": datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    if (out / META_NAME).exists():
        # Refuse before any work when the cache was built otherwise.
        meta = create_or_check_meta(out, meta)
        cached = set(FeatureCache(out).keys())
    else:
        cached = set()
    for view in views:
        if view not in meta["views"]:
            raise OmamaError(f"feature cache at {out} has no {view} view: build a new cache")

    uncached = [k for k in present if str(k) not in cached]
    todo = uncached if limit is None else uncached[:limit]
    for key in todo:  # headers only: refuse a mismatch before computing anything
        size = jpeg_size_hw(index.image_path(*key))
        want = tuple(meta["views"][key.view]["source_size_hw"])
        if landscape_size(size) != want:
            raise OmamaError(
                f"image {index.image_path(*key)} is {_fmt_hw(size)} px, the {key.view} images "
                f"of the cache at {out} are {_fmt_hw(want)} (or portrait {want[1]}x{want[0]}, "
                "resized to it)"
            )
    saved_file = None
    if bw.random_init and (todo or (out / META_NAME).exists()):
        saved_file = write_backbone_file(out, bw)
        # Recorded by the run that creates meta.json (an existing one is only checked).
        meta["weights"] = {**meta["weights"], "saved_file": saved_file}
    if todo:
        meta = create_or_check_meta(out, meta)

    stats = _RunStats()
    with tqdm(
        total=len(todo), desc="features", unit="img", file=sys.stderr, disable=not progress
    ) as bar:
        for view in VIEWS:
            keys = [k for k in todo if k.view == view]
            if not keys:
                continue
            bar.set_postfix(view=view)
            size = tuple(meta["views"][view]["image_size_hw"])
            model = bw.build(size).to(device)  # type: ignore[arg-type]
            _compute_view(
                model,
                view,
                keys,
                index,
                out,
                shard=shard,
                source_size_hw=tuple(meta["views"][view]["source_size_hw"]),  # type: ignore[arg-type]
                device=device,
                batch_size=batch_size,
                flush_every=flush_every,
                io_threads=io_threads,
                bar=bar,
                stats=stats,
            )
            del model
            if device.startswith("cuda"):
                torch.cuda.empty_cache()

    usage = FeatureCache(out).disk_usage() if (out / META_NAME).exists() else {}
    computed = sum(stats.computed.values())
    compute_s = sum(stats.compute_s.values())
    elapsed = time.perf_counter() - started
    report = {
        "cache": str(out),
        "root": str(root),
        "pairs_files": [str(p) for p in pairs_files],
        "backbone": identity,
        "weights": bw.describe() | ({"saved_file": saved_file} if saved_file else {}),
        "shard": list(shard),
        "images_total": len(images),
        "images_in_shard": len(shard_images),
        "computed": computed,
        "computed_per_view": stats.computed,
        "portrait_resized_per_view": stats.portrait,
        "skipped_cached": len(present) - len(uncached),
        "left_for_later": len(uncached) - len(todo),
        "missing_images": missing,
        "chunks_written": stats.chunks,
        "disk": usage,
        "cache_mb": round(sum(v["bytes"] for v in usage.values()) / 1e6, 2),
        "device": device,
        "batch_size": batch_size,
        "timing": {
            "seconds_total": round(elapsed, 3),
            "images_per_s": round(computed / compute_s, 3) if compute_s else None,
            "images_per_s_per_view": {
                view: round(stats.computed[view] / stats.compute_s[view], 3)
                for view in VIEWS
                if stats.compute_s[view]
            },
        },
        "finished_at": datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
        },
    }
    if (out / META_NAME).exists():
        write_json(report_path(out, shard), report, indent=2)
    return report


def summary_text(report: dict) -> str:
    """The one-paragraph summary printed by ``omama features``."""
    shard = report["shard"]
    where = "" if shard[1] == 1 else f" (shard {shard[0]}/{shard[1]})"
    rate = report["timing"]["images_per_s"]
    lines = [
        f"{report['images_in_shard']} images{where} of {report['images_total']}: "
        f"{report['computed']} computed, {report['skipped_cached']} already cached, "
        f"{report['left_for_later']} left for a later run (--limit), "
        f"{len(report['missing_images'])} missing"
        + (f"; {rate:.2f} images/s on {report['device']}" if rate else ""),
        f"cache {report['cache']}: {report['cache_mb']:.1f} MB on disk",
    ]
    for view, usage in report["disk"].items():
        lines.append(
            f"  {view}: {usage['images']} images, {usage['bytes'] / 1e6:.1f} MB, "
            f"{usage['mb_per_1000_images']:.1f} MB per 1000 images"
        )
    portrait = {v: n for v, n in report.get("portrait_resized_per_view", {}).items() if n}
    if portrait:
        lines.append(
            "portrait frames resized to their view's landscape size: "
            + ", ".join(f"{n} {v}" for v, n in portrait.items())
        )
    weights = report["weights"]
    if weights.get("saved_file"):
        path = Path(report["cache"]) / weights["saved_file"]["name"]
        lines.append(
            f"backbone weights (random init, seed {weights['seed']}): {path} "
            f"(export with --backbone-weights {path})"
        )
    elif weights.get("random_init") is False and weights.get("seed") is not None:
        lines.append(
            f"{weights['file']} has no 1x1 projection to 768 channels: it is seeded with "
            f"--seed {weights['seed']} (export with --backbone-weights {weights['file']} "
            f"--seed {weights['seed']})"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------- CLI


def _split_list(text: str | None) -> list[str] | None:
    if text is None or text == "all":
        return None
    return [s.strip() for s in text.split(",") if s.strip()]


def register(app: typer.Typer) -> None:
    @app.command("features")
    def features_command(
        root: Path = typer.Option(..., "--root", help="Processed root (from omama data prepare)."),
        out: Path = typer.Option(..., "--out", help="Cache folder to write (or complete)."),
        pairs: list[Path] = typer.Option(
            [], "--pairs", help="Pairs JSON whose images are cached (repeatable)."
        ),
        split: str | None = typer.Option(
            None,
            "--split",
            help="Comma-separated splits whose ROOT/dataset_jsons pairs files are used, or "
            "'all' (default when no --pairs is given).",
        ),
        direction: str = typer.Option(
            "all", "--direction", help="Pairs files of exo2ego, ego2exo or all (with --split)."
        ),
        backbone: str = typer.Option(
            "dinov2_vitb14_reg", "--backbone", help="Registered backbone name."
        ),
        weights: Path | None = typer.Option(
            None, "--weights", help="Backbone checkpoint (official, Hugging Face, timm, omama)."
        ),
        random_init: bool = typer.Option(
            False, "--random-init", help="Seeded random weights instead of --weights (tests)."
        ),
        seed: int = typer.Option(
            0, "--seed", help="Seed of --random-init (and of a 1x1 projection a file lacks)."
        ),
        pos_resize: str | None = typer.Option(
            None,
            "--pos-resize",
            help="DINOv2 positional interpolation: bicubic_antialias or bicubic_offset "
            "(default: the torch-hub model's).",
        ),
        shard: str = typer.Option("0/1", "--shard", help="Process shard i of n (0-based)."),
        device: str | None = typer.Option(
            None, "--device", help="cpu, cuda or cuda:N (default: cuda when available)."
        ),
        batch_size: int | None = typer.Option(
            None, "--batch-size", help="Images per forward (default: 16 on CUDA, 4 on CPU)."
        ),
        flush_every: int = typer.Option(
            DEFAULT_FLUSH_EVERY,
            "--flush-every",
            help="Images per chunk file; a chunk is the most an interruption loses.",
        ),
        io_threads: int = typer.Option(4, "--io-threads", help="Threads decoding JPEGs."),
        limit: int | None = typer.Option(
            None, "--limit", help="Stop after this many new images (a trial run)."
        ),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar."),
    ) -> None:
        """Run the backbone once per unique image of the pairs and cache fp16 feature maps.

        Writes CACHE/meta.json (backbone, weights sha256, image sizes, dtype), chunk files
        CACHE/chunks/<view>-<i>of<n>-<seq>.npy (float16, rows x 768 x h x w) with index parts
        beside them, and CACHE/report.json; with --random-init also the weights it used,
        CACHE/backbone.safetensors (for omama export --backbone-weights). Images already
        cached are skipped, so an interrupted run resumes; --shard i/n splits the work
        across machines writing into one folder. A cache built with other weights, backbone
        or sizes is refused. Portrait frames are resized to their view's landscape size.

        Example: omama features --root data --split train,val,test --backbone dinov2_vitb14_reg --weights dinov2_vitb14_reg4_pretrain.pth --out data/features
        """  # noqa: E501
        if direction != "all":
            check_direction(direction)
        splits = _split_list(split)
        if split == "all":
            splits = ProcessedRoot(root).splits()
        files = resolve_pairs_files(root, pairs, splits, direction)
        report = build_cache(
            root,
            out,
            files,
            backbone,
            weights=weights,
            random_init=random_init,
            seed=seed,
            pos_resize=pos_resize,
            device=device,
            batch_size=batch_size,
            shard=parse_shard(shard),
            flush_every=flush_every,
            io_threads=io_threads,
            limit=limit,
            progress=progress,
        )
        typer.echo(summary_text(report))
