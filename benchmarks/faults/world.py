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
PYTHON = sys.executable
INVOCATION_REPORT = "counts what the last invocation did (a resumed one skips the done part)"


@dataclass(frozen=True)
class Scenario:
    """One long command: how to run it into ``out``, how to resume it, what to compare."""

    name: str
    run: Callable[[Path], list[str]]
    resume: Callable[[Path], list[str]]
    must_match: tuple[str, ...]  # patterns of the files two uninterrupted runs must agree on
    skip: dict[str, str] = field(default_factory=dict)  # path prefix -> why it is not compared
    # file pattern -> names of fields (or of a parent) saying what one invocation did or how
    # long it took: not compared after a resume
    invocation_fields: dict[str, tuple[str, ...]] = field(default_factory=dict)


def omama(line: str, **paths: Path | str) -> list[str]:
    """``omama LINE`` as argv, with ``{name}`` placeholders of ``line`` filled by ``paths``
    (each becomes one argument, whatever spaces the path holds)."""
    return [PYTHON, "-c", "from omama_train.cli import main; main()", *_words(line, paths)]


def omama_run(line: str, **paths: Path | str) -> list[str]:
    return [PYTHON, "-c", "from runtime.cli import main; main()", *_words(line, paths)]


def _words(line: str, paths: dict[str, Path | str]) -> list[str]:
    return [
        str(paths[w[1:-1]]) if w.startswith("{") and w.endswith("}") else w for w in line.split()
    ]


def _check(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"world step failed: {' '.join(argv[3:])}\n{done.stderr[-2000:]}")


def build_world(work: Path) -> dict[str, Any]:
    """Synthetic takes, a prepared root with pairs and candidates, a feature cache, a
    trained matcher and its ONNX export: what the scenarios take as input (built once)."""
    world = work / "world"
    ready = world / "ready.json"
    if ready.is_file():
        facts = json.loads(ready.read_text())
        return {k: (Path(v) if k.endswith("_path") else v) for k, v in facts.items()}
    shutil.rmtree(world, ignore_errors=True)
    raw, root, cache, run = world / "raw", world / "root", world / "features", world / "run"
    log("building the world (synthetic takes, root, cache, matcher, artifacts)")
    _check(omama("data synth --out {raw} --num-takes 12 --small --seed 0", raw=raw))
    for split in ("train", "val", "test"):
        rel = raw / "annotations" / f"relations_{split}.json"
        _check(
            omama(
                "data prepare --relations {rel} --takes {takes} --out {root} --workers 2",
                rel=rel,
                takes=raw / "takes",
                root=root,
            )
        )
    _check(omama(f"data pairs --root {{root}} --direction {DIRECTION} --seed 42", root=root))
    for split in ("train", "val", "test"):
        _check(
            omama(
                f"data masks --root {{root}} --split {split} --direction {DIRECTION} "
                "--from-annotations --no-progress",
                root=root,
            )
        )
    _check(
        omama(
            f"features --root {{root}} --direction {DIRECTION} --backbone {BACKBONE} "
            "--random-init --out {cache} --no-progress",
            root=root,
            cache=cache,
        )
    )
    _check(train(root, cache, run, epochs=1))
    artifacts = world / "artifacts"
    _check(
        omama(
            "export --matcher {matcher} --backbone-weights {backbone} --no-fastsam-export "
            "--parity-sets 10 --out {artifacts}",
            matcher=run / "best.safetensors",
            backbone=cache / "backbone.safetensors",
            artifacts=artifacts,
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
        "raw_path": raw,
        "root_path": root,
        "cache_path": cache,
        "artifacts_path": artifacts,
        "annotation_path": annotation,
        "src_video_path": videos / f"{src}.mp4",
        "dst_video_path": videos / f"{dst}.mp4",
        "candidates_path": root / f"Masks_TEST_{DIRECTION.upper()}" / take / dst,
        "src_cam": src,
    }
    ready.write_text(json.dumps({k: str(v) for k, v in facts.items()}, indent=2))
    return build_world(work)


def train(root: Path, cache: Path, out: Path, epochs: int) -> list[str]:
    """A small CPU training run that checkpoints every 2 steps (many instants to kill)."""
    return omama(
        f"train --root {{root}} --cache {{cache}} --out {{out}} --direction {DIRECTION} "
        f"--epochs {epochs} --batch-size 8 --num-candidates 8 --lr 1e-4 --workers 0 "
        "--gap-pairs 16 --eval-workers 1 --checkpoint-every-steps 2 --no-progress",
        root=root,
        cache=cache,
        out=out,
    )


def scenarios(world: dict[str, Any]) -> dict[str, Scenario]:
    """The long commands killed: each reads the world and writes one folder."""
    raw, root, cache = world["raw_path"], world["root_path"], world["cache_path"]

    def prepare(out: Path) -> list[str]:
        return omama(
            "data prepare --relations {rel} --takes {takes} --out {out} --workers 2",
            rel=raw / "annotations" / "relations_train.json",
            takes=raw / "takes",
            out=out,
        )

    def features(out: Path) -> list[str]:
        return omama(
            f"features --root {{root}} --split val --direction {DIRECTION} "
            f"--backbone {BACKBONE} --random-init --batch-size 2 --flush-every 4 "
            "--out {out} --no-progress",
            root=root,
            out=out,
        )

    def video(out: Path) -> list[str]:
        return omama_run(
            "video {src} {dst} --query {query} --src-cam {cam} --candidates {candidates} "
            "--artifacts {artifacts} --backend onnxruntime --overlay "
            "--checkpoint-every-frames 2 --out {out}",
            src=world["src_video_path"],
            dst=world["dst_video_path"],
            query=world["annotation_path"],
            cam=world["src_cam"],
            candidates=world["candidates_path"],
            artifacts=world["artifacts_path"],
            out=out,
        )

    return {
        "prepare": Scenario(
            "prepare",
            prepare,
            prepare,
            must_match=("processed/*", "split.json"),
            skip={"prepare_report.json": INVOCATION_REPORT},
        ),
        "features": Scenario(
            "features",
            features,
            features,
            must_match=("chunks/*.npy", "backbone.safetensors"),
            skip={"report.json": INVOCATION_REPORT},
        ),
        "train": Scenario(
            "train",
            lambda out: train(root, cache, out, epochs=2),
            lambda out: [*train(root, cache, out, epochs=2), "--resume"],
            must_match=("best.safetensors", "last.safetensors", "val/*"),
            invocation_fields={"*.json": ("resume",)},
            skip={"tensorboard/": "TensorBoard event files are named after the wall time"},
        ),
        "video": Scenario(
            "video",
            video,
            lambda out: [*video(out), "--resume"],
            must_match=("results.json", "predictions.jsonl", "run_state.json", "overlay.mp4"),
            invocation_fields={
                "summary.json": (
                    "resumed_from_frame",
                    "frames_this_run",
                    "frames_inferred_this_run",
                    "latency_ms",
                    "wall_s",
                    "fps_inferred",
                    "fps_end_to_end",
                    "peak_rss_mb",
                )
            },
        ),
    }
