"""``omama-run pair`` latency on CPU: the pipeline on each engine (backend x run precision)
vs the O-MaMa reference pipeline shape, for K = 1, 4, 8, 16 query objects per frame pair.

Models at the official sizes with random weights (latency does not depend on the values):
DINOv2 ViT-B/14 with registers at 532x952 (exo, source) and 700x700 (ego, destination), the
official exo2ego matcher, FastSAM-s at 1024 px, exported with ``--int8`` (int8 backbones
calibrated on synthetic frames, FastSAM int8 when its checks pass). The FastSAM-s BatchNorm
is calibrated on noise and its class bias set so that the destination frame gets about
``--num-candidates`` candidates (random YOLO weights would otherwise give none and the
matcher would never run). Images: frame 0 of a synthetic take, resized to the processed
sizes (exo 960x540, ego 704x704); queries: its exo object masks, repeated when K exceeds
the objects.

* ``ours``: :class:`runtime.pipeline.Pipeline.match_frame` with K queries (FastSAM once,
  each backbone once, the matcher once for the K objects), medians per stage, for every
  engine of ``--engines`` (``backend:precision``, as ``omama-run pair --backend B
  --precision P`` runs it: ``torch:fp32``, ``onnxruntime:fp32|int8``,
  ``openvino:fp32|bf16|int8``; an engine that cannot run here is reported with the reason).
* ``reference shape``: what O-MaMa does per object: FastSAM through ultralytics' predictor
  (retina masks), both backbones (the torch backend's PyTorch forward), descriptors with a
  per-mask loop over the 175x175 upsampled map (``benchmarks.bench_descriptors.
  loop_reference``) for the query and the N candidates, the matcher with B = 1. These
  per-object costs are measured once and composed: reference(K) = K x per-object cost
  (running 16 full reference pipelines would take tens of minutes on 2 cores).

Targets (issue 13): K=1 at least 2.0x faster than the reference shape, K=8 at least 16x,
with the best CPU engine.

Usage: ``python -m benchmarks.bench_pair [--threads 1] [--repeats 3] [--ks 1 4 8 16]
[--engines torch:fp32 onnxruntime:fp32 openvino:bf16 ...]``. Writes
``benchmarks/results/bench_pair.json``; the artifacts and weights are kept in ``--work``
(default ``/tmp/omama_bench_pair``) and reused when the recipe is unchanged.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from benchmarks.bench_cpu_precisions import Engine, parse_engine
from benchmarks.common import RESULTS_DIR, load_average, machine_record, write_result
from benchmarks.common import log as _log
from runtime.errors import OmamaError
from runtime.pipeline import STAGES
from runtime.timing import median_ms

os.environ.setdefault("YOLO_OFFLINE", "1")

RESULTS = RESULTS_DIR / "bench_pair.json"
EGO_HW, EXO_HW = (704, 704), (540, 960)  # processed frames (ego / 2, exo / 4)
TARGETS = {1: 2.0, 8: 16.0}  # issue 13: K=1 >= 2.0x, K=8 >= 16x the reference shape
RECIPE_VERSION = 4  # 4: the export adds --int8
REFERENCE_ENGINE = "torch:fp32"  # its backbone times compose the reference shape
ENGINES = (
    REFERENCE_ENGINE,
    "onnxruntime:fp32",
    "onnxruntime:int8",
    "openvino:fp32",
    "openvino:bf16",
    "openvino:int8",
)


# ----------------------------------------------------------------------------- inputs


def build_weights(folder: Path, fastsam_variant: str, num_candidates: int, dst_rgb) -> dict:
    """Random ViT-B/14-reg (timm layout, 37x37 table), official exo2ego matcher and a
    FastSAM whose class bias gives ~``num_candidates`` detections on ``dst_rgb``."""
    import numpy as np
    import torch
    from safetensors.torch import save_file

    from omama_train.models.backbones import build_backbone
    from omama_train.models.fastsam import build_random_fastsam, load_fastsam
    from omama_train.models.matcher import OMaMaMatcher, save_matcher
    from runtime.fastsam_post import letterbox, postprocess

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    backbone = build_backbone("dinov2_vitb14_reg", (518, 518))
    save_file({k: v.contiguous() for k, v in backbone.trunk.state_dict().items()},
              str(folder / "backbone.safetensors"))  # fmt: skip
    del backbone
    torch.manual_seed(1)
    save_matcher(OMaMaMatcher("exo2ego"), folder / "matcher.safetensors")
    path = build_random_fastsam(folder / "fastsam.pt", fastsam_variant, seed=2)
    model = load_fastsam(path)
    net = model.model
    batchnorms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in batchnorms:
        bn.momentum = 1.0
    net.train()
    with torch.no_grad():
        net(torch.rand(2, 3, 640, 640, generator=torch.Generator().manual_seed(3)))
        for branch in net.model[-1].cv3:
            branch[-1].bias.zero_()
    for bn in batchnorms:
        bn.momentum = 0.03
    net.eval()
    # The calibrated class logits are huge (scores saturate at 1): scale them to a spread
    # of a few units, so that a bias can choose how many anchors pass conf 0.4.
    tensor, geom = letterbox(dst_rgb, 1024)
    heads = [branch[-1] for branch in net.model[-1].cv3]
    raw: list = []
    hooks = [h.register_forward_hook(lambda m, i, out: raw.append(out.flatten())) for h in heads]
    with torch.no_grad():
        net(torch.from_numpy(tensor))
        for hook in hooks:
            hook.remove()
        scale = 3.0 / float(torch.cat(raw).std())
        for head in heads:
            head.weight.mul_(scale)
        out0, out1 = (t.double().numpy() for t in net(torch.from_numpy(tensor))[0])
    # Scores are sigmoid(logit + bias): the bias letting the m best anchors pass conf 0.4
    # sits between the m-th and (m+1)-th logit; bisect m for the wanted count after NMS.
    scores = np.clip(out0[0, 4], 1e-15, 1 - 1e-15)
    logits = np.log(scores / (1 - scores))
    order = np.sort(logits)[::-1]
    threshold = np.log(0.4 / 0.6)

    def bias_for(m: int) -> float:
        return float(threshold - (order[m - 1] + order[m]) / 2)

    def count_for(m: int) -> int:
        shifted = out0.copy()
        shifted[0, 4] = 1 / (1 + np.exp(-(logits + bias_for(m))))
        return len(postprocess(shifted.astype(np.float32), out1.astype(np.float32), geom))

    lo, hi = 1, len(order) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if count_for(mid) < num_candidates:
            lo = mid + 1
        else:
            hi = mid
    bias = bias_for(lo)
    with torch.no_grad():
        for branch in net.model[-1].cv3:
            branch[-1].bias.fill_(bias)
    model.save(str(path))
    return {"fastsam_class_bias": bias, "fastsam_logit_scale": scale,
            "fastsam_candidates_expected": count_for(lo)}  # fmt: skip


def build_artifacts(work: Path, fastsam_variant: str, num_candidates: int, dst_rgb) -> Path:
    """The artifacts folder (reused when ``work/recipe.json`` matches)."""
    from export.config import ExportConfig
    from export.pipeline import export_artifacts

    recipe = {"version": RECIPE_VERSION, "fastsam": fastsam_variant, "candidates": num_candidates,
              "int8": True}  # fmt: skip
    recipe_path = work / "recipe.json"
    art = work / "artifacts"
    done = recipe_path.is_file() and (art / "manifest.json").is_file()
    if done and json.loads(recipe_path.read_text()).get("recipe") == recipe:
        return art
    weights = work / "weights"
    _log("bench_pair: writing random weights and exporting (one-off, a few minutes)")
    info = build_weights(weights, fastsam_variant, num_candidates, dst_rgb)
    export_artifacts(
        ExportConfig(
            out_dir=art,
            backbone_weights=weights / "backbone.safetensors",
            matcher_weights=weights / "matcher.safetensors",
            fastsam_weights=weights / "fastsam.pt",
            matcher_input="auto",
            verify=False,
            int8=True,
            parity_sets=20,  # the int8 gate's sets; bench_cpu_precisions measures fidelity
        ),
        echo=_log,
        progress=False,
    )
    recipe_path.write_text(json.dumps({"recipe": recipe, **info}, indent=1))
    return art


def bench_images(work: Path):
    """(source exo RGB 540x960, destination ego RGB 704x704, exo query masks 504x896)."""
    import cv2

    from omama_train.data.synth import synthesize
    from runtime import rle
    from runtime.video import VideoReader

    synth = work / "synth"
    synthesize(synth, 1, small=True, seed=0, frames=1, annotate_every=1)
    videos = synth / "takes" / "synth_tabletop_000" / "frame_aligned_videos"
    with VideoReader(videos / "cam01.mp4") as src, VideoReader(videos / "aria01_214-1.mp4") as dst:
        src_rgb = cv2.resize(src.read(0), EXO_HW[::-1], interpolation=cv2.INTER_LINEAR)
        dst_rgb = cv2.resize(dst.read(0), EGO_HW[::-1], interpolation=cv2.INTER_LINEAR)
    relations = json.loads((synth / "annotations" / "relations_test.json").read_text())
    (take,) = relations["annotations"].values()
    from omama_train.data.encoded_masks import decode_encoded_mask

    queries = []
    for per_cam in take["object_masks"].values():
        annotation = per_cam.get("cam01", {}).get("annotation", {}).get("0")
        if annotation:
            mask = rle.decode(decode_encoded_mask(annotation))
            if mask.any():
                queries.append(mask)
    return src_rgb, dst_rgb, queries


# ----------------------------------------------------------------------------- measurements


def one_round(pipe, src, dst, queries, ks, threads) -> tuple[dict, dict, object, list]:
    """One timed ``match_frame(src, dst, K queries)`` per K on an open pipeline: K -> stage ms,
    K -> the picks, the destination frame and the largest K's picked masks.

    ``match_frame`` is ``encode_src`` + ``encode_dst`` (nothing there depends on K) +
    ``match`` (the K-dependent part): the pair is encoded once and every K matched against
    it, so a K's record is exactly what its ``match_frame`` call does.
    """
    import torch

    torch.set_num_threads(threads)
    src_frame, dst_frame = pipe.encode_src(src), pipe.encode_dst(dst)
    encoded = {**src_frame.take_latency()}
    for stage, value in dst_frame.take_latency().items():
        encoded[stage] = encoded.get(stage, 0.0) + value
    records, chosen = {}, {}
    for k in ks:
        batch = [queries[i % len(queries)] for i in range(k)]
        matches = pipe.match(src_frame, dst_frame, batch)
        own = pipe.last_latency_ms
        records[k] = {s: encoded.get(s, 0.0) + own[s] for s in STAGES}
        chosen[k] = [m.candidate for m in matches]
    return records, chosen, dst_frame, [m.mask.astype(bool) for m in matches]  # largest K's


def summarize(label: str, records: dict[int, list[dict]], chosen: dict, dst_frame) -> dict:
    """K -> medians per stage and of the total over the repeats, candidates, picks."""
    rows = {}
    for k, per_repeat in records.items():
        stages = {s: statistics.median(r[s] for r in per_repeat) for s in STAGES}
        rows[k] = {
            "stages_ms": stages,
            "total_ms": statistics.median(sum(r.values()) for r in per_repeat),
            "candidates": len(dst_frame.candidates),
            "chosen": chosen[k],
        }
        _log(f"  {label} K={k}: {rows[k]['total_ms']:.0f} ms, N={rows[k]['candidates']}")
    return rows


def parse_engines(texts) -> list[Engine]:
    """``--engines`` -> engines, :data:`REFERENCE_ENGINE` first (the reference shape is
    composed from its backbone times); an :class:`OmamaError` for an engine ``omama-run``
    cannot be asked for."""
    engines = [parse_engine(text) for text in texts]
    for engine in engines:
        if engine.rest:
            raise OmamaError(
                f"engine {engine.spec!r}: omama-run runs int8 files with the float layers in "
                "f32 (--precision int8); drop '+bf16'"
            )
    reference = parse_engine(REFERENCE_ENGINE)
    return [reference] + [e for e in dict.fromkeys(engines) if e != reference]


def measure_reference(art: Path, weights: Path, src, dst, query, dst_frame, repeats, threads):
    """Per-object costs of the O-MaMa pipeline shape (torch), each measured once."""
    import numpy as np
    import torch

    from benchmarks.reference import loop_reference
    from omama_train.models.fastsam import load_fastsam, segment_everything
    from omama_train.models.matcher import load_matcher
    from runtime.manifest import load_manifest
    from runtime.pooling import mask_boxes
    from runtime.preprocess import resize_mask_nearest

    manifest = load_manifest(art)
    fastsam = load_fastsam(weights / "fastsam.pt")
    params = manifest.fastsam

    def ultralytics_fastsam():
        torch.set_num_threads(threads)
        return segment_everything(fastsam, dst, imgsz=params.imgsz, conf=params.conf,
                                  iou=params.iou, retina_masks=True)  # fmt: skip

    masks_ref, _ = ultralytics_fastsam()
    torch.set_num_threads(threads)
    fastsam_ms = median_ms(ultralytics_fastsam, repeats, warmup=0)
    torch.set_num_threads(threads)
    src_view, dst_view = manifest.views["src"], manifest.views["dst"]
    cands = dst_frame.candidates
    dense = np.stack([cands.mask(i) for i in range(len(cands))])
    dst_masks = resize_mask_nearest(dense, dst_view.image_size, rule="torch")
    dst_boxes = mask_boxes(dst_masks)
    src_mask = resize_mask_nearest(query, src_view.image_size)[None]
    src_boxes = mask_boxes(src_mask)
    rng = np.random.default_rng(0)
    dst_feats = torch.from_numpy(rng.standard_normal((1, 768, *dst_view.feat_grid), np.float32))
    src_feats = torch.from_numpy(rng.standard_normal((1, 768, *src_view.feat_grid), np.float32))
    dm, db = torch.from_numpy(dst_masks), torch.from_numpy(dst_boxes)
    sm, sb = torch.from_numpy(src_mask), torch.from_numpy(src_boxes)
    with torch.no_grad():
        descriptors_ms = median_ms(
            lambda: (loop_reference(src_feats, sm, sb, src_view.image_size),
                     loop_reference(dst_feats, dm, db, dst_view.image_size)),
            repeats,
            warmup=0,
        )  # fmt: skip
        matcher = load_matcher(weights / "matcher.safetensors")
        src_desc = loop_reference(src_feats, sm, sb, src_view.image_size)[None]
        dst_desc = loop_reference(dst_feats, dm, db, dst_view.image_size)[None]
        matcher(src_desc, dst_desc, src_feats, dst_feats)
        matcher_ms = median_ms(
            lambda: matcher(src_desc, dst_desc, src_feats, dst_feats), repeats, warmup=0
        )
    return {
        "fastsam_ultralytics_ms": fastsam_ms,
        "fastsam_ultralytics_candidates": int(len(masks_ref)),
        "descriptors_loop_ms": descriptors_ms,
        "descriptors_loop_masks": int(len(dst_masks) + 1),
        "matcher_b1_ms": matcher_ms,
    }


# ----------------------------------------------------------------------------- report


def machine_info(threads: int, load_at_start) -> dict:
    import torch

    from benchmarks.bench_cpu_precisions import cpu_flags

    packages = ("torch", "onnxruntime", "openvino", "nncf", "ultralytics", "numpy")
    return machine_record(load_at_start, packages, threads=threads,
                          torch_threads=torch.get_num_threads(), cpu_flags=cpu_flags())  # fmt: skip


def compose(ours: dict, reference: dict, ks) -> dict:
    """reference(K) = K x (FastSAM through ultralytics + both backbones (torch fp32) + loop
    descriptors + matcher B=1 + preprocessing), against each engine's measured total;
    ``ours``: engine label -> K -> its measured row (``torch fp32`` among them)."""
    torch_k1 = ours[parse_engine(REFERENCE_ENGINE).label][ks[0]]["stages_ms"]
    per_object = (
        reference["fastsam_ultralytics_ms"]
        + torch_k1["backbone_src"]
        + torch_k1["backbone_dst"]
        + reference["descriptors_loop_ms"]
        + reference["matcher_b1_ms"]
        + torch_k1["preprocess"]
    )
    rows = {}
    for k in ks:
        ref_ms = k * per_object
        ms = {label: ours[label][k]["total_ms"] for label in ours}
        speedup = {label: ref_ms / value for label, value in ms.items()}
        rows[k] = {"reference_shape_ms": ref_ms, "ms": ms, "speedup": speedup,
                   "best": max(speedup, key=speedup.get)}  # fmt: skip
    return {"reference_per_object_ms": per_object, "rows": rows}


def targets_met(composed: dict, targets: dict) -> dict:
    """Per target K: each engine's verdict and the best engine's (speed-up >= the target)."""
    out = {}
    for k, target in targets.items():
        row = composed["rows"].get(k)
        if row is None:
            continue
        best = row["best"]
        out[str(k)] = {
            "target": target,
            "engines": {label: x >= target for label, x in row["speedup"].items()},
            "best": {
                "engine": best,
                "speedup": row["speedup"][best],
                "met": row["speedup"][best] >= target,
            },  # fmt: skip
        }
    return out


def stage_winners(ours: dict, k: int) -> dict:
    """Per stage at ``k``: every engine's ms and the fastest (a tie when all are < 1 ms)."""
    out = {}
    for stage in STAGES:
        ms = {label: rows[k]["stages_ms"][stage] for label, rows in ours.items()}
        fastest = min(ms, key=ms.get)
        winner = "tie (< 1 ms)" if max(ms.values()) < 1.0 else fastest
        out[stage] = {"ms": ms, "winner": winner}
    return out


