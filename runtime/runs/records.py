"""What every run writes and counts: the output file names, and the skips it reports."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

RESULTS_NAME = "results.json"
SUMMARY_NAME = "summary.json"
SKIPS_LISTED = 100  # skipped items kept by name in a summary; the rest are counted


class Skips:
    """Counted, partly listed, reasons why something was not predicted.

    The first five are logged as warnings; all are counted, the first
    :data:`SKIPS_LISTED` kept by name for the summary.
    """

    def __init__(self, listed: list | None = None, count: int = 0) -> None:
        self.listed = list(listed or [])
        self.count = count

    @classmethod
    def from_json(cls, record: dict | None) -> Skips:
        """Skips as :meth:`to_json` wrote them (None: none yet)."""
        record = record or {"count": 0, "listed": []}
        return cls(record["listed"], record["count"])

    def to_json(self) -> dict:
        return {"count": self.count, "listed": self.listed}

    def add(self, **item) -> None:
        self.count += 1
        if len(self.listed) < SKIPS_LISTED:
            self.listed.append(item)
        if self.count <= 5:
            log.warning("skipped: %s", ", ".join(f"{k} {v}" for k, v in item.items()))
        elif self.count == 6:
            log.warning("further skips are counted in the summary")
