"""Ego-Exo4D layout: every path string of a processed root is built and parsed here.

Processed root (``ROOT``)::

    ROOT/split.json                                   {"train": [take], "val": [...], "test": [...]}
    ROOT/processed/<take>/annotation.json             masks[obj][cam][frame] = RLE, ...
    ROOT/processed/<take>/<cam>/<frame>.jpg           annotated frames (ego /2, exo /4)
    ROOT/dataset_jsons/<split>_<exoego|egoexo>_pairs.json
    ROOT/Masks_<SPLIT>_<EXO2EGO|EGO2EXO>/<take>/<cam>/<frame>_masks.npz / _boxes.npy

Pair entries are ``ROOT//TAKE//CAM//OBJECT//rgb//FRAME`` (or ``//mask//``), in tuples
``[ego_rgb, ego_mask, exo_rgb, exo_mask]``: :func:`read_pairs` / :func:`write_pairs`.

:class:`ProcessedRoot` is the typed index over such a root (splits, takes, cameras, which
one is ego, objects, annotated frames, masks, image paths) that every other module uses.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from runtime.atomic import write_json
from runtime.errors import OmamaError
from runtime.jsonrecords import read_json, read_json_object

Direction = Literal["exo2ego", "ego2exo"]
DIRECTIONS: tuple[str, ...] = ("exo2ego", "ego2exo")
SPLITS: tuple[str, ...] = ("train", "val", "test")
PAIR_SEP = "//"


def check_direction(direction: str) -> str:
    if direction not in DIRECTIONS:
        raise OmamaError(f"direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
    return direction


def view_kinds(direction: str) -> tuple[str, str]:
    """(source, destination) camera kinds of a direction: ("exo", "ego") for exo2ego."""
    return ("exo", "ego") if check_direction(direction) == "exo2ego" else ("ego", "exo")


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
    return frame_candidate_files(candidates_dir(root, split, direction) / take / cam, frame)


def frame_candidate_files(folder: Path, frame: int | str) -> tuple[Path, Path]:
    """(``<frame>_masks.npz``, ``<frame>_boxes.npy``) of one frame in a candidates folder."""
    return folder / f"{int(frame)}_masks.npz", folder / f"{int(frame)}_boxes.npy"


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

    def src_cam(self, direction: str) -> str:
        return self.exo_cam if check_direction(direction) == "exo2ego" else self.ego_cam

    def dst_cam(self, direction: str) -> str:
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


def read_pairs(path: str | os.PathLike) -> list[Pair]:
    """Parse a pairs file (a JSON list of ``[ego_rgb, ego_mask, exo_rgb, exo_mask]``)."""
    path = Path(path)
    entries = read_json(path, "pairs file")
    if not isinstance(entries, list):
        raise OmamaError(f"pairs file {path} must hold a JSON list of 4-tuples")
    return [Pair.from_tuple(entry) for entry in entries]


def write_pairs(path: str | os.PathLike, pairs: Iterable[Pair], root: str | os.PathLike) -> int:
    """Write ``pairs`` as O-MaMa 4-tuples whose paths start with ``root`` as given.

    Returns the number of pairs written. The write is atomic.
    """
    root_text = os.fspath(root)
    if len(root_text) > 1:
        root_text = root_text.rstrip("/")  # "data/" would give "data///take//..."
    if PAIR_SEP in root_text:
        raise OmamaError(f"root {root_text!r} contains {PAIR_SEP!r}, the pair path separator")
    tuples = [pair.to_tuple(root_text) for pair in pairs]
    write_json(path, tuples)
    return len(tuples)


def _frame_ints(frames: Iterable[int | str]) -> list[int]:
    return sorted({int(f) for f in frames})


class ProcessedRoot:
    """Read-only index of a processed root: splits, takes, cameras, objects, frames, masks.

    Every consumer reads the processed layout through this class, so its path strings and
    JSON keys are parsed in one place. ``annotation.json`` files are parsed once and cached.
    Frames are ints everywhere (the JSON keys are their decimal strings).
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self._annotations: dict[str, dict] = {}
        self._split_map: dict[str, list[str]] | None = None

    def __repr__(self) -> str:
        return f"ProcessedRoot({str(self.root)!r})"

    # Splits -------------------------------------------------------------------------------
    @property
    def split_json(self) -> Path:
        return self.root / "split.json"

    def split_map(self) -> dict[str, list[str]]:
        """``split.json`` as ``{split: [take, ...]}``."""
        if self._split_map is None:
            self._split_map = read_split_json(self.split_json)
        return self._split_map

    def splits(self) -> list[str]:
        """Split names present in ``split.json`` (train, val, test first, in that order)."""
        names = list(self.split_map())
        return [s for s in SPLITS if s in names] + sorted(s for s in names if s not in SPLITS)

    def takes(self, split: str | None = None) -> list[str]:
        """Takes of ``split`` as listed in ``split.json``; with no split, every prepared take
        (a folder under ``processed/`` holding ``annotation.json``), sorted."""
        if split is None:
            base = self.root / "processed"
            if not base.is_dir():
                return []
            return sorted(p.parent.name for p in base.glob("*/annotation.json"))
        split_map = self.split_map()
        if split not in split_map:
            raise OmamaError(
                f"split {split!r} is not in {self.split_json} (it has: {', '.join(split_map)})"
            )
        return list(split_map[split])

    def split_of(self, take: str) -> str | None:
        for split, takes in self.split_map().items():
            if take in takes:
                return split
        return None

    # Takes --------------------------------------------------------------------------------
    def has_take(self, take: str) -> bool:
        """True when the take was prepared (its ``annotation.json`` exists)."""
        return annotation_path(self.root, take).is_file()

    def take_dir(self, take: str) -> Path:
        return take_dir(self.root, take)

    def annotation(self, take: str) -> dict:
        """Parsed ``processed/<take>/annotation.json`` (cached)."""
        if take not in self._annotations:
            self._annotations[take] = read_annotation(annotation_path(self.root, take))
        return self._annotations[take]

    def cams(self, take: str) -> list[str]:
        """Every camera that has a mask or an annotated frame of some object, sorted."""
        ann = self.annotation(take)
        cams = {cam for per_cam in ann["masks"].values() for cam in per_cam}
        cams |= {cam for per_cam in ann.get("annotated_frames", {}).values() for cam in per_cam}
        return sorted(cams)

    def ego_cam(self, take: str) -> str:
        """The take's single ego (Aria) camera."""
        egos = [cam for cam in self.cams(take) if is_ego_cam(cam)]
        if len(egos) != 1:
            found = ", ".join(egos) if egos else "none"
            raise OmamaError(f"take {take} must have exactly one ego (aria) camera, found {found}")
        return egos[0]

    def exo_cams(self, take: str) -> list[str]:
        return [cam for cam in self.cams(take) if not is_ego_cam(cam)]

    def objects(self, take: str) -> list[str]:
        ann = self.annotation(take)
        return sorted(set(ann["masks"]) | set(ann.get("annotated_frames", {})))

    def object_cams(self, take: str, obj: str) -> list[str]:
        """Cameras in which ``obj`` has masks or annotated frames, sorted."""
        ann = self.annotation(take)
        cams = set(ann["masks"].get(obj, {})) | set(ann.get("annotated_frames", {}).get(obj, {}))
        return sorted(cams)

    # Frames and masks ---------------------------------------------------------------------
    def frames(self, take: str, obj: str, cam: str) -> list[int]:
        """Annotated frames of ``obj`` in ``cam`` (with or without a mask), sorted.

        Files without ``annotated_frames`` (the reference's own format) fall back to the
        frames that have a mask.
        """
        annotated = self.annotation(take).get("annotated_frames")
        if annotated is None:
            return self.mask_frames(take, obj, cam)
        return _frame_ints(annotated.get(obj, {}).get(cam, []))

    def mask_frames(self, take: str, obj: str, cam: str) -> list[int]:
        """Frames in which ``obj`` has a mask in ``cam`` (it is visible there), sorted."""
        return _frame_ints(self.annotation(take)["masks"].get(obj, {}).get(cam, {}))

    def mask_rle(self, take: str, obj: str, cam: str, frame: int | str) -> dict | None:
        """RLE ``{"size": [H, W], "counts": str}`` of the mask, at the video's resolution,
        or None when the object has no mask there (not visible, or not annotated)."""
        return self.annotation(take)["masks"].get(obj, {}).get(cam, {}).get(str(int(frame)))

    def cam_frames(self, take: str, cam: str) -> list[int]:
        """Frames of ``cam`` that have an image: annotated or masked for any object."""
        frames: set[int] = set()
        for obj in self.objects(take):
            frames.update(self.frames(take, obj, cam))
            frames.update(self.mask_frames(take, obj, cam))
        return sorted(frames)

    def image_path(self, take: str, cam: str, frame: int | str) -> Path:
        """``processed/<take>/<cam>/<frame>.jpg`` (ego downscaled by 2, exo by 4)."""
        return frame_image_path(self.root, take, cam, frame)

    def missing_images(self, take: str) -> list[Path]:
        """Images that the take's annotation refers to but that do not exist."""
        return [
            path
            for cam in self.cams(take)
            for frame in self.cam_frames(take, cam)
            if not (path := self.image_path(take, cam, frame)).is_file()
        ]

    def pairs_path(self, split: str, direction: str) -> Path:
        return pairs_path(self.root, split, direction)


