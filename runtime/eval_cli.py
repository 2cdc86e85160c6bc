"""``omama eval``: the official metrics (:mod:`runtime.evaluate`) of a results file, or of
both directions of a submission file (``omama submit``), each with its GT."""

from __future__ import annotations

import contextlib
from pathlib import Path

import typer

from runtime.errors import OmamaError


def eval_plan(
    file_directions: list[str],
    direction: str | None,
    gt: Path | None,
    gt_by_direction: dict[str, Path | None],
    pred: Path | str = "predictions",
) -> list[tuple[str, Path]]:
    """``[(direction, gt_path)]`` to evaluate: ``direction`` if given, else every direction of
    the predictions file; ``--gt`` serves a single direction, ``--gt-<direction>`` any."""
    from runtime.egoexo import check_direction, results_key

    if direction is not None:
        directions = [check_direction(direction)]
    elif file_directions:
        directions = file_directions
    else:
        raise OmamaError(f"predictions file {pred} has no 'exo-ego' or 'ego-exo' results")
    if gt is not None and len(directions) > 1:
        raise OmamaError(
            f"{pred} holds {' and '.join(results_key(d) for d in directions)} results: give "
            "--gt-exo2ego and --gt-ego2exo (or --direction to evaluate one)"
        )
    given = {d for d, path in gt_by_direction.items() if path is not None}
    if gt is not None and given:
        raise OmamaError("give --gt or --gt-exo2ego / --gt-ego2exo, not both")
    if unused := sorted(given - set(directions)):
        raise OmamaError(
            f"--gt-{unused[0]} given but {unused[0]} is not evaluated ({pred} holds "
            f"{' and '.join(results_key(d) for d in directions)} results)"
        )
    plan = []
    for d in directions:
        path = gt_by_direction.get(d) or gt
        if path is None:
            raise OmamaError(f"no GT for {d}: give --gt-{d} (or --gt)")
        plan.append((d, path))
    return plan


def register(omama_app: typer.Typer) -> None:
    """Add ``omama eval`` to ``omama_app`` (the ``omama.commands`` entry point)."""
    from runtime.evaluate import default_workers

    @omama_app.command("eval")
    def eval_command(
        pred: Path = typer.Option(
            ..., "--pred", help="Predictions: a results JSON, or a submission of both directions."
        ),
        gt: Path | None = typer.Option(
            None, "--gt", help="Correspondence GT JSON of the one direction evaluated."
        ),
        gt_exo2ego: Path | None = typer.Option(None, "--gt-exo2ego", help="exo2ego GT JSON."),
        gt_ego2exo: Path | None = typer.Option(None, "--gt-ego2exo", help="ego2exo GT JSON."),
        direction: str | None = typer.Option(
            None, "--direction", help="exo2ego or ego2exo (default: every one in --pred)."
        ),
        protocol: str = typer.Option(
            "omama",
            "--protocol",
            help="omama (GT resized to the prediction size, as in the reference study's "
            "published figures) or egoexo4d (the challenge evaluator's 480 px working size).",
        ),
        out: Path | None = typer.Option(
            None,
            "--out",
            help="Write the full report (JSON) here; with two directions, "
            '{"exo2ego": report, "ego2exo": report}.',
        ),
        per_observation: bool = typer.Option(
            False, "--per-observation", help="Also print one line per observation."
        ),
        workers: int = typer.Option(
            default_workers(), "--workers", help="Processes (each evaluates whole takes)."
        ),
        gallery: Path | None = typer.Option(
            None,
            "--gallery",
            help="Write an HTML + PNG gallery of best/median/worst cases here (one direction).",
        ),
        root: Path | None = typer.Option(
            None, "--root", help="Processed root with the frames, for the gallery's images."
        ),
        gallery_per_group: int = typer.Option(
            4, "--gallery-per-group", help="Observations shown per gallery group."
        ),
    ) -> None:
        """Evaluate predictions with the official Ego-Exo4D correspondence metrics.

        Prints IoU (and its std), shape_acc, location_score and balanced_acc, counts,
        breakdowns by GT object size and camera, temporal consistency and an IoU histogram,
        for each direction evaluated.

        Examples: omama eval --gt gt.json --pred preds.json --direction exo2ego --out m.json;
        omama eval --pred submission.json --gt-exo2ego gt_exo2ego.json --gt-ego2exo
        gt_ego2exo.json --protocol egoexo4d
        """
        from runtime.atomic import write_json
        from runtime.evaluate import evaluate_report, format_observations, format_summary
        from runtime.jsonrecords import read_json_object
        from runtime.locks import file_lock, folder_lock
        from runtime.results import load_gt, results_takes
        from runtime.submission import file_directions

        if root is not None and gallery is None:
            raise OmamaError("--root is only used with --gallery")
        data = read_json_object(pred, "predictions file")
        gts = {"exo2ego": gt_exo2ego, "ego2exo": gt_ego2exo}
        plan = eval_plan(file_directions(data), direction, gt, gts, pred)
        if gallery is not None and len(plan) > 1:
            raise OmamaError("--gallery shows one direction: add --direction")
        with contextlib.ExitStack() as outputs:  # one writer per report and gallery
            if out is not None:
                outputs.enter_context(file_lock(out, "omama eval"))
            if gallery is not None:
                outputs.enter_context(folder_lock(gallery, "omama eval"))
            reports = {}
            for d, gt_path in plan:
                gt_annotations = load_gt(gt_path)
                pred_takes = results_takes(data, d, pred)
                report = evaluate_report(
                    gt_annotations, pred_takes, d, protocol, workers, progress=True
                )
                reports[d] = {"gt_file": str(gt_path), "pred_file": str(pred), **report}
                if len(reports) > 1:
                    typer.echo("")
                typer.echo(format_summary(reports[d]))
                if per_observation:
                    typer.echo("")
                    typer.echo(format_observations(reports[d]))
            if out is not None:
                write_json(out, reports[plan[0][0]] if len(plan) == 1 else reports, indent=2)
                typer.echo(f"report written to {out}")
            if gallery is not None:
                from runtime.gallery import write_gallery

                paths = write_gallery(
                    gallery, reports[plan[0][0]], gt_annotations, pred_takes, root=root,
                    per_group=gallery_per_group,
                )  # fmt: skip
                typer.echo(f"gallery written to {paths['html']}")
