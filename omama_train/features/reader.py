"""Reading a feature cache (numpy only; torch is imported by ``get``/``get_many``).

Reading. :class:`FeatureCache` merges every index part present (shards included) and opens
each data file with ``np.load(mmap_mode="r")`` on first use: nothing is read until a key is
asked for, and then only that key's rows. ``get_array`` returns a read-only view into the
memory map (no copy); ``get`` / ``get_many`` return torch tensors that own a copy of just
the requested maps. The reader needs numpy only; torch is imported by ``get``/``get_many``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from omama_train.features.meta import (
    CHUNKS_DIR,
    KINDS,
    compatibility_problems,
    incompatible,
    read_meta,
)
from omama_train.imagekey import ImageKey, cam_kind, key_text
from runtime.errors import OmamaError

if TYPE_CHECKING:
    import torch


@dataclass
class _Chunk:
    name: str
    kind: str
    data: Path
    keys: list[str]
    device: str  # where its maps were computed ("unknown" in parts that do not say)


def _read_index_part(path: Path, chunks_dir: Path) -> _Chunk:
    try:
        part = json.loads(path.read_text(encoding="utf-8"))
        keys, kind, data = part["keys"], part["view"], part["file"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise OmamaError(f"index part {path} is not readable: {exc}") from exc
    device = str(part.get("device") or "unknown")
    return _Chunk(path.stem, str(kind), chunks_dir / data, [str(k) for k in keys], device)


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
            if chunk.kind not in self.meta["views"]:
                raise OmamaError(f"index part {part} is for view {chunk.kind!r}, not in meta")
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
    def kinds(self) -> list[str]:
        """The camera kinds cached (``"ego"``, ``"exo"``)."""
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

    def grid(self, kind: str) -> tuple[int, int]:
        """Token grid (h, w) of ``kind`` (``"ego"``/``"exo"``, or a camera name)."""
        return tuple(self._sizes(kind)["grid_hw"])  # type: ignore[return-value]

    def image_size(self, kind: str) -> tuple[int, int]:
        """Model input size (H, W) px of ``kind`` (``"ego"``/``"exo"``, or a camera name)."""
        return tuple(self._sizes(kind)["image_size_hw"])  # type: ignore[return-value]

    def _sizes(self, kind: str) -> dict:
        name = kind if kind in KINDS else cam_kind(kind)
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
            raise incompatible(self.path, problems)

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
            grid = self.meta["views"][chunk.kind]["grid_hw"]
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
        """float16 (n, C, h, w) of ``keys`` (one camera kind), in order: a copy of those rows only.

        Rows of one file are gathered in file order, so sorted keys read sequentially.
        """
        texts = [key_text(k) for k in keys]
        located = [self._lookup(t) for t in texts]
        kinds = {self._chunks[n].kind for n, _ in located}
        if len(kinds) > 1:
            raise OmamaError(f"get_many needs keys of one view (one token grid), got {kinds}")
        kind = kinds.pop() if kinds else self.kinds[0]
        out = np.empty((len(texts), self.channels, *self.grid(kind)), dtype=self.meta["dtype"])
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
        """float16 tensor (n, C, h, w) of ``keys`` (one camera kind), in order; a copy of
        those maps."""
        import torch

        return torch.from_numpy(self.get_many_array(keys))

    # Size --------------------------------------------------------------------------------
    def devices(self) -> dict[str, int]:
        """Images per device their maps were computed on, as the index parts record it.
        CUDA computes under float16 autocast, the CPU in float32, so one image's maps differ
        by rounding between them; a cache resumed or sharded on another device holds both
        (accepted: ``meta.json`` does not name a device) and says so here."""
        counts: dict[str, int] = {}
        for number, _ in self._index.values():
            device = self._chunks[number].device
            counts[device] = counts.get(device, 0) + 1
        return dict(sorted(counts.items()))

    def disk_usage(self) -> dict[str, dict[str, float]]:
        """Per camera kind: images, bytes of its data files, MB per 1000 images (1 MB = 1e6 B)."""
        out: dict[str, dict[str, float]] = {}
        for chunk in self._chunks:
            entry = out.setdefault(chunk.kind, {"images": 0, "bytes": 0})
            entry["images"] += len(chunk.keys)
            entry["bytes"] += chunk.data.stat().st_size if chunk.data.is_file() else 0
        for entry in out.values():
            entry["mb_per_1000_images"] = (
                round(entry["bytes"] / entry["images"] * 1000 / 1e6, 2) if entry["images"] else 0.0
            )
        return out
