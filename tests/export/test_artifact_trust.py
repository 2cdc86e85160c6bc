"""An artifacts folder vouches for itself: each ONNX file records the manifest's facts, the
runtime refuses a manifest that disagrees with its files, and ``omama export --sign`` /
``omama-run --trust`` cover what consistency cannot (see docs/runtime.md)."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil

import onnx
import pytest

from export.graphs import io_specs
from omama_train.models.backbones import BACKBONES
from runtime.cli import app as omama_run_app
from runtime.clikit import new_app, run_app
from runtime.errors import OmamaError
from runtime.manifest import MANIFEST_NAME, check_artifacts, file_facts, sha256_file
from runtime.manifest.onnx_header import read_onnx_header
from tests.export.helpers import GRIDS, SMALL, run_cli

pytest.importorskip("model_signing", reason="signing is the omama[signing] extra")
from tests.signing_keys import write_key_pair  # noqa: E402

VERIFY_ON_CPU = ["--backend", "onnxruntime", "--device", "cpu"]


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    """``omama export --random-init --sign KEY`` (exo2ego, no FastSAM, --no-verify): exit
    status, stdout, stderr, folder, public key."""
    from export.cli import register

    base = tmp_path_factory.mktemp("signed")
    private, public = write_key_pair(base, "signer")
    out = base / "artifacts"
    cli = new_app("test")
    register(cli)
    argv = ["export", "--random-init", "--out", str(out), "--no-fastsam-export", "--no-verify",
            "--sign", str(private)]  # fmt: skip
    stdout, stderr = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(BACKBONES, "dinov2_vits14_reg", SMALL)  # small, as tests/export/conftest.py
        mp.setattr("export.config.RANDOM_GRIDS", dict(GRIDS))
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = run_app(cli, argv)
    return code, stdout.getvalue(), stderr.getvalue(), out, public


def omama_run(argv: list[str], capsys) -> tuple[int, str, list[str]]:
    code = run_app(omama_run_app, argv, prog_name="omama-run")
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip().splitlines()


def copy_of(folder, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy, ignore=shutil.ignore_patterns("model.sig", "verify_*.json"))
    return copy


def edit_manifest(folder, change) -> None:
    path = folder / MANIFEST_NAME
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=2))


def rehash(folder, name: str) -> None:
    """Record ``name``'s current sha256 and size in the manifest (as a careless tool would)."""

    def change(data):
        for entry in data["files"]:
            if entry["path"] == name:
                entry["sha256"] = sha256_file(folder / name)
                entry["size_bytes"] = (folder / name).stat().st_size

    edit_manifest(folder, change)


def strip_facts(folder, name: str) -> None:
    """``name`` as an export before the facts wrote it: no omama.* metadata."""
    model = onnx.load(str(folder / name), load_external_data=False)
    kept = [(p.key, p.value) for p in model.metadata_props if not p.key.startswith("omama.")]
    del model.metadata_props[:]
    for key, value in kept:
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(folder / name))
    rehash(folder, name)


def test_each_onnx_file_records_the_manifest_facts(ego2exo):
    out = ego2exo[3]
    manifest = check_artifacts(out)
    onnx_files = [entry for entry in manifest.files if entry.format == "onnx"]
    assert [e.path for e in onnx_files] == [
        "backbone_ego.onnx",
        "backbone_exo.onnx",
        "matcher.onnx",
    ]
    for entry in onnx_files:
        model = onnx.load(str(out / entry.path), load_external_data=False)
        metadata = {p.key: p.value for p in model.metadata_props}
        assert metadata == file_facts(manifest, entry)
        assert metadata["omama.direction"] == '"ego2exo"'
        assert metadata["omama.random_init"] == "true"
        assert metadata["omama.descriptor.context_px"] == "100"
        assert metadata["omama.views.src.image_size"] == "[70, 70]"  # ego: 5x5 tokens of 14 px
        assert metadata["omama.schema_version"] == "3"
        assert metadata["omama.file.model"] == json.dumps(entry.model)
        assert metadata["omama.file.precision"] == '"fp32"'
        # The runtime's reader (no onnx package) reads the same facts and shapes.
        header = read_onnx_header(out / entry.path)
        assert header.metadata == metadata
        assert (list(header.inputs), list(header.outputs)) == io_specs(out / entry.path)


