"""What ``omama export`` returns: the written manifest, every verification record, and the
closing line the command prints."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from export.verify.int8 import AGREEMENT_INPUTS
from runtime.manifest import Manifest, VerificationRecord


@dataclass
class ExportResult:
    """The written manifest, every verification record, the engines line, and seconds per
    file and phase (``{"matcher.onnx": {"export_s": ..., "verify_s": ...}}``)."""

    manifest: Manifest
    records: list[VerificationRecord]
    engines_note: str
    timings: dict[str, dict[str, float]] = field(default_factory=dict)
    signature: Path | None = None  # model.sig with ``sign_key``

    def failures(self) -> list[str]:
        """One line per failed check (file, backend, output, metric, value, tolerance)."""
        return [line for record in self.records for line in record.failures()]

    def summary(self) -> str:
        """The closing line of ``omama export``: folder, files, size, verification, engines."""
        manifest, out = self.manifest, self.manifest.root
        total_mb = sum(ref.size_bytes for f in manifest.files for ref in f.file_refs()) / 1e6
        gated = sum(1 for record in self.records for check in record.checks if check.gated)
        verified = (
            f"verified ({gated} checks in {len(self.records)} records passed; "
            f"`omama-run verify {out}` re-checks them on another machine)"
            if manifest.verification.verified
            else "not verified (`omama-run verify` can check them)"
        )
        signed = f"; signed ({self.signature.name}, --trust verifies it)" if self.signature else ""
        return (
            f"artifacts: {out} ({len(manifest.files)} files, {total_mb:.1f} MB), {verified}; "
            f"{self.int8_note()}{self.engines_note}{signed}"
        )

    def int8_note(self) -> str:
        """``int8: N files, argmax agreement X% with fp32; `` with int8 files, else empty."""
        int8 = [f for f in self.manifest.files if f.precision == "int8" and f.format == "onnx"]
        if not int8:
            return ""
        gate = next((c for r in self.records if r.inputs == AGREEMENT_INPUTS for c in r.checks
                     if c.metric == "argmax agreement"), None)  # fmt: skip
        agreement = f", argmax agreement {100 * gate.value:.2f}% with fp32" if gate else ""
        return f"int8: {len(int8)} files{agreement}; "
