"""Benchmark: FastSAM candidate extraction (`omama data masks`) and the candidate files.

Measures, with random-weight FastSAM-{s,x} checkpoints built offline (same architecture and
cost as the released ones; their masks are noise, so mask counts and file sizes are
worst-case-ish, not those of real scenes):

1. ``segment_everything`` latency per image (median) on an ego 704x704 and an exo 960x540
   image at imgsz 1024: with conf 0.4 (random weights detect nothing: network + NMS only)
   and conf 0 (ultralytics keeps its 300 best detections: the post-processing worst case), with
   retina masks on and off.
2. The candidate files: write (npz compressed + npy), full read, header-only resume check,
   and file size, for N masks at 704x704.
3. End to end: ``extract_candidates`` (prefetching reads, background writes) on a synthetic
   processed root versus the plain serial loop (read, segment, write) on the same frames.

Run: ``python -m benchmarks.bench_fastsam_masks [--device cuda] [--variants s x] [--frames 8]``.
Prints the numbers and writes ``benchmarks/results/bench_fastsam_masks.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from benchmarks.common import RESULTS_DIR, load_average, machine_record, write_result
from runtime.timing import median_ms

EGO_HW, EXO_HW = (704, 704), (540, 960)
RESULTS = RESULTS_DIR / "bench_fastsam_masks.json"


def _image(hw: tuple[int, int], seed: int) -> np.ndarray:
    """A textured RGB image with a few flat coloured shapes (uint8, (H, W, 3))."""
    rng = np.random.default_rng(seed)
    h, w = hw
    small = rng.integers(0, 255, (h // 16, w // 16, 3), dtype=np.uint8)
    image = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, w - 80)), int(rng.integers(0, h - 80))
        colour = tuple(int(c) for c in rng.integers(0, 255, 3))
        cv2.rectangle(image, (x0, y0), (x0 + int(rng.integers(30, 200)), y0 + 60), colour, -1)
    return image


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _median_s(fn, repeats: int, device: str) -> float:
    """Median seconds of ``fn()``, the device's queued work included (no warm-up)."""

    def synced() -> None:
        fn()
        _sync(device)

    _sync(device)
    return median_ms(synced, repeats, warmup=0) / 1e3


def bench_segment(model, device: str, repeats: int) -> list[dict]:
    from omama_train.models.fastsam import segment_everything

    rows = []
    for view, hw in (("ego", EGO_HW), ("exo", EXO_HW)):
        image = _image(hw, seed=1)
        for conf in (0.4, 0.0):
            for retina in (True, False):

                def run(image=image, conf=conf, retina=retina):
                    return segment_everything(
                        model, image, imgsz=1024, conf=conf, retina_masks=retina, device=device
                    )

                masks, _ = run()  # warm-up (first call also sets the predictor up)
                seconds = _median_s(run, repeats, device)
                rows.append(
                    {
                        "view": view,
                        "image_hw": list(hw),
                        "conf": conf,
                        "retina_masks": retina,
                        "n_masks": int(len(masks)),
                        "latency_ms": round(1000 * seconds, 1),
                    }
                )
                print(
                    f"  segment {view} {hw} conf={conf} retina={retina}: "
                    f"{len(masks)} masks, {1000 * seconds:.1f} ms"
                )
    return rows


