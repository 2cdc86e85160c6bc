"""What ``omama export`` exports: :class:`ExportConfig`, its defaults and its validation."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from runtime.egoexo import check_direction
from runtime.errors import OmamaError
from runtime.fastsam_post import CONF as REFERENCE_CONF
from runtime.fastsam_post import IMGSZ_PX, IOU, MAX_DET, RANDOM_WEIGHTS_CONF
from runtime.manifest import NmsSettings

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
RANDOM_GRIDS: dict[str, tuple[int, int]] = {"exo": (10, 18), "ego": (12, 12)}  # by view kind
MATCHER_INPUT_CHOICES = ("auto", "weights", "masks")
FASTSAM_NMS_CHOICES = ("auto", "graph", "runtime")
ATTENTION_CHOICES = ("standard", "folded")
# --random-init's shapes: "small" (ViT-S/14 at the RANDOM_GRIDS, the YOLOv8n-seg stand-in)
# or "official" (ViT-B/14-reg at 700x700 / 532x952, the official matcher, FastSAM-s or -x).
RANDOM_SHAPES = ("small", "official")
RANDOM_FASTSAM = ("n", "s", "x")
CALIB_FRAMES = 300  # int8 calibration frames in total, sampled across takes and views
MIN_ARGMAX = 0.99  # int8 fails below this argmax agreement with fp32 (the same pick)
MIN_MASK_IOU = 0.99  # ... or below this mean IoU of its picks' masks with fp32's
MIN_OPSET = 17  # LayerNormalization as one op (and TensorRT's INormalizationLayer)


@dataclass
class ExportConfig:
    """What ``omama export`` exports; the CLI options map onto these fields.

    ``backbone``: registry name or a ``BackboneSpec`` (tests use shallow ones); default:
    the matcher checkpoint's backbone (``dinov2_vitb14_reg`` for official ``.pt`` files),
    or ViT-S/14 with registers for ``random_init``. ``random_grids``: token grids per
    view kind (ego | exo) of the random-init configuration; ``random_fastsam``: its FastSAM
    architecture (``n``: the YOLOv8n-seg stand-in; ``s`` / ``x``: FastSAM-s / FastSAM-x).
    ``matcher_input``: ``auto`` (measured), ``weights`` or ``masks``. ``parity_sets``:
    random candidate sets of the matcher check, ``parity_large_n`` the candidates of its
    large fixed case. ``fastsam_nms``: ``graph`` (ultralytics' NMS inside fastsam.onnx,
    verified against the runtime's), ``runtime`` (raw outputs, the runtime runs NMS) or
    ``auto`` (the graph when its parity holds, else runtime). ``sign_key``: a PEM
    elliptic-curve private key that signs the finished folder (``runtime.manifest.signing``).
    """

    out_dir: Path = Path("artifacts")
    direction: str | None = None
    backbone: str | BackboneSpec | None = None
    backbone_weights: Path | None = None
    matcher_weights: Path | None = None
    fastsam_weights: Path | None = None
    random_init: bool = False
    random_grids: dict[str, tuple[int, int]] = field(default_factory=lambda: dict(RANDOM_GRIDS))
    random_fastsam: str | None = None
    random_shapes: str = "small"
    weight_profile: str = "plain"
    fp16: bool = False
    int8: bool = False
    calib: Path | None = None
    calib_frames: int = CALIB_FRAMES
    min_argmax: float = MIN_ARGMAX
    min_mask_iou: float = MIN_MASK_IOU
    engines: bool = True
    verify: bool = True
    include_fastsam: bool = True
    opset: int = MIN_OPSET
    matcher_input: str = "auto"
    attention: str = "folded"
    fastsam_imgsz: int = IMGSZ_PX
    fastsam_nms: str = "auto"
    parity_sets: int = 200
    parity_large_n: int = 256
    seed: int = 0
    timing_cache: Path | None = None
    sign_key: Path | None = None

    @property
    def fastsam_variant(self) -> str:
        """The random FastSAM's architecture: ``random_fastsam``, else ``n`` for the small
        shapes and ``s`` (FastSAM-s) for the official ones."""
        if self.random_fastsam is not None:
            return self.random_fastsam
        return "s" if self.random_shapes == "official" else "n"


def fastsam_settings(config: ExportConfig) -> NmsSettings:
    """conf, iou and max_det of the export's FastSAM: the reference's (conf 0.4), conf
    :data:`RANDOM_WEIGHTS_CONF` for random weights (which score below 0.013, so 0.4 would
    leave the runtime without candidates). With NMS in the graph they are baked into it."""
    conf = RANDOM_WEIGHTS_CONF if config.random_init else REFERENCE_CONF
    return NmsSettings(float(conf), float(IOU), int(MAX_DET))


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


def _check_choice(what: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise OmamaError(f"{what} must be one of {', '.join(choices)}, got {value!r}")


def validate(config: ExportConfig) -> None:
    """OmamaError for a value no export takes, random init with weights files, a signing key
    that cannot sign, or missing weights (naming each file and where it comes from)."""
    _check_choice("matcher input", config.matcher_input, MATCHER_INPUT_CHOICES)
    _check_choice("attention", config.attention, ATTENTION_CHOICES)
    if config.opset < MIN_OPSET:
        raise OmamaError(
            f"opset must be at least {MIN_OPSET} (LayerNormalization), got {config.opset}"
        )
    if config.direction is not None:
        check_direction(config.direction)
    if config.parity_sets < 1:
        raise OmamaError(
            f"--parity-sets must be at least 1 (fp16's argmax agreement is measured on the "
            f"random sets), got {config.parity_sets}"
        )
    if config.fastsam_imgsz % 32:
        raise OmamaError(f"FastSAM image size must be a multiple of 32, got {config.fastsam_imgsz}")
    _check_choice("--fastsam-nms", config.fastsam_nms, FASTSAM_NMS_CHOICES)
    _check_choice("--random-shapes", config.random_shapes, RANDOM_SHAPES)
    if config.random_fastsam is not None:
        _check_choice("--random-fastsam", config.random_fastsam, RANDOM_FASTSAM)
    from runtime.manifest import WEIGHT_PROFILES

    _check_choice("--weight-profile", config.weight_profile, WEIGHT_PROFILES)
    if not config.random_init:
        random_only = [
            flag
            for flag, changed in (
                ("--random-shapes", config.random_shapes != "small"),
                ("--random-fastsam", config.random_fastsam is not None),
                ("--weight-profile", config.weight_profile != "plain"),
            )
            if changed
        ]
        if random_only:
            raise OmamaError(
                f"{', '.join(random_only)} shape the random weights of --random-init; add "
                "--random-init or drop them"
            )
    if not config.int8 and (config.calib is not None or config.calib_frames != CALIB_FRAMES):
        raise OmamaError("--calib and --calib-frames calibrate the int8 files: add --int8")
    if config.calib_frames < 1:
        raise OmamaError(f"--calib-frames must be at least 1, got {config.calib_frames}")
    if not 0.0 < config.min_argmax <= 1.0:
        raise OmamaError(f"--min-argmax must be in (0, 1], got {config.min_argmax}")
    if not 0.0 < config.min_mask_iou <= 1.0:
        raise OmamaError(f"--min-mask-iou must be in (0, 1], got {config.min_mask_iou}")
    if config.calib is not None and not Path(config.calib).exists():
        raise OmamaError(f"--calib {config.calib}: no such file or folder")
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
    if config.sign_key is not None:
        from runtime.manifest.signing import signer

        signer(config.sign_key)  # a missing extra or an unusable key stops before the export
    missing = missing_weights(config)
    if missing:
        raise OmamaError(
            "cannot export without weights: "
            + "; ".join(missing)
            + " (or pass --random-init for a small random-weight configuration)"
        )
