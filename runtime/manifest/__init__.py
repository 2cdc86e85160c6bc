"""The artifacts folder contract: ``manifest.json`` and the files it lists, as typed records.

``omama export`` writes an artifacts folder; ``omama-run`` reads it with nothing else::

    artifacts/
      manifest.json                 this package's schema (``format: omama.artifacts``)
      backbone_<kind>.onnx          one per view: image (B, 3, H, W) -> feats (B, 768, h, w)
      matcher.onnx                  descriptor pooling + matcher -> similarities (B, N)
      fastsam.onnx                  FastSAM (ultralytics export, NMS in the graph or not)
      *_fp16.onnx, *_fp16.engine    fp16 variants and TensorRT engines
      golden/<model>.npz            golden inputs and torch fp32 outputs (``omama-run verify``)
      verify_<backend>_<precision>.json   what ``omama-run verify`` measured on a machine

The manifest is a tree of frozen dataclasses (``records.py``, :class:`Manifest` at the
root). Every field has a type, and :func:`load_manifest` checks each one while it reads the
JSON (``runtime.jsonrecords``): a missing or ill-typed field is one :class:`OmamaError` naming
the file and the field's path
(``manifest.json: matcher.src_grid must be a list of 2 integers, got 'x'``). Code outside
this package reads attributes, never the JSON dict.

``schema_version`` 3 (this one) names the views ``src``/``dst`` and their camera kind
``kind``; version 2 introduced these records in place of the free-form dicts of version 1.
A folder of an older version is refused with the command that re-exports it.

:func:`check_artifacts` (``folder.py``, which also reads and writes the folder) refuses a
folder whose files do not match the manifest (missing file, size or sha256 mismatch), whose
manifest disagrees with the facts the export stamped into each ONNX file's metadata or with
the graphs' shapes (``facts.py``, reading files with ``onnx_header.py``), or whose export
verification failed, with one message that lists what differs. ``signing.py`` signs a
folder and verifies its signature (``omama export --sign``, ``omama-run --trust``).

The names below are the package's API.
"""

from runtime.manifest.facts import FACT_PREFIX, cross_check, file_facts
from runtime.manifest.folder import (
    artifact_differences,
    check_artifacts,
    file_entry,
    file_ref,
    load_manifest,
    sha256_file,
    write_manifest,
)
from runtime.manifest.records import (
    DIRECTIONS,
    FILE_FORMATS,
    FORMAT,
    MANIFEST_NAME,
    MATCHER_INPUTS,
    PRECISIONS,
    ROLES,
    RUN_PRECISIONS,
    SCHEMA_VERSION,
    WEIGHT_PROFILES,
    ArtifactFile,
    BackboneRecord,
    CalibrationRecord,
    CheckRecord,
    DescriptorSpec,
    Dim,
    EngineRecord,
    EnginesRecord,
    FastSAMSpec,
    FileRef,
    GoldenFile,
    GraphRecord,
    InputDecision,
    Manifest,
    MatcherSpec,
    NmsDecision,
    NmsSettings,
    PreprocessSpec,
    QuantizationRecord,
    TensorSpec,
    ToolsRecord,
    VerificationRecord,
    VerificationSection,
    ViewSpec,
    WeightsRecord,
    describe_check,
    format_value,
)

__all__ = [
    "ArtifactFile",
    "BackboneRecord",
    "CalibrationRecord",
    "CheckRecord",
    "DIRECTIONS",
    "DescriptorSpec",
    "Dim",
    "EngineRecord",
    "FACT_PREFIX",
    "EnginesRecord",
    "FILE_FORMATS",
    "FORMAT",
    "FastSAMSpec",
    "FileRef",
    "GoldenFile",
    "GraphRecord",
    "InputDecision",
    "MANIFEST_NAME",
    "MATCHER_INPUTS",
    "Manifest",
    "MatcherSpec",
    "NmsDecision",
    "NmsSettings",
    "PRECISIONS",
    "PreprocessSpec",
    "QuantizationRecord",
    "ROLES",
    "RUN_PRECISIONS",
    "SCHEMA_VERSION",
    "TensorSpec",
    "ToolsRecord",
    "VerificationRecord",
    "VerificationSection",
    "ViewSpec",
    "WEIGHT_PROFILES",
    "WeightsRecord",
    "artifact_differences",
    "check_artifacts",
    "cross_check",
    "describe_check",
    "file_entry",
    "file_facts",
    "file_ref",
    "format_value",
    "load_manifest",
    "sha256_file",
    "write_manifest",
]
