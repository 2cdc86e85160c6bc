"""Run precisions in :func:`plan_artifacts`: which backend offers which (one-line refusals
naming the backend that does), what ``--backend auto`` picks on a CPU per precision (the
``CPU_AUTO`` table), and what reaches the OpenVINO session (its arithmetic).

A manifest here is only what planning reads (its files' formats and precisions), and
OpenVINO's availability and bf16 support are set per test, so these run with or without
openvino installed."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.errors import OmamaError
from runtime.manifest import (
    ArtifactFile,
    BackboneRecord,
    DescriptorSpec,
    EnginesRecord,
    FastSAMSpec,
    InputDecision,
    Manifest,
    MatcherSpec,
    PreprocessSpec,
    ToolsRecord,
    VerificationSection,
    ViewSpec,
    WeightsRecord,
)
from runtime.sessions import artifacts, plan_artifacts, registry
from runtime.sessions.artifacts import PRECISION_CHOICES
from runtime.sessions.openvino import NOT_INSTALLED, OpenVinoSession

MODELS = ("backbone_exo", "backbone_ego", "matcher")


def _manifest(*precisions: str, engines: tuple[str, ...] = (), models=MODELS) -> Manifest:
    """A manifest whose files are ``models`` at each ONNX precision and engine precision
    (planning reads only the files and the models' roles)."""
    random = WeightsRecord(random=True, seed=0)

    def file(model: str, fmt: str, precision: str) -> ArtifactFile:
        return ArtifactFile(f"{model}.{precision}.{fmt}", model, fmt, precision, "0", 0, (), ())

    files = [file(m, "onnx", p) for p in precisions for m in MODELS]
    files += [file(m, "tensorrt", p) for p in engines for m in models]
    return Manifest(
        direction="exo2ego",
        random_init=True,
        views={"src": ViewSpec("exo", (28, 28), (2, 2)), "dst": ViewSpec("ego", (28, 28), (2, 2))},
        preprocess=PreprocessSpec(14, (0.5, 0.5, 0.5), (0.2, 0.2, 0.2)),
        descriptor=DescriptorSpec(reduction=4, context_px=100, feature_dim=8, descriptor_dim=16),
        matcher=MatcherSpec(
            "weights", InputDecision("weights", "given"), "folded", 8, 1, (2, 2), (2, 2), random
        ),  # fmt: skip
        fastsam=FastSAMSpec(included=False),
        backbone=BackboneRecord("dinov2_vitb14_reg", "dinov2", 768, 768, random),
        files=files,
        tools=ToolsRecord({}, 17, "torch.onnx.export"),
        engines=EnginesRecord(built=bool(engines), note=""),
        verification=VerificationSection(verified=True, seed=0, records=()),
        root=Path("art"),
    )


@pytest.fixture()
def openvino_here(fresh_registry, monkeypatch):
    """OpenVINO installed, on a CPU with bfloat16 units."""
    registry.register_backend("openvino", OpenVinoSession, lambda device: None)
    monkeypatch.setattr(artifacts, "bf16_unsupported", lambda: None)


@pytest.fixture()
def no_openvino(fresh_registry):
    registry.register_backend("openvino", OpenVinoSession, lambda device: NOT_INSTALLED)


def test_precision_choices_are_auto_and_the_run_precisions():
    assert PRECISION_CHOICES == ("auto", "fp32", "fp16", "bf16", "int8")
    with pytest.raises(OmamaError, match="precision must be one of auto, fp32, fp16, bf16, int8"):
        plan_artifacts(_manifest("fp32"), "onnxruntime", "cpu", "fp8")


@pytest.mark.parametrize(
    ("backend", "device", "precision", "message"),
    [
        ("onnxruntime", "cpu", "bf16", "backend onnxruntime does not run bf16: use --backend "
         "openvino (bfloat16 arithmetic on the fp32 files, on CPUs with AVX-512 BF16 or AMX)"),
        ("tensorrt", "cuda", "bf16", "backend tensorrt does not run bf16: use --backend openvino"),
        ("torch", "cpu", "bf16", "the torch backend is the fp32 reference: use --precision fp32"),
        ("torch", "cpu", "int8", "the torch backend is the fp32 reference: use --precision fp32"),
        ("openvino", "cpu", "fp16", "backend openvino does not run fp16: use --backend "
         "onnxruntime or tensorrt (fp16 files are for GPUs; on the CPU use bf16 or int8)"),
    ],
)  # fmt: skip
def test_a_backend_refuses_a_precision_it_does_not_offer(backend, device, precision, message):
    # Refused before anything is looked up: TensorRT and a GPU need not be here.
    with pytest.raises(OmamaError) as err:
        plan_artifacts(_manifest("fp32", "fp16", "int8"), backend, device, precision)
    assert str(err.value).startswith(message)


@pytest.mark.usefixtures("openvino_here")
@pytest.mark.parametrize(
    ("precision", "backend", "run", "arithmetic"),
    [
        ("auto", "openvino", "fp32", "f32"),  # auto precision never changes the answers
        ("fp32", "openvino", "fp32", "f32"),
        ("fp16", "onnxruntime", "fp16", None),
        ("bf16", "openvino", "bf16", "bf16"),
        ("int8", "openvino", "int8", "f32"),  # int8 kernels; the float rest in f32
    ],
)
def test_auto_on_the_cpu_follows_the_table(precision, backend, run, arithmetic):
    plan = plan_artifacts(_manifest("fp32", "fp16", "int8"), "auto", "cpu", precision)
    assert (plan.backend, plan.device, plan.precision, plan.file_format) == (
        backend, "cpu", run, "onnx"
    )  # fmt: skip
    assert plan.choice.options.get("inference_precision") == arithmetic
    assert f"{backend} runs {run} on the CPU" in plan.choice.reason


@pytest.mark.usefixtures("openvino_here")
def test_the_cpu_table_is_the_one_place_that_decides(monkeypatch):
    monkeypatch.setitem(registry.CPU_AUTO, "fp32", ("onnxruntime", "openvino"))
    plan = plan_artifacts(_manifest("fp32"), "auto", "cpu", "fp32")
    assert plan.backend == "onnxruntime" and plan.choice.options == {}


@pytest.mark.usefixtures("openvino_here")
def test_named_openvino_gets_its_arithmetic_and_the_cpu():
    for precision, arithmetic in (("fp32", "f32"), ("auto", "f32"), ("bf16", "bf16")):
        plan = plan_artifacts(_manifest("fp32"), "openvino", "auto", precision)
        assert plan.device == "cpu" and plan.precision in ("fp32", "bf16")
        assert plan.choice.options == {"inference_precision": arithmetic}


@pytest.mark.usefixtures("no_openvino")
def test_without_openvino_int8_runs_on_onnxruntime_and_bf16_says_what_to_install():
    plan = plan_artifacts(_manifest("fp32", "int8"), "auto", "cpu", "int8")
    assert (plan.backend, plan.precision) == ("onnxruntime", "int8")
    assert plan.choice.options == {}
    with pytest.raises(OmamaError) as err:
        plan_artifacts(_manifest("fp32"), "auto", "cpu", "bf16")
    assert str(err.value) == (
        "no backend can run bf16 on the CPU: bf16 runs on openvino (openvino not installed "
        "(pip install 'omama[openvino]'))"
    )


@pytest.mark.usefixtures("openvino_here")
def test_bf16_refused_on_a_cpu_without_bfloat16_units(monkeypatch):
    monkeypatch.setattr(artifacts, "bf16_unsupported", lambda: "this CPU (Old) has no bf16")
    for backend in ("auto", "openvino"):
        with pytest.raises(OmamaError) as err:
            plan_artifacts(_manifest("fp32"), backend, "cpu", "bf16")
        assert str(err.value) == "--precision bf16: this CPU (Old) has no bf16"
    assert plan_artifacts(_manifest("fp32"), "openvino", "cpu", "fp32").precision == "fp32"


@pytest.mark.usefixtures("openvino_here")
def test_bf16_on_a_gpu_is_refused_with_the_way_out():
    with pytest.raises(OmamaError, match=r"bf16 runs on the CPU \(the openvino backend\): use "
                       "--device cpu"):  # fmt: skip
        plan_artifacts(_manifest("fp32"), "auto", "cuda", "bf16")


@pytest.mark.usefixtures("openvino_here")
@pytest.mark.parametrize("backend", ["auto", "openvino", "onnxruntime"])
def test_int8_without_int8_files_names_the_export_flag(backend):
    with pytest.raises(OmamaError) as err:
        plan_artifacts(_manifest("fp32", "fp16"), backend, "cpu", "int8")
    assert str(err.value) == (
        "--precision int8: the artifacts in art hold no int8 ONNX files: export them with "
        "`omama export --int8`"
    )


def test_auto_picks_int8_engines_only_when_the_folder_has_them(monkeypatch, fresh_registry):
    monkeypatch.setattr(registry, "trt_unavailable", lambda device: None)
    monkeypatch.setattr(registry, "ort_unavailable", lambda device: None)
    monkeypatch.setattr(registry, "_resolve_device", lambda backend, device: device)
    plan = plan_artifacts(_manifest("fp32", "int8", engines=("int8",)), "auto", "cuda", "int8")
    assert (plan.backend, plan.file_format, plan.precision) == ("tensorrt", "tensorrt", "int8")
    plan = plan_artifacts(_manifest("fp32", "int8", engines=("fp16",)), "auto", "cuda", "int8")
    assert (plan.backend, plan.file_format, plan.precision) == ("onnxruntime", "onnx", "int8")
    plan = plan_artifacts(_manifest("fp32", engines=("fp16",)), "auto", "cuda")
    assert (plan.backend, plan.precision) == ("tensorrt", "fp16")


@pytest.fixture()
def trt_and_gpu(monkeypatch, fresh_registry):
    monkeypatch.setattr(registry, "trt_unavailable", lambda device: None)
    monkeypatch.setattr(registry, "ort_unavailable", lambda device: None)
    monkeypatch.setattr(registry, "_resolve_device", lambda backend, device: device)


@pytest.mark.usefixtures("trt_and_gpu")
def test_auto_needs_an_engine_for_every_model_at_the_run_precision():
    # --int8 builds fp32 engines only for the models it kept in float (the matcher).
    partial = _manifest("fp32", "int8", engines=("int8",), models=("matcher",))
    partial.files.append(ArtifactFile("m.engine", "matcher", "tensorrt", "fp32", "0", 0, (), ()))
    plan = plan_artifacts(partial, "auto", "cuda", "fp32")
    assert (plan.backend, plan.file_format, plan.precision) == ("onnxruntime", "onnx", "fp32")
    assert plan.choice.reason.startswith(
        "the artifacts hold no fp32 TensorRT engine for backbone_exo; "
    )
    # int8 engines but no fp16 ones: auto (fp16 on TensorRT) runs ONNX Runtime fp32.
    plan = plan_artifacts(_manifest("fp32", "int8", engines=("int8",)), "auto", "cuda", "auto")
    assert (plan.backend, plan.precision) == ("onnxruntime", "fp32")
    assert "no fp16 TensorRT engine for backbone_exo" in plan.choice.reason
    # The matcher kept in float: its fp32 engine completes an int8 run's set.
    int8 = _manifest("fp32", "int8", engines=("int8",), models=MODELS[:2])
    int8.files.append(ArtifactFile("m.engine", "matcher", "tensorrt", "fp32", "0", 0, (), ()))
    plan = plan_artifacts(int8, "auto", "cuda", "int8")
    assert (plan.backend, plan.precision) == ("tensorrt", "int8")
    plan = plan_artifacts(_manifest("fp32", "fp16", engines=("fp16",)), "auto", "cuda", "auto")
    assert (plan.backend, plan.precision) == ("tensorrt", "fp16")
