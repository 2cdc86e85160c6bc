"""FastSAM post-processing: ultralytics' FastSAM predictor vs ``runtime.fastsam_post``.

Both post-process the *same* raw outputs of a random-weight FastSAM-s at a 1024x1024
input (the ONNX export's fixed size), with confidence 0 so that NMS keeps ultralytics'
maximum of 300 detections (the worst case), IoU 0.9, retina masks, on one thread.
Destination images: 1024x1024 ("retina at 1024"), the ego frame 704x704 and the exo frame
960x540 (letterboxed). For each it reports the median latency of

* ``ultralytics_ms``: ``FastSAMPredictor.postprocess`` (NMS, masks at the image size for
  every detection, crop, box clean-up);
* ``ours_ms``: :func:`runtime.fastsam_post.postprocess` (NMS, masks evaluated inside each
  box only, returned as box crops);
* ``ours_dense_ms``: the same plus building the dense (N, H, W) uint8 stack that
  ultralytics returns (the candidate file format),

and checks that both give the same candidates (count, minimum mask IoU, box difference).
Random weights give boxes of 120-480 input pixels, about 1-20 % of the image each.

Run: ``python -m benchmarks.bench_fastsam_post [--repeats 3]``. Prints the numbers and
writes ``benchmarks/results/bench_fastsam_post.json``.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # one thread everywhere, before numpy / torch load their BLAS
os.environ.setdefault("YOLO_OFFLINE", "1")

import argparse  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

from benchmarks.common import (  # noqa: E402
    RESULTS_DIR,
    load_average,
    machine_record,
    write_result,
)
from runtime.timing import median_ms  # noqa: E402

RESULTS = RESULTS_DIR / "bench_fastsam_post.json"
IMGSZ = 1024
IMAGES_HW = {"square_1024": (1024, 1024), "ego_704": (704, 704), "exo_960x540": (540, 960)}
CONF, IOU, MAX_DET = 0.0, 0.9, 300
TARGET_SPEEDUP = 3.0


def _image(hw, seed):
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (hw[0] // 16 + 1, hw[1] // 16 + 1, 3), dtype=np.uint8)
    return cv2.resize(small, (hw[1], hw[0]), interpolation=cv2.INTER_LINEAR)


def _agreement(mine, theirs) -> dict:
    import numpy as np

    n = len(theirs)
    their_masks = theirs.masks.data.numpy().astype(bool) if n else None
    out = {"n_ultralytics": n, "n_ours": len(mine)}
    if n and len(mine) == n:
        ours = mine.masks().astype(bool)
        inter = (ours & their_masks).reshape(n, -1).sum(1)
        union = np.maximum((ours | their_masks).reshape(n, -1).sum(1), 1)
        xyxy = theirs.boxes.xyxy.numpy()
        xywh = np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], axis=1)
        out["min_mask_iou"] = float((inter / union).min())
        out["pixel_mismatch_fraction"] = float((ours != their_masks).mean())
        out["max_box_diff_px"] = float(np.abs(mine.boxes - xywh).max())
    return out


def _one_thread() -> None:
    """torch and OpenCV on one thread (ultralytics changes torch's on load and predict)."""
    import cv2
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)


def measure_image(model, name: str, hw: tuple[int, int], seed: int, repeats: int) -> dict:
    """One destination image: both post-processings of the same raw outputs, timed and
    compared."""
    import numpy as np
    import torch

    from omama_train.models.fastsam import preserve_thread_settings
    from runtime import fastsam_post as fp

    image = _image(hw, seed=seed)
    bgr = np.ascontiguousarray(image[:, :, ::-1])
    x, geom = fp.letterbox(image, IMGSZ)
    with torch.inference_mode(), preserve_thread_settings():
        if model.predictor is None:
            model.predict(bgr, imgsz=IMGSZ, conf=CONF, iou=IOU, retina_masks=True, verbose=False)
        (out0_t, out1_t), _ = model.model(torch.from_numpy(x))
    _one_thread()
    predictor = model.predictor
    predictor.args.conf, predictor.args.iou = CONF, IOU
    predictor.args.retina_masks, predictor.args.max_det = True, MAX_DET
    x_t = torch.from_numpy(x)
    out0, out1 = out0_t.numpy(), out1_t.numpy()

    def ultralytics_post():
        with torch.inference_mode():
            return predictor.postprocess([out0_t.clone(), out1_t.clone()], x_t, [bgr])[0]

    def ours():
        return fp.postprocess(out0, out1, geom, CONF, IOU, MAX_DET)

    def ours_dense():
        return fp.postprocess(out0, out1, geom, CONF, IOU, MAX_DET).masks()

    theirs, mine = ultralytics_post(), ours()
    row = {"image": name, "image_hw": list(hw), **_agreement(mine, theirs)}
    ranges = mine.ranges
    row["mean_box_area_fraction"] = float(
        ((ranges[:, 1] - ranges[:, 0]) * (ranges[:, 3] - ranges[:, 2])).mean() / (hw[0] * hw[1])
    )
    row["ultralytics_ms"] = median_ms(ultralytics_post, repeats)
    row["ours_ms"] = median_ms(ours, repeats)
    row["ours_dense_ms"] = median_ms(ours_dense, repeats)
    row["speedup"] = row["ultralytics_ms"] / row["ours_ms"]
    row["speedup_dense"] = row["ultralytics_ms"] / row["ours_dense_ms"]
    print(
        f"{name:12s} {hw[0]}x{hw[1]}: {row['n_ours']} masks "
        f"(box {100 * row['mean_box_area_fraction']:.1f}% of the image), "
        f"ultralytics {row['ultralytics_ms']:.0f} ms, ours {row['ours_ms']:.0f} ms "
        f"({row['speedup']:.1f}x), ours + dense stack {row['ours_dense_ms']:.0f} ms "
        f"({row['speedup_dense']:.1f}x); min mask IoU {row.get('min_mask_iou', 'n/a')}"
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variant", default="s", choices=["s", "x"])
    args = parser.parse_args()

    import torch

    from omama_train.models.fastsam import build_random_fastsam, load_fastsam

    load_at_start = load_average()
    with tempfile.TemporaryDirectory() as tmp:
        model = load_fastsam(build_random_fastsam(Path(tmp) / "fastsam.pt", args.variant))
    _one_thread()  # ultralytics changes torch's threads on load; set them after
    rows = [
        measure_image(model, name, hw, seed, args.repeats)
        for seed, (name, hw) in enumerate(IMAGES_HW.items())
    ]
    result = {
        "benchmark": "bench_fastsam_post",
        "settings": {
            "imgsz": IMGSZ,
            "conf": CONF,
            "iou": IOU,
            "max_det": MAX_DET,
            "retina_masks": True,
            "variant": f"FastSAM-{args.variant} (random weights)",
            "repeats": args.repeats,
            "statistic": "median",
        },
        "target_speedup": TARGET_SPEEDUP,
        "target_met": all(r["speedup_dense"] >= TARGET_SPEEDUP for r in rows),
        "rows": rows,
        "machine": machine_record(
            load_at_start,
            ("numpy", "torch", "ultralytics", "opencv-python-headless"),
            torch_threads=torch.get_num_threads(),
            blas_threads=os.environ["OMP_NUM_THREADS"],
        ),
    }
    write_result(RESULTS, result)
    verdict = "met" if result["target_met"] else "NOT met"
    print(f"target {TARGET_SPEEDUP}x (dense stack included): {verdict}")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
