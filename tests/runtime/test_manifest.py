"""The artifacts-folder contract: typed manifest schema, file hashes, refusal of folders that
differ, and no code outside runtime/manifest/ reading the manifest as a dict."""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import pytest

from runtime.errors import OmamaError
from runtime.manifest import (
    MANIFEST_NAME,
    SCHEMA_VERSION,
    BackboneRecord,
    CheckRecord,
    DescriptorSpec,
    EnginesRecord,
    FastSAMSpec,
    GoldenFile,
    GraphRecord,
    InputDecision,
    Manifest,
    MatcherSpec,
    PreprocessSpec,
    TensorSpec,
    ToolsRecord,
    VerificationRecord,
    VerificationSection,
    ViewSpec,
    WeightsRecord,
    artifact_differences,
    check_artifacts,
    file_entry,
    file_ref,
    load_manifest,
    sha256_file,
    write_manifest,
)

REPO = Path(__file__).resolve().parents[2]


def _record(passed: bool = True) -> VerificationRecord:
    return VerificationRecord(
        file="backbone_ego.onnx",
        model="backbone_ego",
        backend="onnxruntime",
        device="cpu",
        providers=("CPUExecutionProvider",),
        precision="fp32",
        inputs="golden",
        tolerances={"feats_max_abs": 1e-4},
        checks=(CheckRecord("feats", "max abs err", 2e-6 if passed else 3e-2, 1e-4),),
    )


