"""``--mask-size submission``: the size the official Ego-Exo4D evaluator compares a mask with.

The challenge's evaluator decodes each destination GT mask at the resolution it was
annotated on, resizes it (nearest, no padding) so that its longer side is 480 px
(:func:`runtime.metrics.egoexo4d_size`: 1080x1920 -> 270x480, 1408x1408 -> 480x480) and
compares the prediction with it as it is; a prediction of any other size crashes it. Only
the annotation knows that resolution, so :class:`AnnotationFrameSizes` reads it from a
processed ``annotation.json``, per (object, camera, frame):

1. the size of that object's GT mask in that camera and frame: the very mask the evaluator
   decodes;
2. else (the object is not visible there, so the evaluator reads only the confidence) the
   camera's video size that ``omama data prepare`` recorded
   (``annotation["prepare"]["video_size_px"]``);
3. else the size most of the camera's masks in that annotation have.

Never the model's size, nor the processed JPEG's (downscaled): with none of the three one
line names what is missing (:meth:`AnnotationFrameSizes.check_camera`, called before any
work). ``omama-run take`` and ``dataset`` read the take's annotation; ``video`` the
annotation.json its query tracks come from (:func:`track_frame_sizes`).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from runtime.egoexo import read_annotation
from runtime.errors import OmamaError
from runtime.metrics import egoexo4d_size
from runtime.sizing import ASPECT_TOLERANCE, aspect_mismatch

SUBMISSION = "submission"


def scoring_protocol(mask_size: str) -> str:
    """The evaluation protocol of a run's own metrics: ``egoexo4d`` (the challenge evaluator's,
    480 px working size) for masks written at its size, else ``omama`` (GT resized to the
    prediction's size, as the published figures). Scoring submission-size masks with
    ``omama`` would measure at the 480-rule size, which neither protocol defines."""
    return "egoexo4d" if mask_size == SUBMISSION else "omama"


def _size_hw(value: object) -> tuple[int, int] | None:
    """``[H, W]`` of positive ints as a tuple, None for anything else."""
    if not isinstance(value, list | tuple) or len(value) != 2:
        return None
    if all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
        return int(value[0]), int(value[1])
    return None


class AnnotationFrameSizes:
    """The GT frame sizes an annotation records (see the module docstring).

    Arguments:
        annotation: a parsed processed ``annotation.json`` (``masks[obj][cam][frame] = RLE``).
        where: the file, for messages.
    """

    def __init__(self, annotation: dict, where: str) -> None:
        self.annotation, self.where = annotation, where
        self._camera: dict[str, tuple[int, int] | None] = {}

    def _mask_size(self, obj: str, cam: str, frame: int) -> tuple[int, int] | None:
        found = self.annotation["masks"].get(obj, {}).get(cam, {}).get(str(int(frame)))
        return _size_hw(found.get("size")) if isinstance(found, dict) else None

    def camera_hw(self, cam: str) -> tuple[int, int] | None:
        """(H, W) of ``cam``'s frames: the recorded video size, else its masks' usual size."""
        if cam not in self._camera:
            prepare = self.annotation.get("prepare")
            videos = prepare.get("video_size_px") if isinstance(prepare, dict) else None
            size = _size_hw(videos.get(cam)) if isinstance(videos, dict) else None
            if size is None:
                sizes = Counter(
                    size
                    for per_cam in self.annotation["masks"].values()
                    for rle_dict in (per_cam.get(cam) or {}).values()
                    if isinstance(rle_dict, dict) and (size := _size_hw(rle_dict.get("size")))
                )
                size = min(sizes, key=lambda s: (-sizes[s], s)) if sizes else None
            self._camera[cam] = size
        return self._camera[cam]

    def check_camera(self, cam: str, image_hw: tuple[int, int] | None = None) -> None:
        """OmamaError unless the annotation records ``cam``'s frame size (and, given the
        destination image's ``image_hw``, unless that size has the image's aspect ratio)."""
        size = self.camera_hw(cam)
        if size is None:
            raise OmamaError(
                f"--mask-size submission needs the size of camera {cam}'s frames, and "
                f"{self.where} records none (no prepare.video_size_px[{cam!r}], no mask in "
                f"{cam}): name the destination camera as the annotation does, prepare the take "
                "again with `omama data prepare`, or use --mask-size model"
            )
        if image_hw is not None and aspect_mismatch(size, image_hw) > ASPECT_TOLERANCE:
            raise OmamaError(
                f"{self.where} records camera {cam}'s frames at {size[1]}x{size[0]} px but the "
                f"destination frames are {image_hw[1]}x{image_hw[0]}: not the same camera "
                "(check the destination camera's name)"
            )

    def frame_hw(self, obj: str, cam: str, frame: int) -> tuple[int, int]:
        """(H, W) of the GT frame of ``obj`` in ``cam`` at ``frame``."""
        size = self._mask_size(obj, cam, frame) or self.camera_hw(cam)
        if size is None:
            self.check_camera(cam)  # raises, naming what is missing
        return size

    def submission_hw(self, obj: str, cam: str, frame: int) -> tuple[int, int]:
        """(H, W) a predicted mask of ``obj`` in ``cam`` at ``frame`` is submitted at."""
        return egoexo4d_size(self.frame_hw(obj, cam, frame))


def track_frame_sizes(tracks, dst_cam: str, dst_hw: tuple[int, int]) -> dict:
    """``{object: AnnotationFrameSizes}`` of ``omama-run video``'s query tracks
    (:class:`runtime.tracks.TrackSet`): the annotation.json each comes from, checked to
    record ``dst_cam``'s frames with the destination video's aspect ratio (``dst_hw``)."""
    by_file: dict[str, AnnotationFrameSizes] = {}
    found = {}
    for track in tracks:
        if track.cam is None:  # only annotation.json tracks name their camera
            raise OmamaError(
                "--mask-size submission needs the size the destination camera's frames were "
                f"annotated at, which an Ego-Exo4D annotation.json records; object "
                f"{track.name!r}'s track {track.origin} is not one (give --query "
                "annotation.json, or use --mask-size image or model)"
            )
        if track.origin not in by_file:
            sizes = AnnotationFrameSizes(read_annotation(Path(track.origin)), track.origin)
            sizes.check_camera(dst_cam, dst_hw)
            by_file[track.origin] = sizes
        found[track.name] = by_file[track.origin]
    return found
