"""The fault-injection script's judge: what it counts as a difference, as volatile, as a
temporary file left behind. Its verdicts are only worth what these rules are."""

from __future__ import annotations

import json

from benchmarks.faults.records import (
    differences,
    is_lock,
    is_temporary,
    read_folder,
    volatile_fields,
)


def _folder(tmp_path, name, files):
    root = tmp_path / name
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_locks_are_not_temporary_files_and_hidden_writes_are():
    assert is_lock(".omama.lock") and is_lock("chunks/.omama-shard-000of001.lock")
    assert not is_temporary(".omama.lock")
    assert is_temporary(".results.json.abc123.json")
    assert is_temporary("chunks/.tmp-gen3/weights.safetensors")
    assert not is_temporary("processed/take/cam01/0.jpg")


def test_a_changed_value_a_missing_file_and_a_left_temp_file_are_differences(tmp_path):
    ref = _folder(
        tmp_path,
        "ref",
        {
            "a.json": json.dumps({"iou": 0.5, "seconds": 1.0}),
            "m.csv": "epoch,iou,wall_s\n1,0.5,3.2\n",
            "w.bin": "abc",
        },
    )
    again = _folder(
        tmp_path,
        "again",
        {
            "a.json": json.dumps({"iou": 0.5, "seconds": 2.0}),
            "m.csv": "epoch,iou,wall_s\n1,0.5,3.9\n",
            "w.bin": "abc",
        },
    )
    resumed = _folder(
        tmp_path,
        "resumed",
        {
            "a.json": json.dumps({"iou": 0.25, "seconds": 7.0}),
            "m.csv": "epoch,iou,wall_s\n1,0.5,1.1\n",
            ".w.bin.x1y2.bin": "ab",
            ".omama.lock": "",
        },
    )
    a, _ = read_folder(ref, {})
    b, _ = read_folder(again, {})
    volatile = volatile_fields(a, b)
    assert volatile == {"a.json": {".seconds"}, "m.csv": {"[0].wall_s"}}
    records, temporary = read_folder(resumed, {})
    assert temporary == [".w.bin.x1y2.bin"]
    assert differences(a, records, volatile) == ["missing w.bin", "a.json: .iou"]
    assert differences(a, b, volatile) == []


def test_skipped_prefixes_are_not_compared(tmp_path):
    ref = _folder(tmp_path, "ref", {"tensorboard/events.1": "x", "best.bin": "w"})
    other = _folder(tmp_path, "other", {"tensorboard/events.2": "y", "best.bin": "w"})
    skip = {"tensorboard/": "named after the wall time"}
    assert differences(read_folder(ref, skip)[0], read_folder(other, skip)[0], {}) == []
    assert differences(read_folder(ref, {})[0], read_folder(other, {})[0], {}) == [
        "missing tensorboard/events.1",
        "extra tensorboard/events.2",
    ]