def _manifest(files, verification=None) -> Manifest:
    random = WeightsRecord(random=True, seed=0)
    return Manifest(
        direction="exo2ego",
        random_init=True,
        views={
            "src": ViewSpec("exo", (532, 952), (38, 68)),
            "dst": ViewSpec("ego", (700, 700), (50, 50)),
        },
        preprocess=PreprocessSpec(14, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        descriptor=DescriptorSpec(
            reduction=4, context_px=100, feature_dim=768, descriptor_dim=1536
        ),  # fmt: skip
        matcher=MatcherSpec(
            input="weights",
            input_decision=InputDecision("weights", "given"),
            attention="folded",
            dim=768,
            heads=4,
            src_grid=(38, 68),
            dst_grid=(50, 50),
            weights=random,
        ),
        fastsam=FastSAMSpec(included=False),
        backbone=BackboneRecord("dinov2_vitb14_reg", "dinov2", 768, 768, random),
        files=files,
        tools=ToolsRecord({"onnx": "1.23", "tensorrt": None}, 17, "torch.onnx.export"),
        engines=EnginesRecord(built=False, note="engines: not requested"),
        verification=verification
        or VerificationSection(verified=True, seed=0, records=(_record(),)),
    )


@pytest.fixture()
def folder(tmp_path):
    """A folder with two model files (one with an external-data file), a golden file and
    its manifest."""
    root = tmp_path / "artifacts"
    root.mkdir()
    (root / "backbone_ego.onnx").write_bytes(b"graph-ego" * 100)
    (root / "matcher.onnx").write_bytes(b"graph-matcher")
    (root / "matcher.onnx.data").write_bytes(b"\x00\x01" * 500)
    (root / "golden").mkdir()
    (root / "golden" / "matcher.npz").write_bytes(b"golden" * 10)
    image = TensorSpec("image", ("batch", 3, 700, 700), "float32")
    feats = TensorSpec("feats", ("batch", 768, 50, 50), "float32")
    sims = TensorSpec("similarities", ("B", "N"), "float32")
    graph = GraphRecord(opset=17, nodes_final=365, nodes_exported=1036)
    files = [
        file_entry(
            root, "backbone_ego.onnx", "backbone_ego", "onnx", "fp32", [image], [feats], graph=graph
        ),  # fmt: skip
        file_entry(
            root,
            "matcher.onnx",
            "matcher",
            "onnx",
            "fp32",
            [feats],
            [sims],
            external_data=["matcher.onnx.data"],
        ),  # fmt: skip
    ]
    ref = file_ref(root, "golden/matcher.npz")
    golden = (GoldenFile("matcher", ref.path, ref.sha256, ref.size_bytes, 4),)
    verification = VerificationSection(verified=True, seed=0, records=(_record(),), golden=golden)
    write_manifest(root, _manifest(files, verification))
    return root


def test_round_trip_keeps_every_field(folder):
    manifest = check_artifacts(folder)
    assert manifest.direction == "exo2ego" and manifest.random_init is True
    assert manifest.views["dst"] == ViewSpec("ego", (700, 700), (50, 50))
    assert manifest.models() == ["backbone_ego", "matcher"]
    entry = manifest.select("backbone_ego", "onnx", "fp32")
    assert entry.sha256 == hashlib.sha256((folder / "backbone_ego.onnx").read_bytes()).hexdigest()
    assert entry.size_bytes == 900 and entry.graph.opset == 17
    assert entry.inputs[0] == TensorSpec("image", ("batch", 3, 700, 700), "float32")
    assert manifest.verification.records[0].checks[0].passed
    assert manifest.golden_of("matcher").cases == 4 and manifest.golden_of("fastsam") is None
    assert manifest.path_of(entry) == folder / "backbone_ego.onnx"
    assert manifest.backbone_model("dst") == "backbone_ego"
    matcher = manifest.select("matcher")
    assert [ref.path for ref in matcher.file_refs()] == ["matcher.onnx", "matcher.onnx.data"]
    # Serialising again gives the same JSON, and reading it the same records.
    again = json.loads((folder / MANIFEST_NAME).read_text())
    assert again == manifest.to_dict()
    assert again["schema_version"] == SCHEMA_VERSION == 3
    written = _manifest(manifest.files, manifest.verification)
    assert dataclasses.replace(manifest, created_utc="", omama_version="") == written


def test_select_names_what_exists(folder):
    manifest = load_manifest(folder)
    with pytest.raises(OmamaError, match=r"no tensorrt fp16 file for 'matcher'.*matcher/onnx/fp32"):
        manifest.select("matcher", "tensorrt", "fp16")


def test_tampered_file_is_detected_with_its_name(folder):
    data = bytearray((folder / "backbone_ego.onnx").read_bytes())
    data[10] ^= 0xFF  # same size, other content
    (folder / "backbone_ego.onnx").write_bytes(bytes(data))
    with pytest.raises(OmamaError, match=r"backbone_ego\.onnx sha256 [0-9a-f]{12}\.\.\. differs"):
        check_artifacts(folder)
    # Without hashing only sizes are compared, and they still match.
    assert artifact_differences(load_manifest(folder), check_hashes=False) == []


def test_missing_and_resized_files_are_all_listed(folder):
    (folder / "matcher.onnx.data").unlink()
    (folder / "backbone_ego.onnx").write_bytes(b"short")
    with pytest.raises(OmamaError) as info:
        check_artifacts(folder)
    message = str(info.value)
    assert "matcher.onnx.data is missing" in message
    assert "backbone_ego.onnx has 5 bytes, the manifest says 900" in message
    assert "\n" not in message


def test_failed_export_verification_is_refused(folder):
    manifest = load_manifest(folder)
    bad = _record(passed=False)
    manifest.verification = VerificationSection(
        verified=True, seed=0, passed=False, failures=tuple(bad.failures()), records=(bad,)
    )
    write_manifest(folder, manifest)
    with pytest.raises(OmamaError, match=r"failed its export verification.*output 'feats'"):
        check_artifacts(folder)
    # --no-verify: accepted as such
    manifest.verification = VerificationSection(verified=False, seed=0)
    write_manifest(folder, manifest)
    assert check_artifacts(folder).verification.verified is False


def test_golden_files_are_hash_checked(folder):
    (folder / "golden" / "matcher.npz").write_bytes(b"GOLDEN" * 10)
    with pytest.raises(OmamaError, match=r"golden/matcher\.npz sha256"):
        check_artifacts(folder)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(format="something"), "not an omama artifacts manifest"),
        (lambda d: d.update(schema_version=SCHEMA_VERSION + 1), "schema_version"),
        (lambda d: d.update(schema_version=1), "re-export the folder with `omama export`"),
        (lambda d: d.update(schema_version=2), "re-export the folder with `omama export`"),
        (lambda d: d.pop("views"), "missing field views"),
        (lambda d: d.update(direction="up2down"), "direction 'up2down'"),
        (lambda d: d["matcher"].update(input="pixels"), "matcher.input"),
        (lambda d: d["matcher"].pop("heads"), "missing field matcher.heads"),
        (lambda d: d["matcher"].update(src_grid="38x68"), r"matcher.src_grid must be a list"),
        (lambda d: d["matcher"].update(src_grid=[38]), r"matcher.src_grid must be a list of 2 i"),
        (lambda d: d["files"][0].update(size_bytes="900"), r"files\[0\].size_bytes must be an "),
        (lambda d: d["matcher"]["weights"].update(random="yes"), r"matcher.weights.random must"),
        (
            lambda d: d["verification"]["records"][0]["checks"][0].pop("metric"),
            r"missing field verification.records\[0\].checks\[0\].metric",
        ),  # fmt: skip
        (lambda d: d["files"][0].update(path="../outside.onnx"), "inside the folder"),
        (lambda d: d["files"][1].update(path="backbone_ego.onnx"), "listed twice"),
        (lambda d: d["files"][0].update(precision="bf16"), "precision 'bf16' not in"),
        (lambda d: d["descriptor"].pop("context_px"), "missing field descriptor.context_px"),
    ],
)
def test_malformed_manifests_are_named(folder, change, message):
    path = folder / MANIFEST_NAME
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    with pytest.raises(OmamaError, match=message) as info:
        load_manifest(folder)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


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
    manifest = check_artifacts(moved)
    assert manifest.root == moved
    assert manifest.path_of(manifest.select("matcher")) == moved / "matcher.onnx"


