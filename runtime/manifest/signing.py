"""Signing an artifacts folder, and verifying it before any model is opened.

The cross-check of :mod:`runtime.manifest.facts` proves a folder consistent, not authentic:
whoever can write the folder can rewrite a manifest and the files' metadata together. For
artifacts shipped between machines, ``omama export --sign KEY`` signs the finished folder
with OpenSSF's ``model-signing`` (elliptic-curve key pair, offline: a Sigstore bundle with
no transparency log) and ``omama-run ... --trust PUBKEY`` verifies it first: every file
of the folder is hashed (sha256) and compared with the signed list, so a changed, added or
removed file, a missing or broken signature and another key are all refused in one line.

Left out of what is signed: the signature itself (:data:`SIGNATURE_NAME`), the lock files
of ``runtime.locks``, and the ``verify_*.json`` reports that ``omama-run verify`` writes on
the target (they only decide whether a run warns that its files were not verified there).

``model-signing`` is the ``signing`` extra (``pip install 'omama[signing]'``): sigstore's
dependency tree is too heavy for the lean runtime that does not sign.
"""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

from runtime.atomic import atomic_path
from runtime.errors import OmamaError
from runtime.locks import LOCK_NAME

SIGNATURE_NAME = "model.sig"
REPORTS_GLOB = "verify_*.json"  # runtime.verification.replay's reports
EXTRA = "pip install 'omama[signing]'"


def _library():
    """``(hashing, signing, verifying)`` of model-signing; OmamaError naming the extra."""
    try:
        from model_signing import hashing, signing, verifying
    except ImportError as exc:
        raise OmamaError(
            f"signing and --trust need OpenSSF's model-signing ({EXTRA}): {exc}"
        ) from exc
    return hashing, signing, verifying


def _hashing_config(hashing, root: Path, *also: str):
    """sha256 of every file of ``root`` except the signature, the locks (``runtime.locks``),
    the reports and ``also``."""
    present = [*root.glob(REPORTS_GLOB), *root.glob(f"*{LOCK_NAME}")]
    ignored = sorted({SIGNATURE_NAME, LOCK_NAME, *also, *(p.name for p in present)})
    return (
        hashing.Config()
        .use_file_serialization(hashing_algorithm="sha256")
        .set_ignored_paths(paths=ignored, ignore_git_paths=False)
    )


def _key_file(path: str | os.PathLike, flag: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise OmamaError(f"{flag} {path}: no such key file")
    return path


def _key_error(flag: str, path: Path, exc: Exception) -> OmamaError:
    # model-signing reads ``key.curve`` of any key: an RSA key fails with AttributeError.
    reason = "not an elliptic-curve key" if isinstance(exc, AttributeError) else _first_line(exc)
    return OmamaError(
        f"{flag} {path} is not a usable key: {reason} (model-signing takes unencrypted PEM "
        "elliptic-curve keys on P-256, P-384 or P-521, e.g. `openssl ecparam -name prime256v1 "
        "-genkey -noout -out key.pem` and `openssl ec -in key.pem -pubout -out key.pub`)"
    )


def signer(private_key: str | os.PathLike):
    """model-signing's signing configuration for the PEM elliptic-curve private key at
    ``private_key``; OmamaError naming the problem (``omama export`` asks before exporting)."""
    _, signing, _ = _library()
    path = _key_file(private_key, "--sign")
    try:
        return signing.Config().use_elliptic_key_signer(private_key=path)
    except (ValueError, TypeError, AttributeError) as exc:
        raise _key_error("--sign", path, exc) from exc


def sign_folder(root: str | os.PathLike, private_key: str | os.PathLike) -> Path:
    """Sign every file of ``root`` with ``private_key``; returns ``root/model.sig``."""
    hashing, _, _ = _library()
    root = Path(root)
    config = signer(private_key)
    signature = root / SIGNATURE_NAME
    signature.unlink(missing_ok=True)
    try:
        with atomic_path(signature) as tmp:  # written beside it, so never signs itself
            config.set_hashing_config(_hashing_config(hashing, root, tmp.name)).sign(root, tmp)
    except ValueError as exc:
        raise OmamaError(f"cannot sign {root}: {_first_line(exc)}") from exc
    return signature


def verify_signature(root: str | os.PathLike, public_key: str | os.PathLike) -> None:
    """Refuse ``root`` unless ``root/model.sig`` is a valid signature by ``public_key``'s
    private key of exactly the files it holds now; one OmamaError line saying why."""
    hashing, _, verifying = _library()
    root, key = Path(root), _key_file(public_key, "--trust")
    try:
        config = verifying.Config().use_elliptic_key_verifier(public_key=key)
    except (ValueError, TypeError, AttributeError) as exc:
        raise _key_error("--trust", key, exc) from exc
    if not root.is_dir():
        raise OmamaError(f"artifacts folder not found: {root}")
    signature = root / SIGNATURE_NAME
    if not signature.is_file():
        raise OmamaError(
            f"{root} is not signed (no {SIGNATURE_NAME}); --trust accepts only a folder "
            "signed with `omama export --sign KEY`"
        )
    try:
        config.set_hashing_config(_hashing_config(hashing, root)).verify(root, signature)
    except Exception as exc:  # noqa: BLE001 - any failure means: not verified
        raise OmamaError(_refusal(root, key, exc)) from exc


def _refusal(root: Path, key: Path, exc: Exception) -> str:
    message = _first_line(exc)
    if message.startswith("Key mismatch"):
        return f"{root} was not signed by the key of --trust {key}"
    if message.startswith("Signature mismatch: "):
        return (
            f"{root} changed since it was signed: {_mismatch(message)} "
            "(re-export, or get the folder again from its source)"
        )
    if type(exc).__name__ == "InvalidSignature":  # cryptography's: the signed bytes differ
        message = "the signed list of files was edited, or another key made it"
    return f"the signature {root / SIGNATURE_NAME} does not verify: {message}"


def _mismatch(message: str) -> str:
    """model-signing's ``Signature mismatch: [lines]`` as ``changed a; added b; removed c``."""
    try:
        lines = ast.literal_eval(message.removeprefix("Signature mismatch: "))
    except (ValueError, SyntaxError):
        return message
    changed, parts = [], []
    for line in map(str, lines if isinstance(lines, list) else []):
        if found := re.match(r"Hash mismatch for '(.+?)': Expected", line):
            changed.append(found.group(1))
        elif found := re.match(r"Extra files found in model '.*?': (.*)$", line):
            parts.append(f"added {found.group(1)}")
        elif found := re.match(r"Missing files in model '.*?': (.*)$", line):
            parts.append(f"removed {found.group(1)}")
    if changed:
        parts.insert(0, f"changed {', '.join(changed)}")
    return "; ".join(parts) or message


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
