"""``omama-run dataset``: every take of a split, in this process or on Ray, resumable per take.

For each direction, every take of ``ROOT/split.json``'s split is cut into items of a few
annotated frames (:mod:`runtime.runs.dataset_jobs`); an executor predicts the items (in
this process by default, or a Ray Data pipeline, :mod:`runtime.runs.dataset_ray`) and hands
each answer back here, where a take whose items are all in becomes its part
``OUT/takes/<take>.<direction>.json``, written atomically (:mod:`runtime.runs.dataset_parts`).
A rerun skips the takes whose part is complete and made with the same settings.

At the end the parts are assembled, takes sorted, into ``OUT/results.json`` (with both
directions: ``results_exo2ego.json`` and ``results_ego2exo.json``), the GT of the predicted
observations ``gt.json`` and the official metrics ``metrics.json`` (when the split has
destination masks), and ``summary.json``. The output folder is locked while it runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from runtime.atomic import remove_temporaries, write_json
from runtime.egoexo import DIRECTIONS, ProcessedRoot, is_ego_cam
from runtime.errors import OmamaError, no_fastsam_error
from runtime.locks import folder_lock
from runtime.runs.dataset_jobs import (
    FRAMES_PER_ITEM,
    Item,
    ItemPredictor,
    WorkerSpec,
    read_item_images,
    take_items,
)
from runtime.runs.dataset_parts import (
    TAKES_DIR,
    RunSettings,
    assemble,
    read_part,
    take_inputs_sha256,
    totals,
    write_part,
)
from runtime.runs.frame_sizes import scoring_protocol
from runtime.runs.records import SUMMARY_NAME

Echo = Callable[[str], object]
NOT_PREPARED = "not prepared (no annotation.json)"  # a reported skip, not a failure


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide the Ray executor runs (:mod:`runtime.runs.dataset_ray`).

    ``cpus_per_worker`` / ``gpus_per_worker`` None: chosen from the cluster's resources.
    """

    address: str | None = None
    workers: int = 1
    cpus_per_worker: float | None = None
    gpus_per_worker: float | None = None


@dataclass(frozen=True)
class DatasetConfig:
    """One ``omama-run dataset`` run; ``artifacts`` maps each direction to run to its
    artifacts folder (:func:`artifacts_by_direction`)."""

    root: Path
    split: str
    artifacts: dict[str, Path]
    out: Path
    backend: str = "auto"
    device: str = "auto"
    precision: str = "auto"
    threads: int | None = None
    mask_size: str = "submission"  # what the challenge's evaluator compares with
    weights_dirs: tuple[Path, ...] = ()
    candidates: Path | None = None
    max_frames: int | None = None
    ray: RayOptions | None = None
    frames_per_item: int = FRAMES_PER_ITEM
    progress: bool = True


def artifacts_by_direction(direction: str | None, folders: list[Path]) -> dict[str, Path]:
    """``{direction: artifacts folder}`` for ``--direction`` (exo2ego, ego2exo, both, or
    None: the directions of the folders given); each folder's direction is its manifest's."""
    from runtime.manifest import load_manifest

    if direction not in (None, "both", *DIRECTIONS):
        raise OmamaError(f"--direction must be exo2ego, ego2exo or both, got {direction!r}")
    found: dict[str, Path] = {}
    for folder in folders:
        folder_direction = load_manifest(folder).direction
        if folder_direction in found:
            raise OmamaError(
                f"--artifacts {found[folder_direction]} and {folder} are both "
                f"{folder_direction}: give one folder per direction"
            )
        found[folder_direction] = Path(folder)
    wanted = DIRECTIONS if direction == "both" else (direction,) if direction else tuple(found)
    for name in wanted:
        if name not in found:
            have = ", ".join(f"{p} ({d})" for d, p in found.items())
            raise OmamaError(
                f"--direction {direction} needs {name} artifacts (export one with "
                f"--direction {name}) but --artifacts gave {have}"
            )
    for name, folder in found.items():
        if name not in wanted:
            raise OmamaError(f"--artifacts {folder} is {name} but --direction is {direction}")
    return {name: found[name] for name in DIRECTIONS if name in wanted}


