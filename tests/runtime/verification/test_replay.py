"""Verification that travels with the artifacts: golden files, ``omama-run verify`` on the
sessions users run (also without torch), the pipeline's warning when nothing verified the
chosen backend, and the one random-init recipe behind features, export and torch backend.

One small export (1-block ViT-S, exo 56x84 / ego 70x70 px, YOLOv8n-seg stand-in at 128 px,
``--fp16``) is shared by the tests of this module.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

from export.config import ExportConfig  # noqa: E402
from export.pipeline import export_artifacts  # noqa: E402
from omama_train.models.backbones import BACKBONES  # noqa: E402
from runtime.clikit import run_app  # noqa: E402
from runtime.jsonrecords import from_json  # noqa: E402
from runtime.manifest import (  # noqa: E402
    VerificationRecord,
    VerificationSection,
    check_artifacts,
    load_manifest,
    sha256_file,
    write_manifest,
)
from runtime.sessions import plan_artifacts  # noqa: E402
from runtime.verification import golden as golden_io  # noqa: E402
from runtime.verification.inputs import lowrank_factors, lowrank_features  # noqa: E402
from runtime.verification.replay import (  # noqa: E402
    folder_records,
    missing_verification,
    verify_folder,
)

REPO = Path(__file__).resolve().parents[3]
SMALL = dataclasses.replace(BACKBONES["dinov2_vits14_reg"], timm_overrides={"depth": 1})
GRIDS = {"exo": (4, 6), "ego": (5, 5)}


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("verify") / "artifacts"
    config = ExportConfig(
        out_dir=out,
        backbone=SMALL,
        random_init=True,
        random_grids=dict(GRIDS),
        fastsam_imgsz=128,
        fp16=True,
        parity_sets=8,
        parity_large_n=40,
    )
    export_artifacts(config, echo=lambda line: None, progress=False)
    return out


@pytest.fixture()
def copy(artifacts, tmp_path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(artifacts, target)
    return target


def omama_run(capsys, *argv: str) -> tuple[int, str, str]:
    from runtime.cli import app

    code = run_app(app, list(argv), prog_name="omama-run")
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ------------------------------------------------------------------------------ golden files


def test_golden_files_are_compact_hashed_and_exact(artifacts):
    manifest = check_artifacts(artifacts)
    golden = {g.model: g for g in manifest.verification.golden}
    assert set(golden) == {"backbone_exo", "backbone_ego", "matcher", "fastsam"}
    for model, entry in golden.items():
        path = artifacts / entry.path
        assert entry.sha256 == sha256_file(path) and entry.size_bytes == path.stat().st_size
        assert entry.size_bytes < 400_000, (model, entry.size_bytes)
        meta, cases = golden_io.read_golden(path)
        assert meta["model"] == model and len(cases) == entry.cases
    _, (case,) = golden_io.read_golden(artifacts / golden["backbone_ego"].path)
    image = case.feeds()["image"]
    assert image.shape == (1, 3, 70, 70) and image.dtype == np.float32
    _, cases = golden_io.read_golden(artifacts / golden["matcher"].path)
    form = load_manifest(artifacts).matcher.input
    dst, src = ("dst_weights", "src_weights") if form == "weights" else ("dst_masks", "src_mask")
    assert [c.feeds()[dst].shape[1] for c in cases] == [1, 7, 48, 24]
    assert [c.feeds()[src].shape[0] for c in cases] == [1, 2, 1, 3]
    empty = cases[1].feeds()[dst][0, 3]
    assert not (empty[0] if form == "weights" else empty).any()  # no pixel, no mask weight
    feats = cases[0].feeds()["src_feats"]
    assert feats.shape == (1, 768, 4, 6) and np.abs(feats).max() > 0.1
    _, (case,) = golden_io.read_golden(artifacts / golden["fastsam"].path)
    assert case.feeds()["images"].shape == (1, 3, 128, 128)
    assert len(case.reference["kept"]) > 0 and case.reference["anchors"].shape == (5, 336)


def test_lowrank_features_are_exact_in_fp16_and_from_integers():
    rng = np.random.default_rng(0)
    u, v = lowrank_factors(rng, 768, 30)
    feats = lowrank_features(u, v, (5, 6))
    assert feats.dtype == np.float32 and feats.shape == (1, 768, 5, 6)
    assert np.array_equal(feats.astype(np.float16).astype(np.float32), feats)
    exact = (u.astype(np.int64) @ v.astype(np.int64)).reshape(1, 768, 5, 6) / 512.0
    assert np.array_equal(feats, exact)


def test_a_golden_file_is_never_unpickled(artifacts, tmp_path):
    evil = tmp_path / "evil.npz"
    np.savez(evil, meta=np.asarray([{"format": "omama.golden"}], dtype=object))
    with pytest.raises(Exception, match="golden file|pickle"):
        golden_io.read_golden(evil)


# ------------------------------------------------------------------------------ omama-run verify


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_verify_passes_on_onnxruntime_and_writes_its_record(copy, capsys, precision):
    code, out, err = omama_run(
        capsys, "verify", str(copy), "--backend", "onnxruntime", "--device", "cpu",
        "--precision", precision, "--threads", "1",
    )  # fmt: skip
    assert code == 0, err
    assert (
        "file " in out
        and "tolerance" in out
        and out.strip().splitlines()[-1].startswith("verified: 4 files")
    )
    data = json.loads((copy / f"verify_onnxruntime_{precision}.json").read_text())
    assert data["passed"] is True and data["manifest_sha256"] == sha256_file(copy / "manifest.json")
    records = [from_json(VerificationRecord, r, "verify json") for r in data["records"]]
    suffix = "_fp16" if precision == "fp16" else ""
    assert sorted(r.file for r in records) == sorted(
        f"{m}{suffix}.onnx" for m in ("backbone_exo", "backbone_ego", "matcher", "fastsam")
    )
    assert all(r.inputs == "golden" and r.device == "cpu" and r.precision == precision
               for r in records)  # fmt: skip
    assert all(r.providers == ("CPUExecutionProvider",) for r in records)
    assert records[0].tolerances == load_manifest(copy).verification.tolerances[precision]
    # The numbers the export measured on the same files (ONNX Runtime may sum in another
    # order with another thread count: within a few ulps of the same small errors).
    exported = {
        (r.file, c.metric, c.output): c.value
        for r in load_manifest(copy).verification.records
        if r.inputs == "golden" and r.backend == "onnxruntime"
        for c in r.checks
    }
    for record in records:
        for check in record.checks:
            want = exported[(record.file, check.metric, check.output)]
            assert check.value == pytest.approx(want, rel=0.5, abs=2e-6)


def test_verify_on_the_torch_backend_rebuilds_the_exported_modules(copy):
    report = verify_folder(copy, backend="torch", device="cpu", threads=1)
    assert report.passed and len(report.records) == 4
    by_file = {r.file: r for r in report.records}
    assert by_file["backbone_ego.onnx"].checks[0].value == 0.0  # same module, same numbers
    assert by_file["matcher.onnx"].checks[0].value == 0.0


def _change_one_weight(folder: Path, file: str, name: str, delta: float) -> None:
    """Add ``delta`` to one value (the middle one) of initializer ``name`` of
    ``folder/file`` and re-hash the file in the manifest, so that the sha256 check cannot
    catch the change: only the outputs can tell."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(folder / file)
    init = next(i for i in model.graph.initializer if i.name == name)
    array = numpy_helper.to_array(init).copy()
    array.flat[array.size // 2] += array.dtype.type(delta)
    init.CopyFrom(numpy_helper.from_array(array, init.name))
    onnx.save(model, folder / file)
    manifest = load_manifest(folder)
    manifest.files = [
        dataclasses.replace(f, sha256=sha256_file(folder / f.path),
                            size_bytes=(folder / f.path).stat().st_size)
        if f.path == file else f
        for f in manifest.files
    ]  # fmt: skip
    write_manifest(folder, manifest)
    check_artifacts(folder)  # the hashes match again


@pytest.mark.parametrize(
    ("file", "precision", "initializer", "delta", "output"),
    [
        ("backbone_ego.onnx", "fp32", "backbone.trunk.patch_embed.proj.weight", 0.5, "feats"),
        (
            "backbone_exo_fp16.onnx",
            "fp16",
            "backbone.trunk.patch_embed.proj.weight",
            0.5,
            "feats",
        ),  # fmt: skip
        ("matcher.onnx", "fp32", "matcher.mlp.mlp.4.bias", 0.5, "similarities"),
        ("matcher_fp16.onnx", "fp16", "matcher.mlp.mlp.4.bias", 0.5, "similarities"),
        # A box-regression logit of the FastSAM stand-in (whose random scores all tie).
        ("fastsam.onnx", "fp32", "model.model.22.cv2.0.2.bias", 5.0, "output0"),
    ],
)
def test_verify_fails_and_names_the_output_when_one_weight_changed(
    copy, capsys, file, precision, initializer, delta, output
):
    _change_one_weight(copy, file, initializer, delta)
    code, _, err = omama_run(capsys, "verify", str(copy), "--backend", "onnxruntime",
                             "--device", "cpu", "--precision", precision)  # fmt: skip
    assert code == 1
    line = err.strip()
    want = f"error: verification failed: {file} [onnxruntime cpu] output '{output}'"
    assert line.startswith(want), line
    assert "\n" not in line
    data = json.loads((copy / f"verify_onnxruntime_{precision}.json").read_text())
    assert data["passed"] is False


def test_verify_runs_without_torch(copy):
    """The lean runtime's verify in a process where importing torch (or timm, ultralytics,
    torchvision) fails: what `pip install .` users run."""
    blocker = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'torchvision', 'timm', 'ultralytics'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from runtime.cli import app\n"
        "from runtime.clikit import run_app\n"
        f"code = run_app(app, ['verify', {str(copy)!r}, '--backend', 'auto', '--precision', "
        "'fp16'], prog_name='omama-run')\n"
        "assert 'torch' not in sys.modules\n"
        "sys.exit(code)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", blocker], capture_output=True, text=True,
                          env=env, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "verified: 4 files" in done.stdout
    assert (copy / "verify_onnxruntime_fp16.json").is_file()


