"""The openvino backend on a real (small, random-init) artifacts folder: every model against
ONNX Runtime, the matcher's dynamic B and N, ``omama-run verify`` at fp32, bf16 and int8
(and ONNX Runtime int8), the unverified-run warning, and ``omama-run pair`` choosing the
same candidates as ONNX Runtime.

The folder is ``tests.runtime.assets``' ``random`` export (1-block ViT-S, exo 70x126 / ego
70x70 px, masks-input matcher, FastSAM stand-in at 128 px); the int8 copy adds NNCF QDQ
backbones (``tests.runtime.sessions.int8_copy``).
"""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest

pytest.importorskip(
    "openvino", reason="openvino not installed (pip install 'omama[openvino]'; CI installs it)"
)
torch = pytest.importorskip("torch")
torch.set_num_threads(1)

from runtime import rle  # noqa: E402
from runtime.clikit import run_app  # noqa: E402
from runtime.jsonrecords import from_json  # noqa: E402
from runtime.manifest import VerificationRecord, load_manifest  # noqa: E402
from runtime.sessions import OpenVinoSession, OrtSession, bf16_unsupported  # noqa: E402
from runtime.verification.golden import read_golden  # noqa: E402
from runtime.verification.replay import missing_verification  # noqa: E402
from tests.runtime.assets import EGO, EXO  # noqa: E402

MODELS = ("backbone_exo", "backbone_ego", "matcher", "fastsam")
needs_bf16 = pytest.mark.skipif(bf16_unsupported() is not None, reason="no bfloat16 units here")


def omama_run(capsys, *argv) -> tuple[int, str, str]:
    from runtime.cli import app

    code = run_app(app, [str(a) for a in argv], prog_name="omama-run")
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture()
def copy(assets, tmp_path):
    target = tmp_path / "artifacts"
    shutil.copytree(assets.random, target)
    return target


@pytest.fixture(scope="module")
def int8_folder(assets, tmp_path_factory):
    pytest.importorskip("nncf")
    from tests.runtime.sessions.int8_copy import int8_copy

    return int8_copy(assets.random, tmp_path_factory.mktemp("int8") / "artifacts")


def _sessions(manifest, model, path=None):
    path = path or manifest.path_of(manifest.select(model))
    return OrtSession(path, threads=1), OpenVinoSession(path, threads=1)


def test_openvino_fp32_matches_onnxruntime_on_every_model(assets):
    manifest = load_manifest(assets.random)
    assert set(manifest.role_models().values()) == {
        "backbone_exo", "backbone_ego", "matcher", "fastsam"
    }  # fmt: skip
    for model in manifest.role_models().values():
        _, cases = read_golden(manifest.path_of(manifest.golden_of(model)))
        ort, ov = _sessions(manifest, model)
        assert [i.name for i in ov.inputs] == [i.name for i in ort.inputs]
        assert [o.name for o in ov.outputs] == [o.name for o in ort.outputs]
        for case in cases:
            want, got = ort.infer(case.feeds()), ov.infer(case.feeds())
            for name, array in want.items():
                assert got[name].shape == array.shape and got[name].dtype == array.dtype
                err = float(np.abs(got[name].astype(np.float64) - array).max(initial=0.0))
                peak = max(1.0, float(np.abs(array).max(initial=0.0)))
                # Measured: features 2.5e-6, similarities 1e-6, FastSAM 6e-9 of the peak.
                assert err / peak < 2e-5, (model, name, err)
            if model == "matcher":
                assert np.array_equal(
                    got["similarities"].argmax(-1), want["similarities"].argmax(-1)
                )


