"""``omama data gt``: the evaluation ground truth of a split, from a processed root.

Format (docs/reference.md, section 7)::

    {"annotations": {take: {"masks": {obj: {cam: {frame: RLE}}},
                            "annotated_frames": {obj: {cam: [ints]}}}}}

The file holds exactly the observations to score: those of a pairs file when one is given
(e.g. a sampled test set), else every pair of the split. For each pair (object, exo camera,
frame) it carries the source mask, the destination mask when the object is visible, and
the frame in the annotated frames of both cameras. Whatever order an evaluator walks the
file in (source masks, or destination annotated frames), it meets these observations and
no others. A mask whose RLE is invalid or whose size is not its frame's is refused
(:mod:`omama_train.data.annotated_masks`): the GT would score it wrongly.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import typer

from omama_train.data.annotated_masks import AnnotatedMasks
from omama_train.data.pairs import all_pairs
from runtime.atomic import write_json
from runtime.egoexo import Pair, ProcessedRoot, check_direction, read_pairs
from runtime.errors import OmamaError
from runtime.locks import file_lock
from runtime.results import add_gt_annotation, new_gt


def build_gt(index: ProcessedRoot, pairs: Iterable[Pair], direction: str) -> tuple[dict, int]:
    """GT JSON for ``pairs`` -> (gt, number of pairs left out because their query mask is
    missing from the processed root).

    Both cameras of every pair get an entry under ``masks[obj]`` (empty when the object is
    not visible there): the evaluator only walks objects that have an ego camera there.
    OmamaError, naming the observation, for an invalid mask or one of another size than
    its frame.
    """
    check_direction(direction)
    masks = AnnotatedMasks(index)
    gt = new_gt()
    no_query = 0
    for pair in pairs:
        src, dst = pair.src_cam(direction), pair.dst_cam(direction)
        query = masks.rle(pair.take, pair.obj, src, pair.frame)
        if query is None:
            no_query += 1
            continue
        add_gt_annotation(gt, pair.take, pair.obj, src, pair.frame, query)
        target = masks.rle(pair.take, pair.obj, dst, pair.frame)
        add_gt_annotation(gt, pair.take, pair.obj, dst, pair.frame, target)
    for take in gt["annotations"].values():  # frame order, whatever the order of the pairs
        for per_cam in take["annotated_frames"].values():
            for frames in per_cam.values():
                frames.sort()
        for per_cam in take["masks"].values():
            for cam, per_frame in per_cam.items():
                per_cam[cam] = dict(sorted(per_frame.items(), key=lambda kv: int(kv[0])))
    return gt, no_query


def select_pairs(pairs: list[Pair], takes: Iterable[str], cams: Iterable[str]) -> list[Pair]:
    """The pairs of the given takes and exo cameras (all of them when a filter is empty);
    a filter that matches no pair is an error naming what exists."""
    takes, cams = set(takes), set(cams)
    for wanted, field, what in ((takes, "take", "take"), (cams, "exo_cam", "exo camera")):
        present = {getattr(p, field) for p in pairs}
        unknown = sorted(wanted - present)
        if unknown:
            raise OmamaError(
                f"no pairs with {what} {', '.join(unknown)}; present: "
                f"{', '.join(sorted(present)[:10]) or 'none'}"
            )
    return [p for p in pairs if (not takes or p.take in takes) and (not cams or p.exo_cam in cams)]


def add_commands(data_app: typer.Typer) -> None:
    @data_app.command("gt")
    def gt_command(
        root: Path = typer.Option(..., "--root", help="Processed root (from omama data prepare)."),
        split: str = typer.Option("test", "--split", help="Split of split.json."),
        direction: str = typer.Option(..., "--direction", help="exo2ego or ego2exo."),
        out: Path = typer.Option(..., "--out", help="GT JSON to write."),
        pairs_file: Path | None = typer.Option(
            None, "--pairs", help="Score only these pairs (e.g. a sampled pairs file)."
        ),
        only_takes: list[str] = typer.Option(
            [], "--take", help="Only this take (repeatable), e.g. the take of one video run."
        ),
        only_cams: list[str] = typer.Option(
            [],
            "--cam",
            help="Only pairs with this exo camera (repeatable), e.g. the camera of one "
            "`omama-run video` run.",
        ),
    ) -> None:
        """Write the evaluation GT JSON of a split, for omama eval.

        --take and --cam narrow the observations to what one `omama-run video` run predicts,
        so its results.json can be scored on its own.

        Example: omama data gt --root data --split test --direction exo2ego --out gt_test.json
        """
        check_direction(direction)
        index = ProcessedRoot(root)
        if pairs_file is not None:
            pairs = read_pairs(pairs_file)
            takes = set(index.takes(split))
            foreign = sorted({p.take for p in pairs} - takes)
            if foreign:
                raise OmamaError(
                    f"{pairs_file} has takes outside split {split!r}: {', '.join(foreign[:3])}"
                )
        else:
            pairs = all_pairs(
                index, [t for t in index.takes(split) if index.has_take(t)], direction
            )
        pairs = select_pairs(pairs, only_takes, only_cams)
        with file_lock(out, "omama data gt"):
            gt, no_query = build_gt(index, pairs, direction)
            write_json(out, gt)
        n_takes = len(gt["annotations"])
        typer.echo(
            f"{split} {direction}: {len(pairs) - no_query} observations in {n_takes} takes -> {out}"
        )
        if no_query:
            typer.echo(f"  {no_query} pair(s) left out: no query mask in the processed root")
