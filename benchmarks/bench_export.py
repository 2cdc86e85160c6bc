"""Export time and file sizes per model, and the two graph decisions of ``omama export``.

1. ``export``: ``export_artifacts`` on the official structure with random weights
   (DINOv2 ViT-B/14 reg at exo 532x952 / ego 700x700, the official 38x68 / 50x50 matcher,
   the FastSAM-x architecture at 1024), ``--fp16``: seconds to export and to verify each
   file, its size, node counts, the matcher input decision the export measured.
2. ``attention``: the matcher graph (weights input) exported with the ``standard`` and the
   ``folded`` cross-attention order: nodes, size, ONNX Runtime latency for (B, N) in
   (1, 1), (1, 64), (1, 256), (16, 64).
3. ``fastsam_nms``: ultralytics' in-graph NMS (``nms=True``) against NMS applied to the raw
   outputs with the same threshold and IoU (what the runtime does): agreement of the
   kept boxes and ONNX Runtime latency of both graphs.

Usage: ``python -m benchmarks.bench_export [--small] [--skip-export] [--threads 2]``.
``--small`` runs the ``--random-init`` configuration instead (ViT-S, reduced sizes,
YOLOv8n-seg). Writes ``benchmarks/results/bench_export.json`` (``bench_export_small.json``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import RESULTS_DIR, load_average, machine_record, write_result

ATTENTION_SHAPES = ((1, 1), (1, 64), (1, 256), (16, 64))


def machine_info(threads: int, load_at_start: list[float]) -> dict:
    import torch

    from export.manifest_writer import tool_versions
    from runtime.info import onnxruntime_providers

    record = machine_record(
        load_at_start,
        torch_threads=torch.get_num_threads(),
        onnxruntime_threads=threads,
        onnxruntime_providers=onnxruntime_providers(),
    )
    record["versions"] = tool_versions()  # the export's own record of its tools
    return record


def random_config(out: Path, small: bool, **overrides):
    """The export of the benchmarks: the official structure with random weights (ViT-B/14
    reg, 38x68 / 50x50 tokens, the FastSAM-x architecture), or ``--random-init``'s."""
    from export.config import ExportConfig

    official = dict(random_shapes="official", random_fastsam="x")
    return ExportConfig(out_dir=out, random_init=True, **({} if small else official), **overrides)


def run_export(out: Path, small: bool) -> dict:
    from export.pipeline import export_artifacts
    from runtime.jsonrecords import to_json

    config = random_config(out, small, fp16=True)
    start = time.perf_counter()
    result = export_artifacts(config, echo=lambda line: print(line, file=sys.stderr))
    total_s = time.perf_counter() - start
    manifest = result.manifest
    files = []
    for entry in manifest.files:
        timing = result.timings.get(entry.path, {})
        files.append(
            {
                "file": entry.path,
                "model": entry.model,
                "precision": entry.precision,
                "size_mb": round(sum(r.size_bytes for r in entry.file_refs()) / 1e6, 2),
                "nodes_exported": entry.graph.nodes_exported if entry.graph else None,
                "nodes_final": entry.graph.nodes_final if entry.graph else None,
                **timing,
            }
        )  # fmt: skip
    return {
        "config": "random-init (small)" if small else "official structure, random weights",
        "views": {role: view.to_dict() for role, view in manifest.views.items()},
        "total_s": round(total_s, 2),
        "files": files,
        "matcher_input_decision": to_json(manifest.matcher.input_decision),
        "verification_passed": manifest.verification.passed,
        "golden": {
            "files": {g.path: g.size_bytes for g in manifest.verification.golden},
            "total_mb": round(sum(g.size_bytes for g in manifest.verification.golden) / 1e6, 3),
        },
        "checks": [
            {
                "file": record.file,
                "backend": record.backend,
                "inputs": record.inputs,
                "output": c.output,
                "metric": c.metric,
                "value": c.value,
                "tolerance": c.tolerance,
                "gated": c.gated,
                "passed": c.passed,
                "detail": c.detail,
            }
            for record in manifest.verification.records
            for c in record.checks
        ],
        "engines": manifest.engines.note,
    }