def output_names(directions: list[str]) -> dict[str, dict[str, str]]:
    """File names per direction: ``results.json``, ``gt.json``, ``metrics.json`` for one
    direction; ``results_<direction>.json`` (and so on) for both."""
    if len(directions) == 1:
        return {directions[0]: {k: f"{k}.json" for k in ("results", "gt", "metrics")}}
    return {d: {k: f"{k}_{d}.json" for k in ("results", "gt", "metrics")} for d in directions}


# ----------------------------------------------------------------------------- planning


@dataclass
class _Plan:
    """The takes already done, those to predict (as items), and those that cannot be."""

    done: dict[str, dict[str, dict]]  # direction -> take -> part
    inputs: dict[str, str]  # take -> take_inputs_sha256
    redone: dict[str, int] = field(default_factory=dict)  # why a part is predicted again
    failed: dict[str, dict[str, str]] = field(default_factory=dict)  # direction -> take -> why
    items: list[Item] = field(default_factory=list)
    pending: dict[tuple[str, str], dict] = field(default_factory=dict)  # (take, dir) -> counts


def _settings(config: DatasetConfig) -> dict[str, RunSettings]:
    """Each direction's settings, ``auto`` resolved as this process's pipeline resolves it
    (a Ray run's workers resolve it on their machines: its flags stay as given)."""
    from runtime.manifest import MANIFEST_NAME, load_manifest, sha256_file
    from runtime.sessions import plan_artifacts

    candidates = str(Path(config.candidates).resolve()) if config.candidates else None
    settings = {}
    for direction, folder in config.artifacts.items():
        engine = (config.backend, config.device, config.precision)
        if config.ray is None:
            plan = plan_artifacts(load_manifest(folder), *engine)
            engine = (plan.backend, plan.device, plan.precision)
        settings[direction] = RunSettings(
            sha256_file(Path(folder) / MANIFEST_NAME),
            *engine,
            config.mask_size,
            candidates,
            config.max_frames,
        )
    return settings


def _plan(
    index: ProcessedRoot, takes: list[str], config: DatasetConfig, settings: dict[str, RunSettings]
) -> _Plan:
    from runtime.runs.take import select_observations

    splits = index.split_map()
    inputs = {take: take_inputs_sha256(index.root, take, splits) for take in takes}
    plan = _Plan(done={d: {} for d in settings}, inputs=inputs, failed={d: {} for d in settings})
    for direction in settings:
        for take in takes:
            part, why = read_part(config.out, take, direction, settings[direction], inputs[take])
            if part is not None:
                plan.done[direction][take] = part
                continue
            if why != "missing":
                plan.redone[why] = plan.redone.get(why, 0) + 1
            if not index.has_take(take):
                plan.failed[direction][take] = NOT_PREPARED
                continue
            try:
                observations, frames = select_observations(
                    index, take, direction, config.max_frames
                )
            except OmamaError as exc:
                plan.failed[direction][take] = str(exc)
                continue
            items = take_items(take, direction, observations, config.frames_per_item)
            plan.items.extend(items)
            plan.pending[(take, direction)] = {
                "frames": len(frames),
                "observations_total": len(observations),
            }
    return plan


def _resume_line(plan: _Plan, takes: int, out: Path) -> str | None:
    done = sum(len(parts) for parts in plan.done.values())
    if not done and not plan.redone:
        return None
    runs = takes * len(plan.done)
    line = f"resuming: {done} of {runs} take runs already done in {out / TAKES_DIR}, skipped"
    if plan.redone:
        line += "; predicted again: " + ", ".join(f"{n} ({why})" for why, n in plan.redone.items())
    return line


# ----------------------------------------------------------------------------- collecting