# Mappings of the manifest that are data, keyed by what they describe (role, precision,
# tolerance name, package, tensor name): indexing them is reading a record, not the JSON.
KEYED_MAPPINGS = {"views", "tolerances", "versions", "inputs", "outputs", "fp32_ops",
                  "architecture_overrides"}  # fmt: skip


def _manifest_dict_reads(source: str) -> list[str]:
    """``x.manifest.<attrs>.get(...)`` / ``x.manifest.<attrs>["..."]`` in a module."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            target, how = node.func.value, node.func.attr
            if how != "get":
                continue
        elif isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
            target = node.value
            if not isinstance(node.slice.value, str):
                continue
        else:
            continue
        chain = []
        while isinstance(target, ast.Attribute):
            chain.append(target.attr)
            target = target.value
        if isinstance(target, ast.Name):
            chain.append(target.id)
        chain.reverse()
        rooted = any("manifest" in part for part in chain)
        if rooted and chain and chain[-1] not in KEYED_MAPPINGS:
            found.append(f"{'.'.join(chain)} (line {node.lineno})")
    return found


def test_the_dict_read_check_catches_string_indexing():
    assert _manifest_dict_reads("x = manifest.fastsam.get('conf')\n") == [
        "manifest.fastsam (line 1)"
    ]
    assert _manifest_dict_reads("x = self.manifest.matcher['input']\n")
    assert _manifest_dict_reads("x = manifest.views['source']\n") == []
    assert _manifest_dict_reads("x = manifest.fastsam.conf\n") == []


def test_no_code_outside_the_manifest_module_reads_the_manifest_as_a_dict():
    offenders = {}
    for package in ("runtime", "omama_train", "export", "benchmarks", "scripts"):
        for path in sorted((REPO / package).rglob("*.py")):
            if (REPO / "runtime" / "manifest") in path.parents:
                continue
            found = _manifest_dict_reads(path.read_text(encoding="utf-8"))
            if found:
                offenders[path.relative_to(REPO).as_posix()] = found
    assert not offenders, offenders
