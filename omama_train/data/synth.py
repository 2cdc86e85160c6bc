"""Synthetic Ego-Exo4D takes: a rendered tabletop seen by a moving ego camera and static exos.

The scenes are built in :mod:`omama_train.data.synth_scene` and drawn by
:mod:`omama_train.data.synth_render`; this module renders every take's videos and writes
them with their annotations.

Output (the real dataset's layout)::

    OUT/takes/<take_name>/frame_aligned_videos/<cam>.mp4  ego aria01_214-1, exo cam01..cam03
    OUT/annotations/relations_<split>.json    official relations format, LZString RLE masks
    OUT/split.json                            {"train": [take_uid], "val": [...], "test": [...]}
    OUT/synth_meta.json                       recipe (seed, sizes) and per take: cams, objects

"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np
import typer

from omama_train.data.synth_scene import (
    EGO_CAM,
    FPS,
    FULL,
    GENERATOR,
    SCENARIO,
    SMALL,
    SynthTake,
    build_take,
)
from runtime import rle
from runtime.atomic import atomic_path, write_json
from runtime.egoexo import SPLITS
from runtime.errors import OmamaError
from runtime.locks import folder_lock

# --------------------------------------------------------------------------- writing


def assign_splits(num_takes: int) -> list[str]:
    """Split of each take index: 1 take -> test; 2 -> train, test; N >= 3 -> about 60/20/20
    with at least one take in every split."""
    if num_takes < 1:
        raise OmamaError(f"--num-takes must be at least 1, got {num_takes}")
    if num_takes == 1:
        return ["test"]
    if num_takes == 2:
        return ["train", "test"]
    n_eval = max(1, round(0.2 * num_takes))
    n_train = num_takes - 2 * n_eval
    return ["train"] * n_train + ["val"] * n_eval + ["test"] * n_eval


def write_video(path: Path, frames: Iterable[np.ndarray], size_px: tuple[int, int]) -> int:
    """Encode RGB frames (H, W, 3) uint8 to an H.264 MP4 at a constant 30 fps, atomically.

    Returns the number of frames written.
    """
    import av

    width, height = size_px
    count = 0
    with atomic_path(path) as tmp:
        container = av.open(str(tmp), mode="w", format="mp4")
        try:
            stream = container.add_stream("libx264", rate=FPS)
            stream.width, stream.height = width, height
            stream.pix_fmt = "yuv420p"
            stream.time_base = Fraction(1, FPS)
            stream.codec_context.gop_size = FPS  # a key frame every second: cheap seeking
            # Near-lossless, so colours and the frame-to-frame content survive.
            stream.options = {"crf": "14", "preset": "veryfast"}
            for rgb in frames:
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                frame.pts = count
                container.mux(stream.encode(frame))
                count += 1
            container.mux(stream.encode(None))
        finally:
            container.close()
    return count


def _encoded_mask(mask: np.ndarray) -> str:
    from omama_train.data.lzstring import compress_to_encoded_uri_component

    return compress_to_encoded_uri_component(rle.encode(mask)["counts"])


def _render_and_annotate(
    take: SynthTake,
    cam: str,
    frames: Iterable[int],
    object_masks: dict[str, dict],
    counts: dict[str, int],
    advance: Callable[[int], object],
) -> Iterator[np.ndarray]:
    """Yield the RGB frames of ``cam``; at annotated frames, record each visible object's
    mask in ``object_masks[obj][cam]["annotation"]`` and count the objects out of view."""
    width, height = take.size_px(cam)
    annotated = set(take.annotated_frames)
    hidden_key = "ego_not_visible" if cam == EGO_CAM else "exo_not_visible"
    for frame in frames:
        rgb, ids = take.render(cam, frame)
        if frame in annotated:
            pixels = np.bincount(ids.ravel(), minlength=len(take.objects) + 1)
            # COCO RLE runs down columns: a transposed copy makes every mask Fortran-ordered.
            ids_t = np.ascontiguousarray(ids.T).T
            for obj in take.objects:
                if pixels[obj.instance] == 0:
                    counts[hidden_key] += 1
                    continue
                object_masks[obj.name][cam]["annotation"][str(frame)] = {
                    "width": width,
                    "height": height,
                    "encodedMask": _encoded_mask(ids_t == obj.instance),
                }
                counts["masks"] += 1
        advance(1)
        yield rgb


def _recipe(seed: int, small: bool, frames: int, annotate_every: int) -> dict:
    preset = SMALL if small else FULL
    return {
        "generator": GENERATOR,
        "seed": seed,
        "small": small,
        "fps": FPS,
        "frames": frames,
        "annotate_every": annotate_every,
        "ego_size_px": list(preset.ego_size_px),
        "exo_size_px": list(preset.exo_size_px),
    }


def _reusable_takes(meta_path: Path, meta: dict) -> set[str]:
    """Takes whose videos an earlier run with the same recipe already wrote."""
    try:
        old = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    if not isinstance(old, dict) or old.get("recipe") != meta["recipe"]:
        return set()
    old_takes = {t.get("take_name"): t for t in old.get("takes", []) if isinstance(t, dict)}
    return {t["take_name"] for t in meta["takes"] if old_takes.get(t["take_name"]) == t}


def synthesize(
    out: Path,
    num_takes: int,
    *,
    small: bool = False,
    seed: int = 0,
    frames: int | None = None,
    annotate_every: int | None = None,
    show_progress: bool = False,
) -> dict:
    """Write ``num_takes`` synthetic takes under ``out`` (layout in the module docstring).

    Videos of an earlier run with the same recipe (``synth_meta.json``) are kept, so an
    interrupted run resumes; relations, split and meta are always rewritten.
    ``show_progress`` shows a progress bar of rendered frames on stderr. Returns a summary
    dict (counts of takes per split, videos, masks, objects out of view, seconds).
    """
    from tqdm import tqdm

    started = time.perf_counter()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OmamaError(f"--out {out} exists and is not a folder")
    splits = assign_splits(num_takes)
    preset = SMALL if small else FULL
    frames = preset.frames if frames is None else frames
    annotate_every = preset.annotate_every if annotate_every is None else annotate_every
    synth_takes = [
        build_take(seed, i, small=small, frames=frames, annotate_every=annotate_every)
        for i in range(num_takes)
    ]
    meta = {
        "recipe": _recipe(seed, small, frames, annotate_every),
        "takes": [
            {**take.describe(), "split": split}
            for take, split in zip(synth_takes, splits, strict=True)
        ],
    }
    meta_path = out / "synth_meta.json"
    reusable = _reusable_takes(meta_path, meta)
    write_json(meta_path, meta, indent=1)
    bar = tqdm(
        total=sum(
            len(take.annotated_frames if take.take_name in reusable else range(take.frames))
            * len(take.cam_names)
            for take in synth_takes
        ),
        unit="frame",
        desc="synth",
        file=sys.stderr,
        disable=not show_progress,
    )
    relations: dict[str, dict] = {split: {} for split in SPLITS}
    counts = {"videos_written": 0, "videos_kept": 0, "masks": 0}
    counts |= {"ego_not_visible": 0, "exo_not_visible": 0}
    for take, split in zip(synth_takes, splits, strict=True):
        relations[split][take.take_uid] = {
            "take_name": take.take_name,
            "scenario": SCENARIO,
            "object_masks": _write_take(out, take, take.take_name in reusable, counts, bar),
        }
    bar.close()
    written_relations, split_json = _write_annotations(out, relations, synth_takes, splits)
    return {
        "out": str(out),
        "takes": num_takes,
        "splits": {split: len(uids) for split, uids in split_json.items()},
        "frames_per_video": frames,
        "annotated_frames_per_take": len(range(0, frames, annotate_every)),
        "ego_size_px": list(preset.ego_size_px),
        "exo_size_px": list(preset.exo_size_px),
        "objects": sum(len(t.objects) for t in synth_takes),
        "exo_cams": sum(len(t.exo_cameras) for t in synth_takes),
        **counts,
        "relations": written_relations,
        "seconds": round(time.perf_counter() - started, 2),
    }


def _write_take(out: Path, take: SynthTake, reusable: bool, counts: dict, bar) -> dict:
    """Render (and encode, unless an earlier run's video is kept) every camera of ``take``;
    returns its ``object_masks`` in the relations format."""
    object_masks: dict[str, dict] = {
        obj.name: {
            cam: {"annotated_frames": list(take.annotated_frames), "annotation": {}}
            for cam in take.cam_names
        }
        for obj in take.objects
    }
    for cam in take.cam_names:
        video = out / "takes" / take.take_name / "frame_aligned_videos" / f"{cam}.mp4"
        keep = reusable and video.is_file()
        # Kept videos: render the annotated frames only, for their masks.
        frames_rgb = _render_and_annotate(
            take,
            cam,
            take.annotated_frames if keep else range(take.frames),
            object_masks,
            counts,
            bar.update,
        )
        if keep:
            for _ in frames_rgb:
                pass
            counts["videos_kept"] += 1
        else:
            written = write_video(video, frames_rgb, take.size_px(cam))
            if written != take.frames:  # pragma: no cover - guards the frame-count contract
                raise OmamaError(f"{video}: wrote {written} frames, expected {take.frames}")
            counts["videos_written"] += 1
    return object_masks


def _write_annotations(
    out: Path, relations: dict[str, dict], synth_takes: list[SynthTake], splits: list[str]
) -> tuple[list[str], dict[str, list[str]]]:
    """``relations_<split>.json`` of every split with takes (a stale one of an earlier run
    removed) and ``split.json``; returns (relations files written, split.json's content)."""
    written_relations = []
    for split in SPLITS:
        path = out / "annotations" / f"relations_{split}.json"
        if relations[split]:
            write_json(path, {"annotations": relations[split]})
            written_relations.append(str(path))
        elif path.exists():  # stale from an earlier run with other splits
            path.unlink()
    split_json = {
        split: [t.take_uid for t, s in zip(synth_takes, splits, strict=True) if s == split]
        for split in SPLITS
    }
    write_json(out / "split.json", split_json, indent=1)
    return written_relations, split_json


def add_commands(data_app: typer.Typer) -> None:
    @data_app.command("synth")
    def synth_command(
        out: Path = typer.Option(..., "--out", help="Folder to write the synthetic dataset to."),
        num_takes: int = typer.Option(
            ..., "--num-takes", min=1, help="Number of takes to generate."
        ),
        small: bool = typer.Option(
            False, "--small", help="Small videos (ego 448x448, exo 896x504) and short takes."
        ),
        seed: int = typer.Option(0, "--seed", help="Random seed; the same seed, the same data."),
        frames: int | None = typer.Option(
            None, "--frames", min=1, help="Frames per video (default: 30 small, 90 full)."
        ),
        annotate_every: int | None = typer.Option(
            None,
            "--annotate-every",
            min=1,
            help="Annotate frames 0, K, 2K, ... (default: 5 small, 10 full).",
        ),
    ) -> None:
        """Render synthetic Ego-Exo4D-like takes: MP4 videos, relations JSON, split.json.

        A tabletop with textured objects seen by a moving ego camera (aria01_214-1) and
        static exo cameras (cam01..cam03: 1-3 per take, 1-2 with --small); masks are exact
        (rendered with occlusion). Videos of an earlier run with the same recipe are kept.

        Example: omama data synth --out data/synth --num-takes 6 --small --seed 0
        """
        with folder_lock(out, "omama data synth"):
            summary = synthesize(
                out,
                num_takes,
                small=small,
                seed=seed,
                frames=frames,
                annotate_every=annotate_every,
                show_progress=True,
            )
        typer.echo(
            f"wrote {summary['takes']} takes to {summary['out']} "
            f"(train {summary['splits']['train']}, val {summary['splits']['val']}, "
            f"test {summary['splits']['test']}): {summary['videos_written']} videos written, "
            f"{summary['videos_kept']} kept from an earlier run, {summary['frames_per_video']} "
            f"frames each, {summary['masks']} masks; objects out of view at annotated frames: "
            f"ego {summary['ego_not_visible']}, exo {summary['exo_not_visible']} "
            f"({summary['seconds']} s)"
        )
