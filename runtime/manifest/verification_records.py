"""The verification records of ``manifest.json``: what the export (and ``omama-run verify``)
measured per model file, backend, device and precision, and the golden files it replays.

Re-exported by :mod:`runtime.manifest.records` and :mod:`runtime.manifest`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class CheckRecord:
    """One verified number of one output: ``value`` against ``tolerance`` (``<=`` for
    errors, ``>=`` for agreements). ``value`` None is NaN (a broken output: fails).
    ``gated`` False: reported, never fails."""

    output: str
    metric: str
    value: float | None
    tolerance: float
    higher_is_better: bool = False
    gated: bool = True
    detail: str = ""

    @property
    def passed(self) -> bool:
        if not self.gated:
            return True
        if self.value is None or math.isnan(self.value):
            return False
        return (
            self.value >= self.tolerance
            if self.higher_is_better
            else (self.value <= self.tolerance)
        )


@dataclass(frozen=True)
class VerificationRecord:
    """One model file run on one backend, device and precision, and what was measured.

    ``inputs`` says which inputs: ``golden`` (the folder's golden files, as
    ``omama-run verify`` runs them) or ``export parity`` (the export's larger random sets).
    ``device``: ``cpu`` / ``cuda`` / ``cuda:N``; ``providers``: the execution providers or
    the library that ran it; ``gpu``: the GPU's name on cuda. ``tolerances``: the
    precision's tolerances the checks used.
    """

    file: str
    model: str
    backend: str
    device: str
    providers: tuple[str, ...]
    precision: str
    inputs: str
    tolerances: dict[str, float]
    checks: tuple[CheckRecord, ...]
    gpu: str | None = None

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def failures(self) -> list[str]:
        """One line per failed check: file, backend, output, metric, value, tolerance."""
        return [describe_check(self, c) for c in self.checks if not c.passed]


@dataclass(frozen=True)
class GoldenFile:
    """``golden/<model>.npz``: ``cases`` inputs at the real sizes and the torch fp32
    outputs of ``model`` (stored compactly, see ``runtime.verification.golden``)."""

    model: str
    path: str
    sha256: str
    size_bytes: int
    cases: int


@dataclass(frozen=True)
class VerificationSection:
    """The export's verification: ``verified`` False means ``--no-verify``. ``seed`` seeded
    random weights and every check input; ``tolerances`` per precision; ``records`` one
    per file and input set; ``golden`` the files ``omama-run verify`` replays."""

    verified: bool
    seed: int
    passed: bool = True
    failures: tuple[str, ...] = ()
    tolerances: dict[str, dict[str, float]] = field(default_factory=dict)
    parity_sets: int = 0
    records: tuple[VerificationRecord, ...] = ()
    golden: tuple[GoldenFile, ...] = ()


def describe_check(record: VerificationRecord, check: CheckRecord) -> str:
    """``file [backend device] output 'x': metric value (needs <= tolerance)``."""
    op = ">=" if check.higher_is_better else "<="
    return (
        f"{record.file} [{record.backend} {record.device}] output {check.output!r}: "
        f"{check.metric} {format_value(check.value, check.higher_is_better)} (needs {op} "
        f"{format_value(check.tolerance, check.higher_is_better)})"
    )


def format_value(value: float | None, percent: bool) -> str:
    if value is None or math.isnan(value):
        return "nan"
    return f"{100 * value:.2f}%" if percent else f"{value:.2e}"
