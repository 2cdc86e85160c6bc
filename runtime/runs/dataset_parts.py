"""The per-take parts of ``omama-run dataset`` and the files assembled from them.

Each finished (take, direction) is one part, ``OUT/takes/<take>.<direction>.json``, written
atomically: the take's results entry and GT entry, its counts and skips, the settings it was
predicted with (:class:`RunSettings`: the artifacts' manifest sha256, the backend, device and
precision as resolved, and every flag that changes an answer) and the sha256 of the take's
inputs (:func:`take_inputs_sha256`). A rerun keeps a part only when it parses, is the take
and direction its name says, and holds the same settings and inputs; anything else is
predicted again.

The results, GT and metrics files are built from the parts alone, takes in sorted order, so
their bytes do not depend on which worker finished first or on how many there were.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from runtime.atomic import write_json
from runtime.egoexo import annotation_path, results_key
from runtime.results import new_gt, new_results

PART_FORMAT = "omama-dataset-part/1"
TAKES_DIR = "takes"


@dataclass(frozen=True)
class RunSettings:
    """What a part's answers depend on; a part with other settings is predicted again.

    ``backend``, ``device`` and ``precision`` are what the run resolved ``auto`` to (a run
    resumed on another machine may resolve it to another engine, whose answers differ); on
    Ray, whose workers resolve ``auto`` on their own machines, the flags as given. Each part
    also records what its worker ran on (``ran_on``).
    """

    artifacts_sha256: str  # of the artifacts' manifest.json, which holds every file's sha256
    backend: str
    device: str
    precision: str
    mask_size: str
    candidates: str | None  # the candidates folder, absolute
    max_frames: int | None

    def to_json(self) -> dict:
        return asdict(self)


def take_inputs_sha256(root: str | os.PathLike, take: str, splits: dict[str, list[str]]) -> str:
    """The sha256 of what a take's answers are read from in a processed root: its
    ``annotation.json`` bytes (absent: none) and the splits of ``splits`` (``split.json``)
    that list it. A re-prepared root changes it."""
    digest = hashlib.sha256()
    path = annotation_path(Path(root), take)
    digest.update(path.read_bytes() if path.is_file() else b"no annotation.json")
    member = sorted(name for name, takes in splits.items() if take in takes)
    digest.update(json.dumps(member).encode())
    return digest.hexdigest()


def part_path(out: str | os.PathLike, take: str, direction: str) -> Path:
    return Path(out) / TAKES_DIR / f"{take}.{direction}.json"


def write_part(
    out: str | os.PathLike,
    take: str,
    direction: str,
    settings: RunSettings,
    inputs_sha256: str,
    record: dict,
) -> Path:
    """Write one finished take's part atomically; ``record`` holds ``results`` and ``gt``
    (its entries, or None), ``frames``, ``observations_total``, the counts and ``skipped``;
    ``inputs_sha256`` is :func:`take_inputs_sha256`."""
    path = part_path(out, take, direction)
    write_json(
        path,
        {
            "format": PART_FORMAT,
            "take": take,
            "direction": direction,
            "settings": settings.to_json(),
            "inputs_sha256": inputs_sha256,
            **record,
        },
    )
    return path


def read_part(
    out: str | os.PathLike, take: str, direction: str, settings: RunSettings, inputs_sha256: str
) -> tuple[dict | None, str]:
    """``(part, "done")`` for a complete part with these settings and inputs, else
    ``(None, why)`` with why one of ``missing``, ``unreadable`` (not a part: a foreign or
    damaged file), ``other settings`` and ``other inputs`` (the take's annotation or split
    changed: :func:`take_inputs_sha256`)."""
    path = part_path(out, take, direction)
    if not path.is_file():
        return None, "missing"
    try:
        part = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None, "unreadable"
    if not _is_part(part, take, direction):
        return None, "unreadable"
    if part["settings"] != settings.to_json():
        return None, "other settings"
    if part.get("inputs_sha256") != inputs_sha256:
        return None, "other inputs"
    return part, "done"


def _is_part(part: object, take: str, direction: str) -> bool:
    keys = (
        "settings",
        "results",
        "gt",
        "frames",
        "observations_total",
        "observations",
        "visible",
        "no_candidates",
        "precomputed_frames",
        "fastsam_frames",
        "skipped",
    )
    return (
        isinstance(part, dict)
        and part.get("format") == PART_FORMAT
        and (part.get("take"), part.get("direction")) == (take, direction)
        and all(key in part for key in keys)
        and isinstance(part["results"], dict | None)
        and isinstance(part["gt"], dict | None)
    )


def assemble(parts: dict[str, dict], direction: str) -> tuple[dict, dict]:
    """The results dict and the GT dict of one direction from its parts (``{take: part}``),
    takes in sorted order; takes with nothing predicted are left out of both."""
    results, gt = new_results(direction), new_gt()
    for take in sorted(parts):
        part = parts[take]
        if part["results"] is not None:
            results[results_key(direction)]["results"][take] = part["results"]
        if part["gt"] is not None:
            gt["annotations"][take] = part["gt"]
    return results, gt


def totals(parts: dict[str, dict]) -> dict:
    """The counts of the parts added up, and their skips (the first few listed)."""
    names = (
        "frames",
        "observations_total",
        "observations",
        "visible",
        "no_candidates",
        "precomputed_frames",
        "fastsam_frames",
    )
    out = {name: sum(int(part[name]) for part in parts.values()) for name in names}
    listed = [
        {"take": take, **item}
        for take in sorted(parts)
        for item in parts[take]["skipped"]["listed"]
    ]
    count = sum(int(part["skipped"]["count"]) for part in parts.values())
    return {**out, "skipped": {"count": count, "listed": listed[:20]}}
