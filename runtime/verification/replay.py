"""``omama-run verify``: the golden files through the sessions ``omama-run`` uses, on the target.

Users export on a workstation and run elsewhere (a robot, a Jetson, a server with another
GPU or another TensorRT / ONNX Runtime). :func:`verify_folder` checks the folder's files
against the manifest, opens every model the way :class:`runtime.pipeline.Pipeline` opens
it (:func:`runtime.sessions.plan_artifacts`, :func:`runtime.sessions.open_artifact`),
runs each golden case, compares the outputs with the stored torch fp32 records under the
manifest's tolerances (:mod:`runtime.verification.compare`) and writes
``verify_<backend>_<precision>.json`` beside the manifest. The export runs the same
:func:`replay_model` on its own files, so the manifest's records and this file's mean the
same thing. An int8 run also gets the pipeline agreement of the int8 files with the fp32
ones on the golden files (:func:`runtime.verification.agreement.golden_agreement`).

:func:`missing_verification` tells the pipeline when the backend / precision / device it is
about to run has no passing record in the folder.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime import __version__ as omama_version
from runtime.atomic import write_json
from runtime.errors import OmamaError
from runtime.info import cpu_model, package_version
from runtime.jsonrecords import from_json, read_json_object, to_json
from runtime.manifest import (
    MANIFEST_NAME,
    Manifest,
    NmsSettings,
    VerificationRecord,
    check_artifacts,
    sha256_file,
)
from runtime.sessions import ArtifactPlan, Session, gpu_name, open_artifact, plan_artifacts
from runtime.verification.compare import (
    MatcherResult,
    compare_backbone,
    compare_fastsam,
    compare_matcher,
    model_kind,
)
from runtime.verification.golden import GoldenCase, read_golden

log = logging.getLogger(__name__)

VERIFY_FORMAT = "omama.verify"
VERIFY_VERSION = 1
GOLDEN_INPUTS = "golden"
_WARNED: set[tuple] = set()


def verify_file_name(backend: str, precision: str) -> str:
    return f"verify_{backend}_{precision}.json"


def device_class(device: str) -> str:
    """``cuda:1`` -> ``cuda``; ``cpu`` -> ``cpu``."""
    return device.split(":", 1)[0]


# ----------------------------------------------------------------------------- one model


def compare_outputs(
    manifest: Manifest,
    model: str,
    cases: Sequence[GoldenCase],
    outputs: Sequence[dict[str, np.ndarray]],
    precision: str,
    what: str,
) -> list:
    """The checks of ``model``'s outputs on ``cases`` against the cases' reference records,
    under the manifest's tolerances for ``precision``."""
    tolerances = manifest.verification.tolerances.get(precision)
    if not tolerances:
        raise OmamaError(f"the manifest records no {precision} tolerances (re-export)")
    kind = model_kind(model)
    if kind == "backbone":
        pairs = [(c.reference, _output(o, "feats")) for c, o in zip(cases, outputs, strict=True)]
        return compare_backbone(pairs, precision, tolerances, what)
    if kind == "matcher":
        results = [
            MatcherResult(
                c.reference["similarities"],
                _output(o, "similarities"),
                agreement=bool(c.info.get("agreement", True)),
            )  # fmt: skip
            for c, o in zip(cases, outputs, strict=True)
        ]
        return compare_matcher(results, precision, tolerances, what)
    fastsam = manifest.fastsam
    settings = NmsSettings(fastsam.conf, fastsam.iou, fastsam.max_det)
    pairs = [(c.reference, o) for c, o in zip(cases, outputs, strict=True)]
    # Rows of kept detections (NMS in the graph) or raw anchors: the torch backend runs the
    # network without the NMS wrapper, whatever the file holds.
    coeffs = int(fastsam.mask_coefficients)
    in_graph = np.asarray(outputs[0]["output0"]).shape[-1] == 6 + coeffs
    return compare_fastsam(pairs, settings, in_graph, precision, tolerances, what)


def _output(outputs: dict[str, np.ndarray], name: str) -> np.ndarray:
    if name in outputs:
        return outputs[name]
    if len(outputs) == 1:
        return next(iter(outputs.values()))
    raise OmamaError(f"the session returned no output {name!r} (it has {', '.join(outputs)})")


def session_record(
    session: Session,
    file: str,
    model: str,
    precision: str,
    inputs: str,
    tolerances: dict[str, float],
    checks: list,
) -> VerificationRecord:
    """A :class:`VerificationRecord` of ``checks`` measured on ``session``."""
    device = str(session.device)
    return VerificationRecord(
        file=file,
        model=model,
        backend=session.backend,
        device=device,
        providers=tuple(getattr(session, "providers", ()) or (session.backend,)),
        precision=precision,
        inputs=inputs,
        tolerances=dict(tolerances),
        checks=tuple(checks),
        gpu=gpu_name(device) if device.startswith("cuda") else None,
    )


def replay_model(
    session: Session, manifest: Manifest, file: str, model: str, precision: str
) -> VerificationRecord:
    """Run ``model``'s golden cases through ``session`` and compare with their records."""
    golden = manifest.golden_of(model)
    if golden is None:
        raise OmamaError(
            f"the artifacts in {manifest.root} hold no golden file for {model} (exported "
            "with --no-verify): re-export to verify them on this machine"
        )
    _, cases = read_golden(manifest.path_of(golden))
    outputs = [session.infer(case.feeds()) for case in cases]
    what = f"{len(cases)} golden case{'s' if len(cases) != 1 else ''}"
    checks = compare_outputs(manifest, model, cases, outputs, precision, what)
    tolerances = manifest.verification.tolerances[precision]
    return session_record(session, file, model, precision, GOLDEN_INPUTS, tolerances, checks)


