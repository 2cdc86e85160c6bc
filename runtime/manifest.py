"""The artifacts folder contract: ``manifest.json`` and the model files it lists (torch-free).

``omama export`` writes an artifacts folder; ``omama-run`` reads it with nothing else::

    artifacts/
      manifest.json                 this module's schema (``format: omama.artifacts``)
      backbone_<view>.onnx          one per view: image (B, 3, H, W) -> feats (B, 768, h, w)
      matcher.onnx                  descriptor pooling + matcher -> similarities (B, N)
      fastsam.onnx                  FastSAM raw outputs (ultralytics export)
      *_fp16.onnx, *_fp16.engine    optional fp16 variants and TensorRT engines

The manifest describes everything inference needs: the direction, image size and token
grid per view, preprocessing (patch size, normalisation), descriptor parameters
(reduction, context), the matcher's input form, FastSAM's parameters, and for every file
its sha256, size, precision, input/output names with shapes (dynamic axes as strings) and
dtypes, plus the tools that produced it (engines: TensorRT version and GPU name, since
engines are not portable) and the parity results of the export's verification.

:func:`verify_artifacts` refuses a folder whose files do not match the manifest (missing
file, size or sha256 mismatch, failed verification) with one message listing what differs.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from runtime.atomic import write_json
from runtime.errors import OmamaError

MANIFEST_NAME = "manifest.json"
FORMAT = "omama.artifacts"
SCHEMA_VERSION = 1
FILE_FORMATS = ("onnx", "tensorrt")
PRECISIONS = ("fp32", "fp16")
MATCHER_INPUTS = ("weights", "masks")
_CHUNK_BYTES = 1 << 20


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: ``shape`` holds ints and strings (dynamic axes, e.g. "N")."""

    name: str
    shape: list[int | str]
    dtype: str  # numpy name: "float32", "float16", "uint8", ...

    @classmethod
    def from_dict(cls, data: dict) -> TensorSpec:
        return cls(str(data["name"]), list(data["shape"]), str(data["dtype"]))


@dataclass(frozen=True)
class FileRef:
    """A file of the folder with its size and sha256 (e.g. an ONNX external-data file)."""

    path: str
    sha256: str
    size_bytes: int

    @classmethod
    def from_dict(cls, data: dict) -> FileRef:
        return cls(str(data["path"]), str(data["sha256"]), int(data["size_bytes"]))


@dataclass(frozen=True)
class ArtifactFile:
    """One model file: an ONNX graph or a TensorRT engine of one model at one precision.

    ``path`` is relative to the artifacts folder. ``engine`` (engines only) records the
    TensorRT version, GPU name and compute capability it was built for and its
    optimisation profiles; ``graph`` the opset and node counts; ``parity`` the result of
    the export's verification of this file.
    """

    path: str
    model: str
    format: str  # "onnx" | "tensorrt"
    precision: str  # "fp32" | "fp16"
    sha256: str
    size_bytes: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    opset: int | None = None
    external_data: list[FileRef] = field(default_factory=list)
    graph: dict[str, Any] = field(default_factory=dict)
    engine: dict[str, Any] | None = None
    parity: dict[str, Any] | None = None

    @classmethod
    def from_dict(cls, data: dict) -> ArtifactFile:
        return cls(
            path=str(data["path"]),
            model=str(data["model"]),
            format=str(data["format"]),
            precision=str(data["precision"]),
            sha256=str(data["sha256"]),
            size_bytes=int(data["size_bytes"]),
            inputs=[TensorSpec.from_dict(t) for t in data["inputs"]],
            outputs=[TensorSpec.from_dict(t) for t in data["outputs"]],
            opset=None if data.get("opset") is None else int(data["opset"]),
            external_data=[FileRef.from_dict(f) for f in data.get("external_data", [])],
            graph=dict(data.get("graph") or {}),
            engine=data.get("engine"),
            parity=data.get("parity"),
        )

    def file_refs(self) -> list[FileRef]:
        """The file itself and its external-data files."""
        return [FileRef(self.path, self.sha256, self.size_bytes), *self.external_data]