EDITS = {
    "direction": (lambda d: d.update(direction="exo2ego"), '"exo2ego"', '"ego2exo"'),
    "random_init": (lambda d: d.update(random_init=False), "false", "true"),
    "descriptor.context_px": (lambda d: d["descriptor"].update(context_px=50), "50", "100"),
}


@pytest.mark.parametrize("field", sorted(EDITS))
def test_an_edited_manifest_is_refused_in_one_line(field, ego2exo, tmp_path, capsys):
    change, edited, exported = EDITS[field]
    copy = copy_of(ego2exo[3], tmp_path)
    edit_manifest(copy, change)
    code, _, err = omama_run(["verify", str(copy), *VERIFY_ON_CPU], capsys)
    assert code == 1 and len(err) == 1, err
    assert f"{field}: manifest.json says {edited}, all 3 ONNX files say {exported}" in err[0]
    assert err[0].startswith(f"error: artifacts folder {copy}: manifest.json does not match")


def test_a_file_from_another_export_is_refused(ego2exo, signed, tmp_path, capsys):
    copy = copy_of(ego2exo[3], tmp_path)
    # backbone_ego.onnx of the exo2ego export: same sizes and weights, other direction.
    shutil.copy(signed[3] / "backbone_ego.onnx", copy / "backbone_ego.onnx")
    rehash(copy, "backbone_ego.onnx")
    code, _, err = omama_run(["verify", str(copy), *VERIFY_ON_CPU], capsys)
    assert code == 1 and len(err) == 1, err
    assert 'direction: manifest.json says "ego2exo", backbone_ego.onnx says "exo2ego"' in err[0]


def test_folders_without_facts_warn_and_are_checked_against_their_graphs(ego2exo, tmp_path, caplog):
    copy = copy_of(ego2exo[3], tmp_path)
    strip_facts(copy, "matcher.onnx")
    with pytest.raises(OmamaError, match="matcher.onnx carries no omama metadata while the other"):
        check_artifacts(copy)
    for name in ("backbone_ego.onnx", "backbone_exo.onnx"):
        strip_facts(copy, name)
    with caplog.at_level(logging.WARNING):
        assert check_artifacts(copy).direction == "ego2exo"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "cannot be cross-checked" in warnings[0]
    # Sizes are still checked against the graphs' own input shapes.
    edit_manifest(copy, lambda d: d["views"]["dst"].update(image_size=[60, 60]))
    with pytest.raises(OmamaError) as refused:
        check_artifacts(copy)
    assert (
        "views.dst.image_size: manifest.json implies image (?, 3, 60, 60), backbone_exo.onnx "
        "has image (batch, 3, 56, 84) float32" in str(refused.value)
    )


def test_a_signed_export_verifies_end_to_end_and_an_edit_is_refused(signed, tmp_path, capsys):
    code, stdout, stderr, out, public = signed
    assert code == 0, stderr
    assert (out / "model.sig").is_file()
    assert "signed (model.sig, --trust verifies it)" in stdout.strip().splitlines()[-1]
    code, stdout, err = omama_run(
        ["verify", str(out), "--trust", str(public), *VERIFY_ON_CPU], capsys
    )
    assert code == 0, err
    assert stdout.strip().splitlines()[-1].startswith("verified: 3 files")
    # The verify report it just wrote is not part of what was signed; an edit is.
    assert list(out.glob("verify_*.json"))
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    edit_manifest(copy, lambda d: d.update(direction="ego2exo"))
    code, _, err = omama_run(["verify", str(copy), "--trust", str(public)], capsys)
    assert code == 1
    assert err == [
        f"error: {copy} changed since it was signed: changed manifest.json (re-export, or get "
        "the folder again from its source)"
    ]


def test_an_unusable_signing_key_stops_the_export_before_it_starts(tmp_path, capsys):
    from cryptography.hazmat.primitives.asymmetric import rsa

    private, _ = write_key_pair(
        tmp_path, "rsa", rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    out = tmp_path / "artifacts"
    code, _, err = run_cli(["export", "--random-init", "--out", str(out), "--sign", str(private)],
                           capsys)  # fmt: skip
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"--sign {private} is not a usable key: not an elliptic" in lines[0]
    assert not (out / MANIFEST_NAME).exists()


def test_an_export_into_a_signed_folder_drops_the_old_signature(tmp_path):
    from export.folder import clear_previous

    (tmp_path / "model.sig").write_text("{}")  # it would vouch for the previous files
    clear_previous(tmp_path)
    assert not (tmp_path / "model.sig").exists()
