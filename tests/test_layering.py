"""The folder tree is the architecture: imports only go downwards, runtime/ stays torch-free."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAYERS = ["runtime", "omama_train", "export", "benchmarks"]  # lowest first
HEAVY = ("torch", "ultralytics", "timm", "torchvision")


def _python_files(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


def _imported_top_levels(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("layer_index", range(len(LAYERS)))
def test_no_layer_imports_a_higher_one(layer_index):
    layer, higher = LAYERS[layer_index], set(LAYERS[layer_index + 1 :])
    offenders = {
        str(p.relative_to(REPO)): sorted(_imported_top_levels(p) & higher)
        for p in _python_files(layer)
        if _imported_top_levels(p) & higher
    }
    assert not offenders, f"{layer}/ imports a higher layer: {offenders}"


def test_runtime_never_mentions_torch_imports():
    offenders = {
        str(p.relative_to(REPO)): sorted(_imported_top_levels(p) & set(HEAVY))
        for p in _python_files("runtime")
        if _imported_top_levels(p) & set(HEAVY)
    }
    assert not offenders, f"runtime/ imports heavy libraries: {offenders}"


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    ).stdout
    return set(json.loads(out.strip().splitlines()[-1]))


def test_importing_every_runtime_module_loads_no_torch():
    modules = [
        "runtime." + ".".join(p.relative_to(REPO / "runtime").with_suffix("").parts)
        for p in _python_files("runtime")
        if p.name != "__init__.py"
    ]
    loaded = _modules_after("\n".join(f"import {m}" for m in ["runtime", *modules]))
    heavy = sorted(m for m in loaded if m.split(".")[0] in HEAVY)
    assert not heavy, f"importing runtime loaded {heavy[:5]}"


def test_omama_help_loads_no_torch():
    loaded = _modules_after(
        "from omama_train.cli import build_app\n"
        "from typer.testing import CliRunner\n"
        "r = CliRunner().invoke(build_app(), ['--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        "for sub in ('data', 'eval'):\n"
        "    assert sub in r.output, r.output\n"
    )
    heavy = sorted(m for m in loaded if m.split(".")[0] in HEAVY)
    assert not heavy, f"`omama --help` imported {heavy[:5]}"


# One engine path: only the runtime/sessions/ package may construct what runs a model file.
SESSION_MAKERS = frozenset(
    {
        "InferenceSession",  # onnxruntime
        "SessionFromOnnx",
        "session_from_onnx",
        "OnnxrtRunner",  # polygraphy runners
        "TrtRunner",
        "PluginRefRunner",
        "Runtime",  # tensorrt.Runtime
        "deserialize_cuda_engine",
        "create_execution_context",
        "EngineFromBytes",
        "engine_from_bytes",
        "EngineFromPath",
        "engine_from_path",
        "EngineFromNetwork",
        "engine_from_network",
        "Core",  # openvino
        "read_model",
        "compile_model",
        "CompiledModel",
        "create_infer_request",
        "AsyncInferQueue",
    }
)
# Libraries whose only use is running models: imported by runtime/sessions/ alone.
MODEL_RUNNERS = ("openvino",)
SESSION_OWNER = "runtime/sessions/"  # a folder: every module in it


def session_makers_in(source: str) -> list[str]:
    """Names of model-running constructors a module's source uses (imports, calls, attribute
    access), by parsing it: ``['InferenceSession (line 3)', ...]``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            names = [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.Attribute):
            names = [(node.attr, node.lineno)]
        elif isinstance(node, ast.Name):
            names = [(node.id, node.lineno)]
        else:
            continue
        found += [f"{name} (line {line})" for name, line in names if name in SESSION_MAKERS]
    return sorted(set(found))


def test_the_session_check_catches_each_way_of_constructing_a_session():
    assert session_makers_in("import onnxruntime as ort\nort.InferenceSession('m.onnx')\n") == [
        "InferenceSession (line 2)"
    ]
    assert session_makers_in("from polygraphy.backend.trt import TrtRunner, EngineFromBytes\n")
    assert session_makers_in("engine = runtime.deserialize_cuda_engine(data)\n")
    assert session_makers_in("import openvino as ov\nov.Core().compile_model('m.onnx')\n") == [
        "Core (line 2)",
        "compile_model (line 2)",
    ]
    assert session_makers_in("from runtime.sessions import OrtSession\nOrtSession(p)\n") == []


def test_only_runtime_sessions_constructs_sessions():
    offenders = {}
    for package in (*LAYERS, "scripts"):
        for path in _python_files(package):
            rel = path.relative_to(REPO).as_posix()
            if rel.startswith(SESSION_OWNER):
                continue
            found = session_makers_in(path.read_text(encoding="utf-8"))
            if found:
                offenders[rel] = found
    assert not offenders, f"open models through runtime.sessions, not directly: {offenders}"
    owner = {
        path.name: session_makers_in(path.read_text(encoding="utf-8"))
        for path in _python_files(SESSION_OWNER)
    }
    assert any(name.startswith("InferenceSession") for name in owner["ort.py"])
    assert any(name.startswith("TrtRunner") for name in owner["trt.py"])
    assert any(name.startswith("compile_model") for name in owner["openvino.py"])


def test_only_runtime_sessions_imports_openvino():
    offenders = {
        rel: sorted(found)
        for package in (*LAYERS, "scripts")
        for path in _python_files(package)
        if not (rel := path.relative_to(REPO).as_posix()).startswith(SESSION_OWNER)
        and (found := _imported_top_levels(path) & set(MODEL_RUNNERS))
    }
    assert not offenders, f"run OpenVINO through runtime.sessions: {offenders}"
    assert "openvino" in _imported_top_levels(REPO / SESSION_OWNER / "openvino.py")
