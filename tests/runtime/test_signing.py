"""``omama-run ... --trust PUBKEY``: a signed artifacts folder is verified before anything
reads it, and every way it can differ from what was signed is one refusal line.

The folder here is a stand-in (a few files signed with ``runtime.manifest.signing``): the
signature check runs first, so a refusal never reaches the models. The export's own
``--sign`` and a signed folder verifying end to end are in tests/export/test_artifact_trust.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("model_signing", reason="signing is the omama[signing] extra")

from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402

from runtime.cli import app  # noqa: E402
from runtime.clikit import run_app  # noqa: E402
from runtime.errors import OmamaError  # noqa: E402
from runtime.manifest.signing import SIGNATURE_NAME, sign_folder, verify_signature  # noqa: E402
from tests.signing_keys import write_key_pair  # noqa: E402


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys")
    return {name: write_key_pair(folder, name) for name in ("signer", "stranger")}


@pytest.fixture()
def signed(tmp_path, keys) -> Path:
    """A folder of three files, a golden/ subfolder, signed by ``signer``."""
    root = tmp_path / "artifacts"
    (root / "golden").mkdir(parents=True)
    (root / "manifest.json").write_text('{"format": "omama.artifacts"}')
    (root / "matcher.onnx").write_bytes(bytes(range(256)) * 8)
    (root / "golden" / "matcher.npz").write_bytes(b"golden" * 10)
    assert sign_folder(root, keys["signer"][0]) == root / SIGNATURE_NAME
    return root


def omama_run(argv: list[str], capsys) -> tuple[int, list[str]]:
    code = run_app(app, argv, prog_name="omama-run")
    return code, capsys.readouterr().err.strip().splitlines()


def test_a_signed_folder_verifies_with_the_lock_and_verify_reports_beside_it(signed, keys):
    verify_signature(signed, keys["signer"][1])
    # What omama-run writes into the folder after signing is not part of what was signed.
    (signed / ".omama.lock").write_text("")
    (signed / ".verify_onnxruntime_fp32.json.omama.lock").write_text("")
    (signed / "verify_onnxruntime_fp32.json").write_text("{}")
    verify_signature(signed, keys["signer"][1])


def _flip_a_byte(root: Path) -> None:
    data = bytearray((root / "matcher.onnx").read_bytes())
    data[100] ^= 0x01
    (root / "matcher.onnx").write_bytes(bytes(data))


def _forge_signed_list(root: Path) -> None:
    """Change a file and rewrite its digest in the signed statement (the DSSE payload)."""
    _flip_a_byte(root)
    signature = json.loads((root / SIGNATURE_NAME).read_text())
    envelope = signature["dsseEnvelope"]
    statement = json.loads(base64.b64decode(envelope["payload"]))
    digest = hashlib.sha256((root / "matcher.onnx").read_bytes()).hexdigest()
    for resource in statement["predicate"]["resources"]:
        if resource["name"] == "matcher.onnx":
            resource["digest"] = digest
    envelope["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    (root / SIGNATURE_NAME).write_text(json.dumps(signature))


def _garble_signature(root: Path) -> None:
    (root / SIGNATURE_NAME).write_text("not a signature")


CHANGES = {
    "tampered file": (_flip_a_byte, "changed since it was signed: changed matcher.onnx"),
    "added file": (
        lambda root: (root / "golden" / "extra.npz").write_bytes(b"x"),
        "changed since it was signed: added golden/extra.npz",
    ),
    "removed file": (
        lambda root: (root / "golden" / "matcher.npz").unlink(),
        "changed since it was signed: removed golden/matcher.npz",
    ),
    "missing signature": (
        lambda root: (root / SIGNATURE_NAME).unlink(),
        f"is not signed (no {SIGNATURE_NAME})",
    ),
    "forged signed list": (
        _forge_signed_list,
        f"{SIGNATURE_NAME} does not verify: the signed list of files was edited",
    ),
    "garbled signature": (_garble_signature, f"{SIGNATURE_NAME} does not verify"),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
@pytest.mark.parametrize("command", ["verify", "pair"])
def test_a_changed_signed_folder_is_refused_in_one_line(change, command, signed, keys, capsys):
    alter, expected = CHANGES[change]
    alter(signed)
    trust = ["--trust", str(keys["signer"][1])]
    if command == "verify":
        argv = ["verify", str(signed), *trust]
    else:  # images that do not exist: the signature is checked before anything is read
        argv = ["pair", "no_src.png", "no_dst.png", "--query", "no_query.png",
                "--artifacts", str(signed), *trust]  # fmt: skip
    code, err = omama_run(argv, capsys)
    assert code == 1
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err


def test_another_key_is_refused(signed, keys, capsys):
    code, err = omama_run(["verify", str(signed), "--trust", str(keys["stranger"][1])], capsys)
    assert code == 1
    assert err == [f"error: {signed} was not signed by the key of --trust {keys['stranger'][1]}"]


def test_trust_from_the_environment(signed, keys, capsys, monkeypatch):
    monkeypatch.setenv("OMAMA_TRUST", str(keys["stranger"][1]))
    code, err = omama_run(["verify", str(signed)], capsys)
    assert code == 1 and len(err) == 1 and "was not signed by the key" in err[0]


def test_keys_that_cannot_verify_are_named(signed, tmp_path, capsys):
    _, rsa_public = write_key_pair(
        tmp_path, "rsa", rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    code, err = omama_run(["verify", str(signed), "--trust", str(rsa_public)], capsys)
    assert code == 1 and len(err) == 1
    assert f"--trust {rsa_public} is not a usable key: not an elliptic-curve key" in err[0]
    code, err = omama_run(["verify", str(signed), "--trust", str(tmp_path / "none.pub")], capsys)
    assert (code, err) == (1, [f"error: --trust {tmp_path / 'none.pub'}: no such key file"])


def test_signing_without_the_extra_names_it(signed, keys, monkeypatch):
    monkeypatch.setitem(sys.modules, "model_signing", None)  # import fails as if absent
    with pytest.raises(OmamaError, match=r"pip install 'omama\[signing\]'"):
        verify_signature(signed, keys["signer"][1])
