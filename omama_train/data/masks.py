"""``omama data masks``: candidate masks for every destination frame of a pairs file.

For each unique destination frame (take, destination cam, frame) of
``ROOT/dataset_jsons/<split>_<exoego|egoexo>_pairs.json`` this writes
``ROOT/Masks_<SPLIT>_<DIRECTION>/<take>/<cam>/<frame>_masks.npz`` and ``_boxes.npy``
(layout: :mod:`runtime.candidates`), from FastSAM's "everything" mode on the processed jpg
(:func:`omama_train.models.fastsam.segment_everything`), or, with ``from_annotations``,
from the ground-truth masks of every object annotated in that frame (a stand-in for tests
and the synthetic demo when no FastSAM weights are at hand; it makes the task easier than
real candidates do, so numbers obtained with it are not comparable to published ones).

Work is sharded deterministically (shard i of n takes the sorted frames ``[i::n]``),
resumable (a frame whose two files exist and agree is skipped), atomic per file, and ends
with a JSON report ``ROOT/masks_report_<split>_<direction>[_shard_i_n].json``. With
``--ray`` the frames are split over Ray workers instead (:mod:`omama_train.data.masks_ray`),
which write the very files this process would. Shards share
the output folder; each holds its own lock there, so a second run of the same shard stops
at once with one error, and the folder's source is checked and recorded under a lock of its
own. A frame that cannot be done (missing or unreadable image, an invalid ground-truth mask)
is skipped, logged and reported; a run that leaves its shard without any candidates fails.
"""

from __future__ import annotations

import json
import logging
import platform
import sys
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from filelock import FileLock

from omama_train import raywork
from omama_train.data.annotated_masks import AnnotatedMasks
from omama_train.devices import resolve_device
from omama_train.imagekey import ImageKey, dst_frames
from omama_train.shards import parse_shard, select_shard
from runtime.atomic import write_json
from runtime.candidates import Candidates, candidates_complete, write_candidates
from runtime.egoexo import (
    ProcessedRoot,
    candidate_paths,
    candidates_dir,
    check_direction,
    pairs_path,
    read_pairs,
)
from runtime.errors import OmamaError
from runtime.images import read_rgb
from runtime.info import package_versions
from runtime.locks import folder_lock
from runtime.preprocess import resize_mask_nearest
from runtime.ray_options import CpusPerWorker, GpusPerWorker, Ray, RayAddress, Workers
from runtime.rle import decode

log = logging.getLogger(__name__)

PREFETCH_FRAMES = 4  # images decoded ahead of the model
SOURCE_FILE = "candidates_source.json"
SOURCE_LOCK = ".omama-source.lock"


class SkipFrame(Exception):
    """A candidate maker cannot do this frame (e.g. one of its masks is invalid): the run
    reports it and goes on with the next frame."""


@dataclass(frozen=True)
class FastSAMSettings:
    """FastSAM "everything" parameters (O-MaMa's: 1024, 0.4, 0.9, retina masks); ``device``
    None or ``auto``: CUDA when torch sees a GPU, else the CPU (decided where FastSAM loads:
    here, or on each Ray worker)."""

    imgsz: int = 1024
    conf: float = 0.4
    iou: float = 0.9
    retina_masks: bool = True
    device: str | None = None


def report_path(root: Path, split: str, direction: str, shard: tuple[int, int] = (0, 1)) -> Path:
    """``ROOT/masks_report_<split>_<direction>[_shard_i_n].json``."""
    suffix = "" if shard[1] == 1 else f"_shard_{shard[0]}_{shard[1]}"
    return Path(root) / f"masks_report_{split}_{check_direction(direction)}{suffix}.json"


def candidates_source(fastsam: Path | None, settings: FastSAMSettings | None) -> dict:
    """What made a candidates folder: ground truth, or FastSAM weights and settings.

    The device is left out on purpose: shards may run on CPUs and GPUs alike.
    """
    if fastsam is None or settings is None:
        return {"mode": "annotations"}
    return {
        "mode": "fastsam",
        "weights_name": Path(fastsam).name,
        "weights_bytes": Path(fastsam).stat().st_size,
        "imgsz": settings.imgsz,
        "conf": settings.conf,
        "iou": settings.iou,
        "retina_masks": settings.retina_masks,
    }


