"""The artifacts-folder contract: manifest schema, file hashes, refusal of folders that differ."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest

from runtime.errors import OmamaError
from runtime.manifest import (
    MANIFEST_NAME,
    SCHEMA_VERSION,
    Manifest,
    TensorSpec,
    ViewSpec,
    artifact_differences,
    file_entry,
    load_manifest,
    sha256_file,
    verify_artifacts,
    write_manifest,
)


def _manifest(root, files, verification=None) -> Manifest:
    return Manifest(
        direction="exo2ego",
        random_init=True,
        views={
            "source": ViewSpec("exo", (532, 952), (38, 68)),
            "destination": ViewSpec("ego", (700, 700), (50, 50)),
        },
        preprocess={"patch_size": 14, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
        descriptor={"reduction": 4, "context_px": 100},
        matcher={"input": "weights"},
        fastsam={"included": False},
        backbone={"name": "dinov2_vitb14_reg"},
        files=files,
        tools={"onnx": "1.23"},
        engines={"built": False},
        verification=verification or {"verified": True, "passed": True, "failures": []},
    )


@pytest.fixture()
def folder(tmp_path):
    """A folder with two model files (one with an external-data file) and its manifest."""
    root = tmp_path / "artifacts"
    root.mkdir()
    (root / "backbone_ego.onnx").write_bytes(b"graph-ego" * 100)
    (root / "matcher.onnx").write_bytes(b"graph-matcher")
    (root / "matcher.onnx.data").write_bytes(b"\x00\x01" * 500)
    image = TensorSpec("image", ["batch", 3, 700, 700], "float32")
    feats = TensorSpec("feats", ["batch", 768, 50, 50], "float32")
    sims = TensorSpec("similarities", ["B", "N"], "float32")
    files = [
        file_entry(
            root,
            "backbone_ego.onnx",
            "backbone_ego",
            "onnx",
            "fp32",
            [image],
            [feats],
            opset=17,
            parity={"passed": True},
        ),
        file_entry(
            root,
            "matcher.onnx",
            "matcher",
            "onnx",
            "fp32",
            [feats],
            [sims],
            external_data=["matcher.onnx.data"],
            opset=17,
        ),
    ]
    write_manifest(root, _manifest(root, files))
    return root


def test_round_trip_keeps_every_field(folder):
    manifest = verify_artifacts(folder)
    assert manifest.direction == "exo2ego" and manifest.random_init is True
    assert manifest.views["destination"] == ViewSpec("ego", (700, 700), (50, 50))
    assert manifest.models() == ["backbone_ego", "matcher"]
    entry = manifest.select("backbone_ego", "onnx", "fp32")
    assert entry.sha256 == hashlib.sha256((folder / "backbone_ego.onnx").read_bytes()).hexdigest()
    assert entry.size_bytes == 900 and entry.opset == 17
    assert entry.inputs[0] == TensorSpec("image", ["batch", 3, 700, 700], "float32")
    assert manifest.path_of(entry) == folder / "backbone_ego.onnx"
    assert manifest.backbone_model("destination") == "backbone_ego"
    matcher = manifest.select("matcher")
    assert [ref.path for ref in matcher.file_refs()] == ["matcher.onnx", "matcher.onnx.data"]
    # Serialising again gives the same JSON (nothing is lost or invented).
    again = json.loads((folder / MANIFEST_NAME).read_text())
    assert again == manifest.to_dict()
    assert again["schema_version"] == SCHEMA_VERSION
    assert "engine" not in again["files"][0] and "external_data" not in again["files"][0]


def test_select_names_what_exists(folder):
    manifest = load_manifest(folder)
    with pytest.raises(OmamaError, match=r"no tensorrt fp16 file for 'matcher'.*matcher/onnx/fp32"):
        manifest.select("matcher", "tensorrt", "fp16")


def test_tampered_file_is_detected_with_its_name(folder):
    data = bytearray((folder / "backbone_ego.onnx").read_bytes())
    data[10] ^= 0xFF  # same size, other content
    (folder / "backbone_ego.onnx").write_bytes(bytes(data))
    with pytest.raises(OmamaError, match=r"backbone_ego\.onnx sha256 [0-9a-f]{12}\.\.\. differs"):
        verify_artifacts(folder)
    # Without hashing only sizes are compared, and they still match.
    assert artifact_differences(load_manifest(folder), check_hashes=False) == []


def test_missing_and_resized_files_are_all_listed(folder):
    (folder / "matcher.onnx.data").unlink()
    (folder / "backbone_ego.onnx").write_bytes(b"short")
    with pytest.raises(OmamaError) as info:
        verify_artifacts(folder)
    message = str(info.value)
    assert "matcher.onnx.data is missing" in message
    assert "backbone_ego.onnx has 5 bytes, the manifest says 900" in message
    assert "\n" not in message


def test_failed_export_verification_is_refused(folder):
    manifest = load_manifest(folder)
    manifest.verification = {
        "verified": True,
        "passed": False,
        "failures": ["matcher_fp16.onnx [onnxruntime] output 'similarities': max abs err"],
    }
    write_manifest(folder, manifest)
    with pytest.raises(OmamaError, match=r"failed its export verification.*'similarities'"):
        verify_artifacts(folder)
    manifest.verification = {"verified": False, "seed": 0}  # --no-verify: accepted as such
    write_manifest(folder, manifest)
    assert verify_artifacts(folder).verification == {"verified": False, "seed": 0}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(format="something"), "not an omama artifacts manifest"),
        (lambda d: d.update(schema_version=SCHEMA_VERSION + 1), "schema_version"),
        (lambda d: d.pop("views"), "missing key 'views'"),
        (lambda d: d.update(direction="up2down"), "direction 'up2down'"),
        (lambda d: d["matcher"].update(input="pixels"), "matcher.input"),
        (lambda d: d["files"][0].update(path="../outside.onnx"), "inside the folder"),
        (lambda d: d["files"][1].update(path="backbone_ego.onnx"), "listed twice"),
        (lambda d: d["files"][0].update(precision="int8"), "precision 'int8'"),
        (lambda d: d["descriptor"].pop("context_px"), "descriptor.context_px"),
    ],
)
def test_malformed_manifests_are_named(folder, change, message):
    path = folder / MANIFEST_NAME
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    with pytest.raises(OmamaError, match=message):
        load_manifest(folder)


def test_folder_without_manifest_or_folder(tmp_path, folder):
    with pytest.raises(OmamaError, match="not found"):
        load_manifest(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(OmamaError, match="no manifest.json"):
        load_manifest(empty)
    (folder / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(OmamaError, match="not readable JSON"):
        load_manifest(folder)


def test_file_entry_needs_the_file(tmp_path):
    with pytest.raises(OmamaError, match="no such file"):
        file_entry(tmp_path, "ghost.onnx", "ghost", "onnx", "fp32", [], [])


def test_sha256_file_matches_hashlib_on_multi_chunk_files(tmp_path):
    path = tmp_path / "big.bin"
    data = bytes(range(256)) * 9000  # > 2 MiB: several read chunks
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_copied_folder_verifies_at_its_new_place(folder, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(folder, moved)
    manifest = verify_artifacts(moved)
    assert manifest.root == moved
    assert manifest.path_of(manifest.select("matcher")) == moved / "matcher.onnx"
