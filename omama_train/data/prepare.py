"""``omama data prepare``: Ego-Exo4D relation annotations + videos -> a processed root.

For every take of a ``relations_<split>.json``:

1. decode each LZString ``encodedMask`` into a COCO RLE of size ``[height, width]`` and
   check that its runs cover exactly ``height * width`` pixels;
2. extract exactly the frames that are annotated or masked in some camera from
   ``<takes>/<take_name>/frame_aligned_videos/<cam>.mp4``, decoding each video once,
   sequentially, and picking frames by index (never by timestamp); ego frames are
   downscaled by 2 and exo frames by 4 (``cv2.INTER_AREA``) and written as JPEG;
3. write ``processed/<take>/annotation.json`` last, holding only what can be used: every
   mask and annotated frame left in it has an image. What was left out is listed per take,
   with its reason, in the annotation's ``prepare`` record and in ``ROOT/prepare_report.json``.

A take is complete when its ``annotation.json`` carries the hash of the current inputs
(relations entry, video sizes and times, settings) and all its images exist; complete takes
are skipped, anything else is redone. All files are written atomically.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import re
import sys
import traceback
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import typer

from omama_train.data.encoded_masks import decode_encoded_mask
from omama_train.data.frames import extract_frames, find_video
from omama_train.data.prepare_report import (
    FRAME_BEYOND_VIDEO,
    MISSING_VIDEO,
    REPORT_NAME,
    SIZE_MISMATCH,
    TAKE_ERROR,
    UNDECODABLE_MASK,
    UNREADABLE_VIDEO,
    PrepareReport,
    Problem,
    TakeReport,
    write_report,
)
from runtime.atomic import remove_temporaries, write_bytes, write_json
from runtime.egoexo import (
    ProcessedRoot,
    annotation_path,
    frame_image_path,
    is_ego_cam,
    read_split_json,
    take_dir,
)
from runtime.errors import OmamaError
from runtime.locks import folder_lock
from runtime.workers import process_pool

# Bump when the processed output changes meaning, so that older takes are redone.
FORMAT_VERSION = 1


@dataclass(frozen=True)
class PrepareSettings:
    """How frames are written; part of every take's input hash."""

    ego_scale: int = 2
    exo_scale: int = 4
    jpeg_quality: int = 95

    def scale(self, cam: str) -> int:
        return self.ego_scale if is_ego_cam(cam) else self.exo_scale


@dataclass(frozen=True)
class TakeJob:
    """Everything a worker needs for one take (picklable)."""

    take: str
    entry: dict
    takes_dir: Path
    out: Path
    settings: PrepareSettings


# --------------------------------------------------------------------------------------------
# One take


def _input_hash(entry: dict, videos: dict[str, Path | None], settings: PrepareSettings) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps([FORMAT_VERSION, asdict(settings)]).encode())
    digest.update(json.dumps(entry, sort_keys=True).encode())
    for cam in sorted(videos):
        path = videos[cam]
        stat = path.stat() if path is not None else None
        digest.update(json.dumps([cam, stat and stat.st_size, stat and stat.st_mtime_ns]).encode())
    return digest.hexdigest()


def _complete_record(out: Path, take: str, input_sha256: str) -> dict | None:
    """The stored ``prepare`` record when the take is complete for these inputs, else None."""
    if not annotation_path(out, take).is_file():
        return None
    index = ProcessedRoot(out)
    try:
        record = index.annotation(take).get("prepare", {})
    except OmamaError:
        return None  # unreadable: redo
    if record.get("input_sha256") != input_sha256 or index.missing_images(take):
        return None
    return record


def _camera_entries(entry: dict) -> Iterable[tuple[str, str, dict]]:
    object_masks = entry.get("object_masks")
    if not isinstance(object_masks, dict):
        raise OmamaError("the take has no 'object_masks' mapping")
    for obj, per_cam in object_masks.items():
        for cam, cam_entry in per_cam.items():
            yield obj, cam, cam_entry


def _take_name(job: TakeJob) -> str:
    """The take's folder name under ``--takes`` (Ego-Exo4D names takes, relations use uids)."""
    entry = job.entry if isinstance(job.entry, dict) else {}
    return str(entry.get("take_name", job.take))


def prepare_take(job: TakeJob) -> TakeReport:
    """Prepare one take (see the module docstring); never raises for bad inputs."""
    take_name = _take_name(job)
    try:
        return _prepare_take(job, take_name)
    except Exception as exc:  # one broken take must not stop the others: report it
        detail = f"{type(exc).__name__}: {exc}"
        if not isinstance(exc, OmamaError):
            detail += " | " + traceback.format_exc(limit=-3).replace("\n", " ")
        return TakeReport(job.take, take_name, "failed", problems=[Problem(TAKE_ERROR, detail)])


