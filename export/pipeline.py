"""``export_artifacts``: PyTorch models -> a verified artifacts folder (``omama export``).

Steps, each file written atomically, ``manifest.json`` last:

1. build the models: the matcher (official ``.pt`` / omama ``.safetensors``, or the one
   random initialisation ``random_matcher``), one backbone per view at the size its token
   grid fixes (``build_backbone`` from the weights file, or ``build_random_backbone``),
   FastSAM (checkpoint or a random network of its architecture);
2. ``backbone_<camera>.onnx`` per view (TorchScript exporter, dynamic batch, positional
   table baked in, projection included), ``matcher.onnx`` (descriptor pooling + matcher,
   dynamic B and N; its input form chosen by measurement unless given), ``fastsam.onnx``
   (ultralytics' exporter); every graph folded with onnxslim, checked and shape-inferred.
   The traced modules are ``omama_train.models.artifact_modules``: the torch backend runs
   the same ones;
3. parity of every file with the torch backend (``export.verify``), the file opened through
   ``runtime.sessions`` as ``omama-run`` opens it;
4. with ``fp16``: ``*_fp16.onnx`` variants, and TensorRT fp16 engines when TensorRT and a
   CUDA GPU are present (else one line saying why they were skipped);
5. ``golden/<model>.npz``: golden inputs at the real sizes and the torch fp32 records;
6. ``manifest.json`` (``runtime.manifest``) with hashes, shapes, tools and the verification
   records: the parity runs, and the golden files replayed through the same code
   ``omama-run verify`` runs (``runtime.verification.replay``) on every file and on the
   torch backend rebuilt from the manifest.
A failed check still writes the manifest (it records the failure, and the runtime refuses
the folder) and then raises an OmamaError naming the offending outputs.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import platform
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from export.tensorrt import PROFILE_CANDIDATES
from export.verify import (
    BackboneParity,
    FastSAMParity,
    FinalGraph,
    MatcherParity,
    ViewGeometry,
    finalize_onnx,
    io_specs,
    temporary_dir,
)
from runtime import __version__ as omama_version
from runtime.egoexo import check_direction
from runtime.errors import OmamaError
from runtime.fastsam_post import CONF as REFERENCE_CONF
from runtime.fastsam_post import RANDOM_WEIGHTS_CONF
from runtime.info import package_version
from runtime.manifest import (
    MANIFEST_NAME,
    ArtifactFile,
    BackboneRecord,
    CheckRecord,
    DescriptorSpec,
    EngineRecord,
    EnginesRecord,
    FastSAMSpec,
    GoldenFile,
    GraphRecord,
    InputDecision,
    Manifest,
    MatcherSpec,
    NmsDecision,
    NmsSettings,
    PreprocessSpec,
    TensorSpec,
    ToolsRecord,
    VerificationRecord,
    VerificationSection,
    ViewSpec,
    WeightsRecord,
    file_entry,
    file_ref,
    load_manifest,
    sha256_file,
    write_manifest,
)
from runtime.pooling import CONTEXT_PX, REDUCTION, descriptor_weights
from runtime.preprocess import IMAGENET_MEAN, IMAGENET_STD
from runtime.sessions import Session, open_artifact, select_backend
from runtime.timing import median_ms
from runtime.verification import golden as golden_io
from runtime.verification.compare import model_kind, reference_record
from runtime.verification.inputs import candidate_boxes, random_masks
from runtime.verification.replay import replay_model, session_record
from runtime.verification.tolerances import TOLERANCES, check, format_table

if TYPE_CHECKING:
    from omama_train.models.backbones import BackboneSpec

WEIGHT_SOURCES = {
    "backbone": (
        "--backbone-weights: DINOv2 ViT-B/14 with registers, dinov2_vitb14_reg4_pretrain.pth "
        "from the DINOv2 release (https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/"
        "dinov2_vitb14_reg4_pretrain.pth)"
    ),
    "matcher": (
        "--matcher: the official O-MaMa Exo->Ego checkpoint (.pt) from the O-MaMa authors' "
        "release, or an omama .safetensors written by `omama train`"
    ),
    "fastsam": (
        "--fastsam: FastSAM-x.pt from the Ultralytics assets releases "
        "(https://github.com/ultralytics/assets/releases)"
    ),
}
RANDOM_BACKBONE = "dinov2_vits14_reg"
RANDOM_GRIDS: dict[str, tuple[int, int]] = {"exo": (10, 18), "ego": (12, 12)}
MATCHER_INPUT_CHOICES = ("auto", "weights", "masks")
FASTSAM_NMS_CHOICES = ("auto", "graph", "runtime")
ATTENTION_CHOICES = ("standard", "folded")
MIN_OPSET = 17  # LayerNormalization as one op (and TensorRT's INormalizationLayer)
DECISION_CANDIDATES = 64  # the TensorRT profile's opt N: what the decision is timed at
DECISION_MARGIN = 0.10  # within 10%, weights win: they move N*2*h*w floats, not N*H*W bytes
FP32_PREFIXES = ("/src_weights/", "/dst_weights/")  # in-graph pooling weights (masks input)
PARITY_INPUTS = "export parity"


@dataclass
class ExportConfig:
    """What ``omama export`` exports; the CLI options map onto these fields.

    ``backbone``: registry name or a ``BackboneSpec`` (tests use shallow ones); default:
    the matcher checkpoint's backbone (``dinov2_vitb14_reg`` for official ``.pt`` files),
    or ViT-S/14 with registers for ``random_init``. ``random_grids``: token grids per
    camera of the random-init configuration; ``random_fastsam``: its FastSAM architecture
    (``n``: the YOLOv8n-seg stand-in; ``s`` / ``x``: FastSAM-s / FastSAM-x).
    ``matcher_input``: ``auto`` (measured), ``weights`` or ``masks``. ``parity_sets``:
    random candidate sets of the matcher check. ``fastsam_nms``: ``graph`` (ultralytics'
    NMS inside fastsam.onnx, verified against the runtime's), ``runtime`` (raw outputs, the
    runtime runs NMS) or ``auto`` (the graph when its parity holds, else runtime).
    ``fastsam_conf``: None is the reference's 0.4, or :data:`RANDOM_WEIGHTS_CONF` (0.01)
    with ``random_init`` (random weights score below 0.013); with NMS in the graph conf,
    ``fastsam_iou`` and ``fastsam_max_det`` are baked into the file.
    """

    out_dir: Path = Path("artifacts")
    direction: str | None = None
    backbone: str | BackboneSpec | None = None
    backbone_weights: Path | None = None
    matcher_weights: Path | None = None
    fastsam_weights: Path | None = None
    random_init: bool = False
    random_grids: dict[str, tuple[int, int]] = field(default_factory=lambda: dict(RANDOM_GRIDS))
    random_fastsam: str = "n"
    fp16: bool = False
    engines: bool = True
    verify: bool = True
    include_fastsam: bool = True
    opset: int = MIN_OPSET
    matcher_input: str = "auto"
    attention: str = "folded"
    fastsam_imgsz: int = 1024
    fastsam_conf: float | None = None
    fastsam_iou: float = 0.9
    fastsam_max_det: int = 300
    fastsam_nms: str = "auto"
    parity_sets: int = 200
    parity_large_n: int = 256
    seed: int = 0
    timing_cache: Path | None = None


@dataclass
class ExportResult:
    """The written manifest, every verification record, the engines line, and seconds per
    file and phase (``{"matcher.onnx": {"export_s": ..., "verify_s": ...}}``)."""

    manifest: Manifest
    records: list[VerificationRecord]
    engines_note: str
    timings: dict[str, dict[str, float]] = field(default_factory=dict)

    def failures(self) -> list[str]:
        """One line per failed check (file, backend, output, metric, value, tolerance)."""
        return [line for record in self.records for line in record.failures()]


@dataclass
class _Models:
    matcher: object
    direction: str
    views: dict[str, ViewSpec]  # "src" / "dst"
    backbones: dict[str, object]  # camera -> Backbone
    spec: object
    fastsam_weights: Path | None
    backbone_record: BackboneRecord
    matcher_weights: WeightsRecord
    fastsam_record: WeightsRecord | None
    notes: list[str] = field(default_factory=list)  # warning lines the export prints


# ------------------------------------------------------------------------------ checks


def missing_weights(config: ExportConfig) -> list[str]:
    """What a real-weights export lacks: one line per missing or unreadable weights file."""
    if config.random_init:
        return []
    wanted = {
        "backbone": config.backbone_weights,
        "matcher": config.matcher_weights,
        "fastsam": config.fastsam_weights if config.include_fastsam else Path("."),
    }
    problems = []
    for key, value in wanted.items():
        if value is None:
            problems.append(f"{WEIGHT_SOURCES[key]} (not given)")
        elif (key != "fastsam" or config.include_fastsam) and not Path(value).is_file():
            problems.append(f"{WEIGHT_SOURCES[key]} (no file at {value})")
    return problems


def _validate(config: ExportConfig) -> None:
    if config.matcher_input not in MATCHER_INPUT_CHOICES:
        raise OmamaError(
            f"matcher input must be one of {', '.join(MATCHER_INPUT_CHOICES)}, "
            f"got {config.matcher_input!r}"
        )
    if config.attention not in ATTENTION_CHOICES:
        raise OmamaError(
            f"attention must be one of {', '.join(ATTENTION_CHOICES)}, got {config.attention!r}"
        )
    if config.opset < MIN_OPSET:
        raise OmamaError(
            f"opset must be at least {MIN_OPSET} (LayerNormalization), got {config.opset}"
        )
    if config.direction is not None:
        check_direction(config.direction)
    if config.fastsam_imgsz % 32:
        raise OmamaError(f"FastSAM image size must be a multiple of 32, got {config.fastsam_imgsz}")
    if config.fastsam_nms not in FASTSAM_NMS_CHOICES:
        raise OmamaError(
            f"--fastsam-nms must be one of {', '.join(FASTSAM_NMS_CHOICES)}, "
            f"got {config.fastsam_nms!r}"
        )
    given = [
        flag
        for flag, value in (
            ("--backbone-weights", config.backbone_weights),
            ("--matcher", config.matcher_weights),
            ("--fastsam", config.fastsam_weights),
        )
        if value is not None
    ]
    if config.random_init and given:
        raise OmamaError(
            f"--random-init exports random weights; drop {', '.join(given)} or --random-init"
        )
    missing = missing_weights(config)
    if missing:
        raise OmamaError(
            "cannot export without weights: "
            + "; ".join(missing)
            + " (or pass --random-init for a small random-weight configuration)"
        )


# ------------------------------------------------------------------------------ models


def _weights_record(path: Path | None, seed: int) -> WeightsRecord:
    if path is None:
        return WeightsRecord(random=True, seed=seed)
    return WeightsRecord(random=False, file=Path(path).name, sha256=sha256_file(path))


def _cameras(direction: str) -> tuple[str, str]:
    """(source camera, destination camera) of a direction."""
    return ("exo", "ego") if direction == "exo2ego" else ("ego", "exo")


def build_models(config: ExportConfig, workdir: Path) -> _Models:
    """The PyTorch models of the export, in eval mode."""
    from omama_train.models.backbones import backbone_file_info
    from omama_train.models.matcher import load_matcher, random_matcher

    if config.random_init:
        direction = check_direction(config.direction or "exo2ego")
        src_cam, dst_cam = _cameras(direction)
        matcher = random_matcher(
            direction,
            config.random_grids[src_cam],
            config.random_grids[dst_cam],
            config.seed,
            attention=config.attention,
            backbone=RANDOM_BACKBONE,
        )
        default_backbone = RANDOM_BACKBONE
    else:
        matcher = load_matcher(config.matcher_weights, config.direction)
        matcher.CROSS_context_attn.mode = config.attention
        direction = matcher.direction
        default_backbone = matcher.backbone
    matcher.eval()
    file_info = {} if config.random_init else backbone_file_info(config.backbone_weights)
    spec, pos_resize = _backbone_spec(config, default_backbone, file_info)
    src_cam, dst_cam = _cameras(direction)
    grids = {src_cam: matcher.src_grid, dst_cam: matcher.dst_grid}
    views = {
        role: ViewSpec(
            cam, (grids[cam][0] * spec.patch_size, grids[cam][1] * spec.patch_size), grids[cam]
        )
        for role, cam in (("src", src_cam), ("dst", dst_cam))
    }
    backbones = _build_backbones(config, spec, pos_resize, views, matcher.dim)
    fastsam = None
    fastsam_record = None
    if config.include_fastsam:
        if config.random_init:
            from omama_train.models.fastsam import VARIANT_YAML, build_random_fastsam

            fastsam = build_random_fastsam(
                workdir / f"fastsam-{config.random_fastsam}-random.pt",
                config.random_fastsam,
                seed=config.seed,
            )
            architecture = VARIANT_YAML[config.random_fastsam].removesuffix(".yaml")
            fastsam_record = WeightsRecord(random=True, seed=config.seed, architecture=architecture)
        else:
            fastsam = Path(config.fastsam_weights)
            fastsam_record = _weights_record(fastsam, config.seed)
    notes = []
    if backbones[src_cam].projection_source == "seeded":
        name = Path(config.backbone_weights).name  # type: ignore[arg-type]
        notes.append(
            f"warning: {name} has no 1x1 projection to 768 channels; both views use the one "
            f"seeded with --seed {config.seed}, as omama features --seed {config.seed} does "
            "(a matcher trained on a cache of another seed would get other features)"
        )
    return _Models(
        matcher=matcher,
        direction=direction,
        views=views,
        backbones=backbones,
        spec=spec,
        fastsam_weights=fastsam,
        backbone_record=_backbone_record(config, spec, backbones[src_cam]),
        matcher_weights=_weights_record(
            None if config.random_init else config.matcher_weights, config.seed
        ),
        fastsam_record=fastsam_record,
        notes=notes,
    )


def _backbone_spec(
    config: ExportConfig, default: str, file_info: dict
) -> tuple[BackboneSpec, str | None]:
    """The backbone to build and its positional interpolation (``None``: the registry's).

    A file written by ``omama features --random-init`` (``save_backbone_weights``) names its
    backbone, architecture overrides and interpolation: the export builds exactly that,
    unless ``config.backbone`` is a ``BackboneSpec`` (then it must carry the same name).
    """
    import dataclasses

    from omama_train.models.backbones import get_spec

    chosen = config.backbone if config.backbone is not None else default
    spec = get_spec(chosen) if isinstance(chosen, str) else chosen
    held = file_info.get("backbone") or {}
    if not held:
        return spec, None
    if held.get("name") != spec.name:
        raise OmamaError(
            f"{config.backbone_weights} holds {held.get('name')} weights, but the export builds "
            f"{spec.name} (the matcher's backbone, or --backbone)"
        )
    overrides = held.get("timm_overrides") or {}
    if isinstance(chosen, str) and overrides:  # an explicit BackboneSpec is kept as given
        spec = dataclasses.replace(spec, timm_overrides=dict(overrides))
    return spec, held.get("pos_resize")


def _build_backbones(
    config: ExportConfig,
    spec: BackboneSpec,
    pos_resize: str | None,
    views: dict[str, ViewSpec],
    channels: int,
) -> dict[str, object]:
    """One ``Backbone`` per camera (source first), in eval mode.

    Real weights: both views load the file; a file without the 1x1 projection gets
    ``seeded_projection(spec, config.seed)`` in both (what ``omama features --seed`` computes
    a cache with). Random init: the registry's one random initialisation for ``config.seed``
    (``build_random_backbone``, as ``omama features --random-init --seed`` builds it), at
    each view's size.
    """
    from omama_train.models.backbones import (
        build_backbone,
        build_random_backbone,
        random_backbone_state,
    )

    state = random_backbone_state(spec, config.seed) if config.random_init else None
    backbones: dict[str, object] = {}
    for view in views.values():
        if config.random_init:
            model = build_random_backbone(
                spec,
                view.image_size,
                config.seed,
                pos_resize,
                state=state,  # type: ignore[arg-type]
            )
        else:
            model = build_backbone(
                spec,
                view.image_size,
                config.backbone_weights,
                pos_resize=pos_resize,  # type: ignore[arg-type]
                projection_seed=config.seed,
            )
        if model.out_channels != channels:
            raise OmamaError(
                f"backbone {spec.name} gives {model.out_channels} channels, the matcher expects "
                f"{channels}"
            )
        backbones[view.kind] = model.eval()
    return backbones


def _backbone_record(config: ExportConfig, spec: BackboneSpec, model) -> BackboneRecord:
    """The manifest's ``backbone`` record (``model``: the source view's ``Backbone``)."""
    from omama_train.models.backbones import FEATURE_DIM, backbone_file_info

    weights = _weights_record(None if config.random_init else config.backbone_weights,
                              config.seed)  # fmt: skip
    if not config.random_init:
        # A file written by `omama features --random-init` (or a fine-tuning run) says what
        # it holds: carry that over, so a random-weight backbone is never taken for a real one.
        info = backbone_file_info(config.backbone_weights)
        if info.get("random_init"):
            weights = WeightsRecord(
                random=False,
                file=weights.file,
                sha256=weights.sha256,
                from_random_init=True,
                seed=info.get("seed"),
            )
    projection, projection_seed = None, None
    if spec.embed_dim != FEATURE_DIM:
        if config.random_init:
            projection = "1x1 Conv2d to 768 (random init)"
        elif model.projection_source == "seeded":
            projection = (
                f"seeded 1x1 Conv2d to 768 (seed {model.projection_seed}; not in the weights file)"
            )
            projection_seed = model.projection_seed
        else:
            projection = "from the weights file"
    return BackboneRecord(
        name=spec.name,
        family=spec.family,
        embed_dim=spec.embed_dim,
        out_channels=FEATURE_DIM,
        weights=weights,
        description=spec.description,
        projection=projection,
        projection_seed=projection_seed,
        pos_resize=model.pos_resize,
        architecture_overrides=dict(spec.timm_overrides),
    )


# ------------------------------------------------------------------------------ exports


def _torch_export(
    module, args: tuple, path: Path, input_names, output_names, dynamic_axes, opset: int
) -> None:
    """TorchScript-based ``torch.onnx.export``: it traces dynamic axes through shape ops and
    keeps every weight in one file; its tracer and deprecation warnings are expected."""
    import torch

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes=dynamic_axes,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )


def export_backbone(backbone, raw_path: Path, opset: int) -> None:
    """``image`` (batch, 3, H, W) -> ``feats`` (batch, 768, h, w); traced at batch 2 so that
    no batch-1 shortcut is recorded."""
    import torch

    from omama_train.models.artifact_modules import BackboneOnnx

    example = torch.zeros(2, 3, *backbone.image_size)
    _torch_export(
        BackboneOnnx(backbone).eval(),
        (example,),
        raw_path,
        ["image"],
        ["feats"],
        {"image": {0: "batch"}, "feats": {0: "batch"}},
        opset,
    )


def _matcher_example(matcher, src: ViewSpec, dst: ViewSpec, form: str, count: int = 3):
    import torch

    rng = np.random.default_rng(0)
    src_masks = random_masks(rng, 1, src.image_size)
    dst_masks = random_masks(rng, count, dst.image_size)
    src_boxes = candidate_boxes(rng, src_masks)
    dst_boxes = candidate_boxes(rng, dst_masks)
    src_feats = torch.randn(1, matcher.dim, *src.feat_grid)
    dst_feats = torch.randn(1, matcher.dim, *dst.feat_grid)
    if form == "weights":
        return (
            src_feats,
            dst_feats,
            torch.from_numpy(
                descriptor_weights(src_masks, src_boxes, src.image_size, src.feat_grid)
            )[:, None],
            torch.from_numpy(
                descriptor_weights(dst_masks, dst_boxes, dst.image_size, dst.feat_grid)
            )[None],
        )
    return (
        src_feats,
        dst_feats,
        torch.from_numpy(src_masks)[:, None],
        torch.from_numpy(src_boxes)[:, None],
        torch.from_numpy(dst_masks)[None],
        torch.from_numpy(dst_boxes)[None],
    )


def export_matcher(
    matcher, src: ViewSpec, dst: ViewSpec, form: str, raw_path: Path, opset: int
) -> None:
    """The pooling + matcher graph of input ``form`` (``weights`` or ``masks``).

    Traced with B = 1 object and N = 3 candidates: with one object the matcher takes no
    batch-folding branch, so nothing in the graph depends on B, and both axes are dynamic.
    """
    from omama_train.models.artifact_modules import matcher_module

    wrapper = matcher_module(matcher, form, src.image_size, dst.image_size)
    if form == "weights":
        dynamic = {"src_weights": {0: "B"}, "dst_weights": {1: "N"}}
    else:
        dynamic = {
            "src_mask": {0: "B"},
            "src_box": {0: "B"},
            "dst_masks": {1: "N"},
            "dst_boxes": {1: "N"},
        }
    dynamic["similarities"] = {0: "B", 1: "N"}
    _torch_export(
        wrapper,
        _matcher_example(matcher, src, dst, form),
        raw_path,
        wrapper.input_names,
        ["similarities"],
        dynamic,
        opset,
    )


def _onnxruntime_cpu(path: Path, name: str, threads: int | None = None) -> Session:
    """An ONNX file on ONNX Runtime's CPU provider, opened as ``omama-run --backend
    onnxruntime --device cpu`` opens it."""
    return select_backend("onnxruntime", "cpu").open(path, name=name, threads=threads)


def measure_matcher_inputs(
    paths: dict[str, Path], src: ViewSpec, dst: ViewSpec, dim: int, count: int = DECISION_CANDIDATES
) -> InputDecision:
    """Time both matcher forms on one frame pair with ``count`` candidates (ONNX Runtime).

    ``weights``: the runtime's numpy pooling weights + the graph; ``masks``: the graph fed
    with masks at image size and boxes. Returns medians (ms), the bytes each form feeds,
    and the choice: the faster form, with ties (within 10%) going to ``weights``.
    """
    rng = np.random.default_rng(1)
    src_masks = random_masks(rng, 1, src.image_size)
    dst_masks = random_masks(rng, count, dst.image_size)
    src_boxes = candidate_boxes(rng, src_masks)
    dst_boxes = candidate_boxes(rng, dst_masks)
    feats = {
        "src_feats": rng.standard_normal((1, dim, *src.feat_grid), dtype=np.float32),
        "dst_feats": rng.standard_normal((1, dim, *dst.feat_grid), dtype=np.float32),
    }

    def weights_feeds() -> dict:
        return {
            **feats,
            "src_weights": descriptor_weights(src_masks, src_boxes, src.image_size, src.feat_grid)[
                :, None
            ],
            "dst_weights": descriptor_weights(dst_masks, dst_boxes, dst.image_size, dst.feat_grid)[
                None
            ],
        }

    masks_feeds = {
        **feats,
        "src_mask": src_masks[:, None],
        "src_box": src_boxes[:, None],
        "dst_masks": dst_masks[None],
        "dst_boxes": dst_boxes[None],
    }
    with (
        _onnxruntime_cpu(paths["weights"], "matcher") as by_weights,
        _onnxruntime_cpu(paths["masks"], "matcher") as by_masks,
    ):
        weights_ms = median_ms(lambda: by_weights.infer(weights_feeds()))
        masks_ms = median_ms(lambda: by_masks.infer(masks_feeds))
    weights_bytes = sum(v.nbytes for k, v in weights_feeds().items() if k not in feats)
    masks_bytes = sum(v.nbytes for k, v in masks_feeds.items() if k not in feats)
    chosen = "weights" if weights_ms <= masks_ms * (1 + DECISION_MARGIN) else "masks"
    return InputDecision(
        chosen=chosen,
        rule="lower median latency (pooling inputs + graph); within 10% weights win, "
        "as they move far fewer bytes to the device",
        candidates=count,
        backend="onnxruntime CPUExecutionProvider",
        machine=platform.processor() or platform.machine(),
        weights_ms=round(weights_ms, 3),
        masks_ms=round(masks_ms, 3),
        weights_input_bytes=int(weights_bytes),
        masks_input_bytes=int(masks_bytes),
    )


# ------------------------------------------------------------------------------ pipeline


def _clear_previous(out: Path) -> None:
    """Remove the previous export's manifest, listed files, golden files and verification
    files, so a half-written folder never carries a manifest (or a record) that vouches for
    files of another run."""
    manifest_path = out / MANIFEST_NAME
    for stale in out.glob("verify_*.json"):
        stale.unlink()
    shutil.rmtree(out / golden_io.GOLDEN_DIR, ignore_errors=True)
    if not manifest_path.exists():
        return
    try:
        old = load_manifest(out)
        names = [ref.path for ref in old.all_refs()]
    except OmamaError:
        names = []
    manifest_path.unlink()
    for name in names:
        (out / name).unlink(missing_ok=True)


def _fastsam_io(imgsz: int) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs and outputs of FastSAM's raw network (the torch reference of either form)."""
    return (
        [TensorSpec("images", (1, 3, imgsz, imgsz), "float32")],
        [
            TensorSpec("output0", (1, None, None), "float32"),
            TensorSpec("output1", (1, None, imgsz // 4, imgsz // 4), "float32"),
        ],
    )


class _Export:
    """One export run: the models, their torch reference sessions, the files written so
    far and their verification records."""

    def __init__(self, config: ExportConfig, models: _Models, work: Path, echo, step) -> None:
        self.config = config
        self.models = models
        self.work = work
        self.echo = echo
        self.step = step
        self.out = Path(config.out_dir)
        self.files: list[ArtifactFile] = []
        self.records: list[VerificationRecord] = []
        self.graphs: dict[str, GraphRecord] = {}
        self.fp32_files: dict[str, str] = {}  # model -> fp32 ONNX file name
        self.src, self.dst = models.views["src"], models.views["dst"]
        self.decision: InputDecision | None = None
        self.form = config.matcher_input
        self.references: dict[str, Session] = {}  # model -> torch backend session
        self.matcher_parity: MatcherParity | None = None
        self.backbone_parity: dict[str, BackboneParity] = {}
        self.fastsam_check: FastSAMParity | None = None
        self.nms_decision: NmsDecision | None = None
        self.fastsam_in_graph = False
        self.ultralytics_version: str | None = None
        self.engines = EnginesRecord(built=False, note="")
        self.golden: list[GoldenFile] = []
        self.timings: dict[str, dict[str, float]] = {}

    @contextlib.contextmanager
    def timed(self, name: str, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.timings.setdefault(name, {})[phase] = round(time.perf_counter() - start, 3)

    # -- torch reference -------------------------------------------------------------------
    def reference(self, model: str) -> Session:
        """The torch backend's session of ``model``: a ``TorchSession`` of the module of
        ``omama_train.models.artifact_modules`` the file is traced from."""
        if model not in self.references:
            from omama_train.models.artifact_modules import (
                BackboneOnnx,
                FastSAMRaw,
                matcher_module,
            )
            from omama_train.torch_backend import TorchSession

            if model == "fastsam":
                from export.fastsam import load_fastsam_network

                module = FastSAMRaw(load_fastsam_network(self.models.fastsam_weights))
                inputs, outputs = _fastsam_io(self.config.fastsam_imgsz)
            else:
                inputs, outputs = io_specs(self.out / self.fp32_files[model])
                if model == "matcher":
                    module = matcher_module(
                        self.models.matcher, self.form, self.src.image_size, self.dst.image_size
                    )
                else:
                    module = BackboneOnnx(self.models.backbones[model.removeprefix("backbone_")])
            self.references[model] = TorchSession(module, inputs, outputs, device="cpu",
                                                  name=model)  # fmt: skip
        return self.references[model]

    # -- bookkeeping ------------------------------------------------------------------------
    def add_file(
        self,
        path: str,
        model: str,
        fmt: str,
        precision: str,
        record: VerificationRecord | None,
        io_from: Path | None = None,
        graph: GraphRecord | None = None,
        engine: EngineRecord | None = None,
        external_data: list[str] = (),
    ) -> ArtifactFile:
        inputs, outputs = io_specs(io_from or self.out / path)
        entry = file_entry(self.out, path, model, fmt, precision, inputs, outputs,
                           external_data=external_data, graph=graph, engine=engine)  # fmt: skip
        self.files.append(entry)
        status = ""
        if record is not None:
            self.records.append(record)
            status = " verified" if record.passed else " FAILED"
        self.echo(f"  {path}: {entry.size_bytes / 1e6:.1f} MB, {precision}{status}")
        return entry

    def finalize(self, raw: Path, target: Path) -> FinalGraph:
        final = finalize_onnx(raw, target, check=self.config.verify)
        graph = final.record
        self.echo(
            f"  {target.name}: {graph.nodes_exported} -> {graph.nodes_final} nodes "
            f"({graph.folded_with})"
        )
        return final

    def add_fp32(self, model: str, final: FinalGraph, record: VerificationRecord | None) -> None:
        name = f"{model}.onnx"
        self.graphs[name] = final.record
        self.add_file(name, model, "onnx", "fp32", record, graph=final.record,
                      external_data=final.external_data)  # fmt: skip
        self.fp32_files[model] = name
        self.step(model)

    def checks(self, model: str, session: Session, precision: str) -> list[CheckRecord]:
        """The parity checks of ``model`` for a session of any backend and precision."""
        if model == "matcher":
            return self.matcher_parity.run(session, precision)
        if model == "fastsam":
            return self.fastsam_check.run(session, precision, self.fastsam_in_graph)
        return self.backbone_parity[model].run(session, precision)

    def parity(self, model: str, session: Session, file: str, precision: str):
        """The parity record of ``file`` on ``session`` (None without ``--verify``)."""
        if not self.config.verify:
            return None
        checks = self.checks(model, session, precision)
        return session_record(session, file, model, precision, PARITY_INPUTS,
                              TOLERANCES[precision], checks)  # fmt: skip

    # -- steps --------------------------------------------------------------------------------
    def backbones(self) -> None:
        for cam, backbone in self.models.backbones.items():
            model = f"backbone_{cam}"
            name = f"{model}.onnx"
            with self.timed(name, "export_s"):
                raw = self.work / f"{model}.raw.onnx"
                export_backbone(backbone, raw, self.config.opset)
                graph = self.finalize(raw, self.out / name)
            self.fp32_files[model] = name
            record = None
            with self.timed(name, "verify_s"):
                if self.config.verify:
                    self.backbone_parity[model] = BackboneParity(
                        self.reference(model), backbone.image_size, seed=self.config.seed
                    )
                    with _onnxruntime_cpu(self.out / name, model) as session:
                        record = self.parity(model, session, name, "fp32")
            self.add_fp32(model, graph, record)

    def matcher(self) -> None:
        config, models = self.config, self.models
        forms = ["weights", "masks"] if config.matcher_input == "auto" else [config.matcher_input]
        finals: dict[str, Path] = {}
        reports: dict[str, FinalGraph] = {}
        for form in forms:
            with self.timed("matcher.onnx", f"export_{form}_s"):
                raw = self.work / f"matcher_{form}.raw.onnx"
                export_matcher(models.matcher, self.src, self.dst, form, raw, config.opset)
                finals[form] = self.work / f"matcher_{form}.onnx"
                reports[form] = finalize_onnx(raw, finals[form], check=config.verify)
        if config.matcher_input == "auto":
            with self.timed("matcher.onnx", "decide_s"):
                self.decision = measure_matcher_inputs(
                    finals, self.src, self.dst, models.matcher.dim
                )
            d = self.decision
            self.echo(
                f"  matcher input: {d.chosen} (N={d.candidates}: weights "
                f"{d.weights_ms:.1f} ms, masks {d.masks_ms:.1f} ms on ONNX Runtime CPU)"
            )
        else:
            self.decision = InputDecision(config.matcher_input, "given (--matcher-input)")
        self.form = self.decision.chosen
        shutil.move(str(finals[self.form]), str(self.out / "matcher.onnx"))
        self.fp32_files["matcher"] = "matcher.onnx"
        graph = reports[self.form]
        self.echo(
            f"  matcher.onnx: {graph.record.nodes_exported} -> {graph.record.nodes_final} nodes "
            f"({graph.record.folded_with})"
        )
        record = None
        with self.timed("matcher.onnx", "verify_s"):
            if config.verify:
                self.matcher_parity = MatcherParity(
                    self.reference("matcher"),
                    models.matcher.dim,
                    ViewGeometry(self.src.image_size, self.src.feat_grid),
                    ViewGeometry(self.dst.image_size, self.dst.feat_grid),
                    self.form,
                    random_sets=config.parity_sets,
                    large_n=config.parity_large_n,
                    seed=config.seed,
                )
                with _onnxruntime_cpu(self.out / "matcher.onnx", "matcher") as session:
                    record = self.parity("matcher", session, "matcher.onnx", "fp32")
        self.add_fp32("matcher", graph, record)

    def _fastsam_onnx(self, settings: NmsSettings | None) -> FinalGraph:
        """Export ``fastsam.onnx`` with ultralytics: NMS in the graph with ``settings``, or
        raw outputs for None."""
        from export.fastsam import export_fastsam_onnx

        workdir = self.work / ("fastsam_nms" if settings is not None else "fastsam")
        produced, self.ultralytics_version = export_fastsam_onnx(
            self.models.fastsam_weights,
            workdir,
            self.config.fastsam_imgsz,
            self.config.opset,
            nms=settings,
        )
        return self.finalize(produced, self.out / "fastsam.onnx")

    def fastsam(self) -> None:
        """``fastsam.onnx`` with NMS in the graph or not (``--fastsam-nms``).

        ``graph`` / ``auto`` export ultralytics' in-graph NMS with this export's conf, iou
        and max_det (read back from the file and compared), then check it against the
        runtime's NMS on the torch backend's outputs. ``auto`` runs that check even with
        ``--no-verify`` (it decides the form) and, when it fails, exports the raw outputs
        instead and says why; ``graph`` keeps the file and its failing checks (the export
        then fails with their numbers).
        """
        from export.fastsam import check_baked_nms

        config = self.config
        mode = config.fastsam_nms
        settings = fastsam_settings(config)
        if config.verify or mode == "auto":
            self.fastsam_check = FastSAMParity(
                self.reference("fastsam"), config.fastsam_imgsz, settings, seed=config.seed
            )
        checks: list[CheckRecord] = []
        baked = None
        record = None
        in_graph = mode != "runtime"
        if in_graph:
            with self.timed("fastsam.onnx", "export_s"):
                graph = self._fastsam_onnx(settings)
                baked = check_baked_nms(self.out / "fastsam.onnx", settings)
            self.fastsam_in_graph = True
            if self.fastsam_check is not None:
                with (
                    self.timed("fastsam.onnx", "verify_s"),
                    _onnxruntime_cpu(self.out / "fastsam.onnx", "fastsam") as session,
                ):
                    checks = self.checks("fastsam", session, "fp32")
                    record = session_record(session, "fastsam.onnx", "fastsam", "fp32",
                                            PARITY_INPUTS, TOLERANCES["fp32"], checks)  # fmt: skip
            failed = [c for c in checks if not c.passed]
            if failed and mode == "auto":
                in_graph = False
                numbers = "; ".join(
                    f"{c.output}: {c.metric} {c.value:.3g} (tolerance {c.tolerance:g}) [{c.detail}]"
                    for c in failed
                )
                reason = f"in-graph NMS parity failed: {numbers}"
                self.echo(f"  fastsam.onnx: NMS kept out of the graph (the runtime runs it): "
                          f"{reason}")  # fmt: skip
                (self.out / "fastsam.onnx").unlink()
            elif mode == "auto":
                reason = "in-graph NMS parity holds"
            else:
                reason = "requested (--fastsam-nms graph)"
        else:
            reason = "requested (--fastsam-nms runtime)"
        if not in_graph:
            phase = "export_s" if mode == "runtime" else "export_without_nms_s"
            with self.timed("fastsam.onnx", phase):
                graph = self._fastsam_onnx(None)
            self.fastsam_in_graph = False
            record = None
            if config.verify:
                with (
                    self.timed("fastsam.onnx", "verify_s"),
                    _onnxruntime_cpu(self.out / "fastsam.onnx", "fastsam") as session,
                ):
                    record = self.parity("fastsam", session, "fastsam.onnx", "fp32")
        self.nms_decision = NmsDecision(
            requested=mode, settings=settings, reason=reason, baked=baked, checks=tuple(checks)
        )
        if in_graph:
            self.echo(
                f"  fastsam.onnx: NMS in the graph (conf {settings.conf:g}, iou "
                f"{settings.iou:g}, max_det {settings.max_det}; {reason})"
            )
        self.add_fp32("fastsam", graph, record if config.verify else None)

    def fp32_prefixes(self, model: str) -> tuple[str, ...]:
        """Subgraphs kept fp32 in half-precision variants: the in-graph pooling weights, and
        FastSAM's in-graph NMS (by node name: every node outside the network)."""
        if model == "fastsam" and self.fastsam_in_graph:
            from export.fastsam import nms_tail_nodes

            return nms_tail_nodes(self.out / self.fp32_files["fastsam"])
        return FP32_PREFIXES if model == "matcher" and self.form == "masks" else ()

    def fp16(self) -> None:
        from export.fp16 import convert_fp16

        for model, fp32_name in self.fp32_files.items():
            name = f"{model}_fp16.onnx"
            with self.timed(name, "export_s"):
                report = convert_fp16(
                    self.out / fp32_name,
                    self.out / name,
                    fp32_node_prefixes=self.fp32_prefixes(model),
                    check=self.config.verify,
                )
            self.echo(f"  {name}: fp16 weights, fp32 I/O; kept fp32: {_kept(report)}")
            record = None
            with self.timed(name, "verify_s"):
                if self.config.verify:
                    with _onnxruntime_cpu(self.out / name, model) as session:
                        record = self.parity(model, session, name, "fp16")
            graph = GraphRecord(
                opset=self.graphs[fp32_name].opset,
                nodes_final=int(report["nodes"]),
                converter=report["converter"],
                fp32_ops=dict(report["fp32_ops"]),
                fp32_nodes_by_prefix=int(report["fp32_nodes_by_prefix"]),
            )
            self.add_file(name, model, "onnx", "fp16", record, graph=graph,
                          external_data=report["external_data"])  # fmt: skip
            self.step(name)

    def tensorrt(self) -> None:
        """Build and verify TensorRT fp16 engines when possible; fills ``self.engines``."""
        config = self.config
        if not config.fp16:
            self.engines = EnginesRecord(
                built=False, note="engines: not requested (--fp16 builds TensorRT fp16 engines)"
            )
            return
        if not config.engines:
            self.engines = EnginesRecord(built=False, note="engines: skipped (--no-engines)")
            self.echo(self.engines.note)
            return
        from export.tensorrt import build_engine, compare_sessions, dynamic_profile, tensorrt_status

        usable, reason = tensorrt_status()
        if not usable:
            note = f"engines: skipped, {reason}; the ONNX files are complete without them"
            self.engines = EnginesRecord(built=False, note=note, reason=reason)
            self.echo(note)
            return
        cache = Path(config.timing_cache or self.out / "trt_timing.cache")
        built = []
        engine: EngineRecord | None = None
        tensorrt = select_backend("tensorrt", "cuda")
        for model, fp32_name in self.fp32_files.items():
            name = f"{model}_fp16.engine"
            onnx_path = self.out / fp32_name
            with self.timed(name, "export_s"):
                made = build_engine(
                    onnx_path,
                    self.out / name,
                    dynamic_profile(io_specs(onnx_path)[0]),
                    fp16=True,
                    timing_cache=cache,
                    fp32_layer_prefixes=self.fp32_prefixes(model),
                )
            engine = _engine_record(made)
            record = None
            start = time.perf_counter()
            if config.verify:
                built_with = {"tensorrt": engine.tensorrt_version, "gpu": engine.gpu_name}
                with (
                    tensorrt.open(self.out / name, name=model, built_with=built_with) as session,
                    _onnxruntime_cpu(onnx_path, model) as onnx_session,
                ):
                    record = self.parity(model, session, name, "fp16")
                    report = compare_sessions(
                        session,
                        onnx_session,
                        self._comparison_feeds(model),
                        _comparison_tolerances(model, self.fastsam_in_graph),
                    )
                    self.records.append(
                        session_record(
                            session,
                            name,
                            model,
                            "fp16",
                            "onnxruntime fp32 outputs",
                            TOLERANCES["fp16"],
                            [
                                check(
                                    output,
                                    "max abs err vs onnxruntime fp32",
                                    values["max_abs_err"],
                                    values["allowed"],
                                )  # fmt: skip
                                for output, values in report.items()
                            ],
                        )
                    )
            self.timings[name]["verify_s"] = round(time.perf_counter() - start, 3)
            self.add_file(name, model, "tensorrt", "fp16", record, io_from=onnx_path,
                          engine=engine)  # fmt: skip
            built.append(name)
        note = f"engines: built {', '.join(built)} (TensorRT {engine.tensorrt_version}, " + (
            f"{engine.gpu_name})"
        )
        self.echo(note)
        self.engines = EnginesRecord(
            built=True,
            note=note,
            files=tuple(built),
            timing_cache=cache.name,
            tensorrt_version=engine.tensorrt_version,
            gpu_name=engine.gpu_name,
        )

    def _comparison_feeds(self, model: str) -> list[dict]:
        """Inputs of the TensorRT vs ONNX Runtime comparison."""
        from runtime.verification.inputs import random_images

        rng = np.random.default_rng([self.config.seed, 9])
        if model == "matcher":
            parity = self.matcher_parity
            return [parity.feeds(parity.case(i)) for i in range(parity.n_fixed)]
        if model == "fastsam":
            size = self.config.fastsam_imgsz
            return [{"images": rng.random((1, 3, size, size), dtype=np.float32)}]
        backbone = self.models.backbones[model.removeprefix("backbone_")]
        return [{"image": random_images(rng, 1, backbone.image_size)}]

    def write_golden(self) -> None:
        """``golden/<model>.npz`` of every model: golden inputs at the real sizes and the
        torch backend's fp32 records (what ``omama-run verify`` replays)."""
        config = self.config
        settings = fastsam_settings(config)
        for model in self.fp32_files:
            with self.timed(f"golden/{model}.npz", "export_s"):
                kind = model_kind(model)
                if kind == "matcher":
                    cases = golden_io.matcher_cases(
                        self.form,
                        (self.src.image_size, self.src.feat_grid),
                        (self.dst.image_size, self.dst.feat_grid),
                        self.models.matcher.dim,
                        config.seed,
                        max_candidates=PROFILE_CANDIDATES[2],
                    )
                elif kind == "fastsam":
                    cases = golden_io.fastsam_cases(config.fastsam_imgsz, config.seed)
                else:
                    view = next(v for v in self.models.views.values()
                                if model == f"backbone_{v.kind}")  # fmt: skip
                    cases = golden_io.backbone_cases(view.image_size, config.seed)
                reference = self.reference(model)
                for case in cases:
                    outputs = reference.infer(case.feeds())
                    case.reference = reference_record(kind, outputs, case.info, settings)
                path = f"{golden_io.GOLDEN_DIR}/{model}.npz"
                golden_io.write_golden(self.out / path, model, kind, cases)
                ref = file_ref(self.out, path)
                self.golden.append(GoldenFile(model, path, ref.sha256, ref.size_bytes, len(cases)))
        total = sum(g.size_bytes for g in self.golden) / 1e6
        self.echo(f"  {golden_io.GOLDEN_DIR}/: {len(self.golden)} files, {total:.2f} MB")

    def replay(self, manifest: Manifest) -> list[VerificationRecord]:
        """The golden files replayed on every file as ``omama-run verify`` replays them
        (``runtime.sessions.open_artifact`` + ``runtime.verification.replay``), and on the
        torch backend rebuilt from ``manifest`` and the weights files (proving the rebuild
        gives the exported numbers)."""
        config = self.config
        dirs = [
            Path(p).parent
            for p in (config.backbone_weights, config.matcher_weights, config.fastsam_weights)
            if p is not None
        ]
        runs = [
            (
                select_backend(
                    "tensorrt" if e.format == "tensorrt" else "onnxruntime",
                    "cuda" if e.format == "tensorrt" else "cpu",
                ),
                e,
            )  # fmt: skip
            for e in manifest.files
        ]
        torch_choice = select_backend("torch", "cpu")
        runs += [(torch_choice, e) for e in manifest.files if e.format == "onnx"
                 and e.precision == "fp32"]  # fmt: skip
        records = []
        for choice, entry in runs:
            with (
                self.timed(entry.path, f"golden_{choice.name}_s"),
                open_artifact(choice, manifest, entry, weights_dirs=dirs) as session,
            ):
                records.append(replay_model(session, manifest, entry.path, entry.model,
                                            entry.precision))  # fmt: skip
        return records


def _engine_record(made: dict) -> EngineRecord:
    """The manifest record of what ``export.tensorrt.build_engine`` returned."""
    return EngineRecord(
        tensorrt_version=str(made["tensorrt_version"]),
        gpu_name=str(made["gpu_name"]),
        compute_capability=str(made.get("compute_capability", "")),
        cuda_version=made.get("cuda_version"),
        built_from=str(made.get("built_from", "")),
        precision_flags=tuple(made.get("precision_flags", ())),
        fp32_pinned_layers=int(made.get("fp32_pinned_layers", 0)),
        profiles=tuple(made.get("profiles", ())),
        timing_cache=made.get("timing_cache"),
        build_s=float(made.get("build_s", 0.0)),
    )


def fastsam_settings(config: ExportConfig) -> NmsSettings:
    """conf, iou and max_det of the export's FastSAM: the config's, conf defaulting to the
    reference's 0.4, or to :data:`RANDOM_WEIGHTS_CONF` for random weights (which score
    below 0.013, so 0.4 would leave the runtime without candidates)."""
    conf = config.fastsam_conf
    if conf is None:
        conf = RANDOM_WEIGHTS_CONF if config.random_init else REFERENCE_CONF
    return NmsSettings(float(conf), float(config.fastsam_iou), int(config.fastsam_max_det))


def _comparison_tolerances(model: str, fastsam_nms_in_graph: bool = False) -> dict[str, float]:
    fp16 = TOLERANCES["fp16"]
    if model == "matcher":
        return {"similarities": fp16["similarities_max_abs"]}
    if model == "fastsam" and fastsam_nms_in_graph:
        # Detection rows come out in score order and tie-decided: compared element-wise
        # they would differ on a swapped tie. The parity run above matches them instead.
        return {"output1": fp16["fastsam_rel"]}
    if model == "fastsam":
        return {"output0": fp16["fastsam_rel"], "output1": fp16["fastsam_rel"]}
    return {"feats": fp16["feats_rel"]}


def _kept(report: dict) -> str:
    parts = [f"{op} x{count}" for op, count in report["fp32_ops"].items()]
    if report["fp32_nodes_by_prefix"]:
        parts.append(f"{report['fp32_nodes_by_prefix']} nodes by name (pooling weights / NMS)")
    return ", ".join(parts) or "none"


def export_artifacts(
    config: ExportConfig, echo: Callable[[str], None] = print, progress: bool = True
) -> ExportResult:
    """Run the export described by ``config``; returns the manifest and every record.

    Raises OmamaError for missing weights (naming each and where it comes from), for a
    graph that fails the checker, and, after writing the manifest, for failed checks
    (naming the file, backend and output).
    """
    import torch
    from tqdm import tqdm

    _validate(config)
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    models_count = 3 + int(config.include_fastsam)
    total = 5 + models_count * (2 if config.fp16 else 1)
    bar = tqdm(total=total, desc="export", unit="step", disable=not progress, leave=False)

    def step(label: str) -> None:
        bar.set_postfix_str(label)
        bar.update(1)

    try:
        with temporary_dir(out) as work, torch.no_grad():
            models = build_models(config, work)
            # Only now that the inputs are known to load: the old export goes.
            _clear_previous(out)
            step("models")
            run = _Export(config, models, work, echo, step)
            src, dst = run.src, run.dst
            echo(
                f"exporting {models.direction}: source {src.kind} "
                f"{src.image_size[0]}x{src.image_size[1]} px "
                f"({src.feat_grid[0]}x{src.feat_grid[1]} tokens), destination {dst.kind} "
                f"{dst.image_size[0]}x{dst.image_size[1]} px "
                f"({dst.feat_grid[0]}x{dst.feat_grid[1]} tokens)"
                + (", random weights" if config.random_init else "")
            )
            for note in models.notes:
                echo(note)
            run.backbones()
            run.matcher()
            if config.include_fastsam:
                run.fastsam()
            if config.fp16:
                run.fp16()
            run.tensorrt()
            step("engines")
            run.write_golden()
            step("golden")
            manifest = _manifest(run)
            manifest.root = out
            if config.verify:
                records = [*run.records, *run.replay(manifest)]
                manifest.verification = _verification(config, records, run.golden)
            step("golden replay")
            write_manifest(out, manifest)
            step("manifest")
    finally:
        bar.close()

    records = list(manifest.verification.records)
    result = ExportResult(manifest, records, run.engines.note, run.timings)
    if config.verify:
        echo(format_table(records))
    failures = result.failures()
    if failures:
        named = "; ".join(failures[:3])
        more = f" (+{len(failures) - 3} more)" if len(failures) > 3 else ""
        raise OmamaError(
            f"verification failed: {named}{more}; {out / MANIFEST_NAME} records every result"
        )
    return result


def tool_versions() -> dict[str, str | None]:
    names = (
        "torch",
        "timm",
        "onnx",
        "onnxruntime",
        "onnxslim",
        "onnxconverter-common",
        "onnx-graphsurgeon",
        "polygraphy",
        "ultralytics",
        "tensorrt",
        "numpy",
    )
    versions = {name: package_version(name) for name in names}
    versions["python"] = platform.python_version()
    versions["omama"] = omama_version
    return versions


def _verification(
    config: ExportConfig, records: list[VerificationRecord], golden: list[GoldenFile]
) -> VerificationSection:
    failures = tuple(line for r in records for line in r.failures())
    return VerificationSection(
        verified=config.verify,
        seed=config.seed,
        passed=not failures,
        failures=failures,
        tolerances={k: dict(v) for k, v in TOLERANCES.items()},
        parity_sets=config.parity_sets if config.verify else 0,
        records=tuple(records),
        golden=tuple(golden),
    )


def _fastsam_spec(run: _Export) -> FastSAMSpec:
    config = run.config
    if not config.include_fastsam:
        return FastSAMSpec(included=False)
    settings = fastsam_settings(config)
    conf, iou, max_det = settings.conf, settings.iou, settings.max_det
    if run.fastsam_in_graph:
        nms = (
            f"graph: ultralytics' class-agnostic NMS inside fastsam.onnx with conf {conf:g}, "
            f"iou {iou:g} and max_det {max_det} baked in; the runtime skips its own NMS, "
            "may raise conf (the rows are filtered again) but not lower it or change iou, "
            "and assembles the masks from the 32 coefficients x output1 prototypes"
        )
        output0 = (
            f"(1, {max_det}, 4 + 1 + 1 + 32): kept detections x1, y1, x2, y2 px, score, "
            "class, coefficients, by decreasing score; zero rows after the last"
        )
    else:
        nms = (
            "runtime: class-agnostic NMS on output0 (conf and iou above, adjustable at run "
            "time), then masks from the 32 coefficients x output1 prototypes"
        )
        output0 = "(1, 4 + 1 + 32, anchors): box cx, cy, w, h px, score, coefficients"
    return FastSAMSpec(
        included=True,
        model="fastsam",
        variant=_fastsam_variant(config),
        imgsz=config.fastsam_imgsz,
        conf=conf,
        iou=iou,
        max_det=max_det,
        retina_masks=True,
        mask_coefficients=32,
        nms_in_graph=run.fastsam_in_graph,
        nms=nms,
        nms_decision=run.nms_decision,
        input="images (1, 3, imgsz, imgsz) float32 RGB in [0, 1], letterboxed (centred, pad "
        "value 114/255)",
        outputs={
            "output0": output0,
            "output1": "(1, 32, imgsz / 4, imgsz / 4): mask prototypes",
        },
        exporter=f"ultralytics {run.ultralytics_version}",
        weights=run.models.fastsam_record,
    )


def _manifest(run: _Export) -> Manifest:
    """The manifest of a finished run (``runtime.manifest`` documents every record)."""
    config, models, decision = run.config, run.models, run.decision
    matcher = models.matcher
    return Manifest(
        direction=models.direction,
        random_init=config.random_init,
        views=models.views,
        preprocess=PreprocessSpec(
            patch_size=models.spec.patch_size,
            mean=tuple(float(v) for v in IMAGENET_MEAN),
            std=tuple(float(v) for v in IMAGENET_STD),
        ),
        descriptor=DescriptorSpec(
            reduction=REDUCTION,
            context_px=CONTEXT_PX,
            feature_dim=matcher.dim,
            descriptor_dim=2 * matcher.dim,
            query_box="tight box of the query mask: x1, y1, w = xmax - xmin, h = ymax - ymin",
            candidate_boxes="x1, y1, w, h in pixels of the destination image",
        ),
        matcher=MatcherSpec(
            input=decision.chosen,
            input_decision=decision,
            attention=config.attention,
            dim=matcher.dim,
            heads=matcher.heads,
            src_grid=tuple(matcher.src_grid),
            dst_grid=tuple(matcher.dst_grid),
            weights=models.matcher_weights,
            model="matcher",
            inputs=_matcher_inputs_doc(decision.chosen),
        ),
        fastsam=_fastsam_spec(run),
        backbone=models.backbone_record,
        files=list(run.files),
        tools=ToolsRecord(
            versions=tool_versions(),
            opset=config.opset,
            exporter="torch.onnx.export (TorchScript-based, dynamo=False); FastSAM: ultralytics",
        ),
        engines=run.engines,
        verification=_verification(config, list(run.records), run.golden),
        created_utc=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        omama_version=omama_version,
    )


def _fastsam_variant(config: ExportConfig) -> str:
    if not config.random_init:
        return Path(config.fastsam_weights).stem
    if config.random_fastsam == "n":
        return "YOLOv8n-seg stand-in, random weights"
    return f"FastSAM-{config.random_fastsam} architecture, random weights"


def _matcher_inputs_doc(form: str) -> dict[str, str]:
    common = {
        "src_feats": "(1, D, hs, ws) source backbone features",
        "dst_feats": "(1, D, hd, wd) destination backbone features",
    }
    if form == "weights":
        return common | {
            "src_weights": "(B, 1, 2, hs*ws) runtime.pooling.descriptor_weights of the query "
            "masks and boxes (source view)",
            "dst_weights": "(1, N, 2, hd*wd) descriptor_weights of the candidates",
        }
    return common | {
        "src_mask": "(B, 1, Hs, Ws) uint8 query masks at the source image size",
        "src_box": "(B, 1, 4) float32 x1, y1, w, h px of the query masks",
        "dst_masks": "(1, N, Hd, Wd) uint8 candidate masks at the destination image size",
        "dst_boxes": "(1, N, 4) float32 x1, y1, w, h px of the candidates",
    }
