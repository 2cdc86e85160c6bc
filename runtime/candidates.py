"""Candidate masks of a destination frame, in the O-MaMa file layout (numpy only, no torch).

One destination frame has two files (paths from :func:`runtime.egoexo.candidate_paths`):

- ``<frame>_masks.npz``: a single array ``arr_0`` of shape (N, H, W), uint8, values 0/1,
  at the size of the image the masks were computed on (FastSAM retina masks: the
  processed jpg's size, 704x704 ego / 960x540 exo in the real data);
- ``<frame>_boxes.npy``: (N, 4) float32, ``x1, y1, w, h`` in pixels of that mask size.

Zero candidates is a valid frame: (0, H, W) and (0, 4). Files written by other tools with
an empty (0, 0, 0) mask array (the size is then unknown) are read as zero candidates too.

Writers put the boxes file first and the masks file last, each atomically, so a frame is
complete exactly when both files exist and agree (:func:`candidates_complete`).

Masks of another size than the image the caller works on are resized the way O-MaMa resizes
FastSAM candidate masks, with ``F.interpolate(mode="nearest")`` (the ``torch`` rule of
:mod:`runtime.preprocess`, which differs from OpenCV's on e.g. 540 -> 532 rows).

:class:`VideoCandidates` (:func:`open_video_candidates`) gives the candidates of a whole
destination video, from a folder in this layout or a JSON ``{frame: [RLE, ...]}``;
:class:`CandidateSet` puts FastSAM's and precomputed candidates behind one interface.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from runtime.atomic import atomic_path
from runtime.egoexo import candidate_paths, frame_candidate_files
from runtime.errors import OmamaError
from runtime.pooling import index_slice, mask_boxes
from runtime.preprocess import resize_mask_nearest

if TYPE_CHECKING:  # FastSAM post-processing loads OpenCV: not for every reader of candidates
    from runtime.fastsam_post import FastSAMResult

MASKS_KEY = "arr_0"
NPZ_LEVEL = 1  # zlib level of the masks npz (see write_candidates)


@dataclass(frozen=True)
class Candidates:
    """The candidate masks of one destination frame.

    Attributes:
        masks: (N, H, W) uint8 with values 0/1.
        boxes: (N, 4) float32 ``x1, y1, w, h`` in pixels of the (H, W) grid.
    """

    masks: np.ndarray
    boxes: np.ndarray

    def __post_init__(self) -> None:
        validate_candidates(self.masks, self.boxes, what="candidates")

    def __len__(self) -> int:
        return int(self.masks.shape[0])

    @property
    def size_hw(self) -> tuple[int, int]:
        """(H, W) of the masks, in pixels."""
        return int(self.masks.shape[1]), int(self.masks.shape[2])

    @classmethod
    def empty(cls, size_hw: tuple[int, int]) -> Candidates:
        """Zero candidates on an (H, W) image: masks (0, H, W), boxes (0, 4)."""
        h, w = _check_size(size_hw)
        return cls(np.zeros((0, h, w), np.uint8), np.zeros((0, 4), np.float32))

    @classmethod
    def from_masks(cls, masks: np.ndarray) -> Candidates:
        """Candidates from (N, H, W) 0/1 masks, boxed by their tight boxes
        (:func:`runtime.pooling.mask_boxes`: x1 = xmin, w = xmax - xmin, empty -> zeros)."""
        masks = np.ascontiguousarray(masks, dtype=np.uint8)
        return cls(masks, mask_boxes(masks))

    def resized(self, size_hw: tuple[int, int]) -> Candidates:
        """The same candidates on an (H', W') image: boxes rescaled, masks nearest-resized
        with the torch rule, as O-MaMa resizes FastSAM masks of another size than its image
        (``F.interpolate(mode="nearest")``)."""
        size_hw = _check_size(size_hw)
        if size_hw == self.size_hw:
            return self
        return Candidates(
            np.ascontiguousarray(resize_mask_nearest(self.masks, size_hw, rule="torch")),
            scale_boxes(self.boxes, self.size_hw, size_hw),
        )


class CandidateSet:
    """Candidates of one destination frame at its working size: FastSAM box crops or dense
    precomputed masks, behind one interface (boxes, one mask, a nearest resample)."""

    def __init__(self, source: FastSAMResult | Candidates) -> None:
        self._source = source
        if isinstance(source, Candidates):
            self.size_hw = source.size_hw
        else:
            self.size_hw = tuple(int(v) for v in source.image_hw)
        self.boxes = np.asarray(source.boxes, np.float32).reshape(-1, 4)

    def __len__(self) -> int:
        return len(self.boxes)

    def mask(self, i: int) -> np.ndarray:
        """Candidate ``i`` as (H, W) uint8 0/1 at the working size."""
        if isinstance(self._source, Candidates):
            return self._source.masks[i]
        return self._source.mask(i)

    def sample(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """All candidates at the pixels ``rows`` x ``cols``: (N, len(rows), len(cols)) uint8."""
        if not isinstance(self._source, Candidates):
            return self._source.sample(rows, cols)
        r, c = index_slice(np.asarray(rows)), index_slice(np.asarray(cols))
        return np.ascontiguousarray(self._source.masks[:, r][:, :, c])


def _check_size(size_hw: tuple[int, int]) -> tuple[int, int]:
    h, w = (int(v) for v in size_hw)
    if h <= 0 or w <= 0:
        raise OmamaError(f"an image size (H, W) must be positive, got {tuple(size_hw)}")
    return h, w


def validate_candidates(masks: np.ndarray, boxes: np.ndarray, what: str = "candidates") -> None:
    """Raise :class:`OmamaError` (naming ``what``, e.g. the file) unless the pair is valid.

    Valid: ``masks`` (N, H, W) uint8 with values 0/1 and H, W > 0; ``boxes`` (N, 4) float32,
    finite, with w, h >= 0.
    """
    _validate_masks(masks, what)
    _validate_boxes(boxes, int(masks.shape[0]), what)


def _validate_masks(masks: np.ndarray, what: str) -> None:
    if not isinstance(masks, np.ndarray) or masks.ndim != 3:
        raise OmamaError(f"{what}: masks must be an (N, H, W) array, got {_describe(masks)}")
    if masks.dtype != np.uint8:
        raise OmamaError(f"{what}: masks must be uint8, got {masks.dtype}")
    if masks.shape[1] <= 0 or masks.shape[2] <= 0:
        raise OmamaError(f"{what}: masks have an empty image size {masks.shape[1:]}")
    if masks.size and masks.max() > 1:
        raise OmamaError(f"{what}: masks must hold 0/1 values, found {int(masks.max())}")


def _validate_boxes(boxes: np.ndarray, n: int, what: str) -> None:
    if not isinstance(boxes, np.ndarray) or boxes.ndim != 2 or boxes.shape[1] != 4:
        raise OmamaError(f"{what}: boxes must be an (N, 4) array, got {_describe(boxes)}")
    if boxes.dtype != np.float32:
        raise OmamaError(f"{what}: boxes must be float32, got {boxes.dtype}")
    if boxes.shape[0] != n:
        raise OmamaError(f"{what}: {boxes.shape[0]} boxes for {n} masks")
    if not np.isfinite(boxes).all():
        raise OmamaError(f"{what}: boxes hold non-finite values")
    if (boxes[:, 2:] < 0).any():
        raise OmamaError(f"{what}: boxes must be x1, y1, w, h with w, h >= 0")


def _describe(array: object) -> str:
    if isinstance(array, np.ndarray):
        return f"shape {array.shape} {array.dtype}"
    return type(array).__name__


def scale_boxes(boxes: np.ndarray, from_hw: tuple[int, int], to_hw: tuple[int, int]) -> np.ndarray:
    """Rescale (N, 4) ``x1, y1, w, h`` boxes from an (H, W) grid to an (H', W') grid.

    x and w scale by W'/W, y and h by H'/H. Returns float32.
    """
    (h0, w0), (h1, w1) = _check_size(from_hw), _check_size(to_hw)
    scale = np.array([w1 / w0, h1 / h0, w1 / w0, h1 / h0], dtype=np.float64)
    return (boxes.astype(np.float64) * scale).astype(np.float32)


def write_candidates(masks_path: Path, boxes_path: Path, candidates: Candidates) -> None:
    """Write one frame's candidates: boxes first, then masks, each atomically.

    The masks file is what ``np.savez_compressed`` writes (a zip holding ``arr_0.npy``,
    deflated), but at zlib level 1 instead of 6: on 704x704 masks that wrote 2-7x and
    read 3x faster for files 1.5-3.5x larger (about 0.3 MB for 100 object masks).
    """
    with atomic_path(boxes_path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, candidates.boxes, allow_pickle=False)
        fh.flush()
        os.fsync(fh.fileno())
    with atomic_path(masks_path) as tmp, open(tmp, "wb") as fh:
        with (
            zipfile.ZipFile(fh, "w", zipfile.ZIP_DEFLATED, compresslevel=NPZ_LEVEL) as zf,
            zf.open(f"{MASKS_KEY}.npy", "w", force_zip64=True) as member,
        ):
            np.lib.format.write_array(member, candidates.masks, allow_pickle=False)
        fh.flush()
        os.fsync(fh.fileno())


_READ_ERRORS = (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error)


@contextmanager
def _read_errors(path: Path, kind: str) -> Iterator[None]:
    """Turn a failed read of a ``kind`` ("boxes" .npy or "masks" .npz) file into an
    :class:`OmamaError` naming the file."""
    try:
        yield
    except FileNotFoundError as exc:
        raise OmamaError(f"candidate {kind} file not found: {path}") from exc
    except KeyError as exc:  # zipfile: the archive has no such member
        raise OmamaError(f"{path}: no '{MASKS_KEY}' array inside") from exc
    except _READ_ERRORS as exc:
        what = ".npy array" if kind == "boxes" else ".npz archive"
        raise OmamaError(f"{path}: not a readable {what} ({exc})") from exc


def _read_boxes(boxes_path: Path) -> np.ndarray:
    with _read_errors(boxes_path, "boxes"):
        boxes = np.load(boxes_path, allow_pickle=False)
    if not isinstance(boxes, np.ndarray):
        raise OmamaError(f"{boxes_path}: expected one .npy array, found an archive")
    return boxes


def _read_masks(masks_path: Path) -> np.ndarray:
    with _read_errors(masks_path, "masks"):
        loaded = np.load(masks_path, allow_pickle=False)
    if not hasattr(loaded, "files"):  # a plain array: np.load found .npy data, not an archive
        raise OmamaError(f"{masks_path}: expected an .npz archive holding '{MASKS_KEY}'")
    with loaded as npz:
        if MASKS_KEY not in npz.files:
            raise OmamaError(f"{masks_path}: no '{MASKS_KEY}' array inside (found {npz.files})")
        try:
            return npz[MASKS_KEY]
        except _READ_ERRORS as exc:
            raise OmamaError(f"{masks_path}: '{MASKS_KEY}' is unreadable ({exc})") from exc


def read_candidates(
    masks_path: Path, boxes_path: Path, image_size_hw: tuple[int, int] | None = None
) -> Candidates:
    """Read and validate one frame's candidates; errors name the offending file.

    Arguments:
        masks_path, boxes_path: the ``_masks.npz`` / ``_boxes.npy`` pair.
        image_size_hw: (H, W) of the image the caller works on. When it differs from the
            stored mask size, masks are nearest-resized (torch rule, as O-MaMa resizes
            FastSAM masks) and boxes rescaled to it (:meth:`Candidates.resized`). Required
            to give a size to legacy empty (0, 0, 0) mask files.
    Returns:
        :class:`Candidates` with masks (N, H, W) uint8 and boxes (N, 4) float32.
    """
    candidates = _read_stored(Path(masks_path), Path(boxes_path), image_size_hw)
    return candidates if image_size_hw is None else candidates.resized(image_size_hw)


def _read_stored(
    masks_path: Path, boxes_path: Path, empty_size_hw: tuple[int, int] | None
) -> Candidates:
    """One frame's candidates at their stored size (legacy (0, 0, 0) files: zero candidates
    on ``empty_size_hw``, which they then need)."""
    boxes = _read_boxes(boxes_path)
    masks = _read_masks(masks_path)
    if masks.ndim == 3 and masks.shape[0] == 0 and masks.shape[1:] == (0, 0):
        _validate_boxes(boxes, 0, str(boxes_path))
        if empty_size_hw is None:
            raise OmamaError(
                f"{masks_path}: empty (0, 0, 0) masks carry no image size; pass the image size"
            )
        return Candidates.empty(empty_size_hw)
    if masks.dtype == np.bool_:
        masks = masks.view(np.uint8)
    _validate_masks(masks, str(masks_path))
    _validate_boxes(boxes, int(masks.shape[0]), str(boxes_path))
    return Candidates(masks, boxes)


def _npy_header(fh) -> tuple[tuple[int, ...], np.dtype]:
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
    else:
        shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
    return tuple(shape), np.dtype(dtype)


def inspect_candidates(masks_path: Path, boxes_path: Path) -> tuple[int, int, int]:
    """(N, H, W) of a frame's candidate files from their headers only (nothing decompressed).

    Checks presence, dtypes and that both files agree on N; raises :class:`OmamaError`
    naming the file otherwise. Use :func:`read_candidates` for the full validation.
    """
    masks_path, boxes_path = Path(masks_path), Path(boxes_path)
    with _read_errors(boxes_path, "boxes"), open(boxes_path, "rb") as fh:
        box_shape, box_dtype = _npy_header(fh)
    with (
        _read_errors(masks_path, "masks"),
        zipfile.ZipFile(masks_path) as zf,
        zf.open(f"{MASKS_KEY}.npy") as fh,
    ):
        mask_shape, mask_dtype = _npy_header(fh)
    if len(mask_shape) != 3 or mask_dtype not in (np.dtype(np.uint8), np.dtype(np.bool_)):
        raise OmamaError(
            f"{masks_path}: masks must be (N, H, W) uint8, got {mask_shape} {mask_dtype}"
        )
    if len(box_shape) != 2 or box_shape[1] != 4 or box_dtype != np.dtype(np.float32):
        raise OmamaError(f"{boxes_path}: boxes must be (N, 4) float32, got {box_shape} {box_dtype}")
    if box_shape[0] != mask_shape[0]:
        raise OmamaError(f"{boxes_path}: {box_shape[0]} boxes for {mask_shape[0]} masks")
    n, h, w = (int(v) for v in mask_shape)
    return n, h, w


def candidates_complete(masks_path: Path, boxes_path: Path) -> bool:
    """True when both files exist and their headers agree (a finished frame, for resuming)."""
    if not (Path(masks_path).is_file() and Path(boxes_path).is_file()):
        return False
    try:
        inspect_candidates(masks_path, boxes_path)
    except OmamaError:
        return False
    return True


def load_frame_candidates(
    root: Path,
    split: str,
    direction: str,
    take: str,
    cam: str,
    frame: int | str,
    image_size_hw: tuple[int, int] | None = None,
) -> Candidates:
    """Candidates of one destination frame of a processed root (see :func:`read_candidates`)."""
    masks_path, boxes_path = candidate_paths(root, split, direction, take, cam, frame)
    return read_candidates(masks_path, boxes_path, image_size_hw)


# ----------------------------------------------------------------------------- videos

_FRAME_MASKS = re.compile(r"^(\d+)_masks\.npz$")
_FRAME_KEY = re.compile(r"^\d+$")
CANDIDATE_KINDS = ("folder", "json")


class VideoCandidates:
    """Precomputed candidates of a destination video, frame by frame (``omama-run video
    --candidates``); frames are destination video frame indices.

    Two forms (:func:`open_video_candidates`):

    - ``folder``: omama's candidate layout, ``<frame>_masks.npz`` + ``<frame>_boxes.npy``
      (what ``omama data masks`` writes under ``ROOT/Masks_<SPLIT>_<DIR>/<take>/<cam>/``);
      a frame has an entry when its masks file exists; files are read when the frame is;
    - ``json``: ``{"<frame>": [RLE, ...]}``, COCO RLEs (``{"size": [H, W], "counts": ...}``)
      of one frame sharing one size (the destination video's, or any of its aspect ratio);
      boxes come from the masks (:meth:`Candidates.from_masks`); ``[]`` is zero candidates.
      The whole file is parsed and checked up front; masks are decoded per frame.

    :meth:`load` returns a frame's candidates at their stored size; a frame whose files or
    RLEs are unreadable is an :class:`OmamaError` naming the file and frame.
    """

    def __init__(
        self, path: Path, kind: str, frames: dict[int, object], file_sha256: str | None = None
    ) -> None:
        if kind not in CANDIDATE_KINDS:
            raise OmamaError(f"candidate source kind must be one of {CANDIDATE_KINDS}, got {kind}")
        self.path, self.kind = Path(path), kind
        self._frames = frames  # folder: frame -> None; json: frame -> list of RLE dicts
        self._file_sha256 = file_sha256

    def __contains__(self, frame: int) -> bool:
        return frame in self._frames

    def __len__(self) -> int:
        return len(self._frames)

    def frames(self) -> list[int]:
        """Frames with an entry, sorted."""
        return sorted(self._frames)

    def paths(self, frame: int) -> tuple[Path, Path]:
        """(``<frame>_masks.npz``, ``<frame>_boxes.npy``) of a ``folder`` source."""
        return frame_candidate_files(self.path, frame)

    def size_hw(self, frame: int) -> tuple[int, int] | None:
        """(H, W) the frame's candidates are stored at, from file headers or the RLE sizes
        without decoding; None for zero candidates that carry no size."""
        if self.kind == "folder":
            _, h, w = inspect_candidates(*self.paths(frame))
            return None if (h, w) == (0, 0) else (h, w)
        rles = self._frames[frame]
        return tuple(int(v) for v in rles[0]["size"]) if rles else None

    def load(self, frame: int, empty_size_hw: tuple[int, int]) -> Candidates:
        """The candidates of ``frame`` at their stored size: masks (N, H, W) uint8, boxes
        (N, 4) float32. Zero candidates without a size of their own are put on
        ``empty_size_hw`` (H, W)."""
        if frame not in self._frames:
            raise OmamaError(f"{self.path} has no candidates for frame {frame}")
        if self.kind == "folder":
            return _read_stored(*self.paths(frame), empty_size_hw)
        rles = self._frames[frame]
        if not rles:
            return Candidates.empty(empty_size_hw)
        sizes = {tuple(int(v) for v in r["size"]) for r in rles}
        if len(sizes) > 1:
            raise OmamaError(
                f"{self.path}: frame {frame} mixes candidate sizes {sorted(sizes)}; the RLEs of "
                "one frame must share the destination image's size"
            )
        from runtime import rle

        masks = []
        for i, item in enumerate(rles):
            try:
                masks.append(rle.decode(item))
            except Exception as exc:  # pycocotools raises plain exceptions for bad counts
                raise OmamaError(
                    f"{self.path}: frame {frame} candidate {i}: undecodable RLE ({exc})"
                ) from exc
        return Candidates.from_masks(np.stack(masks))

    def digest(self) -> dict:
        """A JSON-able fingerprint (kind, path, frames, and a JSON file's sha256) that tells
        a resumed video run whether it got the same candidates."""
        frames = ",".join(map(str, self.frames())).encode("ascii")
        out = {
            "kind": self.kind,
            "path": str(self.path.resolve()),
            "frames": len(self._frames),
            "frames_sha256": hashlib.sha256(frames).hexdigest(),
        }
        if self._file_sha256 is not None:
            out["sha256"] = self._file_sha256
        return out

    def describe(self) -> str:
        return f"{self.kind} {self.path} ({len(self)} frames)"


def open_video_candidates(path: str | os.PathLike) -> VideoCandidates:
    """The candidate source at ``path``: a folder in omama's candidate layout or a JSON
    ``{frame: [RLE, ...]}`` file (see :class:`VideoCandidates`). Malformed sources are one
    :class:`OmamaError` naming the file and the first problem."""
    path = Path(path)
    if path.is_dir():
        frames = {}
        for child in path.iterdir():
            match = _FRAME_MASKS.match(child.name)
            if match and child.is_file():
                frames[int(match.group(1))] = None
        if not frames:
            raise OmamaError(
                f"candidate folder {path} holds no <frame>_masks.npz files: give the folder of "
                "one destination camera (ROOT/Masks_<SPLIT>_<DIR>/<take>/<cam>, as `omama data "
                "masks` writes it) or a JSON {frame: [RLE, ...]}"
            )
        return VideoCandidates(path, "folder", frames)
    if not path.is_file():
        raise OmamaError(f"candidates not found: {path}")
    try:
        raw = path.read_bytes()
        data = json.loads(raw.decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OmamaError(
            f"candidates {path} is not readable JSON ({exc}); give a JSON {{frame: [RLE, ...]}} "
            "or a folder of <frame>_masks.npz + <frame>_boxes.npy"
        ) from exc
    if not isinstance(data, dict) or not data:
        raise OmamaError(f"candidates {path} must hold a non-empty JSON object {{frame: [RLE]}}")
    frames: dict[int, object] = {}
    for key, value in data.items():
        if not _FRAME_KEY.match(str(key)):
            raise OmamaError(f"candidates {path}: key {key!r} is not a frame index")
        if not isinstance(value, list):
            raise OmamaError(f"candidates {path}: frame {key} must map to a list of RLEs")
        for i, item in enumerate(value):
            if not _json_rle_ok(item):
                raise OmamaError(
                    f"candidates {path}: frame {key} candidate {i} is not an RLE with 'size' "
                    "[H, W] and 'counts'"
                )
        frames[int(key)] = value
    return VideoCandidates(path, "json", frames, hashlib.sha256(raw).hexdigest())


def _json_rle_ok(item: object) -> bool:
    if not (isinstance(item, dict) and "counts" in item and isinstance(item.get("size"), list)):
        return False
    size = item["size"]
    return len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)
