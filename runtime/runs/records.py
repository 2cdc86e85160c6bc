"""What every run writes and counts: the output file names, the skips it reports, and the
one line it stops with when an output cannot be written."""

from __future__ import annotations

import errno
import logging
import os

from runtime.errors import OmamaError

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


def write_failure(exc: BaseException, name: str, out_dir: str | os.PathLike) -> OmamaError:
    """The one line a run stops with when writing ``name`` in ``out_dir`` failed with ``exc``:
    what filled up and what to do, from the first OS error in its chain (a full disk reaches
    us as PyAV's or Python's OSError, often wrapped in an OmamaError)."""
    seen, os_error, cause = set(), None, exc
    while cause is not None and id(cause) not in seen and os_error is None:
        seen.add(id(cause))
        os_error = cause if isinstance(cause, OSError) and cause.errno else None
        cause = cause.__cause__ or cause.__context__
    if os_error is None:
        return exc if isinstance(exc, OmamaError) else OmamaError(f"writing {name} failed: {exc}")
    reason = f"{os_error.strerror or os_error}"
    where = f"{name} in {out_dir} ({reason})"
    if os_error.errno in (errno.ENOSPC, errno.EDQUOT):
        return OmamaError(
            f"disk full while writing {where}; free space, then run again with --resume"
        )
    if os_error.errno == errno.EFBIG:
        return OmamaError(
            f"file size limit reached while writing {where}; raise the limit (ulimit -f) or "
            "give another --out, then run again with --resume"
        )
    return OmamaError(f"cannot write {where}; fix that and run again with --resume")
