"""The masks of a processed root, checked against the frames they annotate before use.

A mask in ``annotation.json`` is an RLE ``{"size": [H, W], "counts"}`` at its video's
resolution. Counts that do not cover H x W pixels make pycocotools read past its buffer;
a size that is not the video's would be resized onto the frame and land in the wrong place,
or be scored against predictions of another size. Both are refused here with one line that
names the take, object, camera and frame. The size a camera's masks must have:

1. the video size ``omama data prepare`` recorded (``annotation["prepare"]["video_size_px"]``;
   prepare itself drops masks of another size);
2. else, from the camera's processed jpgs: they are the video downscaled by the prepare
   scale (ego 2, exo 4, or those recorded), so ``H // scale, W // scale`` is their size.
   (Real annotations of one camera differ by a pixel at times, 3024x3024 and 3024x3025:
   the floor division accepts those, as evaluation resizes the GT to the prediction.)

With neither (a root assembled by hand, without images), only the counts are checked.
"""

from __future__ import annotations

from dataclasses import dataclass

from omama_train.data.prepare import PrepareSettings
from omama_train.features.images import jpeg_size_hw
from runtime import rle
from runtime.egoexo import ProcessedRoot, is_ego_cam
from runtime.errors import OmamaError


@dataclass(frozen=True)
class _Expected:
    """Masks of a camera must be ``size_hw`` once floor-divided by ``scale``."""

    size_hw: tuple[int, int]
    scale: int

    def problem(self, size_hw: tuple[int, int]) -> str | None:
        if (size_hw[0] // self.scale, size_hw[1] // self.scale) == self.size_hw:
            return None
        (h, w), s = self.size_hw, self.scale
        have = f"mask is {size_hw[0]}x{size_hw[1]} px"
        if s == 1:
            return f"{have}, its video is {h}x{w} px"
        frames = f"the camera's frames are {h}x{w} px jpgs"
        return f"{have}, {frames}, {s} times smaller than {h * s}x{w * s}"


class AnnotatedMasks:
    """Checked RLEs of a processed root: ``rle(take, obj, cam, frame)``."""

    def __init__(self, index: ProcessedRoot) -> None:
        self.index = index
        self._expected: dict[tuple[str, str], _Expected] = {}

    def rle(self, take: str, obj: str, cam: str, frame: int | str) -> dict | None:
        """The mask's RLE, None when it has none there; OmamaError when the RLE is invalid
        or its size is not its frame's."""
        found = self.index.mask_rle(take, obj, cam, frame)
        if found is None:
            return None
        where = f"take {take}, object {obj!r}, camera {cam}, frame {int(frame)}"
        try:
            rle.area(found)  # checks that the counts cover exactly H x W pixels
            size_hw = (int(found["size"][0]), int(found["size"][1]))
        except OmamaError as exc:
            raise OmamaError(f"{where}: {exc} ({self._path(take)})") from exc
        expected = self._expected_for(take, cam, frame)
        problem = expected and expected.problem(size_hw)
        if problem:
            raise OmamaError(f"{where}: {problem} ({self._path(take)})")
        return found

    def _path(self, take: str) -> str:
        return str(self.index.take_dir(take) / "annotation.json")

    def _expected_for(self, take: str, cam: str, frame: int | str) -> _Expected | None:
        """What a mask of ``cam`` must measure; None when nothing tells (not cached, so a
        later frame's jpg can still tell)."""
        key = (take, cam)
        if key not in self._expected:
            prepare = self.index.annotation(take).get("prepare") or {}
            video = (prepare.get("video_size_px") or {}).get(cam)
            image = self.index.image_path(take, cam, frame)
            if video is not None:
                self._expected[key] = _Expected((int(video[0]), int(video[1])), 1)
            elif image.is_file():
                recorded = prepare.get("settings") or {}
                name = "ego_scale" if is_ego_cam(cam) else "exo_scale"
                scale = int(recorded.get(name, PrepareSettings().scale(cam)))
                self._expected[key] = _Expected(jpeg_size_hw(image), scale)
            else:
                return None
        return self._expected[key]