def pick_agreement(masks: dict[str, list], reference_label: str) -> dict:
    """Per engine: its picked masks against the reference engine's, query by query (an engine
    whose FastSAM finds other candidates numbers them differently, so masks, not indices):
    the mean IoU and how many are the same mask (IoU >= 0.99)."""
    import numpy as np

    def iou(a, b) -> float:
        union = np.logical_or(a, b).sum()
        return float(np.logical_and(a, b).sum() / union) if union else 1.0

    out = {}
    for label, got in masks.items():
        ious = [iou(a, b) for a, b in zip(got, masks[reference_label], strict=True)]
        out[label] = {"of": len(ious), "same_mask": sum(x >= 0.99 for x in ious),
                      "mean_iou": float(np.mean(ious))}  # fmt: skip
    return out


def same_picks(ours: dict, k: int) -> dict:
    """Per engine: how many of its K picks are torch fp32's (of K)."""
    reference = ours[parse_engine(REFERENCE_ENGINE).label][k]["chosen"]
    return {
        label: sum(a == b for a, b in zip(rows[k]["chosen"], reference, strict=True))
        for label, rows in ours.items()
    }


def k1_ceiling(ours: dict, reference_per_object_ms: float) -> dict:
    """The best K=1 speed-up any pipeline of these backbones could reach: the reference's
    per-object time over the two backbone passes alone (every other stage free), per engine.

    At K=1 the pipeline and the reference both run the source and the destination backbone
    once; only the other stages can be saved, so this bounds what doing less work can give.
    """
    out = {}
    for engine, rows in ours.items():
        stages = rows[min(rows)]["stages_ms"]
        backbones_ms = stages["backbone_src"] + stages["backbone_dst"]
        out[engine] = {
            "backbones_ms": backbones_ms,
            "backbone_share_of_reference": backbones_ms / reference_per_object_ms,
            "max_speedup": reference_per_object_ms / backbones_ms,
        }
    return out


