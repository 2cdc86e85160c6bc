"""int8 calibration data: which frames each quantized model sees, fed exactly as the runtime
feeds them.

``--calib`` takes

- a prepared root (what ``omama data prepare`` writes: ``processed/<take>/<cam>/<frame>.jpg``):
  ego frames calibrate ``backbone_ego``, exo frames ``backbone_exo``, each view getting half
  of ``--calib-frames``, sampled round-robin across the takes of the train split (every
  prepared take when the root has no train split) in a seeded order;
- a folder of images (``*.jpg``, ``*.jpeg``, ``*.png``, searched recursively): up to
  ``--calib-frames`` of them, seeded, each feeding both backbones;
- nothing: seeded synthetic scenes (:func:`runtime.verification.inputs.synthetic_scene`), at
  most :data:`SYNTHETIC_FRAMES`, with one warning line that they are not representative.

Every frame reaches a backbone as ``omama-run`` sends it (:func:`runtime.sizing.working_image`,
then :func:`runtime.preprocess.preprocess_image` at the view's size) and FastSAM as its
letterboxed destination working image (:func:`runtime.fastsam_post.letterbox`). Frames that
cannot be decoded are skipped and counted in one line; none usable is an OmamaError.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from runtime.egoexo import ProcessedRoot, is_ego_cam
from runtime.errors import OmamaError
from runtime.images import read_rgb
from runtime.manifest import CalibrationRecord
from runtime.preprocess import preprocess_image
from runtime.sizing import working_image
from runtime.verification.inputs import synthetic_scene

KINDS = ("ego", "exo")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# Synthetic scenes are all alike: their activation ranges settle within a few dozen frames,
# and they are not representative however many there are.
SYNTHETIC_FRAMES = 32
CALIB_SEED = 31  # stream of the calibration sample, apart from the parity inputs'

Frame = Path | np.ndarray  # a file decoded on use, or an RGB uint8 (H, W, 3) array


@dataclass
class Calibration:
    """The calibration frames per view kind and where they came from.

    ``frames[kind]``: image files (decoded when fed, so 300 frames are never all in memory)
    or RGB arrays; ``takes[kind]``: takes they were sampled across (prepared roots);
    ``notes``: lines the export prints (the synthetic warning, the skipped files).
    """

    source: str  # "frames" | "images" | "synthetic"
    frames: dict[str, list[Frame]]
    path: str | None = None
    seed: int = 0
    takes: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def record(self, kind: str) -> CalibrationRecord:
        """What calibrated a file fed the ``kind`` view's frames."""
        return CalibrationRecord(
            source=self.source,
            frames={kind: len(self.frames[kind])},
            path=self.path,
            takes=self.takes.get(kind),
            seed=self.seed,
            representative=self.source != "synthetic",
        )

    def backbone_feeds(self, kind: str, image_size: tuple[int, int]) -> FrameFeeds:
        """The ``kind`` backbone's feeds ``{"image": (1, 3, H, W)}``, as the runtime makes them."""
        return FrameFeeds(self.frames[kind], "image", lambda rgb: _backbone_input(rgb, image_size))

    def fastsam_feeds(self, kind: str, view_size: tuple[int, int], imgsz: int) -> FrameFeeds:
        """FastSAM's feeds ``{"images": (1, 3, imgsz, imgsz)}`` of the ``kind`` frames (the
        destination view's): the working image at ``view_size``, letterboxed."""
        from runtime.fastsam_post import letterbox

        return FrameFeeds(
            self.frames[kind],
            "images",
            lambda rgb: letterbox(working_image(rgb, view_size), imgsz)[0],  # fmt: skip
        )


class FrameFeeds(Sequence):
    """A re-iterable sequence of feed dicts made from frames on access (NNCF iterates the
    calibration set once per statistics pass)."""

    def __init__(self, frames: Sequence[Frame], name: str, make) -> None:
        self.frames, self.name, self.make = list(frames), name, make

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return FrameFeeds(self.frames[index], self.name, self.make)
        return {self.name: self.make(_rgb(self.frames[index]))}

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return (self[i] for i in range(len(self)))