@dataclass(frozen=True)
class ViewSpec:
    """One camera view: which camera kind, the model input size and its token grid."""

    camera: str  # "ego" | "exo"
    image_size: tuple[int, int]  # (H, W) px fed to the backbone
    feat_grid: tuple[int, int]  # (h, w) tokens

    @classmethod
    def from_dict(cls, data: dict) -> ViewSpec:
        return cls(
            str(data["camera"]),
            (int(data["image_size"][0]), int(data["image_size"][1])),
            (int(data["feat_grid"][0]), int(data["feat_grid"][1])),
        )

    def to_dict(self) -> dict:
        return {
            "camera": self.camera,
            "image_size": list(self.image_size),
            "feat_grid": list(self.feat_grid),
        }


@dataclass
class Manifest:
    """The parsed ``manifest.json`` of an artifacts folder.

    Sections the runtime computes with are typed (views, files); the others stay plain
    dicts. Keys written by ``omama export``:

    - ``preprocess``: ``patch_size``, ``color`` ("RGB"), ``layout``, ``scale`` (1/255),
      ``mean``, ``std``, ``image_resize``, ``mask_resize``;
    - ``descriptor``: ``reduction`` (4), ``context_px`` (100), ``feature_dim``,
      ``descriptor_dim``, ``query_box``, ``candidate_boxes``;
    - ``matcher``: ``model``, ``input`` ("weights" | "masks"), ``input_decision`` (the
      measurement behind it), ``inputs`` (name -> shape and meaning), ``attention``,
      ``dim``, ``heads``, ``src_grid``, ``dst_grid``, ``similarity``, ``confidence``,
      ``visible_threshold``, ``weights``;
    - ``fastsam``: ``included``, then ``model``, ``variant``, ``imgsz``, ``conf``, ``iou``,
      ``retina_masks``, ``max_det``, ``mask_coefficients``, ``nms_in_graph`` (true: the
      file runs NMS with ``conf`` / ``iou`` / ``max_det`` baked in, and the runtime may only
      raise conf), ``nms``, ``nms_decision`` (``requested``: auto | graph | runtime,
      ``settings``, ``baked``: the values read back from the graph, ``parity``: the in-graph
      parity numbers, ``reason``), ``input``, ``outputs``, ``exporter``, ``weights``;
    - ``backbone``: ``name``, ``description``, ``family``, ``embed_dim``,
      ``out_channels``, ``projection``, ``projection_seed`` (only when the weights file
      has no projection and the export seeded it), ``pos_resize``,
      ``architecture_overrides``, ``weights`` (file name and sha256, or ``{"random": true}``);
    - ``tools``: package versions, ``opset``, ``exporter``;
    - ``engines``: ``built``, ``note`` and ``reason`` or ``files``, ``tensorrt_version``,
      ``gpu_name``, ``timing_cache``;
    - ``verification``: ``verified``, ``seed`` (of random weights and parity inputs), then
      ``passed``, ``failures``, ``tolerances``, ``parity_sets``, ``checks`` (their number;
      each file's ``parity`` holds its own).
    """

    direction: str
    random_init: bool
    views: dict[str, ViewSpec]  # "source" / "destination"
    preprocess: dict[str, Any]
    descriptor: dict[str, Any]
    matcher: dict[str, Any]
    fastsam: dict[str, Any]
    backbone: dict[str, Any]
    files: list[ArtifactFile]
    tools: dict[str, Any]
    engines: dict[str, Any]
    verification: dict[str, Any]
    created_utc: str = ""
    omama_version: str = ""
    format: str = FORMAT
    schema_version: int = SCHEMA_VERSION
    root: Path | None = None  # folder it was loaded from (not serialised)

    # -- queries ---------------------------------------------------------------------------
    def models(self) -> list[str]:
        """Model names in file order, each once (``backbone_exo``, ``matcher``, ...)."""
        return list(dict.fromkeys(f.model for f in self.files))

    def select(self, model: str, format: str = "onnx", precision: str = "fp32") -> ArtifactFile:
        """The file of ``model`` in ``format`` at ``precision``; OmamaError naming what exists."""
        for entry in self.files:
            if (entry.model, entry.format, entry.precision) == (model, format, precision):
                return entry
        have = ", ".join(f"{f.model}/{f.format}/{f.precision}" for f in self.files) or "none"
        raise OmamaError(
            f"artifacts have no {format} {precision} file for {model!r} (available: {have})"
        )

    def path_of(self, entry: ArtifactFile) -> Path:
        """Absolute path of a file entry (needs a manifest loaded from a folder)."""
        if self.root is None:
            raise OmamaError("this manifest was not loaded from a folder")
        return self.root / entry.path

    def backbone_model(self, role: str) -> str:
        """Backbone model name of ``role`` "source" or "destination": ``backbone_<camera>``."""
        return f"backbone_{self.views[role].camera}"

    # -- (de)serialisation -----------------------------------------------------------------
    def to_dict(self) -> dict:
        data = {
            "format": self.format,
            "schema_version": self.schema_version,
            "omama_version": self.omama_version,
            "created_utc": self.created_utc,
            "direction": self.direction,
            "random_init": self.random_init,
            "views": {role: view.to_dict() for role, view in self.views.items()},
            "preprocess": self.preprocess,
            "descriptor": self.descriptor,
            "matcher": self.matcher,
            "fastsam": self.fastsam,
            "backbone": self.backbone,
            "files": [_file_to_dict(f) for f in self.files],
            "tools": self.tools,
            "engines": self.engines,
            "verification": self.verification,
        }
        return data

    @classmethod
    def from_dict(cls, data: dict, source: str = MANIFEST_NAME) -> Manifest:
        """Parse and validate; OmamaError naming ``source`` and the first problem."""
        if not isinstance(data, dict):
            raise OmamaError(f"{source} must hold a JSON object")
        if data.get("format") != FORMAT:
            raise OmamaError(f"{source} is not an omama artifacts manifest (format {FORMAT!r})")
        version = data.get("schema_version")
        if not isinstance(version, int) or version > SCHEMA_VERSION or version < 1:
            raise OmamaError(
                f"{source} has schema_version {version!r}; this omama reads versions 1 to "
                f"{SCHEMA_VERSION} (re-export, or update omama)"
            )
        try:
            manifest = cls(
                direction=str(data["direction"]),
                random_init=bool(data["random_init"]),
                views={role: ViewSpec.from_dict(v) for role, v in data["views"].items()},
                preprocess=dict(data["preprocess"]),
                descriptor=dict(data["descriptor"]),
                matcher=dict(data["matcher"]),
                fastsam=dict(data["fastsam"]),
                backbone=dict(data.get("backbone") or {}),
                files=[ArtifactFile.from_dict(f) for f in data["files"]],
                tools=dict(data.get("tools") or {}),
                engines=dict(data.get("engines") or {}),
                verification=dict(data.get("verification") or {}),
                created_utc=str(data.get("created_utc", "")),
                omama_version=str(data.get("omama_version", "")),
                format=FORMAT,
                schema_version=version,
            )
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            what = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc)
            raise OmamaError(f"{source} is malformed: {what}") from exc
        manifest.validate(source)
        return manifest

    def validate(self, source: str = MANIFEST_NAME) -> None:
        """Check the values the runtime relies on; OmamaError naming the first bad one."""
        problems: list[str] = []
        if self.direction not in ("exo2ego", "ego2exo"):
            problems.append(f"direction {self.direction!r} is not exo2ego or ego2exo")
        if set(self.views) != {"source", "destination"}:
            problems.append(f"views must be 'source' and 'destination', got {sorted(self.views)}")
        for key in ("patch_size", "mean", "std"):
            if key not in self.preprocess:
                problems.append(f"preprocess.{key} is missing")
        for key in ("reduction", "context_px"):
            if key not in self.descriptor:
                problems.append(f"descriptor.{key} is missing")
        if self.matcher.get("input") not in MATCHER_INPUTS:
            problems.append(f"matcher.input must be one of {MATCHER_INPUTS}")
        seen: set[str] = set()
        for entry in self.files:
            if entry.format not in FILE_FORMATS:
                problems.append(f"{entry.path}: format {entry.format!r} not in {FILE_FORMATS}")
            if entry.precision not in PRECISIONS:
                problems.append(f"{entry.path}: precision {entry.precision!r} not in {PRECISIONS}")
            for ref in entry.file_refs():
                if Path(ref.path).is_absolute() or ".." in Path(ref.path).parts:
                    problems.append(f"{ref.path}: file paths must stay inside the folder")
                if ref.path in seen:
                    problems.append(f"{ref.path} is listed twice")
                seen.add(ref.path)
        if problems:
            raise OmamaError(f"{source} is invalid: " + "; ".join(problems))