def test_verify_refuses_a_folder_without_golden_files(copy, capsys):
    manifest = load_manifest(copy)
    manifest.verification = dataclasses.replace(manifest.verification, golden=())
    write_manifest(copy, manifest)
    code, _, err = omama_run(capsys, "verify", str(copy), "--backend", "onnxruntime")
    assert code == 1 and "no golden file for backbone_exo" in err and "re-export" in err


# ------------------------------------------------------------------------------ records


def _without_records(folder: Path) -> None:
    manifest = load_manifest(folder)
    manifest.verification = dataclasses.replace(manifest.verification, records=())
    write_manifest(folder, manifest)


def test_pipeline_warns_once_when_nothing_verified_its_backend(copy, caplog):
    from runtime.pipeline import Pipeline

    _without_records(copy)
    with caplog.at_level(logging.WARNING, logger="runtime.verification.replay"):
        Pipeline(copy, backend="onnxruntime", device="cpu", precision="fp16").close()
        Pipeline(copy, backend="onnxruntime", device="cpu", precision="fp16").close()
    warnings = [r.getMessage() for r in caplog.records if "no passing verification" in r.message]
    assert len(warnings) == 1
    assert (
        f"omama-run verify {copy} --backend onnxruntime --device cpu --precision fp16"
        in (warnings[0])
    )
    assert "matcher_fp16.onnx" in warnings[0]
    manifest = load_manifest(copy)
    plan = plan_artifacts(manifest, "onnxruntime", "cpu", "fp16")
    files = [manifest.select(m, "onnx", "fp16").path for m in manifest.role_models().values()]
    assert missing_verification(manifest, plan, files) is not None
    verify_folder(copy, "onnxruntime", "cpu", "fp16")
    assert missing_verification(manifest, plan, files) is None
    # A cuda run is not vouched for by a cpu record.
    gpu_plan = dataclasses.replace(plan, choice=dataclasses.replace(plan.choice, device="cuda"))
    assert missing_verification(manifest, gpu_plan, files) is not None