class _Progress:
    """Frames and takes done, frames/s and the ETA (tqdm on stderr)."""

    def __init__(self, frames: int, takes: int, enabled: bool) -> None:
        from tqdm import tqdm

        self.takes, self.takes_done = takes, 0
        self.bar = tqdm(
            total=frames,
            desc="dataset",
            unit="frame",
            disable=not enabled,
            mininterval=2.0,
            smoothing=0.1,
        )
        self.bar.set_postfix_str(f"takes 0/{takes}")

    def frames(self, n: int) -> None:
        self.bar.update(n)

    def take_done(self) -> None:
        self.takes_done += 1
        self.bar.set_postfix_str(f"takes {self.takes_done}/{self.takes}")

    def close(self) -> None:
        self.bar.close()


class _Collector:
    """Receives item answers in any order; writes a take's part once all its items are in."""

    def __init__(
        self,
        index: ProcessedRoot,
        config: DatasetConfig,
        settings: dict[str, RunSettings],
        plan: _Plan,
        progress: _Progress,
    ) -> None:
        self.index, self.config, self.settings = index, config, settings
        self.plan, self.progress = plan, progress
        self.received: dict[tuple[str, str], dict[int, dict]] = {}
        self.frames_done, self.first_result_s = 0, None
        self.started = time.perf_counter()

    def start(self) -> None:
        """The executor is up (Ray started or joined): frames/s and the first answer's time
        count from now, the workers' start included."""
        self.started = time.perf_counter()

    def add(self, answer: dict) -> None:
        item = Item.from_json(answer["item"])
        key = (item.take, item.direction)
        if key not in self.plan.pending or item.chunk in self.received.get(key, {}):
            return  # a retried item answered twice, or a take already written
        chunks = self.received.setdefault(key, {})
        chunks[item.chunk] = answer
        if self.first_result_s is None:
            self.first_result_s = time.perf_counter() - self.started
        self.frames_done += len(item.frames)
        self.progress.frames(len(item.frames))
        if len(chunks) == item.chunks:
            self._take_done(key, [chunks[n] for n in range(item.chunks)])

    def _take_done(self, key: tuple[str, str], answers: list[dict]) -> None:
        from runtime.runs.take import TakePredictions, collect_take

        take, direction = key
        counts = self.plan.pending.pop(key)
        del self.received[key]
        self.progress.take_done()
        errors = [a["error"] for a in answers if "error" in a]
        if errors:
            self.plan.failed[direction][take] = errors[0]
            return
        predicted = TakePredictions()
        for answer in answers:
            predicted.extend(TakePredictions.from_json(answer["predicted"]))
        outputs = collect_take(self.index, take, direction, predicted, score=True)
        record = {
            "results": outputs.results_entry(),
            "gt": outputs.gt_entry(),
            **counts,
            **outputs.counts,
            **predicted.view_counts,
            "skipped": predicted.skips.to_json(),
            "ran_on": answers[0]["ran_on"],
        }
        inputs = self.plan.inputs[take]
        write_part(self.config.out, take, direction, self.settings[direction], inputs, record)

    def unfinished(self) -> list[tuple[str, str]]:
        return sorted(self.plan.pending)


def worker_spec(config: DatasetConfig, settings: dict[str, RunSettings]) -> WorkerSpec:
    return WorkerSpec(
        root=str(Path(config.root).resolve()),
        artifacts={d: str(Path(p).resolve()) for d, p in config.artifacts.items()},
        artifacts_sha256={d: s.artifacts_sha256 for d, s in settings.items()},
        backend=config.backend,
        device=config.device,
        precision=config.precision,
        threads=config.threads,
        mask_size=config.mask_size,
        weights_dirs=tuple(str(Path(p).resolve()) for p in config.weights_dirs),
        candidates=settings[next(iter(settings))].candidates,
        max_frames=config.max_frames,
    )


