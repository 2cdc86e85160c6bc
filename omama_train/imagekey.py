"""One processed image, ``(take, cam, frame)``, and the camera kind of a camera name.

The key of a feature-cache entry (``"take/cam/frame"``) and of a destination frame whose
candidate masks ``omama data masks`` writes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from runtime.egoexo import Pair, check_direction, is_ego_cam


class ImageKey(NamedTuple):
    """One processed image; its text form ``"take/cam/frame"`` is the feature cache key."""

    take: str
    cam: str
    frame: int

    def __str__(self) -> str:
        return f"{self.take}/{self.cam}/{int(self.frame)}"

    @property
    def kind(self) -> str:
        return cam_kind(self.cam)


def cam_kind(cam: str) -> str:
    """``"ego"`` for Aria cameras, ``"exo"`` otherwise."""
    return "ego" if is_ego_cam(cam) else "exo"


def key_text(key: ImageKey | tuple | str) -> str:
    """Normalise ``(take, cam, frame)`` or ``"take/cam/frame"`` to the cache key string."""
    if isinstance(key, str):
        return key
    take, cam, frame = key
    return f"{take}/{cam}/{int(frame)}"


def dst_frames(pairs: Iterable[Pair], direction: str) -> list[ImageKey]:
    """Sorted unique destination frames of ``pairs`` for ``direction``."""
    check_direction(direction)
    return sorted({ImageKey(p.take, p.dst_cam(direction), int(p.frame)) for p in pairs})