def _nested_count(nested: dict) -> int:
    """Leaves of ``{obj: {cam: frames}}``."""
    return sum(len(frames) for per_cam in nested.values() for frames in per_cam.values())


@dataclass
class _TakeContent:
    """The decoded relations of one take, and what had to be left out of them, with why."""

    masks: dict[str, dict[str, dict[str, dict]]] = field(default_factory=dict)  # obj/cam/frame
    annotated: dict[str, dict[str, list[int]]] = field(default_factory=dict)  # obj/cam
    wanted: dict[str, set[int]] = field(default_factory=dict)  # cam -> frames to extract
    left_out: dict[tuple[str, str, str], tuple[list[int], str]] = field(default_factory=dict)
    masks_in: int = 0

    @classmethod
    def decode(cls, cam_entries: Iterable[tuple[str, str, dict]]) -> _TakeContent:
        content = cls()
        for obj, cam, cam_entry in cam_entries:
            frames = sorted({int(f) for f in cam_entry.get("annotated_frames", [])})
            content.annotated.setdefault(obj, {})[cam] = frames
            wanted = content.wanted.setdefault(cam, set())
            wanted.update(frames)
            for frame_str, ann in cam_entry.get("annotation", {}).items():
                frame = int(frame_str)
                wanted.add(frame)
                content.masks_in += 1
                try:
                    rle = decode_encoded_mask(ann)
                except (ValueError, OmamaError) as exc:
                    content._leave_out(UNDECODABLE_MASK, obj, cam, frame, str(exc))
                    continue
                content.masks.setdefault(obj, {}).setdefault(cam, {})[str(frame)] = rle
        return content

    def _leave_out(self, kind: str, obj: str, cam: str, frame: int, reason: str) -> None:
        frames, _ = self.left_out.setdefault((kind, obj, cam), ([], reason))
        frames.append(frame)

    def drop_size_mismatches(self, video_size_px: dict[str, list[int]]) -> None:
        """Masks must have the resolution of the video they annotate."""
        for obj, per_cam in self.masks.items():
            for cam, per_frame in per_cam.items():
                if cam not in video_size_px:
                    continue
                vh, vw = video_size_px[cam]
                for frame_str in [f for f, r in per_frame.items() if r["size"] != [vh, vw]]:
                    h, w = per_frame.pop(frame_str)["size"]
                    reason = f"mask {w}x{h}, video {vw}x{vh}"
                    self._leave_out(SIZE_MISMATCH, obj, cam, int(frame_str), reason)

    def left_out_problems(self) -> list[Problem]:
        """One problem per (kind, object, camera) of left-out masks.

        Their frames leave ``annotated`` too: left there they would read as "annotated,
        object not visible", a wrong label.
        """
        problems = []
        for (kind, obj, cam), (frames, reason) in sorted(self.left_out.items()):
            frames = sorted(frames)
            gone = set(frames)
            before = self.annotated.setdefault(obj, {}).get(cam, [])
            self.annotated[obj][cam] = [f for f in before if f not in gone]
            problems.append(
                Problem(
                    kind,
                    f"{len(frames)} mask(s) left out: {reason}",
                    cam=cam,
                    obj=obj,
                    frames=frames,
                    masks_dropped=len(frames),
                    annotated_dropped=len(before) - len(self.annotated[obj][cam]),
                )
            )
        return problems

    def with_images(self, written: dict[str, set[int]]) -> tuple[dict, dict, Counter]:
        """(masks, annotated frames) restricted to frames that have an image, and how many
        of each were dropped per camera (``Counter`` keyed ``("masks"|"annotated", cam)``)."""
        dropped: Counter = Counter()
        masks: dict[str, dict[str, dict[str, dict]]] = {}
        for obj, per_cam in self.masks.items():
            for cam, per_frame in per_cam.items():
                kept = sorted((int(f), r) for f, r in per_frame.items() if int(f) in written[cam])
                dropped[("masks", cam)] += len(per_frame) - len(kept)
                if kept:
                    masks.setdefault(obj, {})[cam] = {str(f): r for f, r in kept}
        annotated: dict[str, dict[str, list[int]]] = {}
        for obj, per_cam in self.annotated.items():
            for cam, frames in per_cam.items():
                kept_frames = [f for f in frames if f in written[cam]]
                dropped[("annotated", cam)] += len(frames) - len(kept_frames)
                if kept_frames:
                    annotated.setdefault(obj, {})[cam] = kept_frames
        return masks, annotated, dropped


@dataclass
class _Extraction:
    """Frames written per camera, sizes, and the video problems of one take."""

    written: dict[str, set[int]] = field(default_factory=dict)
    video_size_px: dict[str, list[int]] = field(default_factory=dict)
    image_size_px: dict[str, list[int]] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)