def run_attention(workdir: Path, small: bool, threads: int) -> list[dict]:
    import numpy as np
    import torch

    from export.config import RANDOM_GRIDS
    from export.graphs import export_matcher, finalize_onnx, onnxruntime_cpu
    from omama_train.models.matcher import OFFICIAL_GRIDS, OMaMaMatcher
    from runtime.manifest import ViewSpec
    from runtime.timing import median_ms

    grids = RANDOM_GRIDS if small else OFFICIAL_GRIDS
    src = ViewSpec("exo", tuple(14 * g for g in grids["exo"]), grids["exo"])
    dst = ViewSpec("ego", tuple(14 * g for g in grids["ego"]), grids["ego"])
    rows = []
    for mode in ("standard", "folded"):
        torch.manual_seed(0)
        matcher = OMaMaMatcher("exo2ego", src.feat_grid, dst.feat_grid, attention=mode).eval()
        raw, final = workdir / f"attn_{mode}.raw.onnx", workdir / f"attn_{mode}.onnx"
        start = time.perf_counter()
        export_matcher(matcher, src, dst, "weights", raw, 17)
        graph = finalize_onnx(raw, final).record
        export_s = time.perf_counter() - start
        runner = onnxruntime_cpu(final, threads=threads)
        rng = np.random.default_rng(0)
        hs, ws = src.feat_grid
        hd, wd = dst.feat_grid
        latency = {}
        for batch, count in ATTENTION_SHAPES:
            feeds = {
                "src_feats": rng.standard_normal((1, 768, hs, ws), dtype=np.float32),
                "dst_feats": rng.standard_normal((1, 768, hd, wd), dtype=np.float32),
                "src_weights": rng.dirichlet(np.ones(hs * ws), (batch, 1, 2)).astype(np.float32),
                "dst_weights": rng.dirichlet(np.ones(hd * wd), (1, count, 2)).astype(np.float32),
            }
            latency[f"B{batch}_N{count}_ms"] = round(
                median_ms(lambda f=feeds, r=runner: r.infer(f), 5), 2
            )
        rows.append(
            {
                "attention": mode,
                "export_s": round(export_s, 2),
                "nodes": graph.nodes_final,
                "ops": sorted({n.op_type for n in __import__("onnx").load(final).graph.node}),
                "size_mb": round(final.stat().st_size / 1e6, 2),
                **latency,
            }
        )
        print(f"attention {rows[-1]}", file=sys.stderr)
    return rows


