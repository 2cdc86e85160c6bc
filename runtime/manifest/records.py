"""The typed records of ``manifest.json``: frozen dataclasses, :class:`Manifest` at the root.

Every field has a type, checked while the JSON is read (``runtime.jsonrecords``); code
outside this package reads attributes, never the JSON dict.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.errors import OmamaError
from runtime.jsonrecords import from_json, to_json
from runtime.manifest.verification_records import (  # re-exported: the manifest's records
    CheckRecord as CheckRecord,
)
from runtime.manifest.verification_records import GoldenFile as GoldenFile
from runtime.manifest.verification_records import VerificationRecord as VerificationRecord
from runtime.manifest.verification_records import VerificationSection as VerificationSection
from runtime.manifest.verification_records import describe_check as describe_check
from runtime.manifest.verification_records import format_value as format_value

MANIFEST_NAME = "manifest.json"
FORMAT = "omama.artifacts"
SCHEMA_VERSION = 3
FILE_FORMATS = ("onnx", "tensorrt")
# Precisions of model files; a run may also ask for bf16, which runs the fp32 files with
# bfloat16 arithmetic on a backend that offers it (OpenVINO on a CPU with AVX-512 BF16/AMX).
PRECISIONS = ("fp32", "fp16", "int8")
RUN_PRECISIONS = ("fp32", "fp16", "bf16", "int8")
WEIGHT_PROFILES = ("plain", "outlier")
MATCHER_INPUTS = ("weights", "masks")
DIRECTIONS = ("exo2ego", "ego2exo")
ROLES = ("src", "dst")

Dim = int | str | None


# ----------------------------------------------------------------------------- records


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output: ``shape`` holds ints for static dims and a name (e.g.
    ``"N"``) or None for dynamic ones; ``dtype`` is a numpy dtype name (``"float32"``)."""

    name: str
    shape: tuple[Dim, ...]
    dtype: str

    @property
    def dynamic(self) -> bool:
        return any(not isinstance(d, int) or d < 0 for d in self.shape)

    def concrete_shape(self, dims: typing.Mapping[str, int] | None = None, default: int = 1):
        """The shape with dynamic dims filled: by name from ``dims``, else ``default``."""
        dims = dims or {}
        return tuple(
            d
            if isinstance(d, int) and d >= 0
            else (int(dims.get(d, default)) if isinstance(d, str) else default)
            for d in self.shape
        )

    def describe(self) -> str:
        dims = ", ".join(
            "?" if d is None or (isinstance(d, int) and d < 0) else str(d) for d in self.shape
        )
        return f"{self.name} ({dims}) {self.dtype}"


@dataclass(frozen=True)
class FileRef:
    """A file of the folder with its size and sha256 (an ONNX external-data file, a golden
    file)."""

    path: str
    sha256: str
    size_bytes: int


@dataclass(frozen=True)
class WeightsRecord:
    """Where a model's weights came from.

    ``random``: a seeded random initialisation (``seed``; ``architecture`` names the
    random FastSAM network); otherwise the file ``file`` with ``sha256``.
    ``from_random_init``: that file holds random-init weights itself (a feature cache's
    ``backbone.safetensors``), with its ``seed``. ``profile``: the random weights' profile,
    ``plain`` or ``outlier`` (planted outlier channels and a high-norm token).
    """

    random: bool
    seed: int | None = None
    file: str | None = None
    sha256: str | None = None
    architecture: str | None = None
    from_random_init: bool = False
    profile: str = "plain"  # random weights: "plain" or "outlier" (WEIGHT_PROFILES)


