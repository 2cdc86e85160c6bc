"""GPU checks in one run: backbone fp16 autocast vs fp32, and the training step on CUDA.

What it measures (official sizes, exo2ego: exo 532x952 -> ego 700x700):

* ``backbone``: DINOv2 ViT-B/14 with registers (random weights in the official structure),
  batch ``--batch-images`` per view: latency per image in fp32 and under
  ``torch.autocast(float16)`` (the ``omama features`` setting), the max/mean absolute
  difference of the features between the two, and peak device memory.
* ``train_step``: one matcher training step (forward, loss, backward, AdamW) at the
  reference batch (24 pairs, N = 32 masks) through ``omama_train.train.model.build_train_model``,
  with cached fp16 features vs features computed on the fly by the frozen backbone, under
  AMP, timed with CUDA synchronisation; plus the share of the cached step spent on
  descriptors (the reference study: 166 of 242 ms).

Usage: ``python -m benchmarks.bench_gpu [--batch-images 8] [--batch 24] [--repeats 10]``.
Writes ``benchmarks/results/bench_gpu.json``; needs a CUDA device.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from benchmarks.common import RESULTS_DIR, write_result

RESULTS = RESULTS_DIR / "bench_gpu.json"
SIZES = {"ego": (700, 700), "exo": (532, 952)}
GRIDS = {"ego": (50, 50), "exo": (38, 68)}


def _cuda_ms(fn, repeats: int, warmup: int = 2) -> list[float]:
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return times


def backbone_check(batch: int, repeats: int) -> dict:
    import torch

    from omama_train.models.backbones import build_backbone

    rows = {}
    for view, size in SIZES.items():
        torch.manual_seed(0)
        model = build_backbone("dinov2_vitb14_reg", size).cuda().eval()
        images = torch.randn(batch, 3, *size, device="cuda")
        with torch.inference_mode():
            torch.cuda.reset_peak_memory_stats()
            ref = model(images)
            fp32_ms = _cuda_ms(lambda m=model, x=images: m(x), repeats)
            fp32_peak = torch.cuda.max_memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            with torch.autocast("cuda", dtype=torch.float16):
                half = model(images)
                fp16_ms = _cuda_ms(lambda m=model, x=images: m(x), repeats)
            fp16_peak = torch.cuda.max_memory_allocated()
        diff = (half.float() - ref).abs()
        rows[view] = {
            "image_hw": list(size),
            "batch": batch,
            "fp32_ms_per_image": statistics.median(fp32_ms) / batch,
            "fp16_autocast_ms_per_image": statistics.median(fp16_ms) / batch,
            "fp16_speedup": statistics.median(fp32_ms) / statistics.median(fp16_ms),
            "max_abs_diff_fp16_vs_fp32": float(diff.max()),
            "mean_abs_diff_fp16_vs_fp32": float(diff.mean()),
            "feature_abs_mean": float(ref.abs().mean()),
            "peak_mb_fp32": fp32_peak / 2**20,
            "peak_mb_fp16": fp16_peak / 2**20,
        }
        print(f"backbone {view}: {rows[view]}", file=sys.stderr)
        del model, images, ref, half
        torch.cuda.empty_cache()
    return rows


def train_step_check(batch_size: int, num_candidates: int, repeats: int) -> dict:
    import torch

    from benchmarks.bench_train_step import make_batch
    from omama_train.geometry import Geometry
    from omama_train.models.backbones import build_backbone
    from omama_train.models.matcher import OMaMaMatcher
    from omama_train.models.preprocess import preprocess_image_torch
    from omama_train.train.model import build_train_model, masked_loss, tie_backbones

    torch.manual_seed(0)
    geometry = Geometry.from_views("exo2ego", SIZES, GRIDS)
    batch = make_batch(batch_size, num_candidates, geometry)
    ego = build_backbone("dinov2_vitb14_reg", SIZES["ego"]).cuda().eval()
    exo = build_backbone("dinov2_vitb14_reg", SIZES["exo"]).cuda().eval()
    tie_backbones(ego, exo)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16):
        src_images = preprocess_image_torch(batch["src_image"].cuda())
        dst_images = preprocess_image_torch(batch["dst_image"].cuda())
        batch["src_feats"] = exo(src_images).half()
        batch["dst_feats"] = ego(dst_images).half()
    batch = {k: v.cuda() for k, v in batch.items()}

    rows = {}
    for mode in ("cached", "on_the_fly"):
        matcher = OMaMaMatcher("exo2ego", src_grid=GRIDS["exo"], dst_grid=GRIDS["ego"]).cuda()
        matcher.mlp_visible.requires_grad_(False)
        if mode == "cached":
            model = build_train_model(geometry, matcher)
            inputs = {"src_input": batch["src_feats"], "dst_input": batch["dst_feats"]}
        else:
            for b in (ego, exo):
                b.requires_grad_(False)
            model = build_train_model(geometry, matcher, {"ego": ego, "exo": exo}, False)
            inputs = {"src_input": batch["src_image"], "dst_input": batch["dst_image"]}
        model = model.cuda()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], 8e-5)
        step_batch = {**{k: v for k, v in batch.items() if k.endswith(("bits", "boxes"))}, **inputs}
        descriptor_ms = []
        original = model.descriptors

        def timed(*args, original=original, descriptor_ms=descriptor_ms, **kwargs):
            start, end = torch.cuda.Event(True), torch.cuda.Event(True)
            start.record()
            out = original(*args, **kwargs)
            end.record()
            descriptor_ms.append((start, end))
            return out

        model.descriptors = timed

        def step(model=model, optimizer=optimizer, step_batch=step_batch):
            with torch.autocast("cuda", dtype=torch.float16):
                sim = model(step_batch)
                loss = masked_loss(
                    sim.float(), batch["valid"], batch["positive"], batch["visible"], 0.07
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        torch.cuda.reset_peak_memory_stats()
        times = _cuda_ms(step, repeats)
        torch.cuda.synchronize()
        per_step = [s.elapsed_time(e) for s, e in descriptor_ms[-2 * repeats :]]
        desc_ms = sum(per_step) / repeats
        rows[mode] = {
            "step_ms": statistics.median(times),
            "step_ms_all": [round(t, 2) for t in times],
            "descriptor_ms": desc_ms,
            "descriptor_share": desc_ms / statistics.median(times),
            "peak_mb": torch.cuda.max_memory_allocated() / 2**20,
        }
        print(f"train {mode}: {rows[mode]['step_ms']:.1f} ms", file=sys.stderr)
    rows["speedup_cached_over_on_the_fly"] = (
        rows["on_the_fly"]["step_ms"] / rows["cached"]["step_ms"]
    )
    rows.update(batch=batch_size, candidates=num_candidates, amp="float16 autocast")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-images", type=int, default=8)
    parser.add_argument("--batch", type=int, default=24)
    parser.add_argument("--num-candidates", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("error: bench_gpu needs a CUDA device", file=sys.stderr)
        return 1
    started = time.time()
    result = {
        "benchmark": "bench_gpu",
        "gpu": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "timing": "CUDA events around each call, medians; random weights (speed does not "
        "depend on them)",
    }
    # Each check reports its own failure, so one broken part does not lose the others.
    for name, check in (
        ("backbone", lambda: backbone_check(args.batch_images, args.repeats)),
        ("train_step", lambda: train_step_check(args.batch, args.num_candidates, args.repeats)),
    ):
        try:
            result[name] = check()
        except Exception as exc:  # noqa: BLE001 - recorded in the report
            result[name] = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"{name} failed: {exc}", file=sys.stderr)
    result["seconds"] = time.time() - started
    write_result(args.out, result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