def format_report(report: dict) -> str:
    """The printed tables: seconds and speed-up per engine and K, the stages at
    ``winners_k``, the K=1 ceilings and the targets."""
    machine = report["machine"]
    rows = report["composed"]["rows"]
    ks = list(rows)
    lines = [
        f"omama-run pair on CPU ({machine['threads']} thread(s)); N = {report['candidates']} "
        f"FastSAM candidates; load average {machine['load_average_at_start'][0]:.1f} at start, "
        f"{machine['load_average_at_end'][0]:.1f} at end",
        "",
        f"{'engine':<20}" + "".join(f"{'K=' + k:>18}" for k in ks),
        f"{'reference shape':<20}"
        + "".join(f"{rows[k]['reference_shape_ms'] / 1e3:>11.2f} s      " for k in ks),
    ]
    for label in rows[ks[0]]["ms"]:
        cells = [f"{rows[k]['ms'][label] / 1e3:>11.2f} s {rows[k]['speedup'][label]:>5.2f}x"
                 for k in ks]  # fmt: skip
        lines.append(f"{label:<20}" + "".join(cells))
    for label, why in report.get("unavailable", {}).items():
        lines.append(f"{label:<20} unavailable: {why}")
    ref = report["reference"]
    lines += [
        "",
        f"reference per object (composed): {report['composed']['reference_per_object_ms']:.0f} ms"
        f" = FastSAM via ultralytics {ref['fastsam_ultralytics_ms']:.0f} + backbones (torch) + "
        f"loop descriptors {ref['descriptors_loop_ms']:.0f} ({ref['descriptors_loop_masks']} "
        f"masks) + matcher B=1 {ref['matcher_b1_ms']:.0f}",
        "",
        f"per stage at K={report['winners_k']} (ms):",
    ]
    winners = report["stage_winners"]
    labels = list(next(iter(winners.values()))["ms"])
    lines.append(f"  {'stage':<14}" + "".join(f"{label:>18}" for label in labels) + "  fastest")
    for stage, row in winners.items():
        cells = "".join(f"{row['ms'][label]:>18.1f}" for label in labels)
        lines.append(f"  {stage:<14}{cells}  {row['winner']}")
    lines.append("")
    for engine, row in report.get("picks_vs_torch_fp32", {}).items():
        lines.append(f"picks vs torch fp32 ({engine}): {row['same_mask']} of {row['of']} the "
                     f"same mask, mean IoU {row['mean_iou']:.3f}")  # fmt: skip
    lines.append("")
    for engine, row in report.get("k1_ceiling", {}).items():
        lines.append(
            f"K=1 ceiling ({engine}): the two backbone passes alone take "
            f"{row['backbones_ms'] / 1e3:.2f}s = {100 * row['backbone_share_of_reference']:.0f}% "
            f"of the reference per object, so no pipeline of them beats it by more than "
            f"{row['max_speedup']:.2f}x at K=1"
        )
    for k, met in report["targets_met"].items():
        best = met["best"]
        state = "met" if best["met"] else "NOT MET"
        lines.append(f"target K={k} >= {met['target']}x: {state} (best: {best['engine']} "
                     f"{best['speedup']:.2f}x)")  # fmt: skip
    return "\n".join(lines)