@dataclass(frozen=True)
class EngineRecord:
    """What a TensorRT engine was built with (engines are tied to both)."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str = ""
    cuda_version: str | None = None
    built_from: str = ""
    precision_flags: tuple[str, ...] = ()
    fp32_pinned_layers: int = 0
    # One dict per optimisation profile: input name -> {"min", "opt", "max"} shapes.
    profiles: tuple[dict[str, dict[str, list[int]]], ...] = ()
    timing_cache: str | None = None
    build_s: float = 0.0
    version_compatible: bool = False
    hardware_compatible: bool = False


@dataclass(frozen=True)
class GraphRecord:
    """Structure of an ONNX file: opset, node counts before / after constant folding, the
    checks it passed; for fp16 variants, what the conversion kept in float32."""

    opset: int
    nodes_final: int
    nodes_exported: int | None = None
    folded_with: str = ""
    checker: str = "skipped"
    shape_inference: str = "skipped"
    converter: str | None = None
    fp32_ops: dict[str, int] = field(default_factory=dict)
    fp32_nodes_by_prefix: int = 0


@dataclass(frozen=True)
class CalibrationRecord:
    """What calibrated an int8 file: ``source`` ``frames`` (frames of a prepared split under
    ``path``), ``images`` (an image folder / cache at ``path``) or ``synthetic`` (generated
    frames: not representative, the export warns); ``frames`` per view kind (ego | exo) or
    per model input; ``takes`` how many takes they were sampled across; ``seed``."""

    source: str
    frames: dict[str, int]
    path: str | None = None
    takes: int | None = None
    seed: int = 0
    representative: bool = True


@dataclass(frozen=True)
class QuantizationRecord:
    """How an int8 file was made from its fp32 file (``from_file``): the ``tool`` and its
    version, the ``method`` (e.g. ``static QDQ, per-channel symmetric weights``), the
    activation calibration (``calibration_method``: MinMax, percentile, ...), the
    SmoothQuant-style scale migration (``smooth_quant_alpha``, None: off), the nodes kept
    in float (``kept_float``: name patterns, and why in ``kept_float_reason``) and the
    ``calibration`` data."""

    from_file: str
    tool: str
    tool_version: str
    method: str
    calibration: CalibrationRecord
    calibration_method: str = ""
    smooth_quant_alpha: float | None = None
    kept_float: tuple[str, ...] = ()
    kept_float_reason: str = ""
    weight_profile: str = "plain"


@dataclass(frozen=True)
class ArtifactFile:
    """One model file: an ONNX graph or a TensorRT engine of one model at one precision.

    ``path`` is relative to the artifacts folder; ``graph`` (ONNX) or ``engine`` (TensorRT)
    describe how it was made.
    """

    path: str
    model: str
    format: str  # "onnx" | "tensorrt"
    precision: str  # "fp32" | "fp16"
    sha256: str
    size_bytes: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    external_data: tuple[FileRef, ...] = ()
    graph: GraphRecord | None = None
    engine: EngineRecord | None = None
    quantization: QuantizationRecord | None = None  # int8 files: how they were made

    def file_refs(self) -> list[FileRef]:
        """The file itself and its external-data files."""
        return [FileRef(self.path, self.sha256, self.size_bytes), *self.external_data]


@dataclass(frozen=True)
class ViewSpec:
    """One view of a direction: its camera kind, the model input size and its token grid.

    ``kind`` is "ego" (the Aria head camera) or "exo" (a static camera); a camera's name
    (``cam01``, ``aria01``) is called ``cam`` everywhere else.
    """

    kind: str  # "ego" | "exo"
    image_size: tuple[int, int]  # (H, W) px fed to the backbone
    feat_grid: tuple[int, int]  # (h, w) tokens

    def to_dict(self) -> dict:
        return to_json(self)


@dataclass(frozen=True)
class PreprocessSpec:
    """How an image becomes a backbone input (docs/reference.md, section 2)."""

    patch_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    color: str = "RGB"
    layout: str = "NCHW float32"
    scale: float = 1.0 / 255.0
    image_resize: str = "nearest (OpenCV rule) to views.<role>.image_size"
    mask_resize: str = "nearest to views.<role>.image_size"


@dataclass(frozen=True)
class DescriptorSpec:
    """Descriptor pooling: masks and their context boxes pooled on a grid of 1/reduction."""

    reduction: int
    context_px: int
    feature_dim: int
    descriptor_dim: int
    query_box: str = ""
    candidate_boxes: str = ""


@dataclass(frozen=True)
class InputDecision:
    """Why the matcher graph takes ``chosen`` (``weights`` or ``masks``): the rule and, when
    measured, the latencies and bytes of both forms."""

    chosen: str
    rule: str
    candidates: int | None = None
    backend: str | None = None
    machine: str | None = None
    weights_ms: float | None = None
    masks_ms: float | None = None
    weights_input_bytes: int | None = None
    masks_input_bytes: int | None = None


@dataclass(frozen=True)
class MatcherSpec:
    """The pooling + matcher graph: its input form and the matcher's configuration."""

    input: str  # "weights" | "masks"
    input_decision: InputDecision
    attention: str
    dim: int
    heads: int
    src_grid: tuple[int, int]
    dst_grid: tuple[int, int]
    weights: WeightsRecord
    model: str = "matcher"
    inputs: dict[str, str] = field(default_factory=dict)  # input name -> meaning
    similarity: str = "cosine; prediction = argmax over candidates"
    confidence: str = "sigmoid(max similarity)"
    visible_threshold: float = 0.5


