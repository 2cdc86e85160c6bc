"""One O-MaMa training step on CPU: cached features vs features computed on the fly.

Real sizes (exo2ego): source exo image 532 x 952 (38 x 68 tokens), destination ego image
700 x 700 (50 x 50 tokens), N = 32 destination masks per pair, the official matcher
(dim 768, 4 heads), backbone DINOv2 ViT-S/14 with registers (random weights: speed does not
depend on them) projected to 768 channels. The batch holds ``--batch`` pairs (default 4 on
CPU; the reference batch is 24 on a GPU) drawn as the training data loader draws them:
packed pooling-grid masks (ellipses of 4-250 px, FastSAM-like), boxes, visibility, and
either fp16 feature maps (the cache) or uint8 images.

Each step is forward + loss + backward + AdamW step, through the training module
``omama_train.train.model.build_train_model``:

* ``cached``: features come with the batch (what ``omama train --cache`` does);
* ``on_the_fly``: the same matcher-only training, but the backbone (frozen, no grad) encodes
  both views of every pair in the step, as the reference study's on-the-fly training did;
* ``finetune`` (``--finetune``): the backbone is trained too (forward and backward), the
  ``--finetune-backbone`` setting.

Also reported: the share of the cached step spent computing descriptors (unpacking the
masks and separable pooling, source and destination; they have no backward in the cached
setting since the features are constants). Medians of ``--repeats`` steps after one warm-up.

Usage: ``python -m benchmarks.bench_train_step [--batch 4] [--threads 2] [--finetune]``.
Writes ``benchmarks/results/bench_train_step.json``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from benchmarks.common import RESULTS_DIR, load_average, machine_record, write_result

RESULTS = RESULTS_DIR / "bench_train_step.json"
EGO_IMAGE, EXO_IMAGE = (700, 700), (532, 952)
EGO_GRID, EXO_GRID = (50, 50), (38, 68)
BACKBONE = "dinov2_vits14_reg"
# The reference study's GPU profile of one iteration (docs/reference.md, section 8).
SEED_MS = {"on_the_fly": 2467.0, "cached": 242.0, "cached_descriptors": 166.0}


def make_batch(batch: int, num_candidates: int, geometry, seed: int = 0) -> dict:
    """A collated training batch at the real sizes (features and images both included)."""
    import numpy as np
    import torch

    from benchmarks.common import blob_masks
    from omama_train.geometry import masks_to_grid, pack_masks
    from runtime.pooling import mask_boxes

    rng = np.random.default_rng(seed)

    def packed(count: int, size, pool):
        masks = blob_masks(rng, count, size)
        bits = pack_masks(masks_to_grid(masks, size, pool, "torch"))
        return torch.from_numpy(bits), torch.from_numpy(mask_boxes(masks))

    def image(size):
        return rng.integers(0, 256, (batch, *size, 3), dtype=np.uint8)

    src = [packed(1, geometry.src_image, geometry.src_pool) for _ in range(batch)]
    dst = [packed(num_candidates, geometry.dst_image, geometry.dst_pool) for _ in range(batch)]
    return {
        "src_bits": torch.stack([b for b, _ in src]),
        "src_boxes": torch.stack([x for _, x in src]),
        "dst_bits": torch.stack([b for b, _ in dst]),
        "dst_boxes": torch.stack([x for _, x in dst]),
        "valid": torch.ones(batch, num_candidates, dtype=torch.bool),
        "positive": torch.from_numpy(rng.integers(0, num_candidates, batch)),
        "visible": torch.ones(batch),
        "src_image": torch.from_numpy(image(geometry.src_image)),
        "dst_image": torch.from_numpy(image(geometry.dst_image)),
    }


def _trainer(mode: str, batch: dict, geometry, backbones: dict):
    """(model, step(), descriptor seconds cell) of one mode: ``cached``, ``on_the_fly`` or
    ``finetune``; ``step`` is forward + loss + backward + AdamW step."""
    import torch

    from omama_train.models.matcher import OMaMaMatcher
    from omama_train.train.model import build_train_model, masked_loss

    matcher = OMaMaMatcher("exo2ego", src_grid=EXO_GRID, dst_grid=EGO_GRID)
    matcher.mlp_visible.requires_grad_(False)
    matcher.CROSS_context_attn.key.bias.requires_grad_(False)
    if mode == "cached":
        model = build_train_model(geometry, matcher)
        inputs = {"src_input": batch["src_feats"], "dst_input": batch["dst_feats"]}
    else:
        for b in backbones.values():
            b.train(mode == "finetune")
            b.requires_grad_(mode == "finetune")
        model = build_train_model(geometry, matcher, backbones, mode == "finetune")
        inputs = {"src_input": batch["src_image"], "dst_input": batch["dst_image"]}
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=8e-5)
    masks = {k: v for k, v in batch.items() if k.endswith(("bits", "boxes"))}
    step_batch = {**masks, **inputs}
    descriptor_s = [0.0]
    original = model.descriptors

    def timed_descriptors(*args, **kwargs):
        start = time.perf_counter()
        out = original(*args, **kwargs)
        descriptor_s[0] += time.perf_counter() - start
        return out

    model.descriptors = timed_descriptors

    def step() -> None:
        sim = model(step_batch)
        loss = masked_loss(sim, batch["valid"], batch["positive"], batch["visible"], 0.07)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return model, step, descriptor_s


def _time_steps(step, descriptor_s: list[float], reps: int) -> dict:
    """Median step time and descriptor share over ``reps`` steps after one warm-up."""
    step()  # warm-up
    times, shares = [], []
    for _ in range(reps):
        descriptor_s[0] = 0.0
        start = time.perf_counter()
        step()
        elapsed = time.perf_counter() - start
        times.append(elapsed)
        shares.append(descriptor_s[0] / elapsed)
    return {
        "step_ms": 1000 * statistics.median(times),
        "step_ms_all": [round(1000 * t, 1) for t in times],
        "descriptor_ms": 1000 * statistics.median(times) * statistics.median(shares),
        "descriptor_share": statistics.median(shares),
        "repeats": reps,
    }


def run(batch_size: int, num_candidates: int, threads: int, repeats: int, finetune: bool) -> dict:
    """Step times of every mode (the cached one ``repeats`` times, the others a third)."""
    import torch

    from omama_train.geometry import Geometry
    from omama_train.models.backbones import build_backbone
    from omama_train.models.preprocess import preprocess_image_torch
    from omama_train.train.model import tie_backbones

    torch.manual_seed(0)
    torch.set_num_threads(threads)
    geometry = Geometry.from_views(
        "exo2ego", {"ego": EGO_IMAGE, "exo": EXO_IMAGE}, {"ego": EGO_GRID, "exo": EXO_GRID}
    )
    batch = make_batch(batch_size, num_candidates, geometry)
    ego = build_backbone(BACKBONE, EGO_IMAGE)
    exo = build_backbone(BACKBONE, EXO_IMAGE)
    tie_backbones(ego, exo)
    backbones = {"ego": ego, "exo": exo}
    # The cache: fp16 maps of the same images, as omama features stores them.
    with torch.inference_mode():
        batch["src_feats"] = exo(preprocess_image_torch(batch["src_image"])).half()
        batch["dst_feats"] = ego(preprocess_image_torch(batch["dst_image"])).half()

    rows = {}
    for mode in ("cached", "on_the_fly", *(["finetune"] if finetune else [])):
        model, step, descriptor_s = _trainer(mode, batch, geometry, backbones)
        reps = repeats if mode == "cached" else max(1, repeats // 3)
        rows[mode] = _time_steps(step, descriptor_s, reps)
        print(f"  {mode}: {rows[mode]['step_ms']:.0f} ms/step", file=sys.stderr)
        del model, step
    rows["speedup_on_the_fly_over_cached"] = (
        rows["on_the_fly"]["step_ms"] / rows["cached"]["step_ms"]
    )
    if finetune:
        rows["speedup_finetune_over_cached"] = (
            rows["finetune"]["step_ms"] / rows["cached"]["step_ms"]
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=4, help="pairs per step")
    parser.add_argument("--num-candidates", type=int, default=32, help="destination masks per pair")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--finetune", action="store_true", help="also time backbone training")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    load_at_start = load_average()
    rows = run(args.batch, args.num_candidates, args.threads, args.repeats, args.finetune)

    report = {
        "benchmark": "bench_train_step",
        "direction": "exo2ego",
        "backbone": BACKBONE,
        "batch": args.batch,
        "candidates": args.num_candidates,
        "src_image": list(EXO_IMAGE),
        "dst_image": list(EGO_IMAGE),
        "machine": machine_record(
            load_at_start, ("torch", "timm", "numpy"), torch_threads=args.threads
        ),
        "seed_gpu_reference_ms": SEED_MS,
        "results": rows,
    }
    write_result(args.out, report)
    print(f"{'mode':<12} {'step ms':>9} {'descriptor ms':>14} {'descr. share':>13}")
    for mode in ("cached", "on_the_fly", "finetune"):
        if mode in rows:
            r = rows[mode]
            print(
                f"{mode:<12} {r['step_ms']:>9.0f} {r['descriptor_ms']:>14.1f} "
                f"{100 * r['descriptor_share']:>12.1f}%"
            )
    seed_ratio = SEED_MS["on_the_fly"] / SEED_MS["cached"]
    ratio = rows["speedup_on_the_fly_over_cached"]
    print(f"on-the-fly / cached: {ratio:.1f}x (seed, GPU: {seed_ratio:.1f}x)")
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
