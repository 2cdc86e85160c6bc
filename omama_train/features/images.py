"""The images a cache holds: one per ``(take, cam, frame)`` of the pairs files.

Landscape rule (docs/reference.md, section 6): a view's model input size comes from the
landscape size of its images; a portrait frame of that view is resized (nearest, not
rotated) straight to it, as the training dataset does. Frames whose landscape size is not
the view's are refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from omama_train.imagekey import ImageKey
from runtime.egoexo import (
    DIRECTIONS,
    Pair,
    ProcessedRoot,
    check_direction,
    pairs_path,
)
from runtime.errors import OmamaError


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


def pairs_files_for(
    root: Path, pairs: Sequence[Path], split: str | None, direction: str
) -> list[Path]:
    """:func:`resolve_pairs_files` from ``omama features`` flags: ``split`` is
    comma-separated split names, ``"all"`` or None; ``direction`` a direction or ``"all"``."""
    if direction != "all":
        check_direction(direction)
    if split == "all":
        splits = ProcessedRoot(root).splits()
    elif split is None:
        splits = None
    else:
        splits = [s.strip() for s in split.split(",") if s.strip()]
    return resolve_pairs_files(root, pairs, splits, direction)