@dataclass(frozen=True)
class NmsSettings:
    """Score threshold (keep ``> conf``), IoU threshold (suppress ``IoU > iou``), at most
    ``max_det`` detections, class-agnostic."""

    conf: float
    iou: float
    max_det: int
    agnostic: bool = True


@dataclass(frozen=True)
class NmsDecision:
    """Where FastSAM's NMS runs and why: ``requested`` (auto | graph | runtime), the
    ``settings`` asked for, the ``baked`` values read back from a graph with NMS, and the
    in-graph parity ``checks`` that decided it."""

    requested: str
    settings: NmsSettings
    reason: str
    baked: NmsSettings | None = None
    checks: tuple[CheckRecord, ...] = ()


@dataclass(frozen=True)
class FastSAMSpec:
    """FastSAM's file and its post-processing parameters (``included`` False: no FastSAM,
    precomputed candidates are needed)."""

    included: bool
    model: str = "fastsam"
    variant: str = ""
    imgsz: int = 1024
    conf: float = 0.4
    iou: float = 0.9
    max_det: int = 300
    retina_masks: bool = True
    mask_coefficients: int = 32
    nms_in_graph: bool = False  # conf, iou and max_det are baked into the file
    nms: str = ""
    nms_decision: NmsDecision | None = None
    input: str = ""
    outputs: dict[str, str] = field(default_factory=dict)
    exporter: str = ""
    weights: WeightsRecord | None = None


@dataclass(frozen=True)
class BackboneRecord:
    """The backbone behind both views' files: registry name, architecture, the positional
    interpolation baked in, the 1x1 projection to 768 and where the weights came from."""

    name: str
    family: str
    embed_dim: int
    out_channels: int
    weights: WeightsRecord
    description: str = ""
    projection: str | None = None
    projection_seed: int | None = None  # a file without projection: the seeded one's seed
    pos_resize: str | None = None
    architecture_overrides: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ToolsRecord:
    """Package versions (name -> version, None when absent), opset and exporter."""

    versions: dict[str, str | None]
    opset: int
    exporter: str


@dataclass(frozen=True)
class EnginesRecord:
    """Whether TensorRT engines were built: the line the export printed, why not (``reason``)
    or which files, with the TensorRT version and GPU."""

    built: bool
    note: str
    reason: str | None = None
    files: tuple[str, ...] = ()
    tensorrt_version: str | None = None
    gpu_name: str | None = None
    timing_cache: str | None = None