def _file_to_dict(entry: ArtifactFile) -> dict:
    data = asdict(entry)
    if not entry.external_data:
        data.pop("external_data")
    if entry.engine is None:
        data.pop("engine")
    return data


def file_entry(
    root: str | os.PathLike,
    path: str,
    model: str,
    format: str,
    precision: str,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    external_data: list[str] = (),
    **extra: Any,
) -> ArtifactFile:
    """An :class:`ArtifactFile` for ``root/path`` with its sha256 and size computed now.

    ``external_data``: paths (relative to ``root``) of files the graph loads its weights
    from. ``extra``: ``opset``, ``graph``, ``engine``, ``parity``.
    """
    root = Path(root)
    target = root / path
    if not target.is_file():
        raise OmamaError(f"cannot list {target} in the manifest: no such file")
    refs = [FileRef(p, sha256_file(root / p), (root / p).stat().st_size) for p in external_data]
    return ArtifactFile(
        path=path,
        model=model,
        format=format,
        precision=precision,
        sha256=sha256_file(target),
        size_bytes=target.stat().st_size,
        inputs=list(inputs),
        outputs=list(outputs),
        external_data=refs,
        **extra,
    )


def write_manifest(root: str | os.PathLike, manifest: Manifest) -> Path:
    """Validate and write ``root/manifest.json`` atomically; returns its path."""
    manifest.validate()
    path = Path(root) / MANIFEST_NAME
    write_json(path, manifest.to_dict(), indent=2)
    return path