def _object_masks(n: int, hw: tuple[int, int] = EGO_HW, seed: int = 0) -> np.ndarray:
    """(n, H, W) uint8 ellipses of 1-5% of the image: closer to real object candidates."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, *hw), np.uint8)
    for mask in masks:
        centre = (int(rng.integers(50, hw[1] - 50)), int(rng.integers(50, hw[0] - 50)))
        axes = (int(rng.integers(10, 80)), int(rng.integers(10, 80)))
        cv2.ellipse(mask, centre, axes, float(rng.integers(0, 180)), 0, 360, 1, -1)
    return masks


def bench_files(masks: np.ndarray, repeats: int, kind: str) -> dict:
    from runtime.candidates import (
        Candidates,
        inspect_candidates,
        read_candidates,
        write_candidates,
    )

    cands = Candidates.from_masks(masks)
    with tempfile.TemporaryDirectory() as tmp:
        mp, bp = Path(tmp) / "0_masks.npz", Path(tmp) / "0_boxes.npy"
        write_s = _median_s(lambda: write_candidates(mp, bp, cands), repeats, "cpu")
        read_s = _median_s(lambda: read_candidates(mp, bp), repeats, "cpu")
        inspect_s = _median_s(lambda: inspect_candidates(mp, bp), repeats, "cpu")
        size = mp.stat().st_size + bp.stat().st_size
    row = {
        "masks": kind,
        "n_masks": int(len(masks)),
        "mask_hw": list(masks.shape[1:]),
        "raw_mb": round(masks.nbytes / 1e6, 2),
        "file_mb": round(size / 1e6, 3),
        "write_ms": round(1000 * write_s, 1),
        "read_ms": round(1000 * read_s, 1),
        "resume_check_ms": round(1000 * inspect_s, 3),
    }
    print(f"  files: {row}")
    return row


def _synthetic_root(root: Path, n_frames: int) -> None:
    from runtime.egoexo import Pair, frame_image_path, write_pairs

    pairs = []
    for frame in range(n_frames):
        path = frame_image_path(root, "take0", "aria01_214-1", frame)
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), _image(EGO_HW, seed=frame)[:, :, ::-1])
        pairs.append(Pair("take0", "obj_0", "aria01_214-1", "cam01", frame))
    (root / "processed" / "take0" / "annotation.json").write_text('{"masks": {}}')
    write_pairs(root / "dataset_jsons" / "test_exoego_pairs.json", pairs, root)


def bench_pipeline(weights: Path, device: str, n_frames: int, conf: float, io_threads: int) -> dict:
    from omama_train.data.masks import (
        FastSAMSettings,
        extract_candidates,
        fastsam_source,
    )
    from omama_train.imagekey import ImageKey
    from omama_train.models.fastsam import load_fastsam, segment_everything
    from runtime.candidates import Candidates, write_candidates
    from runtime.egoexo import candidate_paths, frame_image_path

    settings = FastSAMSettings(conf=conf, device=device)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _synthetic_root(root, n_frames + 1)
        make = fastsam_source(weights, settings)
        warm = ImageKey("take0", "aria01_214-1", n_frames)
        make(warm, cv2.imread(str(frame_image_path(root, *warm))))
        # The last frame was only the warm-up image; drop its pair from the timed run.
        pairs_file = root / "dataset_jsons" / "test_exoego_pairs.json"
        pairs_file.write_text(json.dumps(json.loads(pairs_file.read_text())[:n_frames]))
        _sync(device)
        t0 = time.perf_counter()
        report = extract_candidates(
            root, "test", "exo2ego", make, progress=False, io_threads=io_threads
        )
        _sync(device)
        pipelined_s = time.perf_counter() - t0

        model = load_fastsam(weights)
        segment_everything(model, _image(EGO_HW, 0), conf=conf, device=device)  # warm-up
        _sync(device)
        t0 = time.perf_counter()
        for frame in range(n_frames):
            image = cv2.imread(str(frame_image_path(root, "take0", "aria01_214-1", frame)))
            masks, boxes = segment_everything(
                model, cv2.cvtColor(image, cv2.COLOR_BGR2RGB), conf=conf, device=device
            )
            paths = candidate_paths(root / "serial", "test", "exo2ego", "take0", "cam", frame)
            write_candidates(*paths, Candidates(masks, boxes))
        _sync(device)
        serial_s = time.perf_counter() - t0
    row = {
        "frames": n_frames,
        "conf": conf,
        "io_threads": io_threads,
        "mean_masks": report["candidates"]["mean"],
        "pipelined_ms_per_frame": round(1000 * pipelined_s / n_frames, 1),
        "serial_ms_per_frame": round(1000 * serial_s / n_frames, 1),
        "pipelined_frames_per_s": round(n_frames / pipelined_s, 2),
    }
    print(f"  pipeline: {row}")
    return row


def _best_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """For each mask of ``a`` (N, H, W), its best IoU among ``b`` (M, H, W), at 1/4 size."""
    fa = a[:, ::4, ::4].reshape(len(a), -1).astype(np.float32)
    fb = b[:, ::4, ::4].reshape(len(b), -1).astype(np.float32)
    inter = fa @ fb.T
    union = fa.sum(1)[:, None] + fb.sum(1)[None, :] - inter
    return (inter / np.maximum(union, 1)).max(axis=1)


def parity_vs_cpu(weights: Path, device: str) -> dict:
    """Same random model and image on CPU and on ``device``: detections and mask agreement.

    Random weights give many near-equal scores, so the order (and the last few of the 300
    kept) may differ between devices: compare each CPU mask with its best device match.
    """
    from omama_train.models.fastsam import load_fastsam, segment_everything

    image = _image(EGO_HW, 1)
    cpu_masks, _ = segment_everything(load_fastsam(weights), image, conf=0.0)
    dev_masks, _ = segment_everything(load_fastsam(weights), image, conf=0.0, device=device)
    best = _best_iou(cpu_masks, dev_masks) if len(cpu_masks) and len(dev_masks) else None
    out = {
        "conf": 0.0,
        "n_cpu": int(len(cpu_masks)),
        "n_device": int(len(dev_masks)),
        "best_iou_median": None if best is None else float(np.median(best)),
        "best_iou_frac_above_0.9": None if best is None else float((best > 0.9).mean()),
    }
    print(f"  parity vs cpu: {out}")
    return out


def machine_info(device: str, load_at_start: list[float]) -> dict:
    import torch

    return machine_record(
        load_at_start,
        ("torch", "ultralytics", "numpy", "opencv-python-headless", "opencv-python"),
        torch_threads=torch.get_num_threads(),
        device=device,
        gpu=torch.cuda.get_device_name(0) if device.startswith("cuda") else None,
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--variants", nargs="+", default=["s"], choices=["s", "x"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    parser.add_argument("--io-threads", type=int, default=4, help="mask writer threads")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    os.environ.setdefault("YOLO_OFFLINE", "1")
    load_at_start = load_average()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from omama_train.models.fastsam import build_random_fastsam, load_fastsam, segment_everything

    results: dict = {"machine": machine_info(args.device, load_at_start), "variants": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for variant in args.variants:
            print(f"FastSAM-{variant} (random weights), device {args.device}")
            weights = build_random_fastsam(Path(tmp) / f"FastSAM-{variant}.pt", variant)
            model = load_fastsam(weights)
            entry = {"segment": bench_segment(model, args.device, args.repeats)}
            masks, _ = segment_everything(model, _image(EGO_HW, 1), conf=0.0, device=args.device)
            entry["files"] = [
                bench_files(masks[:n], args.repeats, "random-weight FastSAM blobs")
                for n in (32, len(masks))
            ] + [bench_files(_object_masks(100), args.repeats, "object-sized ellipses")]
            entry["pipeline"] = bench_pipeline(
                weights, args.device, args.frames, conf=0.0, io_threads=args.io_threads
            )
            if args.device != "cpu":
                entry["parity_vs_cpu"] = parity_vs_cpu(weights, args.device)
            results["variants"][variant] = entry
    results["machine"]["torch_threads_after"] = torch.get_num_threads()
    write_result(args.out, results)
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