@dataclass
class Manifest:
    """The parsed ``manifest.json`` of an artifacts folder (``root``: where it was loaded
    from, not serialised)."""

    direction: str
    random_init: bool
    views: dict[str, ViewSpec]  # "src" / "dst"
    preprocess: PreprocessSpec
    descriptor: DescriptorSpec
    matcher: MatcherSpec
    fastsam: FastSAMSpec
    backbone: BackboneRecord
    files: list[ArtifactFile]
    tools: ToolsRecord
    engines: EnginesRecord
    verification: VerificationSection
    created_utc: str = ""
    omama_version: str = ""
    format: str = FORMAT
    schema_version: int = SCHEMA_VERSION
    root: Path | None = field(default=None, compare=False)

    # -- queries ---------------------------------------------------------------------------
    def models(self) -> list[str]:
        """Model names in file order, each once (``backbone_exo``, ``matcher``, ...)."""
        return list(dict.fromkeys(f.model for f in self.files))

    def role_models(self) -> dict[str, str]:
        """The pipeline's models by role: ``backbone_src``, ``backbone_dst``, ``matcher``,
        and ``fastsam`` when the folder has one."""
        roles = {
            "backbone_src": self.backbone_model("src"),
            "backbone_dst": self.backbone_model("dst"),
            "matcher": self.matcher.model,
        }
        if self.fastsam.included:
            roles["fastsam"] = self.fastsam.model
        return roles

    def find(
        self, model: str, format: str = "onnx", precision: str = "fp32"
    ) -> ArtifactFile | None:
        for entry in self.files:
            if (entry.model, entry.format, entry.precision) == (model, format, precision):
                return entry
        return None

    def select(self, model: str, format: str = "onnx", precision: str = "fp32") -> ArtifactFile:
        """The file of ``model`` in ``format`` at ``precision``; OmamaError naming what exists."""
        entry = self.find(model, format, precision)
        if entry is None:
            have = ", ".join(f"{f.model}/{f.format}/{f.precision}" for f in self.files) or "none"
            raise OmamaError(
                f"artifacts have no {format} {precision} file for {model!r} (available: {have})"
            )
        return entry

    def run_file(self, model: str, format: str, run_precision: str) -> ArtifactFile:
        """The file a run at ``run_precision`` uses for ``model``: the file of that precision;
        for ``bf16`` the fp32 file (bf16 is arithmetic, not a file); for ``int8`` the int8 file,
        or the fp32 one of a model the int8 export kept in float.

        An int8 export may leave models in float (the matcher stays float unless it gains and
        keeps parity; FastSAM when its int8 fidelity does not hold): an int8 run uses their
        fp32 files. Every other run precision needs a file of its own precision (bf16: the
        fp32 one)."""
        if run_precision not in RUN_PRECISIONS:
            raise OmamaError(
                f"precision must be one of {', '.join(RUN_PRECISIONS)}, got {run_precision!r}"
            )
        if run_precision == "bf16":
            return self.select(model, format, "fp32")
        if run_precision == "int8":
            if not any(f.precision == "int8" and f.format == format for f in self.files):
                self.select(model, format, "int8")  # raises, naming what the folder has
            return self.find(model, format, "int8") or self.select(model, format, "fp32")
        return self.select(model, format, run_precision)

    def path_of(self, entry: ArtifactFile | FileRef | GoldenFile) -> Path:
        """Absolute path of a file entry (needs a manifest loaded from a folder)."""
        if self.root is None:
            raise OmamaError("this manifest was not loaded from a folder")
        return self.root / entry.path

    def backbone_model(self, role: str) -> str:
        """Backbone model name of view ``role`` ("src" or "dst"): ``backbone_<kind>``."""
        return f"backbone_{self.views[role].kind}"

    def golden_of(self, model: str) -> GoldenFile | None:
        return next((g for g in self.verification.golden if g.model == model), None)

    @property
    def random_weights(self) -> bool:
        """The whole export random (``--random-init``), or a backbone from a random-init
        feature cache."""
        return self.random_init or self.backbone.weights.from_random_init

    def all_refs(self) -> list[FileRef]:
        """Every file the manifest vouches for: models, external data, golden files."""
        refs = [ref for entry in self.files for ref in entry.file_refs()]
        refs += [FileRef(g.path, g.sha256, g.size_bytes) for g in self.verification.golden]
        return refs

    # -- (de)serialisation -----------------------------------------------------------------
    def to_dict(self) -> dict:
        data = to_json(self)
        data.pop("root")
        order = ("format", "schema_version", "omama_version", "created_utc")
        return {**{k: data[k] for k in order}, **{k: v for k, v in data.items() if k not in order}}

    @classmethod
    def from_dict(cls, data: Any, source: str = MANIFEST_NAME) -> Manifest:
        """Parse and validate; OmamaError naming ``source`` and the first bad field."""
        if not isinstance(data, dict):
            raise OmamaError(f"{source} must hold a JSON object")
        if data.get("format") != FORMAT:
            raise OmamaError(f"{source} is not an omama artifacts manifest (format {FORMAT!r})")
        version = data.get("schema_version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise OmamaError(f"{source}: schema_version must be an integer, got {version!r}")
        if version != SCHEMA_VERSION:
            newer = version > SCHEMA_VERSION
            raise OmamaError(
                f"{source} has schema_version {version}; this omama reads version "
                f"{SCHEMA_VERSION} only ("
                + ("update omama" if newer else "re-export the folder with `omama export`")
                + ")"
            )
        manifest = from_json(cls, data, source, skip=("root",))
        manifest.validate(source)
        return manifest

    def validate(self, source: str = MANIFEST_NAME) -> None:
        """Check the values the runtime relies on; OmamaError naming every bad one."""
        problems: list[str] = []
        if self.direction not in DIRECTIONS:
            problems.append(f"direction {self.direction!r} is not exo2ego or ego2exo")
        if set(self.views) != set(ROLES):
            problems.append(f"views must be 'src' and 'dst', got {sorted(self.views)}")
        if self.matcher.input not in MATCHER_INPUTS:
            problems.append(f"matcher.input must be one of {MATCHER_INPUTS}")
        seen: set[str] = set()
        for entry in self.files:
            if entry.format not in FILE_FORMATS:
                problems.append(f"{entry.path}: format {entry.format!r} not in {FILE_FORMATS}")
            if entry.precision not in PRECISIONS:
                problems.append(f"{entry.path}: precision {entry.precision!r} not in {PRECISIONS}")
        for ref in self.all_refs():
            if Path(ref.path).is_absolute() or ".." in Path(ref.path).parts:
                problems.append(f"{ref.path}: file paths must stay inside the folder")
            if ref.path in seen:
                problems.append(f"{ref.path} is listed twice")
            seen.add(ref.path)
        if problems:
            raise OmamaError(f"{source} is invalid: " + "; ".join(problems))