def run_fastsam_nms(workdir: Path, small: bool, threads: int) -> dict:
    """In-graph NMS vs NMS on raw outputs, same threshold and IoU, random weights.

    Random weights score every anchor low, so the threshold is the 100th best raw score;
    both graphs are exported with it (ultralytics bakes it into the NMS graph).
    """
    import numpy as np

    from export.fastsam import build_standin_fastsam, export_fastsam_onnx, quiet_ultralytics
    from export.graphs import onnxruntime_cpu
    from omama_train.models.fastsam import build_random_fastsam, load_fastsam
    from runtime.fastsam_post import kept_anchors
    from runtime.timing import median_ms

    imgsz, iou = (640 if small else 1024), 0.9
    weights = (
        build_standin_fastsam(workdir / "fs-n.pt")
        if small
        else build_random_fastsam(workdir / "fs-x.pt", "x")
    )
    raw_path, _ = export_fastsam_onnx(weights, workdir / "raw", imgsz)
    raw_runner = onnxruntime_cpu(raw_path, threads=threads)
    x = np.random.default_rng(0).random((1, 3, imgsz, imgsz), dtype=np.float32)
    raw = raw_runner.infer({"images": x})
    scores = raw["output0"][0, 4]
    conf = float(np.sort(scores)[-100]) - 1e-7
    nms_dir = workdir / "nms"
    nms_dir.mkdir()
    local = nms_dir / weights.name
    shutil.copy2(weights, local)
    with quiet_ultralytics():
        nms_path = load_fastsam(local).export(
            format="onnx", imgsz=imgsz, dynamic=False, simplify=True, nms=True, conf=conf,
            iou=iou, opset=17, device="cpu", verbose=False,
        )  # fmt: skip
    nms_runner = onnxruntime_cpu(Path(nms_path), threads=threads)
    in_graph = nms_runner.infer({"images": x})["output0"][0]  # (300, 4 + 1 + 1 + 32) xyxy
    kept_graph = in_graph[in_graph[:, 4] > 0]
    keep = kept_anchors(raw["output0"][0], 32, conf, iou, max_det=300)  # ultralytics' max_det
    xywh = raw["output0"][0, :4][:, keep].T  # (K, 4)
    xyxy = np.concatenate([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], 1)

    def matched(a: np.ndarray, b: np.ndarray) -> int:
        if not len(a) or not len(b):
            return 0
        dist = np.abs(a[:, None, :4] - b[None, :, :4]).max(-1)
        return int((dist.min(1) < 0.5).sum())

    both = matched(kept_graph, xyxy)
    union = len(kept_graph) + len(xyxy) - both
    return {
        "imgsz": imgsz,
        "conf": conf,
        "iou": iou,
        "kept_in_graph": int(len(kept_graph)),
        "kept_runtime_style": int(len(xyxy)),
        "box_agreement": round(both / union, 4) if union else 1.0,
        "raw_graph_ms": round(median_ms(lambda: raw_runner.infer({"images": x}), 3), 1),
        "nms_graph_ms": round(median_ms(lambda: nms_runner.infer({"images": x}), 3), 1),
        "raw_output0_shape": list(raw["output0"].shape),
        "nms_output0_shape": [1, *in_graph.shape],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="the --random-init configuration")
    parser.add_argument("--skip-export", action="store_true")
    parser.add_argument("--skip-nms", action="store_true")
    parser.add_argument("--threads", type=int, default=2, help="torch and ORT threads")
    args = parser.parse_args(argv)
    os.environ.setdefault("YOLO_OFFLINE", "1")
    load_at_start = load_average()

    import torch

    name = "bench_export_small" if args.small else "bench_export"
    report: dict = {"benchmark": name}
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        workdir = Path(tmp)
        if not args.skip_export:
            report["export"] = run_export(workdir / "artifacts", args.small)
            # ultralytics resets torch's threads on import: set them after it loaded.
        torch.set_num_threads(args.threads)
        report["attention"] = run_attention(workdir, args.small, args.threads)
        if not args.skip_nms:
            report["fastsam_nms"] = run_fastsam_nms(workdir, args.small, args.threads)
        torch.set_num_threads(args.threads)
        report["machine"] = machine_info(args.threads, load_at_start)
    out = write_result(RESULTS_DIR / f"{name}.json", report)

    if "export" in report:
        export = report["export"]
        print(f"export ({export['config']}): {export['total_s']:.1f} s in total")
        print(f"{'file':28s} {'MB':>8s} {'export s':>9s} {'verify s':>9s} {'nodes':>12s}")
        for row in export["files"]:
            nodes = f"{row['nodes_exported'] or '-'}->{row['nodes_final'] or '-'}"
            # The matcher is exported in both input forms and timed before one is kept.
            export_s = sum(v for k, v in row.items() if k.startswith(("export", "decide")))
            print(
                f"{row['file']:28s} {row['size_mb']:8.1f} {export_s:9.1f} "
                f"{row.get('verify_s', 0):9.1f} {nodes:>12s}"
            )
        decision = export["matcher_input_decision"]
        print(
            f"matcher input: {decision['chosen']} (N={decision['candidates']}: weights "
            f"{decision['weights_ms']} ms, masks {decision['masks_ms']} ms)"
        )
    for row in report["attention"]:
        shapes = ", ".join(f"{k[:-3]} {v} ms" for k, v in row.items() if k.endswith("_ms"))
        print(f"attention {row['attention']:8s}: {row['nodes']} nodes, {shapes}")
    if "fastsam_nms" in report:
        nms = report["fastsam_nms"]
        print(
            f"FastSAM NMS in graph: {nms['kept_in_graph']} boxes vs {nms['kept_runtime_style']} "
            f"(agreement {nms['box_agreement']}), {nms['nms_graph_ms']} ms vs raw "
            f"{nms['raw_graph_ms']} ms"
        )
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
