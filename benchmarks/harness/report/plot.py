"""latency.png: the mean stage latencies of each row, stacked."""

from __future__ import annotations

import os
from pathlib import Path

from benchmarks.harness.report.tables import STAGE_TITLES, ok_rows, stage_mean
from benchmarks.harness.stats import END_TO_END
from runtime.atomic import atomic_path
from runtime.pipeline import STAGES

COLOURS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3")


def plot_latency(report: dict, path: str | os.PathLike) -> Path | None:
    """Stacked bars of the mean stage latencies per row; None (and nothing written) when
    matplotlib is missing or no row ran."""
    good = ok_rows(report)
    if not good:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    labels = [r["label"] for r in good]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.4 * len(good) + 3.0), 4.8), dpi=120)
    bottoms = [0.0] * len(good)
    for stage, colour in zip(STAGES, COLOURS, strict=True):
        values = [stage_mean(r, stage) or 0.0 for r in good]
        ax.bar(labels, values, bottom=bottoms, label=STAGE_TITLES[stage], color=colour)
        bottoms = [b + v for b, v in zip(bottoms, values, strict=True)]
    for i, row in enumerate(good):
        e2e = stage_mean(row, END_TO_END)
        ax.annotate(
            f"{e2e:,.1f} ms",
            (i, bottoms[i]),
            ha="center",
            va="bottom",
            fontsize=8,
            xytext=(0, 2),
            textcoords="offset points",
        )
    config = report["config"]
    ax.set_ylabel("mean latency per frame pair (ms)")
    ax.set_title(
        f"omama bench: {config['objects_per_frame']} objects per pair on {config['device']}"
        + (" (random weights)" if report["artifacts"]["random_init"] else "")
    )
    ax.tick_params(axis="x", labelrotation=20)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_ylim(0, max(bottoms) * 1.12 or 1.0)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)
