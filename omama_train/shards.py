"""Work split across machines: ``--shard i/n`` takes every n-th item of a sorted list.

Shards never talk to each other: each one computes the same sorted list and keeps its part,
so shards are disjoint and cover everything (``omama data masks``, ``omama features``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from runtime.errors import OmamaError

Item = TypeVar("Item")


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` (0-based, 0 <= i < n) -> (i, n)."""
    try:
        index_text, count_text = text.split("/")
        index, count = int(index_text), int(count_text)
    except ValueError as exc:
        raise OmamaError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from exc
    if count < 1 or not 0 <= index < count:
        raise OmamaError(f"--shard i/n needs n >= 1 and 0 <= i < n, got {text!r}")
    return index, count


def select_shard(items: Sequence[Item], index: int, count: int) -> list[Item]:
    """Shard ``index`` of ``count`` of the sorted items (frames, images): every count-th from
    ``index``, so shards are disjoint, cover everything and do not depend on input order."""
    return sorted(items)[index::count]
