"""Reading, writing and checking an artifacts folder against its ``manifest.json``."""

from __future__ import annotations

import hashlib
import os
import typing
from pathlib import Path

from runtime.atomic import write_json
from runtime.errors import OmamaError
from runtime.jsonrecords import read_json_object
from runtime.manifest.facts import cross_check
from runtime.manifest.records import (
    MANIFEST_NAME,
    ArtifactFile,
    EngineRecord,
    FileRef,
    GraphRecord,
    Manifest,
    TensorSpec,
)

_CHUNK_BYTES = 1 << 20


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ----------------------------------------------------------------------------- files


def file_entry(
    root: str | os.PathLike,
    path: str,
    model: str,
    format: str,
    precision: str,
    inputs: typing.Sequence[TensorSpec],
    outputs: typing.Sequence[TensorSpec],
    external_data: typing.Sequence[str] = (),
    graph: GraphRecord | None = None,
    engine: EngineRecord | None = None,
) -> ArtifactFile:
    """An :class:`ArtifactFile` for ``root/path`` with its sha256 and size computed now.

    ``external_data``: paths (relative to ``root``) of files the graph loads its weights from.
    """
    root = Path(root)
    target = root / path
    if not target.is_file():
        raise OmamaError(f"cannot list {target} in the manifest: no such file")
    return ArtifactFile(
        path=path,
        model=model,
        format=format,
        precision=precision,
        sha256=sha256_file(target),
        size_bytes=target.stat().st_size,
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        external_data=tuple(file_ref(root, p) for p in external_data),
        graph=graph,
        engine=engine,
    )


def file_ref(root: str | os.PathLike, path: str) -> FileRef:
    """A :class:`FileRef` for ``root/path`` with its sha256 and size computed now."""
    target = Path(root) / path
    return FileRef(path, sha256_file(target), target.stat().st_size)


def write_manifest(root: str | os.PathLike, manifest: Manifest) -> Path:
    """Validate and write ``root/manifest.json`` atomically; returns its path."""
    manifest.validate()
    path = Path(root) / MANIFEST_NAME
    write_json(path, manifest.to_dict(), indent=2)
    return path


def load_manifest(root: str | os.PathLike) -> Manifest:
    """Parse ``root/manifest.json`` (no file checks; see :func:`check_artifacts`)."""
    root = Path(root)
    path = root / MANIFEST_NAME
    if not root.is_dir():
        raise OmamaError(f"artifacts folder not found: {root} (run `omama export` first)")
    if not path.is_file():
        raise OmamaError(f"{root} has no {MANIFEST_NAME}: not an omama artifacts folder")
    manifest = Manifest.from_dict(read_json_object(path, MANIFEST_NAME), source=str(path))
    manifest.root = root
    return manifest


def artifact_differences(manifest: Manifest, check_hashes: bool = True) -> list[str]:
    """What differs between the manifest and the files of its folder (empty when all match).

    Checks existence and size of every listed file (external data and golden files
    included) and, with ``check_hashes``, their sha256.
    """
    root = manifest.root
    if root is None:
        raise OmamaError("artifact_differences needs a manifest loaded from a folder")
    differences: list[str] = []
    for ref in manifest.all_refs():
        target = root / ref.path
        if not target.is_file():
            differences.append(f"{ref.path} is missing")
            continue
        size = target.stat().st_size
        if size != ref.size_bytes:
            differences.append(f"{ref.path} has {size} bytes, the manifest says {ref.size_bytes}")
            continue
        if check_hashes:
            digest = sha256_file(target)
            if digest != ref.sha256:
                differences.append(
                    f"{ref.path} sha256 {digest[:12]}... differs from the manifest's "
                    f"{ref.sha256[:12]}..."
                )
    return differences


def check_artifacts(root: str | os.PathLike, check_hashes: bool = True) -> Manifest:
    """Load the manifest of ``root`` and refuse the folder unless its files match it.

    Raises OmamaError listing every missing file and every size/sha256 mismatch, every
    difference between the manifest and the facts its ONNX files record or their graphs'
    shapes (:func:`runtime.manifest.facts.cross_check`), or naming the failed checks when
    the export's own verification failed. A folder exported with ``--no-verify`` is
    accepted (``manifest.verification.verified`` is False).
    """
    manifest = load_manifest(root)
    differences = artifact_differences(manifest, check_hashes=check_hashes)
    if differences:
        raise OmamaError(
            f"artifacts folder {manifest.root} does not match its manifest: "
            + "; ".join(differences)
            + " (re-export with `omama export`)"
        )
    cross_check(manifest)
    verification = manifest.verification
    if verification.verified and not verification.passed:
        failed = ", ".join(verification.failures) or "see manifest.json"
        raise OmamaError(
            f"artifacts folder {manifest.root} failed its export verification ({failed}); "
            "re-export, or fix the model"
        )
    return manifest
