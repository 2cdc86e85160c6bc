"""Golden files at the real sizes: how big they are, and what ``omama-run verify`` costs.

Exports the official structure with random weights (DINOv2 ViT-B/14 reg at exo 532x952 /
ego 700x700, the official 38x68 / 50x50 matcher, the FastSAM-x architecture at 1024;
``--small``: the ``--random-init`` configuration) without the export's own parity checks
(``verify=False``: the golden files are written all the same), then runs
``runtime.verification.replay.verify_folder`` on ONNX Runtime CPU fp32, as ``omama-run
verify`` does on a target machine. Records each golden file's size and case count, the
verify time per model and whether it passed.

Usage: ``python -m benchmarks.bench_golden [--small] [--threads 2]``. Writes
``benchmarks/results/bench_golden.json`` (``bench_golden_small.json``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import RESULTS_DIR, load_average, machine_record, write_result


def run(small: bool, threads: int, workdir: Path) -> dict:
    import torch

    from benchmarks.bench_export import random_config
    from export.pipeline import export_artifacts
    from runtime.verification.replay import verify_folder

    torch.set_num_threads(threads)
    out = workdir / "artifacts"
    config = random_config(out, small, verify=False)
    start = time.perf_counter()
    result = export_artifacts(config, echo=lambda line: print(line, file=sys.stderr))
    export_s = time.perf_counter() - start
    manifest = result.manifest
    golden = manifest.verification.golden
    start = time.perf_counter()
    report = verify_folder(out, "onnxruntime", "cpu", "fp32", threads=threads)
    verify_s = time.perf_counter() - start
    models_mb = sum(ref.size_bytes for f in manifest.files for ref in f.file_refs()) / 1e6
    return {
        "config": "random-init (small)" if small else "official structure, random weights",
        "views": {role: view.to_dict() for role, view in manifest.views.items()},
        "fastsam_imgsz": manifest.fastsam.imgsz,
        "matcher_input": manifest.matcher.input,
        "golden": [
            {"file": g.path, "cases": g.cases, "size_mb": round(g.size_bytes / 1e6, 3)}
            for g in golden
        ],
        "golden_total_mb": round(sum(g.size_bytes for g in golden) / 1e6, 3),
        "model_files_mb": round(models_mb, 1),
        "golden_write_s": {
            k: v.get("export_s") for k, v in result.timings.items() if k.startswith("golden/")
        },
        "export_s_without_parity": round(export_s, 1),
        "verify": {
            "command": "verify_folder(backend='onnxruntime', device='cpu', precision='fp32')",
            "total_s": round(verify_s, 2),
            "passed": report.passed,
            "checks": [
                {
                    "file": r.file,
                    "output": c.output,
                    "metric": c.metric,
                    "value": c.value,
                    "tolerance": c.tolerance,
                    "passed": c.passed,
                }
                for r in report.records
                for c in r.checks
            ],
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="the --random-init configuration")
    parser.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime threads")
    args = parser.parse_args(argv)
    os.environ.setdefault("YOLO_OFFLINE", "1")
    load_at_start = load_average()
    with tempfile.TemporaryDirectory(prefix="omama-bench-golden-") as tmp:
        results = run(args.small, args.threads, Path(tmp))
    results["machine"] = machine_record(load_at_start, threads=args.threads)
    name = "bench_golden_small.json" if args.small else "bench_golden.json"
    out = write_result(RESULTS_DIR / name, results)
    print(
        f"golden files: {results['golden_total_mb']} MB for "
        f"{results['model_files_mb']} MB of models; omama-run verify (ORT CPU fp32): "
        f"{results['verify']['total_s']} s, passed: {results['verify']['passed']}"
    )
    print(f"written to {out}")
    return 0 if results["verify"]["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
