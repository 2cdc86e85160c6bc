"""CLI conventions: one-line errors with a non-zero exit, --verbose tracebacks, info."""

from __future__ import annotations

import json
import subprocess
import sys

import typer

from runtime.clikit import new_app, run_app
from runtime.errors import OmamaError


def _app_that_fails(exc: Exception) -> typer.Typer:
    app = new_app("test app")

    @app.command("boom")
    def boom() -> None:
        """Fail."""
        raise exc

    return app


def test_project_error_is_one_line_and_exit_1(capsys):
    code = run_app(_app_that_fails(OmamaError("the file x.json is missing")), ["boom"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.strip() == "error: the file x.json is missing"


def test_verbose_adds_the_traceback(capsys):
    code = run_app(_app_that_fails(OmamaError("bad input")), ["boom", "--verbose"])
    err = capsys.readouterr().err
    assert code == 1
    assert "Traceback" in err and err.strip().endswith("error: bad input")


def test_unexpected_exception_is_still_one_line(capsys):
    code = run_app(_app_that_fails(ValueError("odd")), ["boom"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(err) == 1 and err[0].startswith("error: ValueError: odd")


def test_usage_error_exits_2(capsys):
    assert run_app(_app_that_fails(OmamaError("x")), ["nope"]) == 2


def test_omama_info_json_lists_versions_and_backends():
    out = subprocess.run(
        [sys.executable, "-c", "from omama_train.cli import main; main()", "info", "--json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    info = json.loads(out)
    for name in ("omama", "torch", "onnx", "onnxruntime", "tensorrt", "ultralytics"):
        assert name in info["versions"]
    assert info["versions"]["omama"]
    assert set(info["backends"]) >= {"torch", "onnxruntime", "tensorrt"}
    assert info["backends"]["onnxruntime"]["usable"]
    assert "CPUExecutionProvider" in info["onnxruntime_providers"]
    assert isinstance(info["torch_cuda_devices"], list)


def test_omama_run_info_needs_no_torch():
    code = (
        "import sys\nfrom runtime.cli import main\nsys.argv=['omama-run','info','--json']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_multi_line_project_error_is_one_line_with_detail_behind_verbose(capsys):
    message = "cannot read w.pt as a PyTorch weights file: Weights only load failed.\n\n" + (
        "Please file an issue with the following so that we can make weights_only=True "
        "compatible with your use case.\n\tUnsupported global: GLOBAL argparse.Namespace"
    )
    assert run_app(_app_that_fails(OmamaError(message)), ["boom"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "error: cannot read w.pt as a PyTorch weights file: Weights only load failed. "
        "(2 more lines: run again with --verbose)"
    ]
    assert run_app(_app_that_fails(OmamaError(message)), ["boom", "--verbose"]) == 1
    err = capsys.readouterr().err
    assert "Unsupported global: GLOBAL argparse.Namespace" in err.split("Traceback")[-1]


def test_multi_line_unexpected_error_is_one_line(capsys):
    error = RuntimeError("Error(s) in loading state_dict:\n\tMissing key(s): a, b.\n\tUnexpected")
    assert run_app(_app_that_fails(error), ["boom"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("error: RuntimeError: Error(s) in loading state_dict:")
    assert "--verbose" in err[0]
