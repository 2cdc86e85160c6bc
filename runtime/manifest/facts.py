"""The manifest's facts stamped into each ONNX file, and the cross-check of a folder.

``manifest.json`` is plain JSON beside the models: editing its ``direction``,
``random_init``, ``descriptor.context_px`` or a random backbone's weight profile used to be
accepted, and the runs mislabelled
(or miscomputed) their outputs. ``omama export`` therefore writes the values that decide
what a run computes or how it labels it (:data:`FACT_PATHS`, plus each file's model and
precision) into every ONNX file's ``metadata_props``, as ``omama.<manifest path>`` ->
JSON value (:func:`file_facts`). :func:`cross_check`, run whenever a folder is loaded for
running (:func:`runtime.manifest.check_artifacts`), compares the manifest with them and
with the graphs' own input and output shapes, and refuses any difference in one line.

What it cannot see: a TensorRT engine carries no metadata, so an engine is checked only
through the ONNX file it was built from (``engine.built_from``); and someone who rewrites
a manifest *and* the files' metadata consistently passes. Only a signature
(:mod:`runtime.manifest.signing`, ``omama-run --trust``) covers that.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from runtime.errors import OmamaError
from runtime.manifest.onnx_header import OnnxHeader, read_onnx_header
from runtime.manifest.records import MANIFEST_NAME, ArtifactFile, Manifest, TensorSpec

log = logging.getLogger(__name__)

FACT_PREFIX = "omama."
# Present in every stamped file: its absence marks a file exported before the stamps.
MARKER_KEY = FACT_PREFIX + "schema_version"
# Manifest fields (dotted paths into manifest.json) that every ONNX file records.
FACT_PATHS = (
    "schema_version",
    "direction",
    "random_init",
    "views.src.kind",
    "views.src.image_size",
    "views.src.feat_grid",
    "views.dst.kind",
    "views.dst.image_size",
    "views.dst.feat_grid",
    "preprocess.patch_size",
    "preprocess.mean",
    "preprocess.std",
    "descriptor.reduction",
    "descriptor.context_px",
    "descriptor.feature_dim",
    "descriptor.descriptor_dim",
    "matcher.input",
    "matcher.attention",
    "matcher.dim",
    "matcher.heads",
    "matcher.src_grid",
    "matcher.dst_grid",
    "matcher.visible_threshold",
    "matcher.weights.sha256",
    "backbone.name",
    "backbone.weights.sha256",
    # Random weights have no sha256: their profile (plain | outlier) says which ones they are.
    "backbone.weights.profile",
    "fastsam.included",
    "fastsam.imgsz",
    "fastsam.conf",
    "fastsam.iou",
    "fastsam.max_det",
    "fastsam.nms_in_graph",
    "fastsam.weights.sha256",
)
FILE_FACTS = ("model", "precision")  # per file: omama.file.model, omama.file.precision


def value_at(manifest: Manifest, path: str) -> Any:
    """The manifest's value at a dotted path (``views.src.image_size``), as plain JSON
    (lists, not tuples); None where a record on the way is absent."""
    value: Any = manifest
    for part in path.split("."):
        if value is None:
            break
        value = value.get(part) if isinstance(value, Mapping) else getattr(value, part)
    return json.loads(json.dumps(value))


def file_facts(manifest: Manifest, entry: ArtifactFile) -> dict[str, str]:
    """The ``metadata_props`` that ``omama export`` writes into ``entry``'s ONNX file:
    ``omama.<path>`` -> the JSON of the manifest's value."""
    facts = {path: value_at(manifest, path) for path in FACT_PATHS}
    facts |= {f"file.{name}": getattr(entry, name) for name in FILE_FACTS}
    return {FACT_PREFIX + key: json.dumps(value, sort_keys=True) for key, value in facts.items()}


# ------------------------------------------------------------------------- cross-check


def cross_check(manifest: Manifest) -> None:
    """Refuse a folder whose manifest disagrees with its ONNX files (their stamped facts and
    their graphs' shapes), in one line naming each field, the manifest's value and the
    file's; a folder exported before the stamps (no file has any) is accepted with one
    warning, a folder mixing stamped and unstamped files is refused."""
    headers = {
        entry.path: read_onnx_header(manifest.path_of(entry))
        for entry in manifest.files
        if entry.format == "onnx"
    }
    unreadable = [path for path, h in headers.items() if h is None]
    unstamped = [path for path, h in headers.items() if h and MARKER_KEY not in h.metadata]
    problems: list[str] = []
    if len(unreadable) + len(unstamped) < len(headers):  # some files are stamped
        if unstamped:
            problems.append(
                f"{_files(unstamped)} {'carries' if len(unstamped) == 1 else 'carry'} no omama "
                "metadata while the other files do: a file of an older export was mixed in"
            )
        problems += [f"{path} is not a readable ONNX file" for path in unreadable]
    elif headers:
        log.warning(
            "warning: %s was exported before omama stamped its ONNX files, so its manifest "
            "cannot be cross-checked against them (re-export with `omama export` to get it)",
            manifest.root,
        )
    problems += _fact_differences(manifest, headers)
    for entry in manifest.files:
        header = headers.get(entry.path)
        if header is not None:
            problems += _graph_differences(manifest, entry, header)
    problems += _engine_differences(manifest)
    if problems:
        shown = "; ".join(problems[:4])
        more = f" (+{len(problems) - 4} more)" if len(problems) > 4 else ""
        raise OmamaError(
            f"artifacts folder {manifest.root}: {MANIFEST_NAME} does not match its files: "
            f"{shown}{more} (the manifest was edited or a file comes from another export; "
            "re-export with `omama export`)"
        )