def _backbone_input(rgb: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """(1, 3, H, W): what ``runtime.pipeline.Pipeline`` feeds a backbone for ``rgb``."""
    return preprocess_image(working_image(rgb, image_size), image_size)[None]


def _rgb(frame: Frame) -> np.ndarray:
    return read_rgb(frame) if isinstance(frame, Path) else frame


# ----------------------------------------------------------------------------- sources


def calibration(
    calib: str | Path | None,
    total: int,
    sizes: dict[str, tuple[int, int]],
    seed: int = 0,
) -> Calibration:
    """The calibration frames of an export (see the module docstring): ``calib`` the
    ``--calib`` path or None, ``total`` the ``--calib-frames``, ``sizes`` the model size of
    each view kind (synthetic scenes are drawn at it)."""
    rng = np.random.default_rng([seed, CALIB_SEED])
    if calib is None:
        return _synthetic(total, sizes, rng, seed)
    path = Path(calib)
    if not path.is_dir():
        raise OmamaError(f"--calib {path}: expected a prepared root or a folder of images")
    if (path / "processed").is_dir():
        return _prepared(path, total, rng, seed)
    return _images(path, total, rng, seed)


def _synthetic(total, sizes, rng, seed) -> Calibration:
    count = min(total, SYNTHETIC_FRAMES)
    per_view = max(1, count // len(KINDS))
    frames = {kind: [synthetic_scene(rng, sizes[kind]) for _ in range(per_view)]
              for kind in KINDS}  # fmt: skip
    note = (
        f"warning: int8 calibrated on {per_view} synthetic frames per view (no --calib): the "
        "activation ranges are not representative of real frames; pass --calib with a "
        "prepared root or an image folder"
    )
    return Calibration("synthetic", frames, seed=seed, notes=[note])


def _images(folder: Path, total: int, rng, seed: int) -> Calibration:
    files = sorted(p for p in folder.rglob("*") if p.is_file()
                   and p.suffix.lower() in IMAGE_SUFFIXES)  # fmt: skip
    if not files:
        raise OmamaError(
            f"--calib {folder}: no images (*.jpg, *.png) and no prepared takes (processed/)"
        )
    if len(files) > total:
        files = sorted(files[i] for i in rng.choice(len(files), total, replace=False))
    usable, notes = _readable(files, f"--calib {folder}")
    return Calibration("images", {k: list(usable) for k in KINDS}, str(folder), seed, notes=notes)


def _readable(files: list[Path], what: str) -> tuple[list[Path], list[str]]:
    """The files that decode, and one line naming how many did not (OmamaError: none did)."""
    usable, bad = [], []
    for path in files:
        try:
            read_rgb(path)
            usable.append(path)
        except OmamaError:
            bad.append(path)
    if not usable:
        raise OmamaError(f"{what}: none of the {len(files)} calibration images could be read")
    notes = []
    if bad:
        names = ", ".join(p.name for p in bad[:3]) + (", ..." if len(bad) > 3 else "")
        notes.append(
            f"calibration: skipped {len(bad)} of {len(files)} images that could not be "
            f"read ({names})"
        )
    return usable, notes


def _prepared(root: Path, total: int, rng, seed: int) -> Calibration:
    index = ProcessedRoot(root)
    takes = [t for t in index.takes() if index.has_take(t)]
    if index.split_json.is_file() and "train" in index.split_map():
        train = [t for t in index.takes("train") if index.has_take(t)]
        takes = train or takes
    if not takes:
        raise OmamaError(f"--calib {root}: no prepared takes under {root / 'processed'}")
    per_view = max(1, total // len(KINDS))
    frames: dict[str, list[Frame]] = {}
    counts: dict[str, int] = {}
    notes: list[str] = []
    for kind in KINDS:
        pools = [_take_frames(index, take, kind, rng) for take in takes]
        picked = _round_robin([p for p in pools if p], per_view)
        if not picked:
            raise OmamaError(f"--calib {root}: the prepared takes hold no {kind} frames")
        usable, skipped = _readable([path for _, path in picked], f"--calib {root} ({kind})")
        notes += skipped
        frames[kind] = list(usable)
        counts[kind] = len({take for take, path in picked if path in set(usable)})
    return Calibration("frames", frames, str(root), seed, takes=counts, notes=notes)


def _take_frames(index: ProcessedRoot, take: str, kind: str, rng) -> list[tuple[str, Path]]:
    """(take, image) of every frame of the take's ``kind`` cameras, in a seeded order."""
    items = [
        (take, index.image_path(take, cam, frame))
        for cam in index.cams(take)
        if is_ego_cam(cam) == (kind == "ego")
        for frame in index.cam_frames(take, cam)
    ]
    return [items[i] for i in rng.permutation(len(items))]


def _round_robin(pools: list[list], count: int) -> list:
    """Up to ``count`` items taking one from each pool in turn (spread across takes)."""
    picked: list = []
    depth = 0
    while len(picked) < count and any(depth < len(p) for p in pools):
        picked += [p[depth] for p in pools if depth < len(p)][: count - len(picked)]
        depth += 1
    return picked
