"""``omama export``: the top-level command of the export layer (entry point ``export``).

Flags -> :class:`export.config.ExportConfig` -> :func:`export.pipeline.export_artifacts`.
Nothing heavy is imported here at module level: torch, ultralytics and onnx load inside the
command, so ``omama --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path

import typer

HELP = {
    "direction": "exo2ego or ego2exo; default: the matcher checkpoint's (exo2ego with "
    "--random-init).",
    "backbone_weights": "Backbone checkpoint, e.g. dinov2_vitb14_reg4_pretrain.pth (DINOv2 "
    "release).",
    "matcher": "Matcher weights: the official O-MaMa .pt or an omama .safetensors.",
    "fastsam": "FastSAM checkpoint, e.g. FastSAM-x.pt (Ultralytics).",
    "backbone": "Backbone name (default: the matcher's, dinov2_vitb14_reg for official .pt).",
    "random_init": "Export a small random-weight configuration (ViT-S/14 with a 1x1 projection "
    "to 768, exo 140x252 / ego 168x168 px, YOLOv8n-seg FastSAM stand-in); the manifest marks "
    "it as random.",
    "fp16": "Also write fp16 ONNX variants (fp32 I/O) and, with TensorRT and a CUDA GPU, "
    "TensorRT fp16 engines.",
    "int8": "Also write int8 files (static post-training quantization to QDQ ONNX, calibrated "
    "on --calib) of the backbones, and of FastSAM when its fidelity holds; the matcher stays "
    "float. With TensorRT and a CUDA GPU, *_int8.engine files from the same QDQ files.",
    "calib": "int8 calibration data: a prepared split (omama data prepare ROOT: frames per "
    "view, sampled across takes) or a folder of images. Without it: synthetic frames, with a "
    "warning that the result is not representative.",
    "calib_frames": "int8 calibration frames in total: from a prepared root half per view, "
    "sampled across its train takes; from an image folder up to this many images, each "
    "feeding both views; synthetic frames (no --calib): at most 32.",
    "min_argmax": "Fail the export when the int8 pipeline picks the fp32 pipeline's candidate "
    "(float32-exact ties aside) in fewer than this share of --parity-sets candidate sets.",
    "min_mask_iou": "Fail the export when the mean IoU of the int8 pipeline's picked masks with "
    "the fp32 pipeline's is below this.",
    "random_shapes": "With --random-init: 'small' (the fast configuration) or 'official' "
    "(ViT-B/14-reg at 700x700 / 532x952, the official matcher shapes, FastSAM-s; "
    "--random-fastsam x for FastSAM-x), to measure latency before any weights are at hand.",
    "random_fastsam": "With --random-init: FastSAM architecture n (YOLOv8n-seg stand-in), s "
    "(FastSAM-s) or x (FastSAM-x); default n for small shapes, s for official ones.",
    "weight_profile": "With --random-init: 'plain' random weights, or 'outlier' (random "
    "weights with planted outlier channels and a high-norm token, as trained DINOv2 ViTs "
    "have: the case that breaks fp16 and plain int8).",
    "engines": "Build TensorRT engines with --fp16 when possible.",
    "verify": "Check every file (ONNX checker, shape inference, parity with PyTorch).",
    "include_fastsam": "Export FastSAM (without it the runtime needs candidate masks from "
    "elsewhere).",
    "matcher_input": "Matcher graph input: 'weights' (per-mask pooling weights at token "
    "resolution), 'masks' (masks at image size + boxes), or 'auto' (the faster, measured at "
    "export).",
    "attention": "Cross-attention evaluation order in the matcher graph: folded or standard.",
    "fastsam_nms": "Where FastSAM's NMS runs: 'graph' (ultralytics' NMS inside fastsam.onnx, "
    "conf/iou/max_det baked in: the runtime may only raise conf; fails the export if its "
    "parity with the runtime's NMS fails), 'runtime' (raw outputs; conf and iou stay "
    "adjustable at run time), or 'auto' (the graph when that parity holds, else runtime, "
    "saying why).",
    "parity_sets": "Random candidate sets in the matcher parity check.",
    "sign": "Sign the finished folder with this PEM elliptic-curve private key (OpenSSF "
    "model-signing, offline; writes OUT/model.sig); `omama-run ... --trust PUBKEY` verifies it. "
    "Needs omama[signing].",
    "timing_cache": "TensorRT timing cache to reuse across exports (default: "
    "OUT/trt_timing.cache).",
}


def register(app: typer.Typer) -> None:
    app.command("export")(export_command)


def export_command(
    out: Path = typer.Option(Path("artifacts"), "--out", "-o", help="Artifacts folder."),
    direction: str = typer.Option(None, "--direction", help=HELP["direction"]),
    backbone_weights: Path = typer.Option(
        None, "--backbone-weights", help=HELP["backbone_weights"]
    ),
    matcher: Path = typer.Option(None, "--matcher", help=HELP["matcher"]),
    fastsam: Path = typer.Option(None, "--fastsam", help=HELP["fastsam"]),
    backbone: str = typer.Option(None, "--backbone", help=HELP["backbone"]),
    random_init: bool = typer.Option(False, "--random-init", help=HELP["random_init"]),
    random_shapes: str = typer.Option(
        "small", "--random-shapes", metavar="small|official", help=HELP["random_shapes"]
    ),
    random_fastsam: str = typer.Option(
        None, "--random-fastsam", metavar="n|s|x", help=HELP["random_fastsam"]
    ),
    weight_profile: str = typer.Option(
        "plain", "--weight-profile", metavar="plain|outlier", help=HELP["weight_profile"]
    ),
    fp16: bool = typer.Option(False, "--fp16", help=HELP["fp16"]),
    int8: bool = typer.Option(False, "--int8", help=HELP["int8"]),
    calib: Path = typer.Option(None, "--calib", metavar="ROOT|IMAGES", help=HELP["calib"]),
    calib_frames: int = typer.Option(300, "--calib-frames", help=HELP["calib_frames"]),
    min_argmax: float = typer.Option(0.99, "--min-argmax", help=HELP["min_argmax"]),
    min_mask_iou: float = typer.Option(0.99, "--min-mask-iou", help=HELP["min_mask_iou"]),
    engines: bool = typer.Option(True, "--engines/--no-engines", help=HELP["engines"]),
    verify: bool = typer.Option(True, "--verify/--no-verify", help=HELP["verify"]),
    include_fastsam: bool = typer.Option(
        True, "--fastsam-export/--no-fastsam-export", help=HELP["include_fastsam"]
    ),
    matcher_input: str = typer.Option("auto", "--matcher-input", help=HELP["matcher_input"]),
    attention: str = typer.Option("folded", "--attention", help=HELP["attention"]),
    fastsam_imgsz: int = typer.Option(1024, "--fastsam-imgsz", help="FastSAM input size."),
    fastsam_nms: str = typer.Option("auto", "--fastsam-nms", help=HELP["fastsam_nms"]),
    opset: int = typer.Option(17, "--opset", help="ONNX opset (17 or newer)."),
    parity_sets: int = typer.Option(200, "--parity-sets", help=HELP["parity_sets"]),
    timing_cache: Path = typer.Option(None, "--timing-cache", help=HELP["timing_cache"]),
    seed: int = typer.Option(0, "--seed", help="Seed of random weights and parity inputs."),
    sign: Path = typer.Option(None, "--sign", metavar="KEY", help=HELP["sign"]),
) -> None:
    """Export ONNX models (and TensorRT engines) into a verified artifacts folder.

    Writes backbone_<kind>.onnx per view (kind: ego or exo), matcher.onnx (descriptor
    pooling + matcher, dynamic objects B and candidates N), fastsam.onnx (ultralytics'
    exporter, NMS in the graph unless --fastsam-nms says otherwise or its parity fails),
    with --fp16 the *_fp16.onnx variants and, when TensorRT and a CUDA GPU are present,
    *_fp16.engine files; golden/<model>.npz (golden inputs and the torch fp32 outputs,
    for `omama-run verify` on the target machine); then manifest.json with hashes,
    shapes, versions and the verification records. The manifest's facts (direction,
    random init, sizes, descriptor settings, ...) also go into each ONNX file's metadata,
    and omama-run refuses a manifest that disagrees with them; with --sign, model.sig.

    Example: omama export --fp16 --backbone-weights dinov2_vitb14_reg4_pretrain.pth
    --matcher omama_exo2ego.pt --fastsam FastSAM-x.pt --out artifacts

    Example: omama export --fp16 --random-init --out artifacts_random

    Example: omama export --random-init --sign omama_signing.pem --out artifacts_signed
    """
    from export.config import ExportConfig
    from export.pipeline import export_artifacts

    config = ExportConfig(
        out_dir=out,
        direction=direction,
        backbone=backbone,
        backbone_weights=backbone_weights,
        matcher_weights=matcher,
        fastsam_weights=fastsam,
        random_init=random_init,
        random_shapes=random_shapes,
        random_fastsam=random_fastsam,
        weight_profile=weight_profile,
        fp16=fp16,
        int8=int8,
        calib=calib,
        calib_frames=calib_frames,
        min_argmax=min_argmax,
        min_mask_iou=min_mask_iou,
        engines=engines,
        verify=verify,
        include_fastsam=include_fastsam,
        opset=opset,
        matcher_input=matcher_input,
        attention=attention,
        fastsam_imgsz=fastsam_imgsz,
        fastsam_nms=fastsam_nms,
        parity_sets=parity_sets,
        seed=seed,
        timing_cache=timing_cache,
        sign_key=sign,
    )
    typer.echo(export_artifacts(config, echo=typer.echo).summary())
