"""``CACHE/meta.json``: what built a feature cache, and whether a user of it agrees.

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
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from runtime.atomic import temp_path_beside
from runtime.errors import OmamaError
from runtime.preprocess import model_input_size

FORMAT = "omama-feature-cache"
FORMAT_VERSION = 1
DTYPE = "float16"
META_NAME = "meta.json"
CHUNKS_DIR = "chunks"
BACKBONE_FILE = "backbone.safetensors"  # the weights of a --random-init cache
KINDS: tuple[str, ...] = ("ego", "exo")  # camera kinds, each with its own token grid


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


def fmt_hw(hw: Sequence[int]) -> str:
    return f"{int(hw[0])}x{int(hw[1])}"


def short_sha(sha: str | None) -> str:
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
            f"weights sha256 {short_sha(have_sha)}..., these weights are "
            f"{short_sha(weights_sha256)}..."
        )
    for view, size in (image_sizes or {}).items():
        have = meta.get("views", {}).get(view)
        if have is None:
            problems.append(f"no {view} view")
        elif [int(s) for s in size] != list(have["image_size_hw"]):
            problems.append(
                f"{view} images of {fmt_hw(have['image_size_hw'])} px "
                f"({fmt_hw(have['grid_hw'])} tokens), not {fmt_hw(size)} px"
            )
    if dtype is not None and dtype != meta.get("dtype"):
        problems.append(f"dtype {meta.get('dtype')}, not {dtype}")
    return problems


def incompatible(path: Path, problems: list[str], option: str = "--cache") -> OmamaError:
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
        raise incompatible(path, problems, "--out")
    return existing