def check_source(out_dir: Path, source: dict) -> None:
    """Refuse to resume into a folder whose candidates were made another way.

    Resuming skips finished frames, so mixing sources (say ground-truth stand-ins and
    FastSAM) would go unnoticed; ``out_dir/candidates_source.json`` records the source.
    """
    path = Path(out_dir) / SOURCE_FILE
    if not path.is_file():
        return
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OmamaError(
            f"{path} is not readable JSON ({exc}); delete it if the folder is yours"
        ) from exc
    if recorded != source:
        raise OmamaError(
            f"{out_dir} holds candidates made by {recorded}, this run would add {source}: "
            "delete that folder (or use another root) to switch"
        )


def claim_source(out_dir: Path, source: dict) -> None:
    """Check ``out_dir``'s recorded source against ``source`` and record it when absent,
    under the folder's source lock: of two shards with other sources starting at once, the
    second is refused instead of both writing into one folder."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(out_dir / SOURCE_LOCK):
        check_source(out_dir, source)
        if not (out_dir / SOURCE_FILE).is_file():
            write_json(out_dir / SOURCE_FILE, source, indent=2)


def annotation_candidates(
    masks: AnnotatedMasks, frame: ImageKey, size_hw: tuple[int, int]
) -> Candidates:
    """Ground-truth masks of every object with a mask in this frame, as candidates.

    Masks (stored at the video's resolution) are nearest-resized to ``size_hw`` (H, W) with
    the OpenCV rule, as O-MaMa resizes ground-truth masks, so a stand-in candidate equals the
    positive mask training builds for that object; objects are in name order; masks that come
    out empty are left out. Boxes are the tight boxes of the resized masks. SkipFrame when a
    mask of the frame is invalid or not of its video's size (its candidates would be wrong).
    """
    found = []
    for obj in masks.index.objects(frame.take):
        try:
            rle = masks.rle(frame.take, obj, frame.cam, frame.frame)
        except OmamaError as exc:
            raise SkipFrame(str(exc)) from exc
        if rle is None:
            continue
        mask = resize_mask_nearest(decode(rle), size_hw, rule="opencv")
        if mask.any():
            found.append(mask)
    if not found:
        return Candidates.empty(size_hw)
    return Candidates.from_masks(np.stack(found))


def read_image(path: Path) -> np.ndarray | None:
    """RGB uint8 (H, W, 3) of ``path``, None when it is missing or cannot be decoded (the
    report lists those frames)."""
    try:
        return read_rgb(path)
    except OmamaError:
        return None


VERSIONED_PACKAGES = ("omama", "numpy", "opencv-python-headless", "torch", "ultralytics")


def fastsam_source(
    fastsam: Path, settings: FastSAMSettings
) -> Callable[[ImageKey, np.ndarray], Candidates]:
    """A candidate maker running FastSAM on the frame's image (weights loaded once)."""
    from omama_train.models.fastsam import load_fastsam, segment_everything

    device = resolve_device(settings.device)
    model = load_fastsam(fastsam)

    def make(frame: ImageKey, image_rgb: np.ndarray) -> Candidates:
        masks, boxes = segment_everything(
            model,
            image_rgb,
            imgsz=settings.imgsz,
            conf=settings.conf,
            iou=settings.iou,
            retina_masks=settings.retina_masks,
            device=device,
        )
        return Candidates(masks, boxes)

    return make


def annotation_source(root: Path) -> Callable[[ImageKey, np.ndarray], Candidates]:
    """A candidate maker returning the frame's ground-truth masks (see annotation_candidates)."""
    masks = AnnotatedMasks(ProcessedRoot(root))

    def make(frame: ImageKey, image_rgb: np.ndarray) -> Candidates:
        return annotation_candidates(masks, frame, image_rgb.shape[:2])

    return make


def extract_candidates(
    root: Path,
    split: str,
    direction: str,
    make_candidates: Callable[[ImageKey, np.ndarray], Candidates],
    *,
    pairs_file: Path | None = None,
    shard: tuple[int, int] = (0, 1),
    progress: bool = True,
    report_extra: dict | None = None,
    io_threads: int = 4,
    source: dict | None = None,
    on_ray: Callable[[_Run, list[ImageKey], bool], dict] | None = None,
) -> dict:
    """Write the candidates of this shard's destination frames; returns the report dict.

    ``make_candidates(frame, image_rgb)`` computes one frame's :class:`Candidates` at the
    image's size, or raises :class:`SkipFrame`. Frames already complete are skipped; missing
    or unreadable images and frames the maker skips are logged, reported and skipped (nothing
    is written for them); when that leaves the shard without any candidates, OmamaError
    (after the report). Image reading and the compressed writes run in worker threads
    (``io_threads`` writers; zlib releases the GIL), so the model does not wait on disk or
    compression. With ``source`` (:func:`candidates_source`) the output folder records how
    its candidates were made and refuses other sources. The shard's lock on the output
    folder is held throughout: a second run of the same shard is refused at once. With
    ``on_ray(run, todo, progress)`` (:func:`omama_train.data.masks_ray.frames_on_ray`) the
    frames are done on Ray instead, not by ``make_candidates`` here; what it returns is the
    report's ``ray`` entry.
    """
    if io_threads < 1:
        raise OmamaError(f"--io-threads must be at least 1, got {io_threads}")
    started = time.perf_counter()
    root = Path(root)
    check_direction(direction)
    pairs_file = Path(pairs_file) if pairs_file is not None else pairs_path(root, split, direction)
    frames_all = dst_frames(read_pairs(pairs_file), direction)
    frames = select_shard(frames_all, *shard)
    out_dir = candidates_dir(root, split, direction)
    path = report_path(root, split, direction, shard)
    where = f"omama data masks --shard {shard[0]}/{shard[1]}"
    with folder_lock(
        out_dir, where, name=f".omama-shard-{shard[0]:03d}of{shard[1]:03d}.lock", instead=None
    ):
        todo, skipped, redone = _plan(root, split, direction, frames)
        if source is not None:
            claim_source(out_dir, source) if todo else check_source(out_dir, source)
        run = _Run(root, split, direction)
        ray = None
        if on_ray is None:
            run.write(todo, make_candidates, io_threads, progress)
        else:
            ray = on_ray(run, todo, progress)
        report = {
            "split": split,
            "direction": direction,
            "pairs_file": str(pairs_file),
            "output_dir": str(out_dir),
            "source": source,
            "shard": list(shard),
            "frames_total": len(frames_all),
            "frames_in_shard": len(frames),
            "skipped_complete": len(skipped),
            "redone_incomplete": redone,
            **run.outcome(time.perf_counter() - started),
            "finished_at": datetime.now().astimezone().isoformat(timespec="seconds"),
            "machine": {"platform": platform.platform(), "processor": platform.processor()},
            "versions": {
                "python": platform.python_version(),
                **package_versions(VERSIONED_PACKAGES),
            },
            **(report_extra or {}),
            **({"ray": ray} if on_ray is not None else {}),
        }
        write_json(path, report, indent=2)
    if todo and not report["written"] and not skipped:
        raise OmamaError(
            f"no frame of this shard has candidates: all {len(todo)} were skipped "
            f"({run.why_skipped()}); see {path}"
        )
    return report


def _plan(
    root: Path, split: str, direction: str, frames: list[ImageKey]
) -> tuple[list[ImageKey], list[str], list[str]]:
    """(frames to compute, frames already complete, incomplete frames computed again)."""
    todo: list[ImageKey] = []
    skipped: list[str] = []
    redone: list[str] = []
    for frame in frames:
        masks_path, boxes_path = candidate_paths(root, split, direction, *frame)
        if candidates_complete(masks_path, boxes_path):
            skipped.append(str(frame))
        else:
            if masks_path.exists() or boxes_path.exists():
                redone.append(str(frame))
            todo.append(frame)
    return todo, skipped, redone


class _Run:
    """The frames of one ``extract_candidates`` call: read ahead, computed, written behind,
    and what was found on the way (candidate counts, missing and unreadable images)."""

    def __init__(self, root: Path, split: str, direction: str) -> None:
        self.root, self.split, self.direction = root, split, direction
        self.missing: list[str] = []
        self.unreadable: list[str] = []
        self.invalid: list[dict] = []  # {"frame", "problem"} of the frames the maker skipped
        self.zero: list[str] = []
        self.counts: list[int] = []
        self.compute_s = 0.0

    def write(self, todo: list[ImageKey], make_candidates, io_threads: int, progress: bool):
        from tqdm import tqdm

        index = ProcessedRoot(self.root)
        pending: deque[Future] = deque()
        with (
            ThreadPoolExecutor(max_workers=1) as reader,
            ThreadPoolExecutor(max_workers=io_threads) as writers,
            tqdm(
                total=len(todo),
                desc=f"masks {self.split} {self.direction}",
                unit="frame",
                file=sys.stderr,
                disable=not progress,
            ) as bar,
        ):
            paths = [index.image_path(*frame) for frame in todo]
            reads: deque[Future] = deque(
                reader.submit(read_image, path) for path in paths[:PREFETCH_FRAMES]
            )
            for i, frame in enumerate(todo):
                image = reads.popleft().result()
                if i + PREFETCH_FRAMES < len(todo):
                    reads.append(reader.submit(read_image, paths[i + PREFETCH_FRAMES]))
                outcome, candidates = frame_outcome(frame, image, paths[i], make_candidates)
                self.add(outcome)
                if candidates is not None:
                    masks_path, boxes_path = candidate_paths(
                        self.root, self.split, self.direction, *frame
                    )
                    pending.append(
                        writers.submit(write_candidates, masks_path, boxes_path, candidates)
                    )
                    while len(pending) > 2 * io_threads:  # bounds the masks held in memory
                        pending.popleft().result()
                    bar.set_postfix(candidates=len(candidates))
                bar.update(1)
            for future in pending:
                future.result()

    def outcome(self, seconds: float) -> dict:
        """The report's entries on what this run did to its frames."""
        counts = self.counts
        return {
            "written": len(counts),
            "zero_candidates": self.zero,
            "missing_images": self.missing,
            "unreadable_images": self.unreadable,
            "invalid_masks": self.invalid,
            "candidates": {
                "total": int(sum(counts)),
                "mean": float(np.mean(counts)) if counts else 0.0,
                "min": int(min(counts)) if counts else 0,
                "max": int(max(counts)) if counts else 0,
            },
            "timing": {
                "seconds_total": round(seconds, 3),
                "compute_ms_per_frame": (
                    round(1000 * self.compute_s / len(counts), 2) if counts else None
                ),
            },
        }

    def why_skipped(self) -> str:
        """``"2 with invalid masks, 1 missing image"``: the frames skipped, by reason."""
        parts = [
            (len(self.invalid), "with invalid masks", "with invalid masks"),
            (len(self.missing), "missing image", "missing images"),
            (len(self.unreadable), "unreadable image", "unreadable images"),
        ]
        return ", ".join(f"{n} {one if n == 1 else many}" for n, one, many in parts if n)

    def add(self, outcome: dict) -> None:
        """Count one frame's :func:`frame_outcome` (done here or by a Ray worker)."""
        frame, status = outcome["frame"], outcome["status"]
        if status == "invalid":
            self.invalid.append({"frame": frame, "problem": outcome["problem"]})
        elif status in ("missing", "unreadable"):
            (self.missing if status == "missing" else self.unreadable).append(frame)
        else:
            self.counts.append(outcome["candidates"])
            self.compute_s += outcome["compute_s"]
            if outcome["candidates"] == 0:
                self.zero.append(frame)


def frame_outcome(
    frame: ImageKey, image: np.ndarray | None, path: Path, make_candidates
) -> tuple[dict, Candidates | None]:
    """``({"frame", "status", ...}, candidates to write or None)`` of one frame: ``status``
    ``missing`` or ``unreadable`` (``image`` None), ``invalid`` (the maker skipped it, with
    its ``problem``) or ``written`` (with the ``candidates`` count and ``compute_s``)."""
    if image is None:
        return {"frame": str(frame), "status": "unreadable" if path.is_file() else "missing"}, None
    t0 = time.perf_counter()
    try:
        candidates = make_candidates(frame, image)
    except SkipFrame as exc:
        log.warning("skipped frame %s: %s", frame, exc)
        return {"frame": str(frame), "status": "invalid", "problem": str(exc)}, None
    compute_s = time.perf_counter() - t0
    if candidates.size_hw != image.shape[:2]:
        raise OmamaError(
            f"candidates of {frame} are {candidates.size_hw}, image is {image.shape[:2]}"
        )
    outcome = {"frame": str(frame), "status": "written", "candidates": len(candidates),
               "compute_s": compute_s}  # fmt: skip
    return outcome, candidates


def candidate_maker(
    root: Path,
    split: str,
    direction: str,
    fastsam: Path | None,
    from_annotations: bool,
    settings: FastSAMSettings,
    load: bool = True,
) -> tuple[Callable[[ImageKey, np.ndarray], Candidates] | None, dict, dict]:
    """(candidate maker, its :func:`candidates_source`, report entries) of ``omama data
    masks``: FastSAM (``fastsam`` checkpoint, loaded here) or the annotations; no maker
    without ``load`` (a ``--ray`` run: its workers make their own). The source is checked
    against the candidates folder before any work."""
    if from_annotations == (fastsam is not None):
        raise OmamaError(
            "pass either --fastsam FastSAM-x.pt or --from-annotations (not both, not neither)"
        )
    if from_annotations:
        source = candidates_source(None, None)
        check_source(candidates_dir(root, split, direction), source)
        extra = {"mode": "annotations", "weights": None, "fastsam": None}
        return annotation_source(root) if load else None, source, extra
    t0 = time.perf_counter()
    if load:  # a --ray run's workers resolve the device where they run
        settings = replace(settings, device=resolve_device(settings.device))
    make = fastsam_source(fastsam, settings) if load else None
    source = candidates_source(fastsam, settings)
    check_source(candidates_dir(root, split, direction), source)
    extra = {"mode": "fastsam", "weights": str(fastsam), "fastsam": asdict(settings)}
    if load:
        extra["model_load_s"] = round(time.perf_counter() - t0, 3)
    return make, source, extra


def summary_line(report: dict, path: Path) -> str:
    shard = "" if report["shard"][1] == 1 else f" (shard {report['shard'][0]}/{report['shard'][1]})"
    cands = report["candidates"]
    per_frame = report["timing"]["compute_ms_per_frame"]
    return (
        f"{report['frames_in_shard']} destination frames{shard} of {report['frames_total']}: "
        f"{report['written']} written, {report['skipped_complete']} already done, "
        f"{len(report['missing_images'])} missing images, "
        f"{len(report['unreadable_images'])} unreadable, "
        f"{len(report.get('invalid_masks', []))} skipped for invalid masks; "
        f"{len(report['zero_candidates'])} with zero candidates; "
        f"{cands['total']} candidates (mean {cands['mean']:.1f}, max {cands['max']}); "
        + (f"{per_frame:.0f} ms/frame; " if per_frame is not None else "")
        + f"report: {path}"
    )


Opt = typer.Option
Root = Annotated[Path, Opt("--root", help="Processed root (from omama data prepare).")]
Direction = Annotated[str, Opt("--direction", help="exo2ego or ego2exo.")]
Split = Annotated[str, Opt("--split", help="Split whose pairs are processed.")]
Pairs = Annotated[
    Path | None,
    Opt(
        "--pairs",
        help="Pairs JSON (default: ROOT/dataset_jsons/<split>_<exoego|egoexo>_pairs.json).",
    ),
]
FastSAM = Annotated[
    Path | None,
    Opt("--fastsam", help="FastSAM checkpoint, e.g. FastSAM-x.pt (never downloaded)."),
]
FromAnnotations = Annotated[
    bool,
    Opt(
        "--from-annotations",
        help="No FastSAM: use the ground-truth masks of all objects annotated in each "
        "destination frame as its candidates. A stand-in for tests and the synthetic "
        "demo; it makes matching easier than real FastSAM candidates.",
    ),
]
ImgSz = Annotated[int, Opt("--imgsz", help="FastSAM input size (pixels).")]
Conf = Annotated[float, Opt("--conf", help="FastSAM confidence threshold.")]
Iou = Annotated[float, Opt("--iou", help="FastSAM NMS IoU threshold.")]
Retina = Annotated[
    bool, Opt("--retina/--no-retina", help="Masks at image resolution (reference setting).")
]
Shard = Annotated[str, Opt("--shard", help="Process shard i of n (0-based), e.g. 0/4 ... 3/4.")]
Device = Annotated[
    str | None,
    Opt(
        "--device",
        help="cpu, cuda, cuda:N or auto (default: cuda when available; with --ray, a GPU "
        "per worker when the Ray cluster has GPUs).",
    ),
]
IoThreads = Annotated[int, Opt("--io-threads", help="Threads compressing and writing mask files.")]
Progress = Annotated[bool, Opt("--progress/--no-progress", help="Progress bar.")]


def masks_command(
    root: Root,
    direction: Direction,
    split: Split = "test",
    pairs: Pairs = None,
    fastsam: FastSAM = None,
    from_annotations: FromAnnotations = False,
    imgsz: ImgSz = 1024,
    conf: Conf = 0.4,
    iou: Iou = 0.9,
    retina: Retina = True,
    shard: Shard = "0/1",
    device: Device = None,
    io_threads: IoThreads = 4,
    progress: Progress = True,
    ray: Ray = False,
    ray_address: RayAddress = None,
    workers: Workers = None,
    cpus_per_worker: CpusPerWorker = None,
    gpus_per_worker: GpusPerWorker = None,
) -> None:
    """Candidate masks (FastSAM everything mode) for every destination frame of a pairs file.

    Writes ROOT/Masks_<SPLIT>_<DIRECTION>/<take>/<cam>/<frame>_masks.npz (arr_0: N x H x W
    uint8) and _boxes.npy (N x 4 float32 x1, y1, w, h) at the processed image's size.
    Resumable (finished frames are skipped), shardable across processes or machines
    (--shard), or split over Ray workers that each load FastSAM once (--ray); reports to
    ROOT/masks_report_<split>_<direction>[_shard_i_n].json.

    Example: omama data masks --root data/omama --direction exo2ego --split test --fastsam FastSAM-x.pt --shard 0/4

    Example: omama data masks --root data/omama --direction exo2ego --split test --fastsam FastSAM-x.pt --ray-address HEAD:6379 --workers 8 --device cuda
    """  # noqa: E501
    check_direction(direction)
    shard_tuple = parse_shard(shard)
    options = raywork.ray_options(
        ray, ray_address, workers, cpus_per_worker, gpus_per_worker, shard_tuple
    )
    settings = FastSAMSettings(imgsz, conf, iou, retina, device or "auto")
    make, source, extra = candidate_maker(
        root, split, direction, fastsam, from_annotations, settings, load=options is None
    )
    on_ray = None
    if options is not None:
        from omama_train.data.masks_ray import frames_on_ray

        on_ray = frames_on_ray(options, root, split, direction, fastsam, settings, source)
    report = extract_candidates(
        root,
        split,
        direction,
        make,
        pairs_file=pairs,
        shard=shard_tuple,
        progress=progress,
        report_extra=extra,
        io_threads=io_threads,
        source=source,
        on_ray=on_ray,
    )
    typer.echo(summary_line(report, report_path(root, split, direction, shard_tuple)))


def add_commands(data_app: typer.Typer) -> None:
    """Add ``omama data masks``."""
    data_app.command("masks")(masks_command)
