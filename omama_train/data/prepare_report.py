"""What ``omama data prepare`` left out and why: per take and per run, and the merged
``ROOT/prepare_report.json``."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from runtime.atomic import write_json

REPORT_NAME = "prepare_report.json"
SUMMARY_PROBLEM_LINES = 20  # the rest is in the report file

# Problem kinds, each a reason why something of the relations file is not in the output.
MISSING_VIDEO = "missing_video"
UNREADABLE_VIDEO = "unreadable_video"
FRAME_BEYOND_VIDEO = "frame_beyond_video"
UNDECODABLE_MASK = "undecodable_mask"
SIZE_MISMATCH = "size_mismatch"
TAKE_ERROR = "error"


@dataclass
class Problem:
    """Something of the relations file that did not make it into the processed take."""

    kind: str
    detail: str
    cam: str | None = None
    obj: str | None = None
    frames: list[int] = field(default_factory=list)
    masks_dropped: int = 0
    annotated_dropped: int = 0


@dataclass
class TakeReport:
    """Outcome of one take: ``status`` is prepared, skipped (already complete) or failed."""

    take: str
    take_name: str
    status: str
    frames_written: int = 0
    masks_in: int = 0
    masks_kept: int = 0
    annotated_in: int = 0
    annotated_kept: int = 0
    problems: list[Problem] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> TakeReport:
        fields = dict(data)
        fields["problems"] = [Problem(**p) for p in data.get("problems", [])]
        return cls(**fields)


@dataclass
class PrepareReport:
    """Outcome of one ``prepare`` run over one relations file."""

    split: str
    relations: str
    takes: list[TakeReport]
    takes_in_relations: int

    def count(self, status: str) -> int:
        return sum(t.status == status for t in self.takes)

    @property
    def frames_written(self) -> int:
        return sum(t.frames_written for t in self.takes)

    def problem_counts(self) -> Counter:
        return Counter(p.kind for t in self.takes for p in t.problems)

    def summary(self) -> dict:
        return {
            "split": self.split,
            "relations": self.relations,
            "takes": len(self.takes),
            "takes_in_relations": self.takes_in_relations,
            "prepared": self.count("prepared"),
            "skipped_complete": self.count("skipped"),
            "failed": self.count("failed"),
            "frames_written": self.frames_written,
            "masks_in": sum(t.masks_in for t in self.takes),
            "masks_kept": sum(t.masks_kept for t in self.takes),
            "problems": dict(sorted(self.problem_counts().items())),
        }

    def summary_text(self, report_path: Path | None = None) -> str:
        s = self.summary()
        lines = [
            f"split {s['split']}: {s['takes']} takes, {s['prepared']} prepared, "
            f"{s['skipped_complete']} already complete (skipped), {s['failed']} failed",
            f"frames written: {s['frames_written']}; masks kept: {s['masks_kept']} of "
            f"{s['masks_in']}",
        ]
        if s["problems"]:
            kinds = ", ".join(f"{k} x{n}" for k, n in s["problems"].items())
            lines.append(f"problems: {kinds}")
            rows = [(take.take, p) for take in self.takes for p in take.problems]
            for take, p in rows[:SUMMARY_PROBLEM_LINES]:
                where = "/".join(x for x in (p.obj, p.cam) if x)
                frames = ", ".join(map(str, p.frames[:5])) + (", ..." if len(p.frames) > 5 else "")
                lines.append(f"  {take} {where} [frames {frames}]: {p.kind}: {p.detail}")
            if len(rows) > SUMMARY_PROBLEM_LINES:
                lines.append(f"  ... {len(rows) - SUMMARY_PROBLEM_LINES} more in the report")
        if len(self.takes) < self.takes_in_relations:
            lines.append(f"interrupted: {len(self.takes)} of {self.takes_in_relations} takes done")
        if report_path is not None:
            lines.append(f"report: {report_path}")
        return "\n".join(lines)


def write_report(out: Path, report: PrepareReport) -> Path:
    """Merge this run into ``ROOT/prepare_report.json`` (takes of other runs are kept)."""
    path = out / REPORT_NAME
    merged: dict = {"splits": {}, "takes": {}}
    if path.is_file():
        try:
            previous = json.loads(path.read_text(encoding="utf-8"))
            merged["splits"].update(previous.get("splits", {}))
            merged["takes"].update(previous.get("takes", {}))
        except (OSError, json.JSONDecodeError, AttributeError):
            pass  # an unreadable old report is replaced
    merged["splits"][report.split] = {
        **report.summary(),
        "finished_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    for take in report.takes:
        merged["takes"][take.take] = {"split": report.split, **take.to_json()}
    write_json(path, merged, indent=1)
    return path
