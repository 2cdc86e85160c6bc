"""The state of a video run in its output folder, and continuing an interrupted run.

A run writes ``run_state.json`` (what it was run on, the next frame to do, its counts and
skips) right after the partial ``results.json`` it points past, and one line per
prediction to ``predictions.jsonl``. ``--resume`` continues from there when the inputs
are the same, and drops the detail lines written after the last checkpoint. Every file is
put in place by a rename (:mod:`runtime.atomic`), so a kill leaves the temporary files of
the writes it cut short: the next run of the folder removes them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from runtime.atomic import atomic_path
from runtime.errors import OmamaError
from runtime.jsonrecords import read_json_object
from runtime.manifest import sha256_file
from runtime.results import new_results, results_takes
from runtime.runs.records import RESULTS_NAME, SUMMARY_NAME

if TYPE_CHECKING:
    from runtime.pipeline import Pipeline
    from runtime.runs.video import VideoRun
    from runtime.video import VideoInfo

log = logging.getLogger(__name__)

STATE_NAME = "run_state.json"
DETAILS_NAME = "predictions.jsonl"
OVERLAY_NAME = "overlay.mp4"
# What the run and `omama-run video --gt` write through a temporary ".<name>.<random><suffix>"
# beside the file (runtime.atomic); "overlay*": also the overlay_from_<frame>.mp4 of old runs.
_TEMP_PATTERNS = tuple(
    f".{name}.*"
    for name in (RESULTS_NAME, STATE_NAME, DETAILS_NAME, SUMMARY_NAME, "metrics.json", "overlay*")
)
COUNT_NAMES = ("frames", "predictions", "visible", "no_candidates")

# Where a video frame's candidates came from -> its counter in the run state.
CANDIDATE_COUNTS = {
    "precomputed": "precomputed_frames",
    "fastsam": "fastsam_frames",
    "none": "no_candidate_frames",
}


def run_inputs(run: VideoRun, pipeline: Pipeline, src_info: VideoInfo, dst_info: VideoInfo) -> dict:
    """What identifies a video run, compared on ``--resume``."""
    return {
        "src_video": str(Path(run.src_video).resolve()),
        "dst_video": str(Path(run.dst_video).resolve()),
        "src_frames": src_info.frame_count,
        "dst_frames": dst_info.frame_count,
        "tracks": run.tracks.digest(),
        "manifest_sha256": sha256_file(Path(pipeline.manifest.root) / "manifest.json"),
        "direction": pipeline.direction,
        "mask_size": pipeline.mask_size,
        "take": run.take,
        "src_cam": run.src_cam,
        "dst_cam": run.dst_cam,
        # None = FastSAM only, which also matches states written before --candidates existed
        "candidates": run.candidates.digest() if run.candidates is not None else None,
    }


def new_state(inputs: dict) -> dict:
    """The state of a run that has done nothing yet."""
    counts = {**dict.fromkeys(COUNT_NAMES, 0), **dict.fromkeys(CANDIDATE_COUNTS.values(), 0)}
    return {"inputs": inputs, "next_frame": 0, "complete": False, "counts": counts,
            "skipped_frames": [], "query_skips": {"count": 0, "listed": []},
            "candidate_skips": {"count": 0, "listed": []}}  # fmt: skip


def remove_temp_files(out_dir: Path) -> list[str]:
    """Remove the temporary files that a killed run of ``out_dir`` left (the caller holds the
    folder's lock, so no other run is writing them); returns their names."""
    removed = sorted({p.name for pattern in _TEMP_PATTERNS for p in out_dir.glob(pattern)})
    for name in removed:
        (out_dir / name).unlink(missing_ok=True)
    if removed:
        log.info("removed %d temporary files of an interrupted run: %s", len(removed),
                 ", ".join(removed))  # fmt: skip
    return removed


def load_resume(out_dir: Path, inputs: dict) -> tuple[dict, dict]:
    """(state, partial results) of an interrupted run in ``out_dir``, or a clear error."""
    state_path = out_dir / STATE_NAME
    if not state_path.is_file():
        raise OmamaError(
            f"--resume: {out_dir} holds no {STATE_NAME} of an earlier run; run without --resume"
        )
    state = read_json_object(state_path, "run state")
    problem = state_problem(state)
    if problem:
        raise OmamaError(
            f"--resume: {state_path} cannot be continued: {problem}; run without --resume to "
            "start over"
        )
    differs = [k for k in inputs if state["inputs"].get(k) != inputs[k]]
    if differs:
        raise OmamaError(
            f"--resume: {state_path} belongs to a run with other inputs ({', '.join(differs)} "
            "differ); use another --out or run without --resume"
        )
    results_path = out_dir / RESULTS_NAME
    if results_path.is_file():
        results = read_json_object(results_path, "partial results")
        results_takes(results, inputs["direction"], results_path)
    elif state["next_frame"] == 0:
        results = new_results(inputs["direction"])
    else:
        raise OmamaError(f"--resume: {results_path} is missing; run without --resume")
    trim_details(out_dir / DETAILS_NAME, state["next_frame"])
    return state, results


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def state_problem(state: dict) -> str | None:
    """What makes ``state`` unusable by this version (a field by name), or None."""
    if not isinstance(state.get("inputs"), dict):
        return "inputs is not an object"
    if not _is_count(state.get("next_frame")):
        return f"next_frame is {state.get('next_frame')!r}, not a frame index"
    if not isinstance(state.get("complete"), bool):
        return f"complete is {state.get('complete')!r}, not true or false"
    counts = state.get("counts")
    if not isinstance(counts, dict) or not all(_is_count(counts.get(k)) for k in COUNT_NAMES):
        return f"counts must hold the counts {', '.join(COUNT_NAMES)}"
    if not isinstance(state.get("skipped_frames"), list):
        return "skipped_frames is not a list"
    for key in ("query_skips", "candidate_skips"):
        record = state.get(key)
        if record is None and key == "candidate_skips":  # states from before --candidates
            continue
        if not (isinstance(record, dict) and _is_count(record.get("count"))
                and isinstance(record.get("listed"), list)):  # fmt: skip
            return f"{key} is not {{count, listed}}"
    return None


def trim_details(path: Path, next_frame: int) -> None:
    """Drop the per-frame lines written after the last checkpoint (they are redone)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if int(json.loads(line)["frame"]) < next_frame:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue  # a line cut by the interruption
    with atomic_path(path) as tmp:
        tmp.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