def run_in_process(
    spec: WorkerSpec, items: list[Item], on_answer: Callable[[dict], None], on_start: Callable
) -> dict:
    """Predict ``items`` one after the other in this process (the same code a Ray actor
    runs); returns how it ran."""
    on_start()
    predictor = ItemPredictor(spec)
    try:
        for item in items:
            on_answer(predictor.predict(item, read_item_images(spec.root, item)))
    finally:
        predictor.close()
    return {"executor": "in-process"}


# ----------------------------------------------------------------------------- the run


def _open_root(root: Path, split: str) -> tuple[ProcessedRoot, list[str]]:
    if not Path(root).is_dir():
        raise OmamaError(
            f"ROOT {root} is not a folder: give the processed root that "
            "`omama data prepare` wrote (it holds split.json and processed/)"
        )
    index = ProcessedRoot(root)
    takes = sorted(set(index.takes(split)))
    if not takes:
        raise OmamaError(f"split {split!r} of {index.split_json} lists no takes")
    return index, takes


def _check_candidates(config: DatasetConfig) -> None:
    from runtime.manifest import load_manifest

    if config.candidates is not None:
        if len(config.artifacts) > 1:
            raise OmamaError(
                "--candidates holds one direction's candidates: run each "
                "direction on its own (--direction exo2ego, then ego2exo)"
            )
        if not Path(config.candidates).is_dir():
            raise OmamaError(f"--candidates {config.candidates} is not a folder")
        return
    for folder in config.artifacts.values():
        if not load_manifest(folder).fastsam.included:
            raise no_fastsam_error(folder)


def run_dataset(config: DatasetConfig, echo: Echo = print) -> dict:
    """Run (or resume) a whole split (see the module docstring); returns the summary,
    also written to ``OUT/summary.json``."""
    started = time.perf_counter()
    index, takes = _open_root(config.root, config.split)
    _check_candidates(config)
    settings = _settings(config)
    with folder_lock(config.out, "omama-run dataset"):
        remove_temporaries(config.out, ("*.json",), depth=2)
        plan = _plan(index, takes, config, settings)
        if line := _resume_line(plan, len(takes), config.out):
            echo(line)
        frames = sum(p["frames"] for p in plan.pending.values())
        progress = _Progress(frames, len(plan.pending), config.progress and frames > 0)
        collector = _Collector(index, config, settings, plan, progress)
        how: dict = {"executor": "none: every take was done"}
        try:
            if plan.items:
                spec = worker_spec(config, settings)
                how = _execute(config, spec, plan.items, collector.add, collector.start)
        finally:
            progress.close()
        for take, direction in collector.unfinished():  # an executor that lost an item
            plan.failed[direction][take] = "some of its frames never came back from the workers"
        timing = {
            "frames_this_run": collector.frames_done,
            "first_result_s": collector.first_result_s,
            "predict_s": round(time.perf_counter() - collector.started, 3),
        }
        summary = _finish(config, takes, settings, plan, {**how, **timing}, started)
    return summary


def _execute(
    config: DatasetConfig,
    spec: WorkerSpec,
    items: list[Item],
    on_answer: Callable[[dict], None],
    on_start: Callable[[], None],
) -> dict:
    if config.ray is None:
        return run_in_process(spec, items, on_answer, on_start)
    from runtime.runs.dataset_ray import run_on_ray

    return run_on_ray(spec, items, config.ray, on_answer, on_start)


def _has_gt(gt: dict, direction: str) -> bool:
    """True when some destination view of the GT holds a mask (a split without its
    destination masks, e.g. a challenge test split, cannot be scored)."""
    dst_is_ego = direction == "exo2ego"
    return any(
        bool(frames) and is_ego_cam(cam) == dst_is_ego
        for entry in gt["annotations"].values()
        for per_cam in entry["masks"].values()
        for cam, frames in per_cam.items()
    )


