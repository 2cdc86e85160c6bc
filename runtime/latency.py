"""Per-stage latencies of pipeline calls, summarised as p50 / p90 / mean (ms)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile of ``values`` (0 for none)."""
    return float(np.percentile(np.asarray(values, np.float64), q)) if len(values) else 0.0


class LatencyLog:
    """Per-stage latencies (ms) of every call, for p50 / p90 summaries.

    Arguments:
        stages: the stage names a record holds (``"total"`` is added); a stage missing from
            a record counts 0.
    """

    def __init__(self, stages: Sequence[str]) -> None:
        self.samples: dict[str, list[float]] = {s: [] for s in (*stages, "total")}

    def add(self, record: dict[str, float]) -> None:
        for stage, values in self.samples.items():
            values.append(float(record.get(stage, 0.0)))

    def __len__(self) -> int:
        return len(self.samples["total"])

    def summary(self) -> dict[str, dict[str, float]]:
        """``{stage: {"p50_ms", "p90_ms", "mean_ms"}}`` over the calls so far."""
        return {
            stage: {
                "p50_ms": round(percentile(v, 50), 3),
                "p90_ms": round(percentile(v, 90), 3),
                "mean_ms": round(float(np.mean(v)) if v else 0.0, 3),
            }
            for stage, v in self.samples.items()
        }


def format_latency(summary: dict[str, dict[str, float]]) -> str:
    """One line per stage: ``stage  p50  p90`` (ms)."""
    lines = [f"  {'stage':<14} {'p50 ms':>10} {'p90 ms':>10}"]
    for stage, stats in summary.items():
        lines.append(f"  {stage:<14} {stats['p50_ms']:>10.1f} {stats['p90_ms']:>10.1f}")
    return "\n".join(lines)