def test_matcher_takes_any_number_of_queries_and_candidates(assets):
    manifest = load_manifest(assets.random)
    _, cases = read_golden(manifest.path_of(manifest.golden_of("matcher")))
    feeds = max((c.feeds() for c in cases), key=lambda f: f["dst_masks"].shape[1])
    n_all, b_all = feeds["dst_masks"].shape[1], feeds["src_mask"].shape[0]
    assert n_all >= 24 and b_all >= 1
    ort, ov = _sessions(manifest, "matcher")
    spec = {i.name: i.shape for i in ov.inputs}
    assert spec["dst_masks"][1] is None and spec["src_mask"][0] is None
    for b, n in ((b_all, n_all), (1, 1), (b_all, 5), (1, n_all - 1), (b_all, 2)):
        cut = dict(feeds)
        cut["src_mask"], cut["src_box"] = feeds["src_mask"][:b], feeds["src_box"][:b]
        cut["dst_masks"], cut["dst_boxes"] = feeds["dst_masks"][:, :n], feeds["dst_boxes"][:, :n]
        got, want = ov.infer(cut)["similarities"], ort.infer(cut)["similarities"]
        assert got.shape == (b, n)
        np.testing.assert_allclose(got, want, atol=1e-5)


def _verify(capsys, folder, backend, precision):
    code, out, err = omama_run(capsys, "verify", folder, "--backend", backend, "--device", "cpu",
                               "--precision", precision, "--threads", "1")  # fmt: skip
    assert code == 0, err
    data = json.loads((folder / f"verify_{backend}_{precision}.json").read_text())
    records = [from_json(VerificationRecord, r, "verify json") for r in data["records"]]
    assert data["passed"] and all(r.passed for r in records)
    last = out.strip().splitlines()[-1]
    assert last.startswith("verified: ") and f" checks on {backend} cpu {precision};" in last
    # One record per model file (an int8 run may add whole-pipeline records after them).
    return [r for r in records if r.model in MODELS]


@pytest.mark.parametrize("precision", ["fp32", pytest.param("bf16", marks=needs_bf16)])
def test_verify_on_openvino_passes_and_vouches_for_its_runs(copy, capsys, caplog, precision):
    from runtime.pipeline import Pipeline

    with caplog.at_level(logging.WARNING, logger="runtime.verification.replay"):
        Pipeline(copy, backend="openvino", device="cpu", precision=precision).close()
    assert (f"omama-run verify {copy} --backend openvino --device cpu --precision {precision}"
            in caplog.text)  # fmt: skip
    records = _verify(capsys, copy, "openvino", precision)
    assert sorted(r.file for r in records) == sorted(f"{m}.onnx" for m in MODELS)  # fp32 files
    # bf16 computes the backbones in bfloat16, the matcher and FastSAM in f32 (see
    # openvino_arithmetic).
    arithmetic = {
        model: "bf16" if precision == "bf16" and model.startswith("backbone_") else "f32"
        for model in MODELS
    }
    for record in records:
        assert (record.backend, record.device, record.precision) == ("openvino", "cpu", precision)
        assert record.providers[0].startswith("OpenVINO ")
        assert record.providers[1] == f"inference precision {arithmetic[record.model]}"
    with Pipeline(copy, backend="openvino", device="cpu", precision=precision) as pipe:
        files = [load_manifest(copy).run_file(m, "onnx", precision).path
                 for m in pipe.manifest.role_models().values()]  # fmt: skip
        assert missing_verification(pipe.manifest, pipe.plan, files) is None
        sessions = pipe.describe()["sessions"].values()
        assert {s["model"]: s["providers"][1] for s in sessions} == {
            model: f"inference precision {value}" for model, value in arithmetic.items()
        }
    if precision == "bf16":  # rounded, measurably, but within the bf16 tolerances
        feats = next(r for r in records if r.file == "backbone_ego.onnx").checks[0]
        assert 1e-4 < feats.value < feats.tolerance


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_int8_runs_the_int8_files_and_the_float_ones_kept(int8_folder, capsys, backend):
    records = _verify(capsys, int8_folder, backend, "int8")
    assert sorted(r.file for r in records) == [
        "backbone_ego_int8.onnx", "backbone_exo_int8.onnx", "fastsam.onnx", "matcher.onnx"
    ]  # fmt: skip
    if backend == "openvino":  # int8 kernels, the float rest in f32
        assert {r.providers[1] for r in records} == {"inference precision f32"}
    for record in records:
        if record.file.startswith("backbone"):  # quantized: off fp32, within int8's bounds
            check = record.checks[0]
            assert 1e-3 < check.value < check.tolerance, (record.file, check)


