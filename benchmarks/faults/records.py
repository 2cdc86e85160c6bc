"""A folder as comparable records: JSON by key path, CSV by row and column, videos by decoded
frame, anything else by sha256; what differs between two folders, and what is volatile."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path
from typing import Any


def is_lock(rel: str) -> bool:
    """A lock file (filelock leaves them in place by design: an unlocked file is no lock)."""
    name = rel.rsplit("/", 1)[-1]
    return name.startswith(".") and name.endswith(".lock")


def is_temporary(rel: str) -> bool:
    """A hidden file or folder other than a lock: what atomic writers leave mid-write."""
    return not is_lock(rel) and any(part.startswith(".") for part in rel.split("/"))


def _flatten(value: Any, prefix: str, into: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(item, f"{prefix}.{key}", into)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _flatten(item, f"{prefix}[{i}]", into)
    else:
        into[prefix] = value


def _video_frames(path: Path) -> dict[str, Any]:
    import av

    frames: dict[str, Any] = {}
    try:
        with av.open(str(path)) as container:
            for i, frame in enumerate(container.decode(video=0)):
                frames[f"frame[{i}]"] = hashlib.sha256(frame.to_ndarray(format="rgb24")).hexdigest()
    except Exception as exc:  # an undecodable video is a difference, not a crash
        frames["decode_error"] = f"{type(exc).__name__}: {exc}"
    frames["frame_count"] = sum(1 for key in frames if key.startswith("frame["))
    return frames


def read_record(path: Path) -> dict[str, Any]:
    """A file as ``{field: value}``: JSON and JSON-lines by key path, CSV by row and
    column, videos by decoded frame, anything else as one sha256."""
    suffix = path.suffix.lower()
    fields: dict[str, Any] = {}
    try:
        if suffix == ".json":
            _flatten(json.loads(path.read_text()), "", fields)
        elif suffix == ".jsonl":
            for i, line in enumerate(path.read_text().splitlines()):
                _flatten(json.loads(line), f"[{i}]", fields)
        elif suffix == ".csv":
            for i, row in enumerate(csv.DictReader(io.StringIO(path.read_text()))):
                _flatten(row, f"[{i}]", fields)
        elif suffix in (".mp4", ".mkv", ".avi"):
            return _video_frames(path)
        else:
            return {"sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    except (ValueError, UnicodeDecodeError) as exc:
        return {"unreadable": f"{type(exc).__name__}: {exc}"}
    return fields


def read_folder(folder: Path, skip: dict[str, str]) -> tuple[dict[str, dict], list[str]]:
    """(records of every compared file by relative path, temporary files left behind)."""
    records: dict[str, dict] = {}
    temporary: list[str] = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if is_temporary(rel):
            temporary.append(rel)
            continue
        if path.is_dir() or is_lock(rel) or any(rel.startswith(p) for p in skip):
            continue
        records[rel] = read_record(path)
    return records, temporary


def differences(a: dict[str, dict], b: dict[str, dict], volatile: dict[str, set[str]]) -> list[str]:
    """What differs between two folders' records, leaving out ``volatile`` fields."""
    out = [f"missing {rel}" for rel in sorted(a.keys() - b.keys())]
    out += [f"extra {rel}" for rel in sorted(b.keys() - a.keys())]
    for rel in sorted(a.keys() & b.keys()):
        skip = volatile.get(rel, set())
        keys = (a[rel].keys() | b[rel].keys()) - skip
        changed = sorted(k for k in keys if a[rel].get(k, "<absent>") != b[rel].get(k, "<absent>"))
        if changed:
            shown = ", ".join(changed[:4]) + (
                f" and {len(changed) - 4} more" if len(changed) > 4 else ""
            )
            out.append(f"{rel}: {shown}")
    return out


def volatile_fields(a: dict[str, dict], b: dict[str, dict]) -> dict[str, set[str]]:
    """Fields that differ between two uninterrupted runs (wall-clock records)."""
    out: dict[str, set[str]] = {}
    for rel in a.keys() & b.keys():
        keys = {k for k in a[rel].keys() | b[rel].keys() if a[rel].get(k) != b[rel].get(k)}
        if keys:
            out[rel] = keys
    return out