# ----------------------------------------------------------------------------- a folder


@dataclass
class VerifyReport:
    """What :func:`verify_folder` measured and where it wrote it."""

    plan: ArtifactPlan
    records: list[VerificationRecord]
    path: Path

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.records)

    def failures(self) -> list[str]:
        return [line for r in self.records for line in r.failures()]


def verify_folder(
    artifacts: str | os.PathLike,
    backend: str = "auto",
    device: str = "auto",
    precision: str = "auto",
    threads: int | None = None,
    weights_dirs: Sequence[str | os.PathLike] = (),
    echo: Callable[[str], None] = lambda line: None,
) -> VerifyReport:
    """Verify every model of ``artifacts`` on this machine (see the module docstring).

    Writes ``verify_<backend>_<precision>.json`` (atomically) whether or not the checks
    pass; the caller decides the exit status from :attr:`VerifyReport.passed`.
    """
    manifest = check_artifacts(artifacts)
    plan = plan_artifacts(manifest, backend, device, precision)
    echo(f"verifying {manifest.root} on {plan.backend} {plan.device} {plan.precision}")
    records = []
    for model in manifest.role_models().values():
        entry = manifest.run_file(model, plan.file_format, plan.precision)
        with open_artifact(plan.choice, manifest, entry, threads, weights_dirs) as session:
            records.append(replay_model(session, manifest, entry.path, model, plan.precision))
        echo(f"  {entry.path}: {'ok' if records[-1].passed else 'FAILED'}")
    if plan.precision == "int8":  # quantized files: do they still pick what fp32 picks?
        from runtime.verification.agreement import golden_agreement

        records.append(golden_agreement(manifest, plan, threads, weights_dirs))
        echo(f"  int8 pipeline vs fp32: {'ok' if records[-1].passed else 'FAILED'}")
    path = Path(manifest.root) / verify_file_name(plan.backend, plan.precision)
    write_json(path, _verify_document(manifest, plan, records), indent=2)
    return VerifyReport(plan, records, path)


def _verify_document(
    manifest: Manifest, plan: ArtifactPlan, records: list[VerificationRecord]
) -> dict:
    return {
        "format": VERIFY_FORMAT,
        "version": VERIFY_VERSION,
        "manifest_sha256": sha256_file(Path(manifest.root) / MANIFEST_NAME),
        "created_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "backend": plan.backend,
        "device": plan.device,
        "precision": plan.precision,
        "passed": all(r.passed for r in records),
        "machine": {
            "host": platform.node(),
            "cpu": cpu_model(),
            "versions": {
                name: package_version(name)
                for name in ("onnxruntime", "onnxruntime-gpu", "tensorrt", "polygraphy", "numpy")
            }
            | {"omama": omama_version},
        },
        "records": to_json(records),
    }


def folder_records(manifest: Manifest) -> list[VerificationRecord]:
    """Every verification record of the folder: the export's (in the manifest) and those of
    ``verify_*.json`` files written for this very manifest (others are stale: ignored)."""
    records = list(manifest.verification.records)
    root = Path(manifest.root) if manifest.root is not None else None
    if root is None:
        return records
    digest = None
    for path in sorted(root.glob("verify_*.json")):
        try:
            data = read_json_object(path, "verification file")
            if not isinstance(data, dict) or data.get("format") != VERIFY_FORMAT:
                continue
            digest = digest or sha256_file(root / MANIFEST_NAME)
            if data.get("manifest_sha256") != digest:
                continue
            records += [from_json(VerificationRecord, r, str(path)) for r in data["records"]]
        except (OmamaError, KeyError, TypeError) as exc:
            log.warning("ignoring %s: %s", path.name, exc)
    return records


def missing_verification(
    manifest: Manifest, plan: ArtifactPlan, files: Sequence[str]
) -> str | None:
    """None when every file in ``files`` has a passing record for the plan's backend,
    precision and device (and GPU, on cuda); else which files lack one."""
    device = device_class(plan.device)
    gpu = gpu_name(plan.device) if device == "cuda" else None
    passing = {
        r.file
        for r in folder_records(manifest)
        if r.passed
        and r.backend == plan.backend
        and r.precision == plan.precision
        and device_class(r.device) == device
        and (gpu is None or r.gpu in (None, gpu))
    }
    lacking = [f for f in files if f not in passing]
    if not lacking:
        return None
    return ", ".join(lacking)


def warn_if_unverified(manifest: Manifest, plan: ArtifactPlan, files: Sequence[str]) -> None:
    """Log one warning per folder and plan when :func:`missing_verification` finds files
    without a passing record, with the command that creates one."""
    key = (str(manifest.root), plan.backend, plan.precision, plan.device)
    if key in _WARNED:
        return
    lacking = missing_verification(manifest, plan, files)
    if lacking is None:
        return
    _WARNED.add(key)
    log.warning(
        "no passing verification of %s on %s %s (%s) in %s: run `omama-run verify %s "
        "--backend %s --device %s --precision %s` to check these files on this machine",
        lacking,
        plan.backend,
        plan.device,
        plan.precision,
        manifest.root,
        manifest.root,
        plan.backend,
        plan.device,
        plan.precision,
    )