@pytest.fixture(scope="module")
def pair_inputs(assets, tmp_path_factory):
    """Per frame 0, 2, 4: the exo and ego images, the query masks of every object, and the
    ego candidates ONNX Runtime's FastSAM finds (so that every run chooses among the same
    masks: bf16 FastSAM may keep a box more or less, which shifts the indices)."""
    import cv2

    from runtime.candidates import Candidates, write_candidates
    from runtime.egoexo import ProcessedRoot
    from runtime.pipeline import Pipeline
    from runtime.video import VideoReader

    folder = tmp_path_factory.mktemp("pair_inputs")
    index = ProcessedRoot(assets.root)
    inputs = {}
    with (
        VideoReader(assets.video(EXO)) as src,
        VideoReader(assets.video(EGO)) as dst,
        Pipeline(assets.weights, backend="onnxruntime", device="cpu", threads=1) as pipe,
    ):
        for frame in (0, 2, 4):
            (folder / str(frame)).mkdir()
            src_png, dst_png = folder / f"{frame}/exo.png", folder / f"{frame}/ego.png"
            dst_rgb = dst.read(frame)
            cv2.imwrite(str(src_png), src.read(frame)[:, :, ::-1])
            cv2.imwrite(str(dst_png), dst_rgb[:, :, ::-1])
            queries = []
            for obj in index.objects(assets.take):
                mask = index.mask_rle(assets.take, obj, EXO, frame)
                if mask is not None:
                    queries.append(folder / f"{frame}/{obj.replace(' ', '_')}.png")
                    cv2.imwrite(str(queries[-1]), rle.decode(mask) * 255)
            found = pipe.encode_dst(dst_rgb).candidates
            masks = np.stack([found.mask(i) for i in range(len(found))])
            candidates = folder / f"{frame}/{frame}_masks.npz"
            write_candidates(candidates, folder / f"{frame}/{frame}_boxes.npy",
                             Candidates.from_masks(masks))  # fmt: skip
            inputs[frame] = (src_png, dst_png, queries, candidates)
    return inputs


def _pair(capsys, artifacts, inputs, out, backend, precision):
    src, dst, queries, candidates = inputs
    argv = ["pair", src, dst, *[a for q in queries for a in ("--query", q)], "--candidates",
            candidates, "--artifacts", artifacts, "--backend", backend, "--device", "cpu",
            "--precision", precision, "--threads", "1", "--out", out]  # fmt: skip
    code, _, err = omama_run(capsys, *argv)
    assert code == 0, err
    return json.loads((out / "result.json").read_text())


@pytest.mark.parametrize("frame", [0, 2, 4])
def test_pair_on_openvino_chooses_what_onnxruntime_chooses(
    assets, pair_inputs, tmp_path, capsys, frame
):
    """The weights export: its similarities spread over candidates (the random-init one's
    masks-input matcher scores every candidate alike, where any backend picks the first)."""
    inputs = pair_inputs[frame]
    want = _pair(capsys, assets.weights, inputs, tmp_path / "ort", "onnxruntime", "fp32")
    precisions = ["fp32", "bf16"] if bf16_unsupported() is None else ["fp32"]
    for precision in precisions:
        got = _pair(capsys, assets.weights, inputs, tmp_path / precision, "openvino", precision)
        assert got["backend"] == "openvino" and len(got["objects"]) == len(inputs[2]) >= 2
        for a, b in zip(got["objects"], want["objects"], strict=True):
            assert a["candidates"] == b["candidates"] > 100
            assert a["candidate"] == b["candidate"], (precision, a["name"], a["top5"], b["top5"])
            similarity = a["top5"][0]["similarity"]
            # bf16 features feed an f32 matcher: measured 2.2e-4 at most.
            bound = 2e-3 if precision == "bf16" else 1e-5
            assert similarity == pytest.approx(b["top5"][0]["similarity"], abs=bound)