def test_the_exports_own_records_vouch_for_cpu_runs(artifacts):
    manifest = load_manifest(artifacts)
    for precision in ("fp32", "fp16"):
        plan = plan_artifacts(manifest, "onnxruntime", "cpu", precision)
        files = [manifest.select(m, "onnx", precision).path for m in manifest.models()]
        assert missing_verification(manifest, plan, files) is None


def test_a_verify_file_of_another_export_is_ignored(copy):
    _without_records(copy)
    verify_folder(copy, "onnxruntime", "cpu", "fp32")
    assert len(folder_records(load_manifest(copy))) == 4
    manifest = load_manifest(copy)
    manifest.created_utc = "2000-01-01T00:00:00Z"  # another manifest: the file is stale
    write_manifest(copy, manifest)
    assert folder_records(load_manifest(copy)) == []
    (copy / "verify_broken.json").write_text("{not json")
    assert folder_records(load_manifest(copy)) == []


def test_a_failing_record_does_not_vouch(copy):
    manifest = load_manifest(copy)
    plan = plan_artifacts(manifest, "onnxruntime", "cpu", "fp32")
    failed = []
    for record in manifest.verification.records:
        checks = tuple(dataclasses.replace(c, value=float("nan")) for c in record.checks)
        failed.append(dataclasses.replace(record, checks=checks))
    manifest.verification = VerificationSection(verified=False, seed=0, records=tuple(failed),
                                                golden=manifest.verification.golden)  # fmt: skip
    files = [manifest.select(m).path for m in manifest.models()]
    assert missing_verification(manifest, plan, files) == ", ".join(files)


