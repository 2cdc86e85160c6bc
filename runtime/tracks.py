"""Query tracks for ``omama-run video``: per-frame source masks of one or more objects.

A TRACK names the object masks in the source video, frame by frame. Three forms:

- a folder of per-frame PNG masks ``<frame>.png`` (frame = 0-based video frame index):
  one object, named after the folder; or a folder of such folders, one object each;
- a JSON file of per-frame RLEs: ``{"<frame>": RLE}`` (one object, named after the file)
  or ``{"<object>": {"<frame>": RLE}}``; RLE is ``{"size": [H, W], "counts": str}``;
- an Ego-Exo4D processed ``annotation.json`` (``masks[object][cam][frame] = RLE``): the
  source camera is chosen with ``src_cam`` (needed when several cameras hold masks), objects
  with ``objects`` (default: every object with masks in that camera).

A frame without a mask (or with an empty one) is a frame where the object has no query, so
it gets no prediction, as in the Ego-Exo4D evaluation (queries are the source view's
masks). PNG masks: any non-zero value is foreground (for RGBA files, a non-opaque alpha
channel is the mask). Masks are loaded lazily, one frame at a time.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from runtime import rle
from runtime.egoexo import is_ego_cam
from runtime.errors import OmamaError

_FRAME_NAME = re.compile(r"^\d+$")

log = logging.getLogger(__name__)


@dataclass
class Track:
    """The query masks of one object: ``frames`` maps a frame index to a PNG path or an RLE.

    Attributes:
        name: object name (results JSON key).
        frames: {frame index: Path of a PNG mask | RLE dict}.
        origin: where the track came from (for messages).
        cam: the source camera named by the track (annotation.json tracks), else None.
        take: the take uid an annotation.json names, else None.
    """

    name: str
    frames: dict[int, Path | dict]
    origin: str
    cam: str | None = None
    take: str | None = None

    def __contains__(self, frame: int) -> bool:
        return frame in self.frames

    def frame_indices(self) -> list[int]:
        return sorted(self.frames)

    def first_frame(self) -> int:
        return min(self.frames)

    def mask(self, frame: int) -> np.ndarray | None:
        """(H, W) uint8 0/1 mask of ``frame``, or None without one. Unreadable files and
        malformed RLEs are an :class:`OmamaError` naming the object, frame and file."""
        item = self.frames.get(frame)
        if item is None:
            return None
        if isinstance(item, Path):
            return read_mask_png(item)
        try:
            return rle.decode(item)
        except OmamaError as exc:
            raise OmamaError(f"{self.origin}: object {self.name!r} frame {frame}: {exc}") from exc
        except Exception as exc:  # pycocotools raises plain exceptions for bad counts
            raise OmamaError(
                f"{self.origin}: object {self.name!r} frame {frame}: undecodable RLE ({exc})"
            ) from exc


@dataclass
class TrackSet:
    """All query tracks of a run, in order; object names are unique."""

    tracks: list[Track] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.tracks)

    def __iter__(self):
        return iter(self.tracks)

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tracks]

    def frames(self) -> list[int]:
        """Every frame that holds a query of some object, sorted."""
        return sorted({f for t in self.tracks for f in t.frames})

    def cams(self) -> list[str]:
        """Source cameras the tracks name (annotation.json tracks), sorted."""
        return sorted({t.cam for t in self.tracks if t.cam})

    def takes(self) -> list[str]:
        """Take uids the tracks name (annotation.json tracks), sorted."""
        return sorted({t.take for t in self.tracks if t.take})

    def digest(self) -> dict:
        """A JSON-able fingerprint (names, origins, frame lists) to recognise a run on resume."""
        return {
            t.name: {"origin": t.origin, "frames": t.frame_indices(), "cam": t.cam}
            for t in self.tracks
        }


def read_mask_png(path: str | os.PathLike) -> np.ndarray:
    """A PNG (or any image OpenCV reads) as an (H, W) uint8 0/1 mask.

    Grey: non-zero is foreground; colour: any non-zero channel; RGBA: the alpha channel when
    it is not fully opaque, else the colour rule. A mask with more than two values (soft or
    anti-aliased edges) is thresholded the same way, with one warning per process.
    """
    path = Path(path)
    if not path.is_file():
        raise OmamaError(f"mask file not found: {path}")
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise OmamaError(f"cannot read mask {path}: not an image OpenCV can decode")
    if image.ndim == 2:
        values = image
    elif image.shape[2] == 4 and (image[:, :, 3] != image[:, :, 3].max()).any():
        values = image[:, :, 3]
    else:
        values = image[:, :, :3].max(axis=2)
    _warn_if_not_binary(values, path)
    return (values != 0).astype(np.uint8)


_warned_not_binary: list[Path] = []


def _warn_if_not_binary(values: np.ndarray, path: Path) -> None:
    if _warned_not_binary or not ((values != 0) & (values != values.max())).any():
        return  # already said, or only 0 and one other value
    levels = np.unique(values)
    if len(levels) > 2:
        _warned_not_binary.append(path)
        log.warning(
            "warning: query mask %s has %d values, not 2: every non-zero pixel counts as the "
            "object (binarise the masks to choose another threshold)",
            path,
            len(levels),
        )


def _png_frames(folder: Path) -> dict[int, Path]:
    return {
        int(p.stem): p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() == ".png" and _FRAME_NAME.match(p.stem)
    }


def _folder_tracks(folder: Path) -> list[Track]:
    frames = _png_frames(folder)
    if frames:
        return [Track(folder.name, frames, str(folder))]
    tracks = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        sub_frames = _png_frames(sub)
        if sub_frames:
            tracks.append(Track(sub.name, sub_frames, str(sub)))
    if not tracks:
        raise OmamaError(
            f"{folder} holds no per-frame masks: expected <frame>.png files (e.g. 0.png, 12.png) "
            "or one such folder per object"
        )
    return tracks


def _is_rle(value: object) -> bool:
    return isinstance(value, dict) and "size" in value and "counts" in value


def _frame_map(data: dict, origin: str, obj: str) -> dict[int, dict]:
    out: dict[int, dict] = {}
    for key, value in data.items():
        if not _FRAME_NAME.match(str(key)):
            raise OmamaError(f"{origin}: object {obj!r} has a non-integer frame key {key!r}")
        if not _is_rle(value):
            raise OmamaError(
                f"{origin}: object {obj!r} frame {key} is not an RLE with 'size' and 'counts'"
            )
        out[int(key)] = value
    return out


def _annotation_tracks(data: dict, path: Path, objects: Sequence[str], src_cam: str | None) -> list:
    masks = data["masks"]
    cams = sorted({c for per_cam in masks.values() for c in per_cam})
    cam = src_cam
    if cam is None:
        non_ego = [c for c in cams if not is_ego_cam(c)]
        if len(cams) == 1:
            cam = cams[0]
        else:
            raise OmamaError(
                f"{path} holds masks of several cameras ({', '.join(cams)}): name the source "
                f"camera with --src-cam (e.g. --src-cam {non_ego[0] if non_ego else cams[0]})"
            )
    if cam not in cams:
        raise OmamaError(f"{path} has no masks in camera {cam!r} (it has: {', '.join(cams)})")
    names = list(objects) or sorted(o for o, per_cam in masks.items() if per_cam.get(cam))
    tracks = []
    for obj in names:
        if obj not in masks:
            raise OmamaError(
                f"{path} has no object {obj!r} (objects: {', '.join(sorted(masks)) or 'none'})"
            )
        frames = _frame_map(masks[obj].get(cam, {}), str(path), obj)
        if not frames:
            raise OmamaError(f"{path}: object {obj!r} has no masks in camera {cam!r}")
        take = data.get("take_uid")
        tracks.append(Track(obj, frames, str(path), cam=cam, take=str(take) if take else None))
    return tracks


def _json_tracks(path: Path, objects: Sequence[str], src_cam: str | None) -> list[Track]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OmamaError(f"track file {path} is not readable JSON: {exc}") from exc
    if not isinstance(data, dict) or not data:
        raise OmamaError(f"track file {path} must hold a non-empty JSON object")
    if isinstance(data.get("masks"), dict):
        return _annotation_tracks(data, path, objects, src_cam)
    if all(_is_rle(v) for v in data.values()):
        return [Track(path.stem, _frame_map(data, str(path), path.stem), str(path))]
    if all(isinstance(v, dict) for v in data.values()):
        return [Track(str(o), _frame_map(v, str(path), str(o)), str(path)) for o, v in data.items()]
    raise OmamaError(
        f"track file {path} is neither {{frame: RLE}}, {{object: {{frame: RLE}}}} nor an "
        "annotation.json with 'masks'"
    )


def load_tracks(
    specs: Sequence[str | os.PathLike], objects: Sequence[str] = (), src_cam: str | None = None
) -> TrackSet:
    """Read the TRACK arguments of ``omama-run video`` (see the module docstring).

    ``objects`` keeps only the named objects (an unknown name is an error); ``src_cam``
    picks the source camera of annotation.json tracks (other tracks have no camera). Object
    names must be unique across specs.
    """
    if not specs:
        raise OmamaError("give at least one query track (--query)")
    tracks: list[Track] = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            found = _folder_tracks(path)
        elif path.is_file():
            found = _json_tracks(path, objects, src_cam)
        else:
            raise OmamaError(f"query track not found: {path}")
        tracks.extend(found)
    if objects:
        unknown = [o for o in objects if o not in {t.name for t in tracks}]
        if unknown:
            raise OmamaError(
                f"no query track for object(s) {', '.join(unknown)} (found: "
                f"{', '.join(t.name for t in tracks)})"
            )
        tracks = [t for t in tracks if t.name in set(objects)]
    seen: dict[str, str] = {}
    for track in tracks:
        if track.name in seen:
            raise OmamaError(
                f"object {track.name!r} comes from two tracks ({seen[track.name]} and "
                f"{track.origin}): rename one folder or file"
            )
        seen[track.name] = track.origin
    return TrackSet(tracks)