def read_split_json(path: str | os.PathLike) -> dict[str, list[str]]:
    """``split.json`` -> ``{split: [take, ...]}``; a clear error when missing or malformed."""
    path = Path(path)
    data = read_json_object(path, "split.json", hint="run `omama data prepare` first")
    if not isinstance(data, dict) or not all(
        isinstance(v, list) and all(isinstance(t, str) for t in v) for v in data.values()
    ):
        raise OmamaError(f"{path} must map split names to lists of take ids")
    return data


def read_annotation(path: str | os.PathLike) -> dict:
    """A processed ``annotation.json``; checks the keys every consumer relies on."""
    path = Path(path)
    ann = read_json_object(path, "annotation.json", hint="the take was not prepared")
    if not isinstance(ann, dict) or not isinstance(ann.get("masks"), dict):
        raise OmamaError(f"{path} has no 'masks' mapping: not a processed annotation.json")
    if not isinstance(ann.get("annotated_frames", {}), dict):
        raise OmamaError(f"{path}: 'annotated_frames' must map objects to cameras to frames")
    return ann


@dataclass(frozen=True)
class TakeObservation:
    """One (object, source cam, destination cam, frame) of a processed take."""

    obj: str
    src_cam: str
    dst_cam: str
    frame: int


def take_observations(index: ProcessedRoot, take: str, direction: str) -> list[TakeObservation]:
    """Every observation of a processed take, as ``omama data pairs`` lists them: per object
    and exo camera, the frames where the source view has a mask and the destination view is
    annotated."""
    check_direction(direction)
    ego = index.ego_cam(take)
    observations = []
    for obj in index.objects(take):
        for exo in index.object_cams(take, obj):
            if exo == ego:
                continue
            src, dst = (exo, ego) if direction == "exo2ego" else (ego, exo)
            dst_frames = set(index.frames(take, obj, dst))
            observations.extend(
                TakeObservation(obj, src, dst, frame)
                for frame in index.mask_frames(take, obj, src)
                if frame in dst_frames
            )
    return observations
