"""Benchmark ``omama-run dataset``: frames/s in this process and on a local Ray with 1 and 2
workers, in one run, on the same synthetic split, with the bytes that move per item.

The split is ``--num-takes`` small synthetic takes (``omama data synth --small``, ``--frames``
frames annotated every 2) prepared into one ``test`` split; the models are a random-init
export (ViT-S/14 with one block, the test suite's small shapes) unless ``--artifacts`` names
another exo2ego folder. Each run is a fresh ``omama-run dataset`` process on ONNX Runtime
(CPU, one thread per model); the Ray runs start their own local Ray. ``frames_per_s`` counts
from the moment the executor is up (the workers' start included, Ray's own start not:
``ray_start_s``); ``steady_frames_per_s`` from the first answer to the last. The three
results files must be byte-identical.

    python -m benchmarks.bench_dataset [--num-takes 4] [--frames 24] [--artifacts DIR]

Prints the numbers and saves ``benchmarks/results/bench_dataset.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import RESULTS_DIR, load_average, log, machine_record, write_result

RESULTS = RESULTS_DIR / "bench_dataset.json"
RUNS = {
    "in_process": [],
    "ray_1": ["--ray", "--workers", "1"],
    "ray_2": ["--ray", "--workers", "2"],
}
REAL_RESULTS = Path(__file__).resolve().parents[1] / "tests/fixtures/eval_casa_gio"


def build_split(base: Path, num_takes: int, frames: int) -> Path:
    """``num_takes`` synthetic takes prepared into one ``test`` split."""
    from omama_train.data.prepare import prepare
    from omama_train.data.synth import synthesize

    synth, root = base / "synth", base / "root"
    synthesize(synth, num_takes, small=True, seed=0, frames=frames, annotate_every=2)
    for relations in sorted((synth / "annotations").glob("relations_*.json")):
        prepare(relations, synth / "takes", root, split="test", progress=False)
    return root


def build_artifacts(base: Path) -> Path:
    from export.config import ExportConfig
    from export.pipeline import export_artifacts
    from omama_train.models.backbones import BACKBONES

    small = dataclasses.replace(BACKBONES["dinov2_vits14_reg"], timm_overrides={"depth": 1})
    out = base / "artifacts"
    export_artifacts(
        ExportConfig(out_dir=out, backbone=small, random_init=True,
                     random_grids={"exo": (5, 9), "ego": (5, 5)}, direction="exo2ego",
                     matcher_input="masks", fastsam_imgsz=128, verify=False),
        echo=lambda line: None,
        progress=False,
    )  # fmt: skip
    return out


def run_dataset(root: Path, artifacts: Path, out: Path, extra: list[str]) -> dict:
    cmd = [sys.executable, "-c", "from runtime.cli import main; main()", "dataset", str(root),
           "--split", "test", "--artifacts", str(artifacts), "--out", str(out),
           "--backend", "onnxruntime", "--device", "cpu", "--threads", "1", *extra]  # fmt: skip
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    wall_s = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    frames = summary["frames_this_run"]
    steady_s = summary["predict_s"] - summary["first_result_s"]
    ray = summary.get("ray") or {}
    return {
        "frames": frames,
        "frames_per_s": summary["frames_per_s"],
        "steady_frames_per_s": round(frames / steady_s, 3) if steady_s > 0 else None,
        "first_result_s": round(summary["first_result_s"], 3),
        "predict_s": summary["predict_s"],
        "ray_start_s": ray.get("ray_start_s"),
        "cpus_per_worker": ray.get("cpus_per_worker"),
        "process_wall_s": round(wall_s, 3),
    }


def bytes_moved(root: Path, out: Path) -> dict:
    """What travels per item and per observation, measured on this run's files, and the
    bytes per observation of a real O-MaMa results file (the test fixture)."""
    from runtime.egoexo import ProcessedRoot
    from runtime.runs.dataset_jobs import FRAMES_PER_ITEM, take_items
    from runtime.runs.take import select_observations

    index = ProcessedRoot(root)
    items = []
    for take in index.takes("test"):
        observations, _ = select_observations(index, take, "exo2ego", None)
        items.extend(take_items(take, "exo2ego", observations, FRAMES_PER_ITEM))
    observations = json.loads((out / "summary.json").read_text())["directions"]["exo2ego"]
    n = observations["observations"]
    record = {
        "item_json_bytes_mean": statistics.mean(len(json.dumps(i.to_json())) for i in items),
        "frames_per_item": FRAMES_PER_ITEM,
        "results_bytes_per_observation": round((out / "results.json").stat().st_size / n, 1),
        "part_bytes_per_observation": round(
            sum(p.stat().st_size for p in (out / "takes").glob("*.json")) / n, 1
        ),
    }
    real = REAL_RESULTS / "predictions_finetuned.json"
    if real.is_file():
        data = json.loads(real.read_text())
        entries = [
            entry
            for block in data.values()
            for take in block["results"].values()
            for pairs in take["masks"].values()
            for frames in pairs.values()
            for entry in frames.values()
        ]
        record["real_results_bytes_per_observation"] = round(real.stat().st_size / len(entries), 1)
        record["real_results_file"] = str(real.relative_to(REAL_RESULTS.parents[2]))
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-takes", type=int, default=4, help="small synthetic takes")
    parser.add_argument(
        "--frames", type=int, default=24, help="frames per take (every 2nd annotated)"
    )
    parser.add_argument("--artifacts", type=Path, help="an exo2ego artifacts folder to use")
    args = parser.parse_args()
    load_at_start = load_average()
    result: dict = {"runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        log("building the split and the artifacts ...")
        root = build_split(base, args.num_takes, args.frames)
        artifacts = args.artifacts or build_artifacts(base)
        for name, extra in RUNS.items():
            log(f"{name} ...")
            result["runs"][name] = run_dataset(root, artifacts, base / name, extra)
            log(f"  {result['runs'][name]}")
        outputs = [(base / name / "results.json").read_bytes() for name in RUNS]
        result["identical_results"] = all(o == outputs[0] for o in outputs)
        result["bytes"] = bytes_moved(root, base / "in_process")
    runs = result["runs"]
    models = str(args.artifacts or "random-init ViT-S/14, 1 block, small grids")
    result["data"] = {"takes": args.num_takes, "frames": runs["in_process"]["frames"],
                      "artifacts": models}  # fmt: skip
    for key in ("frames_per_s", "steady_frames_per_s"):
        result[f"ratio_{key}"] = {
            "ray_2_over_ray_1": round(runs["ray_2"][key] / runs["ray_1"][key], 3),
            "ray_2_over_in_process": round(runs["ray_2"][key] / runs["in_process"][key], 3),
        }
    result["machine"] = machine_record(load_at_start, ("ray", "onnxruntime", "numpy"))
    write_result(RESULTS, result)
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2))
    print(f"saved {RESULTS}")


if __name__ == "__main__":
    main()
