"""``omama bench`` flags: errors are one line, the module loads no torch."""

from __future__ import annotations

import subprocess
import sys

from tests.benchmarks.helpers import run_cli


def _one_error_line(code: int, stderr: str) -> str:
    assert code == 1
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


def test_bad_artifacts_folder_is_one_line(tmp_path, artifacts):
    missing = tmp_path / "nowhere"
    line = _one_error_line(
        *run_cli(["bench", "--artifacts", str(missing), "--out", str(tmp_path / "o")])[::2]
    )
    assert str(missing) in line
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "manifest.json").write_bytes((artifacts / "manifest.json").read_bytes())
    code, _, stderr = run_cli(["bench", "--artifacts", str(partial), "--out", str(tmp_path / "o")])
    line = _one_error_line(code, stderr)
    assert "does not match its manifest" in line and "backbone_exo.onnx is missing" in line


def test_bad_flags_are_one_line(tmp_path, artifacts):
    missing = tmp_path / "nowhere"
    line = _one_error_line(*run_cli(["bench", "--compare", str(missing), str(missing)])[::2])
    assert "not found" in line and str(missing) in line
    line = _one_error_line(*run_cli(["bench", "--backends", "onnx"])[::2])
    assert "--artifacts" in line
    art = ["bench", "--artifacts", str(artifacts), "--out", str(tmp_path / "o")]
    line = _one_error_line(*run_cli([*art, "--backends", "onnx"])[::2])
    assert "--backends must be among" in line
    line = _one_error_line(*run_cli([*art, "--candidate-source", "sam"])[::2])
    assert "--candidate-source must be one of" in line
    line = _one_error_line(*run_cli([*art, "--num-pairs", "0"])[::2])
    assert "--num-pairs must be at least 1" in line
    line = _one_error_line(*run_cli([*art, "--score-root", str(missing)])[::2])
    assert "--score-root" in line and str(missing) in line
    line = _one_error_line(*run_cli([*art, "--compare", str(missing), str(missing)])[::2])
    assert "takes no --artifacts" in line


def test_cli_module_loads_no_torch():
    code = (
        "import sys\n"
        "from runtime.clikit import new_app\n"
        "from typer.testing import CliRunner\n"
        "from benchmarks.cli import register\n"
        "app = new_app('t'); register(app)\n"
        "r = CliRunner().invoke(app, ['bench', '--help'])\n"
        "assert r.exit_code == 0 and 'Example:' in r.output, r.output\n"
        "assert '--weights-dir' in r.output and '--score-root' in r.output, r.output\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'ultralytics')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
