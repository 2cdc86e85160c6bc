"""The work of ``omama-run dataset``, in pieces any executor can run: read an item's frames,
then predict it (:class:`ItemPredictor`).

An :class:`Item` is a few consecutive annotated frames of one take in one direction, named
by ids only (take, frames, and the (camera, frame) images they need): that is all a worker
is sent. Reading decodes the JPEGs of the processed root (:func:`read_item_images`), which
every worker sees at the same path; predicting runs :func:`runtime.runs.take.predict_take`
on the item's observations with one :class:`runtime.pipeline.Pipeline` per direction,
opened once per worker. Its answer is a JSON-ready dict (RLE masks and numbers): what
travels back to the driver, which assembles takes from their items.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from runtime.egoexo import ProcessedRoot
from runtime.errors import OmamaError
from runtime.images import read_rgb

log = logging.getLogger(__name__)

FRAMES_PER_ITEM = 8  # an ego + 4 exo frames at Ego-Exo4D size decode to ~7.6 MB per frame


@dataclass(frozen=True)
class Item:
    """Frames ``frames`` of ``take`` in ``direction``: item ``chunk`` of the take's
    ``chunks``; ``images`` are the ``(camera, frame)`` pairs its observations read."""

    take: str
    direction: str
    chunk: int
    chunks: int
    frames: tuple[int, ...]
    images: tuple[tuple[str, int], ...]

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, record: dict) -> Item:
        return cls(
            record["take"],
            record["direction"],
            int(record["chunk"]),
            int(record["chunks"]),
            tuple(int(f) for f in record["frames"]),
            tuple((str(c), int(f)) for c, f in record["images"]),
        )


def take_items(take: str, direction: str, observations: list, frames_per_item: int) -> list[Item]:
    """The items of one take's ``observations`` (:class:`runtime.egoexo.TakeObservation`),
    ``frames_per_item`` annotated frames each, in frame order."""
    frames = sorted({o.frame for o in observations})
    chunks = [frames[i : i + frames_per_item] for i in range(0, len(frames), frames_per_item)]
    items = []
    for n, chunk in enumerate(chunks):
        wanted = set(chunk)
        images = sorted(
            {
                (cam, o.frame)
                for o in observations
                if o.frame in wanted
                for cam in (o.src_cam, o.dst_cam)
            }
        )
        items.append(Item(take, direction, n, len(chunks), tuple(chunk), tuple(images)))
    return items


# ----------------------------------------------------------------------------- reading


def read_item_images(root: str | os.PathLike, item: Item) -> dict[tuple[str, int], object]:
    """The decoded (H, W, 3) uint8 RGB images of ``item``, or the OmamaError message of an
    image that cannot be read (the observations that need it are skipped with that reason,
    as ``omama-run take`` skips them)."""
    index = ProcessedRoot(root)
    images: dict[tuple[str, int], object] = {}
    for cam, frame in item.images:
        try:
            images[(cam, frame)] = read_rgb(index.image_path(item.take, cam, frame))
        except OmamaError as exc:
            images[(cam, frame)] = str(exc)
    return images


def pack_images(images: dict[tuple[str, int], object]) -> tuple[list, np.ndarray]:
    """Images as ``(keys, pixels)``: ``[[cam, frame, h, w] | [cam, frame, error]]`` and all
    pixels in one flat uint8 array (what a Ray Data block holds without pickling)."""
    keys, arrays = [], []
    for (cam, frame), image in images.items():
        if isinstance(image, str):
            keys.append([cam, frame, image])
        else:
            keys.append([cam, frame, int(image.shape[0]), int(image.shape[1])])
            arrays.append(np.ascontiguousarray(image, np.uint8).reshape(-1))
    pixels = np.concatenate(arrays) if arrays else np.zeros(0, np.uint8)
    return keys, pixels


def unpack_images(keys: list, pixels: np.ndarray) -> dict[tuple[str, int], object]:
    """The inverse of :func:`pack_images`."""
    images: dict[tuple[str, int], object] = {}
    flat, offset = np.asarray(pixels, np.uint8).reshape(-1), 0
    for key in keys:
        if len(key) == 3:
            images[(key[0], int(key[1]))] = key[2]
            continue
        h, w = int(key[2]), int(key[3])
        images[(key[0], int(key[1]))] = flat[offset : offset + h * w * 3].reshape(h, w, 3)
        offset += h * w * 3
    return images


def image_reader(images: dict[tuple[str, int], object]) -> Callable[[str, int], np.ndarray]:
    """A :data:`runtime.runs.take.ImageReader` over images read beforehand."""

    def read(cam: str, frame: int) -> np.ndarray:
        image = images.get((cam, int(frame)))
        if image is None:
            raise OmamaError(f"frame {frame} of {cam} was not read for this item")
        if isinstance(image, str):
            raise OmamaError(image)
        return image

    return read


# ----------------------------------------------------------------------------- predicting


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs to open its pipelines and predict items (paths as every worker
    sees them)."""

    root: str
    artifacts: dict[str, str]  # direction -> artifacts folder
    artifacts_sha256: dict[str, str]  # direction -> the manifest sha256 the driver planned with
    backend: str = "auto"
    device: str = "auto"
    precision: str = "auto"
    threads: int | None = None
    mask_size: str = "submission"
    weights_dirs: tuple[str, ...] = ()
    candidates: str | None = None
    max_frames: int | None = None


