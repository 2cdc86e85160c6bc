"""Ego-Exo4D layout: every path string of a processed root is built and parsed here.

Processed root (``ROOT``)::

    ROOT/split.json                                   {"train": [take], "val": [...], "test": [...]}
    ROOT/processed/<take>/annotation.json             masks[obj][cam][frame] = RLE, ...
    ROOT/processed/<take>/<cam>/<frame>.jpg           annotated frames (ego /2, exo /4)
    ROOT/dataset_jsons/<split>_<exoego|egoexo>_pairs.json
    ROOT/Masks_<SPLIT>_<EXO2EGO|EGO2EXO>/<take>/<cam>/<frame>_masks.npz / _boxes.npy

Pair entries are ``ROOT//TAKE//CAM//OBJECT//rgb//FRAME`` (or ``//mask//``), in tuples
``[ego_rgb, ego_mask, exo_rgb, exo_mask]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from runtime.errors import OmamaError

Direction = Literal["exo2ego", "ego2exo"]
DIRECTIONS: tuple[str, ...] = ("exo2ego", "ego2exo")
SPLITS: tuple[str, ...] = ("train", "val", "test")
PAIR_SEP = "//"


def check_direction(direction: str) -> str:
    if direction not in DIRECTIONS:
        raise OmamaError(f"direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
    return direction


def is_ego_cam(cam: str) -> bool:
    """Aria head cameras carry 'aria' in their name (e.g. ``aria01_214-1``)."""
    return "aria" in cam.lower()


def pairs_tag(direction: str) -> str:
    """``exo2ego`` -> ``exoego`` (the pairs file name), ``ego2exo`` -> ``egoexo``."""
    return {"exo2ego": "exoego", "ego2exo": "egoexo"}[check_direction(direction)]


def results_key(direction: str) -> str:
    """Top-level key of a results JSON: ``exo-ego`` or ``ego-exo``."""
    return {"exo2ego": "exo-ego", "ego2exo": "ego-exo"}[check_direction(direction)]


def pairs_path(root: Path, split: str, direction: str) -> Path:
    return Path(root) / "dataset_jsons" / f"{split}_{pairs_tag(direction)}_pairs.json"


def take_dir(root: Path, take: str) -> Path:
    return Path(root) / "processed" / take


def annotation_path(root: Path, take: str) -> Path:
    return take_dir(root, take) / "annotation.json"


def frame_image_path(root: Path, take: str, cam: str, frame: int | str) -> Path:
    return take_dir(root, take) / cam / f"{int(frame)}.jpg"


def candidates_dir(root: Path, split: str, direction: str) -> Path:
    return Path(root) / f"Masks_{split.upper()}_{check_direction(direction).upper()}"


def candidate_paths(
    root: Path, split: str, direction: str, take: str, cam: str, frame: int | str
) -> tuple[Path, Path]:
    """(``<frame>_masks.npz``, ``<frame>_boxes.npy``) of one destination frame."""
    base = candidates_dir(root, split, direction) / take / cam
    return base / f"{int(frame)}_masks.npz", base / f"{int(frame)}_boxes.npy"


@dataclass(frozen=True)
class PairPath:
    """One element of a pairs tuple: ``ROOT//TAKE//CAM//OBJECT//rgb|mask//FRAME``."""

    root: str
    take: str
    cam: str
    obj: str
    kind: str  # "rgb" or "mask"
    frame: int

    def __str__(self) -> str:
        return PAIR_SEP.join([self.root, self.take, self.cam, self.obj, self.kind, str(self.frame)])

    @classmethod
    def parse(cls, text: str) -> PairPath:
        parts = text.split(PAIR_SEP)
        if len(parts) != 6 or parts[4] not in ("rgb", "mask"):
            raise OmamaError(f"not a pair path ROOT//TAKE//CAM//OBJECT//rgb|mask//FRAME: {text!r}")
        try:
            frame = int(parts[5])
        except ValueError as exc:
            raise OmamaError(f"pair path has a non-integer frame: {text!r}") from exc
        return cls(parts[0], parts[1], parts[2], parts[3], parts[4], frame)


@dataclass(frozen=True)
class Pair:
    """One correspondence sample: the same object and frame in the ego and one exo view."""

    take: str
    obj: str
    ego_cam: str
    exo_cam: str
    frame: int

    def source_cam(self, direction: str) -> str:
        return self.exo_cam if check_direction(direction) == "exo2ego" else self.ego_cam

    def destination_cam(self, direction: str) -> str:
        return self.ego_cam if check_direction(direction) == "exo2ego" else self.exo_cam

    def to_tuple(self, root: str) -> list[str]:
        """The O-MaMa 4-tuple ``[ego_rgb, ego_mask, exo_rgb, exo_mask]``."""
        return [
            str(PairPath(root, self.take, cam, self.obj, kind, self.frame))
            for cam in (self.ego_cam, self.exo_cam)
            for kind in ("rgb", "mask")
        ]

    @classmethod
    def from_tuple(cls, entry: list[str] | tuple[str, ...]) -> Pair:
        if len(entry) != 4:
            raise OmamaError(
                f"a pair is 4 paths [ego_rgb, ego_mask, exo_rgb, exo_mask], got {len(entry)}"
            )
        ego, exo = PairPath.parse(entry[0]), PairPath.parse(entry[2])
        if (ego.take, ego.obj, ego.frame) != (exo.take, exo.obj, exo.frame):
            raise OmamaError(f"pair mixes takes, objects or frames: {entry[0]!r} / {entry[2]!r}")
        return cls(ego.take, ego.obj, ego.cam, exo.cam, ego.frame)
