"""``omama data masks --ray``: the destination frames split over Ray workers.

One job per frame (its key only). Each worker loads its candidate maker once (FastSAM on
its device, or the annotations), reads the frame's image from the shared processed root,
and writes the frame's two files itself, atomically, with the same writer as the
in-process run (same bytes); it returns the frame's outcome (:func:`masks.frame_outcome`),
which the driver counts into the same report. The driver holds the output folder's lock
and source check (:func:`masks.extract_candidates`) meanwhile.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

from omama_train import raywork
from omama_train.data import masks
from omama_train.imagekey import ImageKey
from runtime.candidates import write_candidates
from runtime.egoexo import ProcessedRoot, candidate_paths
from runtime.errors import OmamaError


def frames_on_ray(
    options: raywork.RayOptions,
    root: Path,
    split: str,
    direction: str,
    fastsam: Path | None,
    settings: masks.FastSAMSettings,
    source: dict,
):
    """The ``on_ray`` of :func:`masks.extract_candidates` for this run: ``fastsam`` None
    makes candidates from the annotations (on CPUs)."""

    def on_ray(run, todo: list[ImageKey], progress: bool) -> dict:
        from tqdm import tqdm

        # auto: a GPU per worker when the cluster has GPUs, resolved on each worker
        device = "cpu" if fastsam is None else settings.device or "auto"
        kwargs = {
            "root": Path(root).resolve(),
            "split": split,
            "direction": direction,
            "fastsam": None if fastsam is None else Path(fastsam).resolve(),
            "settings": settings,
            "source": source,
        }
        with tqdm(total=len(todo), desc=f"masks {split} {direction} (Ray)", unit="frame",
                  file=sys.stderr, disable=not progress) as bar:  # fmt: skip

            def on_result(outcome: dict) -> None:
                run.add(outcome)
                bar.update(1)

            return raywork.run_jobs(options, frame_worker, kwargs, todo, device, on_result)

    return on_ray


def frame_worker(
    *,
    root: Path,
    split: str,
    direction: str,
    fastsam: Path | None,
    settings: masks.FastSAMSettings,
    source: dict,
    device: str,
    threads: int,
):
    """A Ray worker's job function (frame -> outcome), its candidate maker loaded once.
    Refuses FastSAM weights other than the driver's (another file under that path on this
    node) before any frame."""
    if fastsam is None:
        make = masks.annotation_source(root)
    else:
        settings = replace(settings, device=device)
        here = masks.candidates_source(fastsam, settings)
        if here != source:
            raise OmamaError(
                f"{fastsam} on this Ray node is not the driver's FastSAM ({here} vs "
                f"{source}): give every node the same file"
            )
        make = masks.fastsam_source(fastsam, settings)
    index = ProcessedRoot(root)

    def work(frame: ImageKey) -> dict:
        frame = ImageKey(*frame)
        path = index.image_path(*frame)
        outcome, candidates = masks.frame_outcome(frame, masks.read_image(path), path, make)
        if candidates is not None:
            write_candidates(*candidate_paths(root, split, direction, *frame), candidates)
        return outcome

    return work