def measure_engines(engines, art, images, ks, args, weights) -> tuple[dict, dict, object, dict]:
    """(engine label -> K -> row, engine label -> why it cannot run, the reference engine's
    destination frame, engine label -> its picked masks at the largest K).

    Every engine's pipeline is opened and warmed up once (allocations, first-run kernels),
    then ``--repeats`` rounds run one :func:`one_round` per engine in turn (round-robin), so
    a change of load on a shared machine hits every engine alike; medians per engine.
    """
    import contextlib

    from runtime.pipeline import Pipeline

    src, dst, queries = images
    unavailable, pipes = {}, {}
    with contextlib.ExitStack() as stack:
        for engine in engines:
            _log(f"bench_pair: opening {engine.label}")
            try:
                pipe = stack.enter_context(
                    Pipeline(art, backend=engine.backend, device="cpu", precision=engine.precision,
                             threads=args.threads, mask_size="model", weights_dirs=[weights])
                )  # fmt: skip
                pipe.match_frame(src, dst, queries[:1])  # warm-up
            except OmamaError as exc:
                if engine.spec == REFERENCE_ENGINE:
                    raise
                unavailable[engine.label] = str(exc)
                _log(f"  {engine.label}: unavailable: {exc}")
                continue
            pipes[engine.label] = pipe
        records = {label: {k: [] for k in ks} for label in pipes}
        chosen, frames, masks = {}, {}, {}
        for repeat in range(args.repeats):
            _log(f"bench_pair: round {repeat + 1}/{args.repeats}")
            for label, pipe in pipes.items():
                got, chosen[label], frames[label], masks[label] = one_round(
                    pipe, src, dst, queries, ks, args.threads
                )
                for k in ks:
                    records[label][k].append(got[k])
    ours = {label: summarize(label, records[label], chosen[label], frames[label])
            for label in pipes}  # fmt: skip
    return ours, unavailable, frames[parse_engine(REFERENCE_ENGINE).label], masks


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="Threads per model (all engines).")
    parser.add_argument("--repeats", type=int, default=3, help="Round-robin rounds (median).")
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument(
        "--engines",
        nargs="+",
        default=list(ENGINES),
        help="backend:precision; torch:fp32 always runs (the reference)",
    )
    parser.add_argument("--num-candidates", type=int, default=64, help="FastSAM candidates wanted.")
    parser.add_argument("--fastsam", choices=("s", "x"), default="s", help="FastSAM variant.")
    parser.add_argument("--work", type=Path, default=Path("/tmp/omama_bench_pair"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    engines = parse_engines(args.engines)
    load_at_start = load_average()
    started = time.perf_counter()
    import torch

    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    src, dst, queries = bench_images(args.work)
    art = build_artifacts(args.work, args.fastsam, args.num_candidates, dst)
    weights = args.work / "weights"
    ks = sorted(args.ks)
    ours, unavailable, dst_frame, masks = measure_engines(engines, art, (src, dst, queries), ks,
                                                          args, weights)  # fmt: skip
    _log("bench_pair: reference shape components")
    reference = measure_reference(art, weights, src, dst, queries[0], dst_frame, args.repeats,
                                  args.threads)  # fmt: skip
    composed = compose(ours, reference, ks)
    winners_k = 8 if 8 in ks else ks[-1]
    recipe = json.loads((args.work / "recipe.json").read_text())
    report = {
        "benchmark": "bench_pair",
        "method": "ours: every engine (backend x run precision, as omama-run runs it) opened "
        "and warmed up once, then --repeats round-robin rounds of one encode of the pair + one "
        "match per K (= match_frame) per engine, medians; reference shape = K x "
        "per-object costs measured once (FastSAM through ultralytics, PyTorch backbones, "
        "per-mask loop descriptors, matcher B=1), composed",
        "settings": {
            "threads": args.threads,
            "repeats": args.repeats,
            "ks": ks,
            "engines": [e.spec for e in engines],
            "fastsam": f"FastSAM-{args.fastsam} (random, BatchNorm calibrated, class "
            f"bias {recipe['fastsam_class_bias']})",
            "backbone": "dinov2_vitb14_reg",
            "export": "fp32 + --int8 (synthetic calibration frames)",
            "views": {"src": "exo 532x952", "dst": "ego 700x700"},
            "images": {"src": list(EXO_HW), "dst": list(EGO_HW)},
            "queries_distinct": len(queries),
        },  # fmt: skip
        "candidates": ours[parse_engine(REFERENCE_ENGINE).label][ks[0]]["candidates"],
        "picks_vs_torch_fp32": pick_agreement(masks, parse_engine(REFERENCE_ENGINE).label),
        "same_picks_as_torch_fp32": {
            "k": ks[-1],
            "of": ks[-1],
            "engines": same_picks(ours, ks[-1]),
        },
        "pipeline": {label: {str(k): v for k, v in rows.items()} for label, rows in ours.items()},
        "unavailable": unavailable,
        "reference": reference,
        "composed": {
            "reference_per_object_ms": composed["reference_per_object_ms"],
            "rows": {str(k): v for k, v in composed["rows"].items()},
        },  # fmt: skip
        "winners_k": winners_k,
        "stage_winners": stage_winners(ours, winners_k),
        "targets": {str(k): t for k, t in TARGETS.items()},
        "targets_met": targets_met(composed, TARGETS),
        "k1_ceiling": k1_ceiling(ours, composed["reference_per_object_ms"]),
        "wall_s": round(time.perf_counter() - started, 1),
        "machine": machine_info(args.threads, load_at_start),
    }
    write_result(args.out, report)
    print(format_report(report))
    print(f"\nwritten to {args.out}")
    return report


if __name__ == "__main__":
    main()
