"""The inputs of the fault-injection run (a small synthetic world built once with the demo's
chain) and the long commands it kills (:class:`Scenario`: how to run, resume and compare)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import log

DIRECTION = "exo2ego"
BACKBONE = "dinov2_vits14_reg"
INVOCATION_REPORT = "counts what the last invocation did (a resumed one skips the done part)"


@dataclass(frozen=True)
class Scenario:
    """One long command: how to run it into ``out``, how to resume it, what to compare."""

    name: str
    run: Callable[[Path], list[str]]
    resume: Callable[[Path], list[str]]
    must_match: tuple[str, ...]
    skip: dict[str, str] = field(default_factory=dict)  # path prefix -> why it is not compared


def omama(*args: str) -> list[str]:
    return [sys.executable, "-c", "from omama_train.cli import main; main()", *args]


def omama_run(*args: str) -> list[str]:
    return [sys.executable, "-c", "from runtime.cli import main; main()", *args]


def _check(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"world step failed: {' '.join(argv[3:])}\n{done.stderr[-2000:]}")


def build_world(work: Path) -> dict[str, Path | str]:
    """Synthetic takes, a prepared root with pairs and candidates, a feature cache, a
    trained matcher and its ONNX export: what the scenarios take as input (built once)."""
    world = work / "world"
    ready = world / "ready.json"
    if ready.is_file():
        return {
            k: (Path(v) if k.endswith("_path") else v)
            for k, v in json.loads(ready.read_text()).items()
        }
    shutil.rmtree(world, ignore_errors=True)
    raw, root = world / "raw", world / "root"
    log("building the world (synthetic takes, root, cache, matcher, artifacts)")
    _check(omama("data", "synth", "--out", str(raw), "--num-takes", "12", "--small", "--seed", "0"))
    for split in ("train", "val", "test"):
        relations = raw / "annotations" / f"relations_{split}.json"
        _check(
            omama(
                "data",
                "prepare",
                "--relations",
                str(relations),
                "--takes",
                str(raw / "takes"),
                "--out",
                str(root),
                "--workers",
                "2",
            )
        )
    _check(omama("data", "pairs", "--root", str(root), "--direction", DIRECTION, "--seed", "42"))
    for split in ("train", "val", "test"):
        _check(
            omama(
                "data",
                "masks",
                "--root",
                str(root),
                "--split",
                split,
                "--direction",
                DIRECTION,
                "--from-annotations",
                "--no-progress",
            )
        )
    cache = world / "features"
    _check(
        omama(
            "features",
            "--root",
            str(root),
            "--direction",
            DIRECTION,
            "--backbone",
            BACKBONE,
            "--random-init",
            "--out",
            str(cache),
            "--no-progress",
        )
    )
    run = world / "run"
    _check(omama(*train_args(root, cache, run, epochs=1)))
    artifacts = world / "artifacts"
    _check(
        omama(
            "export",
            "--matcher",
            str(run / "best.safetensors"),
            "--backbone-weights",
            str(cache / "backbone.safetensors"),
            "--no-fastsam-export",
            "--parity-sets",
            "10",
            "--out",
            str(artifacts),
        )
    )
    take = json.loads((root / "split.json").read_text())["test"][0]
    annotation = root / "processed" / take / "annotation.json"
    ann = json.loads(annotation.read_text())
    cams = sorted({cam for obj in ann["masks"].values() for cam in obj})
    src = next(c for c in cams if not c.startswith("aria"))
    dst = next(c for c in cams if c.startswith("aria"))
    videos = raw / "takes" / ann["take_name"] / "frame_aligned_videos"
    facts = {
        "raw_path": str(raw),
        "root_path": str(root),
        "cache_path": str(cache),
        "artifacts_path": str(artifacts),
        "annotation_path": str(annotation),
        "src_video_path": str(videos / f"{src}.mp4"),
        "dst_video_path": str(videos / f"{dst}.mp4"),
        "candidates_path": str(root / f"Masks_TEST_{DIRECTION.upper()}" / take / dst),
        "src_cam": src,
    }
    ready.write_text(json.dumps(facts, indent=2))
    return build_world(work)


def train_args(root: Path, cache: Path, out: Path, epochs: int) -> list[str]:
    return [
        "train",
        "--root",
        str(root),
        "--cache",
        str(cache),
        "--out",
        str(out),
        "--direction",
        DIRECTION,
        "--epochs",
        str(epochs),
        "--batch-size",
        "8",
        "--num-candidates",
        "8",
        "--lr",
        "1e-4",
        "--workers",
        "0",
        "--gap-pairs",
        "16",
        "--eval-workers",
        "1",
        "--checkpoint-every-steps",
        "2",
        "--no-progress",
    ]


def scenarios(world: dict[str, Any]) -> dict[str, Scenario]:
    root, cache = world["root_path"], world["cache_path"]
    relations = world["raw_path"] / "annotations" / "relations_train.json"

    def prepare(out: Path) -> list[str]:
        return omama(
            "data",
            "prepare",
            "--relations",
            str(relations),
            "--takes",
            str(world["raw_path"] / "takes"),
            "--out",
            str(out),
            "--workers",
            "2",
        )

    def features(out: Path) -> list[str]:
        return omama(
            "features",
            "--root",
            str(root),
            "--direction",
            DIRECTION,
            "--backbone",
            BACKBONE,
            "--random-init",
            "--out",
            str(out),
            "--no-progress",
        )

    def train(out: Path) -> list[str]:
        return omama(*train_args(root, cache, out, epochs=2))

    def video(out: Path) -> list[str]:
        return omama_run(
            "video",
            str(world["src_video_path"]),
            str(world["dst_video_path"]),
            "--query",
            str(world["annotation_path"]),
            "--src-cam",
            world["src_cam"],
            "--candidates",
            str(world["candidates_path"]),
            "--artifacts",
            str(world["artifacts_path"]),
            "--backend",
            "onnxruntime",
            "--overlay",
            "--checkpoint-every-frames",
            "2",
            "--out",
            str(out),
        )

    return {
        "prepare": Scenario(
            "prepare",
            prepare,
            prepare,
            must_match=("processed/", "split.json"),
            skip={"prepare_report.json": INVOCATION_REPORT},
        ),
        "features": Scenario(
            "features",
            features,
            features,
            must_match=("chunks/", "meta.json"),
            skip={"report.json": INVOCATION_REPORT},
        ),
        "train": Scenario(
            "train",
            train,
            lambda out: [*train(out), "--resume"],
            must_match=("best.safetensors", "last.safetensors", "metrics.csv"),
            skip={"tensorboard/": "TensorBoard event files are named after the wall time"},
        ),
        "video": Scenario(
            "video",
            video,
            lambda out: [*video(out), "--resume"],
            must_match=("results.json", "overlay.mp4"),
        ),
    }