class ItemPredictor:
    """One set of sessions per direction (opened once) predicting items, one at a time."""

    def __init__(self, spec: WorkerSpec) -> None:
        from runtime.manifest import MANIFEST_NAME, sha256_file
        from runtime.pipeline import Pipeline

        self.spec, self.index = spec, ProcessedRoot(spec.root)
        self.pipelines: dict = {}
        try:
            for direction, folder in spec.artifacts.items():
                digest, planned = sha256_file(Path(folder) / MANIFEST_NAME), spec.artifacts_sha256
                if digest != planned[direction]:
                    raise OmamaError(
                        f"the artifacts in {folder} on this worker differ from the driver's "
                        f"(manifest sha256 {digest[:12]}... vs {planned[direction][:12]}...): "
                        "every machine must see the same files at the same path"
                    )
                self.pipelines[direction] = Pipeline(
                    folder,
                    backend=spec.backend,
                    device=spec.device,
                    precision=spec.precision,
                    threads=spec.threads,
                    mask_size=spec.mask_size,
                    weights_dirs=spec.weights_dirs,
                )
        except BaseException:
            self.close()
            raise
        for direction, pipe in self.pipelines.items():
            log.info(
                "worker %d: %s sessions on %s %s %s",
                os.getpid(),
                direction,
                pipe.backend,
                pipe.device,
                pipe.precision,
            )

    def close(self) -> None:
        for pipe in self.pipelines.values():
            pipe.close()
        self.pipelines = {}

    def ran_on(self, direction: str) -> dict:
        pipe = self.pipelines[direction]
        return {"backend": pipe.backend, "device": pipe.device, "precision": pipe.precision}

    def predict(self, item: Item, images: dict[tuple[str, int], object]) -> dict:
        """The answer for ``item``: ``{"item", "ran_on", "predicted"}`` (a
        :class:`runtime.runs.take.TakePredictions` as JSON), or ``{"item", "error"}`` when
        the take cannot be predicted (one line)."""
        from runtime.runs.take import predict_take, select_observations

        try:
            observations, _ = select_observations(
                self.index, item.take, item.direction, self.spec.max_frames
            )
            wanted = set(item.frames)
            mine = [o for o in observations if o.frame in wanted]
            predicted = predict_take(
                self.pipelines[item.direction],
                self.index,
                item.take,
                mine,
                self.spec.candidates,
                read_image=image_reader(images),
            )
        except OmamaError as exc:
            log.warning("take %s %s frames %s: %s", item.take, item.direction, item.frames, exc)
            return {"item": item.to_json(), "error": str(exc)}
        log.info(
            "take %s %s item %d/%d: %d observations",
            item.take,
            item.direction,
            item.chunk + 1,
            item.chunks,
            len(predicted.predictions),
        )
        return {
            "item": item.to_json(),
            "ran_on": self.ran_on(item.direction),
            "predicted": predicted.to_json(),
        }
