"""``omama bench``: the top-level command of the benchmarks layer (entry point ``bench``).

Nothing heavy is imported at module level (the harness and torch load inside the command;
torch only in the worker processes of the torch rows), so ``omama --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path

import typer

from runtime.errors import OmamaError


def register(app: typer.Typer) -> None:
    """Add the top-level ``omama bench`` command to ``app``."""

    @app.command("bench")
    def bench_command(
        artifacts: Path | None = typer.Option(
            None, "--artifacts", "-a", help="Artifacts folder written by `omama export`."
        ),
        backends: str = typer.Option(
            "torch,onnxruntime,tensorrt",
            "--backends",
            help="Comma-separated backends to measure: torch, onnxruntime, tensorrt.",
        ),
        precisions: str = typer.Option(
            "fp32,fp16", "--precisions", help="Comma-separated precisions: fp32, fp16."
        ),
        device: str = typer.Option(
            "auto", "--device", help="cpu, cuda or auto (cuda when an NVIDIA GPU is visible)."
        ),
        pairs: int = typer.Option(10, "--pairs", help="Synthetic frame pairs per pass."),
        objects: int = typer.Option(
            4, "--objects-per-frame", "-k", help="Query objects per frame pair (K)."
        ),
        repeats: int = typer.Option(3, "--repeats", help="Timed passes over the pairs."),
        reference_repeats: int = typer.Option(
            1, "--reference-repeats", help="Timed passes of the (slow) reference row."
        ),
        warmup: int = typer.Option(2, "--warmup", help="Untimed calls before timing, per row."),
        threads: int | None = typer.Option(
            None, "--threads", help="Intra-op threads per row (default: each backend's own)."
        ),
        out: Path = typer.Option(
            Path("bench"), "--out", "-o", help="Folder for report.md, report.json, latency.png."
        ),
        reference: bool = typer.Option(
            True,
            "--reference/--no-reference",
            help="Also time the O-MaMa reference shape (per-object loop, torch).",
        ),
        candidates: str = typer.Option(
            "auto",
            "--candidates",
            help="Destination candidates of the timed runs: fastsam (the exported FastSAM), "
            "synthetic (fixed masks), or auto (FastSAM when the artifacts hold it).",
        ),
        fastsam_conf: float | None = typer.Option(
            None,
            "--fastsam-conf",
            help="FastSAM confidence threshold (default: the manifest's; random-init "
            "artifacts: 0.01, since random weights score below 0.013).",
        ),
        gt: Path | None = typer.Option(
            None,
            "--gt",
            help="Processed root with GT (omama data prepare, e.g. of synthetic takes): adds "
            "the official IoU per backend.",
        ),
        gt_split: str | None = typer.Option(
            None, "--gt-split", help="Split of --gt to run (default: test if present, else all)."
        ),
        gt_frames: int = typer.Option(10, "--gt-frames", help="Frames per take with --gt."),
        weights: list[Path] = typer.Option(
            [],
            "--weights",
            metavar="<path>",
            help="Folder with the original weights (torch rows); repeatable.",
        ),
        seed: int = typer.Option(0, "--seed", help="Seed of the synthetic inputs."),
        timeout_s: float = typer.Option(
            3600.0, "--timeout-s", help="Give up on a row after this many seconds."
        ),
        compare: tuple[Path, Path] | None = typer.Option(
            None,
            "--compare",
            metavar="<a.json> <b.json>",
            help="Print the ratios between two report.json files (A then B) and exit.",
        ),
    ) -> None:
        """Benchmark PyTorch vs ONNX Runtime vs TensorRT on an artifacts folder.

        For every backend x precision (unavailable ones get a row with the reason), after
        warm-up: latency per stage (preprocess, FastSAM, backbone src/dst, descriptors,
        pooling + matcher, postprocess) and end to end (mean, p50, p90, p99), pairs/s and
        object-matches/s, peak host and device memory, fidelity vs the torch fp32 reference
        on the same inputs, and with --gt the official IoU. Includes the O-MaMa reference
        shape as a baseline row. Each row runs in its own process. Writes report.md,
        report.json and latency.png to --out and prints the summary table.

        Example: omama bench --artifacts artifacts --backends torch,onnxruntime --device cpu
        --pairs 10 --out bench_cpu

        Example: omama bench --compare bench_cpu/report.json bench_gpu/report.json
        """
        from benchmarks import report as report_mod

        if compare is not None:
            if artifacts is not None:
                raise OmamaError("--compare reads two reports; it takes no --artifacts")
            comparison = report_mod.compare_reports(
                report_mod.load_report(compare[0]), report_mod.load_report(compare[1])
            )
            typer.echo(report_mod.format_comparison(comparison))
            return
        if artifacts is None:
            raise OmamaError(
                "give --artifacts DIR (an `omama export` folder) to benchmark, or --compare "
                "A/report.json B/report.json"
            )
        from benchmarks.harness import (
            BACKEND_CHOICES,
            PRECISION_CHOICES,
            BenchConfig,
            parse_list,
            run_bench,
        )

        config = BenchConfig(
            artifacts=artifacts,
            out_dir=out,
            backends=parse_list(backends, BACKEND_CHOICES, "--backends"),
            precisions=parse_list(precisions, PRECISION_CHOICES, "--precisions"),
            device=device,
            pairs=pairs,
            objects=objects,
            repeats=repeats,
            reference_repeats=reference_repeats,
            warmup=warmup,
            threads=threads,
            seed=seed,
            candidates=candidates,
            fastsam_conf=fastsam_conf,
            reference=reference,
            gt_root=gt,
            gt_split=gt_split,
            gt_frames=gt_frames,
            weights_dirs=list(weights),
            timeout_s=timeout_s,
        )
        report = run_bench(config)
        paths = report_mod.write_reports(report, out)
        typer.echo(report_mod.format_summary(report))
        written = [str(p) for p in (paths["md"], paths["json"], paths["png"]) if p is not None]
        typer.echo(f"report: {', '.join(written)}")
        if not report_mod.ok_rows(report):
            raise OmamaError(
                f"no row could be measured (see {paths['md']}): "
                + "; ".join(f"{r['label']}: {r.get('reason')}" for r in report["rows"])
            )
