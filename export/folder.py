"""The artifacts folder around an export: its work folder, and the previous export's files
cleared before new ones are written."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from runtime.errors import OmamaError
from runtime.manifest import MANIFEST_NAME, load_manifest
from runtime.manifest.signing import SIGNATURE_NAME
from runtime.verification import golden as golden_io


@contextlib.contextmanager
def temporary_dir(parent: str | os.PathLike | None = None) -> Iterator[Path]:
    """A temporary folder (inside ``parent`` when given), removed afterwards."""
    with tempfile.TemporaryDirectory(dir=parent, prefix=".omama-export-") as tmp:
        yield Path(tmp)


def clear_previous(out: Path) -> None:
    """Remove the previous export's manifest, listed files, golden files, verification files
    and signature, so a half-written folder never carries a manifest, a record or a signature
    that vouches for files of another run."""
    manifest_path = out / MANIFEST_NAME
    for stale in out.glob("verify_*.json"):
        stale.unlink()
    (out / SIGNATURE_NAME).unlink(missing_ok=True)  # it vouches for the old files
    shutil.rmtree(out / golden_io.GOLDEN_DIR, ignore_errors=True)
    if not manifest_path.exists():
        return
    try:
        old = load_manifest(out)
        names = [ref.path for ref in old.all_refs()]
    except OmamaError:
        names = []
    manifest_path.unlink()
    for name in names:
        (out / name).unlink(missing_ok=True)