def _extract_take(
    job: TakeJob, take_name: str, videos: dict[str, Path | None], wanted: dict[str, set[int]]
) -> _Extraction:
    done = _Extraction()
    for cam in sorted(wanted):
        frames = sorted(wanted[cam])
        done.written[cam] = set()
        video = videos[cam]
        if video is None:
            expected = job.takes_dir / take_name / "frame_aligned_videos" / f"{cam}.mp4"
            done.problems.append(
                Problem(MISSING_VIDEO, f"{expected} not found", cam=cam, frames=frames)
            )
            continue
        scale = job.settings.scale(cam)

        def write_frame(index: int, jpeg: bytes, cam: str = cam) -> None:
            write_bytes(frame_image_path(job.out, job.take, cam, index), jpeg)

        result = extract_frames(video, frames, write_frame, scale, job.settings.jpeg_quality)
        done.written[cam] = set(result.written)
        if result.video_size_px is not None:
            h, w = result.video_size_px
            done.video_size_px[cam] = [h, w]
            done.image_size_px[cam] = [h // scale, w // scale]
        missing = [f for f in frames if f not in done.written[cam]]
        n = result.frames_decoded
        if result.error is not None:
            detail = f"{video}: decoding stopped after {n} frames: {result.error}"
            done.problems.append(Problem(UNREADABLE_VIDEO, detail, cam=cam, frames=missing))
        elif missing:
            detail = f"{video} has {n} frames (indices 0..{n - 1})" if n else f"{video} is empty"
            done.problems.append(Problem(FRAME_BEYOND_VIDEO, detail, cam=cam, frames=missing))
    return done


def _prepare_take(job: TakeJob, take_name: str) -> TakeReport:
    cam_entries = list(_camera_entries(job.entry))
    cams = sorted({cam for _, cam, _ in cam_entries})
    videos = {cam: find_video(job.takes_dir, take_name, job.take, cam) for cam in cams}
    input_sha256 = _input_hash(job.entry, videos, job.settings)
    record = _complete_record(job.out, job.take, input_sha256)
    if record is not None:
        return TakeReport.from_json({**record["report"], "status": "skipped", "frames_written": 0})
    remove_temporaries(take_dir(job.out, job.take), ("*.jpg", "annotation.json"), depth=2)

    content = _TakeContent.decode(cam_entries)
    annotated_in = _nested_count(content.annotated)
    extraction = _extract_take(job, take_name, videos, content.wanted)
    content.drop_size_mismatches(extraction.video_size_px)
    problems = content.left_out_problems()
    masks, annotated, dropped = content.with_images(extraction.written)
    for problem in extraction.problems:  # say what each video problem cost
        problem.masks_dropped = dropped[("masks", problem.cam)]
        problem.annotated_dropped = dropped[("annotated", problem.cam)]
        problem.detail += (
            f"; left out: {problem.masks_dropped} mask(s), "
            f"{problem.annotated_dropped} annotated frame(s)"
        )
    report = TakeReport(
        job.take,
        take_name,
        "prepared",
        frames_written=sum(len(f) for f in extraction.written.values()),
        masks_in=content.masks_in,
        masks_kept=_nested_count(masks),
        annotated_in=annotated_in,
        annotated_kept=_nested_count(annotated),
        problems=extraction.problems + problems,
    )

    ann_path = annotation_path(job.out, job.take)
    if report.frames_written == 0:
        ann_path.unlink(missing_ok=True)  # a stale one from other inputs would look complete
        report.status = "failed"
        return report
    annotation = {
        "masks": masks,
        "annotated_frames": annotated,
        "subsample_idx": sorted(set().union(*extraction.written.values())),
        "take_uid": job.take,
        "take_name": take_name,
        "scenario": job.entry.get("scenario"),
        "prepare": {
            "version": FORMAT_VERSION,
            "input_sha256": input_sha256,
            "settings": asdict(job.settings),
            "video_size_px": extraction.video_size_px,
            "image_size_px": extraction.image_size_px,
            "report": report.to_json(),
        },
    }
    write_json(ann_path, annotation)  # last: its presence marks the take as complete
    return report


# --------------------------------------------------------------------------------------------
# A whole relations file


def split_from_relations_name(relations: Path) -> str:
    match = re.fullmatch(r"relations_(\w+)\.json", relations.name)
    if match is None:
        raise OmamaError(
            f"cannot tell the split from {relations.name!r} (expected relations_<split>.json): "
            "pass --split"
        )
    return match.group(1)


def load_relations(relations: Path) -> dict[str, dict]:
    """``relations_<split>.json`` -> ``{take_uid: entry}``."""
    try:
        with open(relations, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError as exc:
        raise OmamaError(f"relations file not found: {relations}") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OmamaError(f"relations file {relations} is not readable JSON: {exc}") from exc
    annotations = data.get("annotations") if isinstance(data, dict) else None
    if not isinstance(annotations, dict):
        raise OmamaError(f"{relations} has no 'annotations' mapping of take uids")
    return annotations


def merge_split_json(out: Path, split: str, add: Iterable[str], remove: Iterable[str]) -> None:
    """Add takes to ``split`` in ``ROOT/split.json`` (keeping other splits), drop failed ones."""
    path = out / "split.json"
    splits = read_split_json(path) if path.is_file() else {}
    removed = set(remove)
    current = [t for t in splits.get(split, []) if t not in removed]
    present = set(current)
    current += sorted(t for t in set(add) if t not in present)
    splits[split] = current
    write_json(path, splits, indent=1)


def prepare(
    relations: Path,
    takes_dir: Path,
    out: Path,
    *,
    workers: int = 1,
    split: str | None = None,
    settings: PrepareSettings | None = None,
    progress: bool = True,
) -> PrepareReport:
    """Prepare every take of ``relations`` into ``out`` (see the module docstring).

    Returns the run's report; it is also merged into ``out/prepare_report.json``, and the
    takes that were prepared or already complete are merged into ``out/split.json``.
    """
    from tqdm import tqdm

    relations, takes_dir, out = Path(relations), Path(takes_dir), Path(out)
    split = split or split_from_relations_name(relations)
    if not takes_dir.is_dir():
        raise OmamaError(f"takes folder not found: {takes_dir}")
    if workers < 1:
        raise OmamaError(f"--workers must be at least 1, got {workers}")
    entries = load_relations(relations)
    settings = settings or PrepareSettings()
    jobs = [TakeJob(take, entries[take], takes_dir, out, settings) for take in sorted(entries)]
    out.mkdir(parents=True, exist_ok=True)
    remove_temporaries(out, ("split.json", REPORT_NAME))

    reports: dict[str, TakeReport] = {}
    bar = tqdm(
        total=len(jobs), desc=f"prepare {split}", unit="take", disable=not progress, file=sys.stderr
    )
    try:
        if workers == 1 or len(jobs) <= 1:
            for job in jobs:
                reports[job.take] = prepare_take(job)
                bar.update()
        else:
            with process_pool(workers) as pool:
                futures = {pool.submit(prepare_take, job): job for job in jobs}
                try:
                    for future in cf.as_completed(futures):
                        job = futures[future]
                        try:
                            reports[job.take] = future.result()
                        except Exception as exc:  # the worker process itself died
                            reports[job.take] = TakeReport(
                                job.take,
                                _take_name(job),
                                "failed",
                                problems=[Problem(TAKE_ERROR, f"{type(exc).__name__}: {exc}")],
                            )
                        bar.update()
                except BaseException:
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
    finally:
        bar.close()
        # Record whatever finished, also when interrupted.
        done = [reports[j.take] for j in jobs if j.take in reports]
        report = PrepareReport(split, str(relations), done, len(jobs))
        ok = [t.take for t in report.takes if t.status != "failed"]
        failed = [t.take for t in report.takes if t.status == "failed"]
        if report.takes:
            merge_split_json(out, split, ok, failed)
            write_report(out, report)
    return report


def add_commands(data_app: typer.Typer) -> None:
    @data_app.command("prepare")
    def prepare_command(
        relations: Path = typer.Option(
            ..., "--relations", help="Ego-Exo4D relations_<split>.json (annotations by take uid)."
        ),
        takes: Path = typer.Option(
            ..., "--takes", help="Folder of takes: <take_name>/frame_aligned_videos/<cam>.mp4."
        ),
        out: Path = typer.Option(..., "--out", help="Processed root to write (or complete)."),
        workers: int = typer.Option(1, "--workers", min=1, help="Takes prepared in parallel."),
        split: str | None = typer.Option(
            None, "--split", help="Split name; default: from relations_<split>.json."
        ),
    ) -> None:
        """Decode relation masks to RLE and extract the annotated frames of every take.

        Writes ROOT/processed/<take>/annotation.json and <cam>/<frame>.jpg (ego / 2,
        exo / 4), merges ROOT/split.json, and reports what was left out and why in
        ROOT/prepare_report.json. Complete takes are skipped, so an interrupted run resumes.

        Example: omama data prepare --relations relations_val.json --takes takes --out data
        """
        with folder_lock(out, "omama data prepare"):
            report = prepare(relations, takes, out, workers=workers, split=split)
        typer.echo(report.summary_text(out / REPORT_NAME))
