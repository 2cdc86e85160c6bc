"""``omama submit``: one EvalAI submission file from the two directions' results, checked
against the official evaluator's rules (:mod:`runtime.submission`) before it is written."""

from __future__ import annotations

from pathlib import Path

import typer

from runtime.errors import OmamaError


def _results_option(direction: str) -> typer.models.OptionInfo:
    return typer.Option(
        None, f"--{direction}", help=f"{direction} results JSON (omama-run take/dataset/video)."
    )


def _gt_option(direction: str) -> typer.models.OptionInfo:
    return typer.Option(
        None,
        f"--gt-{direction}",
        help=f"{direction} correspondence GT JSON (omama data gt); omitted for the hidden "
        "test split: only what can be checked without it is checked.",
    )


def make_submission(results: dict[str, Path], gts: dict[str, Path], echo=print) -> dict:
    """Check each direction's results file (against its GT where given) and return the
    submission dict; ``echo`` gets one summary line per direction and what went unchecked."""
    from runtime.egoexo import DIRECTIONS, results_key
    from runtime.results import load_gt, load_results
    from runtime.submission import build_submission, check_with_gt, check_without_gt

    if not results:
        raise OmamaError("give --exo2ego RESULTS, --ego2exo RESULTS, or both")
    for direction in gts:
        if direction not in results:
            raise OmamaError(f"--gt-{direction} without --{direction} results")
    checked, unchecked = {}, []
    for direction in DIRECTIONS:
        if direction not in results:
            continue
        takes = load_results(results[direction], direction)
        if direction in gts:
            checked[direction], check = check_with_gt(takes, load_gt(gts[direction]), direction)
        else:
            checked[direction], check = check_without_gt(takes, direction)
            unchecked += [f"{direction}: {what}" for what in check.unchecked]
        echo(check.summary())
    for direction in DIRECTIONS:
        if direction not in results:
            echo(
                f"{direction}: not in this submission; the challenge ranks both directions, so "
                f"its {results_key(direction)!r} entry will be missing on EvalAI"
            )
    if unchecked:
        echo("not checked without the GT:")
        echo("\n".join(f"  {line}" for line in unchecked))
    return build_submission(checked)


def register(omama_app: typer.Typer) -> None:
    """Add ``omama submit`` to ``omama_app`` (the ``omama.commands`` entry point)."""

    @omama_app.command("submit")
    def submit_command(
        exo2ego: Path | None = _results_option("exo2ego"),
        ego2exo: Path | None = _results_option("ego2exo"),
        gt_exo2ego: Path | None = _gt_option("exo2ego"),
        gt_ego2exo: Path | None = _gt_option("ego2exo"),
        out: Path = typer.Option(..., "--out", "-o", help="The submission JSON to write."),
    ) -> None:
        """Write one EvalAI submission file (both directions) for the Ego-Exo4D
        correspondence challenge, checked first against every rule the official evaluator
        asserts: all takes, objects, camera pairs and annotated frames present, masks at the
        GT frame size scaled to a longer side of 480 px, float confidences, subsample_idx.
        The first broken rule is one line naming the take/object/camera pair/frame, and
        nothing is written. Masks at the model's size are refused: rerun omama-run with
        --mask-size submission.

        Example: omama submit --exo2ego exo2ego/results.json --ego2exo ego2exo/results.json
        --gt-exo2ego gt_exo2ego.json --gt-ego2exo gt_ego2exo.json --out submission.json
        """
        from runtime.atomic import write_json
        from runtime.locks import file_lock

        given = {"exo2ego": exo2ego, "ego2exo": ego2exo}
        gts = {"exo2ego": gt_exo2ego, "ego2exo": gt_ego2exo}
        results = {d: p for d, p in given.items() if p is not None}
        submission = make_submission(
            results, {d: p for d, p in gts.items() if p is not None}, echo=typer.echo
        )
        with file_lock(out, "omama submit"):
            write_json(out, submission)
        size_mb = out.stat().st_size / 1e6
        typer.echo(f"submission written to {out} ({size_mb:.1f} MB)")
