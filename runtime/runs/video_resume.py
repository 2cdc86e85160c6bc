"""The state of a video run in its output folder, and continuing an interrupted run.

A run writes ``run_state.json`` (what it was run on, the next frame to do, its counts and
skips) right after the partial ``results.json`` it points past, and one line per
prediction to ``predictions.jsonl``. ``--resume`` continues from there when the inputs
are the same, and drops the detail lines written after the last checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from runtime.atomic import atomic_path
from runtime.errors import OmamaError
from runtime.jsonrecords import read_json_object
from runtime.manifest import sha256_file
from runtime.results import new_results
from runtime.runs.records import RESULTS_NAME

if TYPE_CHECKING:
    from runtime.pipeline import Pipeline
    from runtime.runs.video import VideoRun
    from runtime.video import VideoInfo

STATE_NAME = "run_state.json"
DETAILS_NAME = "predictions.jsonl"

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
    counts = {"frames": 0, "predictions": 0, "visible": 0, "no_candidates": 0,
              **dict.fromkeys(CANDIDATE_COUNTS.values(), 0)}  # fmt: skip
    return {"inputs": inputs, "next_frame": 0, "complete": False, "counts": counts,
            "skipped_frames": [], "query_skips": {"count": 0, "listed": []},
            "candidate_skips": {"count": 0, "listed": []}}  # fmt: skip


def load_resume(out_dir: Path, inputs: dict) -> tuple[dict, dict]:
    """(state, partial results) of an interrupted run in ``out_dir``, or a clear error."""
    state_path = out_dir / STATE_NAME
    if not state_path.is_file():
        raise OmamaError(
            f"--resume: {out_dir} holds no {STATE_NAME} of an earlier run; run without --resume"
        )
    state = read_json_object(state_path, "run state")
    differs = [k for k in inputs if state.get("inputs", {}).get(k) != inputs[k]]
    if differs:
        raise OmamaError(
            f"--resume: {state_path} belongs to a run with other inputs ({', '.join(differs)} "
            "differ); use another --out or run without --resume"
        )
    results_path = out_dir / RESULTS_NAME
    if results_path.is_file():
        results = read_json_object(results_path, "partial results")
    elif state.get("next_frame", 0) == 0:
        results = new_results(inputs["direction"])
    else:
        raise OmamaError(f"--resume: {results_path} is missing; run without --resume")
    trim_details(out_dir / DETAILS_NAME, int(state.get("next_frame", 0)))
    return state, results


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