def _finish(
    config: DatasetConfig,
    takes: list[str],
    settings: dict[str, RunSettings],
    plan: _Plan,
    how: dict,
    started: float,
) -> dict:
    """Assemble every direction's files from the parts on disk; write the summary."""
    from runtime.evaluate import default_workers, evaluate_report
    from runtime.results import write_results

    out, names = Path(config.out), output_names(list(settings))
    per_direction = {}
    for direction, files in names.items():
        parts = {
            t: p
            for t in takes
            if (p := read_part(out, t, direction, settings[direction], plan.inputs[t])[0])
        }
        results, gt = assemble(parts, direction)
        write_results(out / files["results"], results)
        entry = {
            "results": str(out / files["results"]),
            "takes": len(takes),
            "takes_done_earlier": len(plan.done[direction]),
            "takes_failed": dict(sorted(plan.failed[direction].items())),
            **totals(parts),
        }
        if parts and _has_gt(gt, direction):
            write_json(out / files["gt"], gt)
            report = evaluate_report(
                gt["annotations"],
                results[next(iter(results))]["results"],
                direction,
                scoring_protocol(config.mask_size),
                workers=min(default_workers(), len(parts)),
            )
            write_json(out / files["metrics"], report, indent=2)
            entry.update(
                gt=str(out / files["gt"]),
                metrics=str(out / files["metrics"]),
                aggregated_metrics=report["aggregated_metrics"],
                report=report,
            )
        per_direction[direction] = entry
    wall_s = time.perf_counter() - started
    frames_per_s = how["frames_this_run"] / how["predict_s"] if how["frames_this_run"] else None
    summary = {
        "split": config.split,
        "root": str(config.root),
        "out": str(out),
        "settings": {d: s.to_json() for d, s in settings.items()},
        "directions": per_direction,
        **how,
        "wall_s": round(wall_s, 3),
        "frames_per_s": round(frames_per_s, 3) if frames_per_s else None,
    }
    on_disk = {
        **summary,
        "directions": {
            d: {k: v for k, v in e.items() if k != "report"} for d, e in per_direction.items()
        },
    }
    write_json(out / SUMMARY_NAME, on_disk, indent=2)
    return summary


def failed_takes(summary: dict) -> list[str]:
    """``"<take> (<direction>): why"`` for every take run that failed (in the model, or its
    frames never came back from the workers); a take that is not prepared is a skip."""
    return [
        f"{take} ({direction}): {why}"
        for direction, entry in summary["directions"].items()
        for take, why in entry["takes_failed"].items()
        if why != NOT_PREPARED
    ]


def format_dataset_summary(summary: dict) -> str:
    """What a run prints: per direction the takes, frames, observations, files and metrics."""
    from runtime.evaluate import format_summary

    lines = []
    rate = f", {summary['frames_per_s']:.2f} frames/s" if summary["frames_per_s"] else ""
    lines.append(
        f"omama-run dataset {summary['split']}: {summary['executor']}, "
        f"{summary['frames_this_run']} frames predicted this run{rate}, "
        f"{summary['wall_s']:.1f} s"
    )
    for direction, d in summary["directions"].items():
        failed = d["takes_failed"]
        lines.append(
            f"  {direction}: {d['takes'] - len(failed)} of {d['takes']} takes "
            f"({d['takes_done_earlier']} done earlier), {d['frames']} frames, "
            f"{d['observations']} of {d['observations_total']} observations "
            f"({d['visible']} predicted visible, {d['skipped']['count']} skipped)"
        )
        for take, why in list(failed.items())[:5]:
            lines.append(f"    take {take} not predicted: {why}")
        if len(failed) > 5:
            lines.append(f"    ... and {len(failed) - 5} more (summary.json)")
        lines.append(f"    results: {d['results']}")
        if "report" in d:
            lines.extend(["", format_summary(d["report"]), f"    metrics: {d['metrics']}"])
        else:
            lines.append("    not scored: no destination masks in the split")
    return "\n".join(lines)


def default_out(split: str) -> Path:
    return Path("omama_out") / f"dataset_{split}"