def load_manifest(root: str | os.PathLike) -> Manifest:
    """Parse ``root/manifest.json`` (no file checks; see :func:`verify_artifacts`)."""
    root = Path(root)
    path = root / MANIFEST_NAME
    if not root.is_dir():
        raise OmamaError(f"artifacts folder not found: {root} (run `omama export` first)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise OmamaError(f"{root} has no {MANIFEST_NAME}: not an omama artifacts folder") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OmamaError(f"{path} is not readable JSON: {exc}") from exc
    manifest = Manifest.from_dict(data, source=str(path))
    manifest.root = root
    return manifest


def artifact_differences(manifest: Manifest, check_hashes: bool = True) -> list[str]:
    """What differs between the manifest and the files of its folder (empty when all match).

    Checks existence and size of every listed file (external data included) and, with
    ``check_hashes``, their sha256.
    """
    root = manifest.root
    if root is None:
        raise OmamaError("artifact_differences needs a manifest loaded from a folder")
    differences: list[str] = []
    for entry in manifest.files:
        for ref in entry.file_refs():
            target = root / ref.path
            if not target.is_file():
                differences.append(f"{ref.path} is missing")
                continue
            size = target.stat().st_size
            if size != ref.size_bytes:
                differences.append(
                    f"{ref.path} has {size} bytes, the manifest says {ref.size_bytes}"
                )
                continue
            if check_hashes:
                digest = sha256_file(target)
                if digest != ref.sha256:
                    differences.append(
                        f"{ref.path} sha256 {digest[:12]}... differs from the manifest's "
                        f"{ref.sha256[:12]}..."
                    )
    return differences


def verify_artifacts(root: str | os.PathLike, check_hashes: bool = True) -> Manifest:
    """Load the manifest of ``root`` and refuse the folder unless its files match it.

    Raises OmamaError listing every missing file and every size/sha256 mismatch, or
    naming the failed checks when the export's own verification failed. A folder exported
    with ``--no-verify`` is accepted (``manifest.verification["verified"]`` is False).
    """
    manifest = load_manifest(root)
    differences = artifact_differences(manifest, check_hashes=check_hashes)
    if differences:
        raise OmamaError(
            f"artifacts folder {manifest.root} does not match its manifest: "
            + "; ".join(differences)
            + " (re-export with `omama export`)"
        )
    verification = manifest.verification
    if verification.get("verified") and not verification.get("passed", False):
        failed = ", ".join(verification.get("failures", [])) or "see manifest.json"
        raise OmamaError(
            f"artifacts folder {manifest.root} failed its export verification ({failed}); "
            "re-export, or fix the model"
        )
    return manifest