# ------------------------------------------------------------------------------ one recipe


def test_features_export_and_torch_backend_build_the_same_random_backbone(artifacts, tmp_path):
    """One random initialisation (the backbone registry's): the feature cache's, the
    export's and the torch backend's rebuild give identical tensors for the same seed."""
    from export.models import build_models
    from omama_train.features.weights import BackboneWeights
    from omama_train.torch_backend import build_artifact_module

    manifest = load_manifest(artifacts)
    config = ExportConfig(out_dir=artifacts, backbone=SMALL, random_init=True,
                          random_grids=dict(GRIDS), include_fastsam=False)  # fmt: skip
    exported = build_models(config, tmp_path).backbones
    features = BackboneWeights.resolve(SMALL, random_init=True, seed=0)
    for view in manifest.views.values():
        from_cache = features.build(view.image_size)
        rebuilt = build_artifact_module(manifest, manifest.select(f"backbone_{view.kind}"))
        states = [m.state_dict() for m in (exported[view.kind], from_cache, rebuilt.backbone)]
        assert states[0].keys() == states[1].keys() == states[2].keys()
        for key in states[0]:
            assert torch.equal(states[0][key], states[1][key]), key
            assert torch.equal(states[0][key], states[2][key]), key
        image = torch.rand(1, 3, *view.image_size, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            assert torch.equal(exported[view.kind](image), rebuilt(image))
    other = BackboneWeights.resolve(SMALL, random_init=True, seed=1).build((70, 70))
    assert not torch.equal(other.proj.weight, exported["ego"].proj.weight)
