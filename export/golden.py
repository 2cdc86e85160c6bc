"""The export's golden files (``golden/<model>.npz``) and their replay.

Golden inputs at the real sizes with the torch backend's fp32 records
(``runtime.verification.golden``), written once per model; the export then replays them
on every file as ``omama-run verify`` does, and on the torch backend rebuilt from the
manifest and the weights files (proving the rebuild gives the exported numbers).
"""

from __future__ import annotations

from pathlib import Path

from export.config import ExportConfig
from export.models import ExportModels
from export.tensorrt import PROFILE_CANDIDATES
from runtime.manifest import ArtifactFile, GoldenFile, Manifest, NmsSettings, file_ref
from runtime.sessions import (
    ArtifactPlan,
    BackendChoice,
    Session,
    backend_status,
    plan_artifacts,
    select_backend,
)
from runtime.verification import golden as golden_io
from runtime.verification.compare import model_kind, reference_record


def golden_cases(
    model: str, models: ExportModels, matcher_form: str, config: ExportConfig
) -> list[golden_io.GoldenCase]:
    """The golden inputs of ``model`` (``backbone_<kind>``, ``matcher`` of input
    ``matcher_form``, ``fastsam``), without their reference records yet."""
    kind = model_kind(model)
    if kind == "matcher":
        src, dst = models.views["src"], models.views["dst"]
        return golden_io.matcher_cases(
            matcher_form,
            (src.image_size, src.feat_grid),
            (dst.image_size, dst.feat_grid),
            models.matcher.dim,
            config.seed,
            max_candidates=PROFILE_CANDIDATES[2],
        )
    if kind == "fastsam":
        return golden_io.fastsam_cases(config.fastsam_imgsz, config.seed)
    view = next(v for v in models.views.values() if model == f"backbone_{v.kind}")
    return golden_io.backbone_cases(view.image_size, config.seed)


def write_golden_file(
    out: Path,
    model: str,
    cases: list[golden_io.GoldenCase],
    reference: Session,
    settings: NmsSettings,
) -> GoldenFile:
    """Fill each case's reference record from ``reference`` (the torch backend's session of
    ``model``), write ``out/golden/<model>.npz`` and return its manifest entry.
    ``settings``: FastSAM's NMS, which its reference records apply."""
    kind = model_kind(model)
    for case in cases:
        outputs = reference.infer(case.feeds())
        case.reference = reference_record(kind, outputs, case.info, settings)
    path = f"{golden_io.GOLDEN_DIR}/{model}.npz"
    golden_io.write_golden(out / path, model, kind, cases)
    ref = file_ref(out, path)
    return GoldenFile(model, path, ref.sha256, ref.size_bytes, len(cases))


def replay_runs(manifest: Manifest) -> list[tuple[BackendChoice, ArtifactFile]]:
    """(backend, file) pairs the golden files are replayed on: every file on its own backend
    (TensorRT on CUDA, ONNX on ONNX Runtime CPU), every fp32 ONNX file on torch CPU, and
    every int8 ONNX file on OpenVINO CPU too when OpenVINO is installed (the CPU backend
    ``--backend auto`` picks for int8 there)."""
    runs = [
        (
            select_backend(
                "tensorrt" if e.format == "tensorrt" else "onnxruntime",
                "cuda" if e.format == "tensorrt" else "cpu",
            ),
            e,
        )  # fmt: skip
        for e in manifest.files
    ]
    torch_choice = select_backend("torch", "cpu")
    runs += [(torch_choice, e) for e in manifest.files if e.format == "onnx"
             and e.precision == "fp32"]  # fmt: skip
    int8 = [e for e in manifest.files if e.format == "onnx" and e.precision == "int8"]
    if int8 and backend_status("cpu").get("openvino") is None:
        openvino = select_backend("openvino", "cpu")
        runs += [(openvino, e) for e in int8]
    return runs


def int8_plans(manifest: Manifest) -> list[ArtifactPlan]:
    """The int8 runs whose pipeline agreement the export records on the golden files (what
    ``omama-run verify --precision int8`` checks): ONNX Runtime CPU, and OpenVINO CPU when
    installed; none without int8 files."""
    if not any(e.precision == "int8" and e.format == "onnx" for e in manifest.files):
        return []
    backends = ["onnxruntime"] + (["openvino"] if backend_status("cpu").get("openvino")
                                  is None else [])  # fmt: skip
    return [plan_artifacts(manifest, backend, "cpu", "int8") for backend in backends]


def weights_dirs(config: ExportConfig) -> list[Path]:
    """The folders of the weights files, where the torch backend finds them again."""
    return [
        Path(p).parent
        for p in (config.backbone_weights, config.matcher_weights, config.fastsam_weights)
        if p is not None
    ]
