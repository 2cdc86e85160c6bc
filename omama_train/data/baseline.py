"""``omama data baseline``: the two bounds of any candidate-selecting matcher.

- ``random``: pick one destination candidate uniformly at random and call it visible —
  the chance level a trained matcher must clearly beat.
- ``oracle``: pick the candidate with the highest IoU against the ground truth, and
  predict visibility from the ground truth — the ceiling the candidate set allows
  (FastSAM's recall, or the stand-ins' for synthetic data).

Both write an Ego-Exo4D results JSON that ``omama eval`` scores like any model's output.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer

from runtime.errors import OmamaError

KINDS = ("random", "oracle")


def _iou_with(candidates: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """IoU of each candidate (N, H, W) with one mask (H, W)."""
    flat = candidates.reshape(len(candidates), -1).astype(bool)
    target = mask.reshape(-1).astype(bool)
    inter = (flat & target).sum(1)
    union = (flat | target).sum(1)
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def predict_baseline(
    root: Path,
    split: str,
    direction: str,
    kind: str,
    *,
    seed: int = 42,
    pairs_file: Path | None = None,
) -> tuple[dict, dict]:
    """Results JSON dict of a baseline over a split's pairs, and counts of what happened.

    Candidates come from ``Masks_<SPLIT>_<DIRECTION>`` of ``root``; a destination frame
    without a candidate file is an error (run ``omama data masks`` first).
    """
    from runtime import rle
    from runtime.candidates import load_frame_candidates
    from runtime.egoexo import ProcessedRoot, check_direction, read_pairs
    from runtime.results import add_prediction, new_results

    if kind not in KINDS:
        raise OmamaError(f"--kind must be one of {', '.join(KINDS)}, got {kind!r}")
    check_direction(direction)
    index = ProcessedRoot(root)
    pairs = read_pairs(pairs_file or index.pairs_path(split, direction))
    rng = np.random.default_rng(seed)
    results = new_results(direction)
    counts = {"pairs": len(pairs), "no_candidates": 0, "predicted_visible": 0}
    for pair in pairs:
        src, dst = pair.src_cam(direction), pair.dst_cam(direction)
        try:
            cands = load_frame_candidates(root, split, direction, pair.take, dst, pair.frame)
        except OmamaError as exc:
            raise OmamaError(f"{exc} (run `omama data masks` for this split first)") from exc
        h, w = cands.size_hw
        chosen, confidence = None, 0.0
        if len(cands) == 0:
            counts["no_candidates"] += 1
        elif kind == "random":
            chosen, confidence = int(rng.integers(len(cands))), 1.0
        else:
            gt_rle = index.mask_rle(pair.take, pair.obj, dst, pair.frame)
            if gt_rle is not None:
                from runtime.metrics import resize_nearest

                gt = resize_nearest(rle.decode(gt_rle), (h, w))
                chosen, confidence = int(np.argmax(_iou_with(cands.masks, gt))), 1.0
        mask = cands.masks[chosen] if chosen is not None else np.zeros((h, w), np.uint8)
        counts["predicted_visible"] += int(confidence > 0.5)
        add_prediction(results, pair.take, pair.obj, src, dst, pair.frame, mask, confidence)
    return results, counts


def add_commands(data_app: typer.Typer) -> None:
    @data_app.command("baseline")
    def baseline_command(
        root: Path = typer.Option(..., "--root", help="Processed root (omama data prepare)."),
        direction: str = typer.Option(..., "--direction", help="exo2ego or ego2exo."),
        kind: str = typer.Option("random", "--kind", help="random (chance) or oracle (ceiling)."),
        split: str = typer.Option("test", "--split", help="Split whose pairs are predicted."),
        pairs: Path | None = typer.Option(None, "--pairs", help="Pairs file (default: split's)."),
        seed: int = typer.Option(42, "--seed", help="Seed of the random baseline."),
        out: Path = typer.Option(..., "--out", help="Results JSON to write."),
    ) -> None:
        """Write the chance-level or candidate-ceiling predictions of a split.

        Example: omama data baseline --root data --direction exo2ego --kind oracle
        --out oracle.json
        """
        from runtime.locks import file_lock
        from runtime.results import write_results

        with file_lock(out, "omama data baseline"):
            results, counts = predict_baseline(
                root, split, direction, kind, seed=seed, pairs_file=pairs
            )
            write_results(out, results)
        typer.echo(
            f"{kind} baseline: {counts['pairs']} pairs, {counts['predicted_visible']} predicted "
            f"visible, {counts['no_candidates']} without candidates -> {out}"
        )
