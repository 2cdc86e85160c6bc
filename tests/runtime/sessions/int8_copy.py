"""A copy of an artifacts folder with int8 QDQ backbones, for the int8 run tests.

The real ``omama export --int8`` (NNCF, calibrated on frames) lives in ``export/``; the
runtime only needs files of its shape: static QDQ ONNX files (``<model>_int8.onnx``) with
their manifest entries and stamped facts. ``nncf.quantize`` (transformer preset, as the
export uses) makes them here in about a second each, calibrated on the golden inputs plus a
few noise images. (ONNX Runtime's ``quantize_static`` QDQ files were tried first: OpenVINO
runs their int8 patch-embedding convolution 3-4x further from fp32 than ONNX Runtime does,
close to the int8 feature tolerance.) The matcher and FastSAM stay in float, as an int8
export may keep them (``Manifest.run_file`` then gives their fp32 files).
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np

from runtime.manifest import (
    CalibrationRecord,
    QuantizationRecord,
    file_facts,
    load_manifest,
    sha256_file,
    write_manifest,
)
from runtime.verification.golden import read_golden

QUANTIZED = ("backbone_exo", "backbone_ego")


def int8_copy(artifacts: Path, target: Path) -> Path:
    """Copy ``artifacts`` to ``target`` and add int8 files of its backbones."""
    import nncf
    import onnx

    shutil.copytree(artifacts, target)
    manifest = load_manifest(target)
    for model in QUANTIZED:
        fp32 = manifest.select(model)
        _, cases = read_golden(manifest.path_of(manifest.golden_of(model)))
        feeds = [case.feeds() for case in cases]
        rng = np.random.default_rng(0)
        name, shape = fp32.inputs[0].name, fp32.inputs[0].concrete_shape()
        feeds += [{name: rng.normal(0, 1, shape).astype(np.float32)} for _ in range(4)]
        path = f"{model}_int8.onnx"
        proto = nncf.quantize(
            onnx.load(str(manifest.path_of(fp32))), nncf.Dataset(feeds), subset_size=len(feeds),
            model_type=nncf.ModelType.TRANSFORMER,
        )  # fmt: skip
        entry = dataclasses.replace(
            fp32, path=path, precision="int8", sha256="", size_bytes=0, external_data=(),
            graph=None, engine=None, quantization=_record(fp32.path, nncf.__version__),
        )  # fmt: skip
        del proto.metadata_props[:]
        onnx.helper.set_model_props(proto, file_facts(manifest, entry))
        onnx.save(proto, str(target / path))
        size = (target / path).stat().st_size
        entry = dataclasses.replace(entry, sha256=sha256_file(target / path), size_bytes=size)
        manifest.files.append(entry)
    write_manifest(target, manifest)
    return target


def _record(from_file: str, version: str) -> QuantizationRecord:
    return QuantizationRecord(
        from_file=from_file,
        tool="nncf",
        tool_version=version,
        method="static QDQ (nncf.quantize, transformer preset)",
        calibration=CalibrationRecord(
            source="synthetic", frames={"golden+noise": 5}, representative=False
        ),
        calibration_method="nncf default (min-max statistics)",
    )