def _fact_differences(manifest: Manifest, headers: Mapping[str, OnnxHeader | None]) -> list[str]:
    """``field: manifest.json says X, a.onnx and b.onnx say Y`` per differing field."""
    entries = {entry.path: entry for entry in manifest.files}
    stamped = [p for p, h in headers.items() if h is not None and MARKER_KEY in h.metadata]
    differing: dict[tuple[str, str, str], list[str]] = {}
    for path in stamped:
        header = headers[path]
        expected = file_facts(manifest, entries[path])
        for key, recorded in header.metadata.items():
            if key not in expected or _same(recorded, expected[key]):
                continue
            field = key.removeprefix(FACT_PREFIX)
            if field.startswith("file."):
                field = f"files[{path}].{field.removeprefix('file.')}"
            differing.setdefault((field, expected[key], recorded), []).append(path)
    return [
        f"{field}: {MANIFEST_NAME} says {ours}, {_who(paths, len(stamped))} {theirs}"
        for (field, ours, theirs), paths in differing.items()
    ]


def _who(paths: list[str], stamped: int) -> str:
    if len(paths) == stamped > 1:
        return f"all {stamped} ONNX files say"
    return f"{_files(paths)} {'says' if len(paths) == 1 else 'say'}"


def _same(recorded: str, expected: str) -> bool:
    try:
        return json.loads(recorded) == json.loads(expected)
    except ValueError:
        return False


def _files(paths: list[str]) -> str:
    return paths[0] if len(paths) == 1 else f"{', '.join(paths[:-1])} and {paths[-1]}"


def expected_shapes(manifest: Manifest, model: str) -> dict[str, tuple[tuple, str]]:
    """Tensor name -> (shape the manifest implies, the manifest field it comes from) for a
    model's graph; None dims are not implied (dynamic axes)."""
    views, dim = manifest.views, manifest.descriptor.feature_dim
    if model.startswith("backbone_"):
        role = next((r for r, v in views.items() if f"backbone_{v.kind}" == model), None)
        if role is None:
            return {}
        view = views[role]
        return {
            "image": ((None, 3, *view.image_size), f"views.{role}.image_size"),
            "feats": ((None, dim, *view.feat_grid), f"views.{role}.feat_grid"),
        }
    if model == manifest.matcher.model:
        src, dst = views["src"], views["dst"]
        shapes = {
            "src_feats": ((1, dim, *src.feat_grid), "views.src.feat_grid"),
            "dst_feats": ((1, dim, *dst.feat_grid), "views.dst.feat_grid"),
        }
        if manifest.matcher.input == "masks":
            return shapes | {
                "src_mask": ((None, 1, *src.image_size), "views.src.image_size"),
                "dst_masks": ((1, None, *dst.image_size), "views.dst.image_size"),
            }
        tokens = (src.feat_grid[0] * src.feat_grid[1], dst.feat_grid[0] * dst.feat_grid[1])
        return shapes | {
            "src_weights": ((None, 1, 2, tokens[0]), "views.src.feat_grid"),
            "dst_weights": ((1, None, 2, tokens[1]), "views.dst.feat_grid"),
        }
    if manifest.fastsam.included and model == manifest.fastsam.model:
        size = manifest.fastsam.imgsz
        return {"images": ((1, 3, size, size), "fastsam.imgsz")}
    return {}


def _graph_differences(manifest: Manifest, entry: ArtifactFile, header: OnnxHeader) -> list[str]:
    """The manifest's record of ``entry``'s inputs and outputs, and the sizes its views and
    settings imply, against the graph's."""
    problems = []
    for what, recorded, actual in (
        ("inputs", entry.inputs, header.inputs),
        ("outputs", entry.outputs, header.outputs),
    ):
        if tuple(recorded) != tuple(actual):
            problems.append(
                f"files[{entry.path}].{what}: {MANIFEST_NAME} says {_describe(recorded)}, "
                f"the graph has {_describe(actual)}"
            )
    graph = {spec.name: spec for spec in (*header.inputs, *header.outputs)}
    for name, (shape, field) in expected_shapes(manifest, entry.model).items():
        spec = graph.get(name)
        if spec is not None and not _fits(shape, spec.shape):
            implied = "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"
            problems.append(
                f"{field}: {MANIFEST_NAME} implies {name} {implied}, {entry.path} has "
                f"{spec.describe()}"
            )
    return problems


def _fits(implied: tuple, actual: tuple) -> bool:
    """Every dim the manifest implies equals the graph's where the graph's is static."""
    if len(implied) != len(actual):
        return False
    return all(
        want is None or not isinstance(have, int) or have < 0 or want == have
        for want, have in zip(implied, actual, strict=True)
    )


def _describe(specs: tuple[TensorSpec, ...]) -> str:
    return "; ".join(spec.describe() for spec in specs) or "none"


def _engine_differences(manifest: Manifest) -> list[str]:
    """An engine is checked through the ONNX file it was built from: that file must be in the
    folder, of the same model, with the same inputs."""
    problems = []
    for entry in manifest.files:
        if entry.format != "tensorrt" or entry.engine is None or not entry.engine.built_from:
            continue
        source = next((f for f in manifest.files if f.path == entry.engine.built_from), None)
        if source is None:
            problems.append(
                f"files[{entry.path}].engine.built_from: {MANIFEST_NAME} names "
                f"{entry.engine.built_from}, which the folder does not list"
            )
        elif source.model != entry.model or tuple(source.inputs) != tuple(entry.inputs):
            problems.append(
                f"files[{entry.path}]: {MANIFEST_NAME} says model {entry.model!r}, but it was "
                f"built from {source.path} of model {source.model!r}"
                + ("" if source.model != entry.model else " with other inputs")
            )
    return problems
