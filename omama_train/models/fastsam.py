"""FastSAM through ultralytics: load weights, build random-weight stand-ins, segment everything.

FastSAM-s / FastSAM-x are YOLOv8s-seg / YOLOv8x-seg with a single class, trained on SA-1B.
O-MaMa's candidates are FastSAM's "everything" output on the destination image (image
size 1024, confidence 0.4, NMS IoU 0.9, retina masks): :func:`segment_everything` returns
exactly that, as (N, H, W) uint8 masks and (N, 4) float32 ``x1, y1, w, h`` boxes at the
image's own size.

Checkpoints are never unpickled freely: a ``.pt`` file can run any code when it is
unpickled, and FastSAM weights come from downloads and from artifacts folders that travel
between machines. :func:`load_fastsam` loads them only through ultralytics' restricted
loading (``ULTRALYTICS_SAFE_LOAD``: ``torch.load(weights_only=True)`` with an allow-list of
the ultralytics and torch model classes a checkpoint is made of) and refuses to load at all
where that is unavailable; there is no fallback to full unpickling.

Ultralytics changes process-wide thread settings (``torch.set_num_threads`` on device
selection, ``cv2.setNumThreads(0)`` on import, ``OMP_NUM_THREADS=1`` when unset); every
entry point here restores torch's and OpenCV's thread counts afterwards.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch

from runtime.errors import OmamaError
from runtime.preprocess import nearest_indices

if TYPE_CHECKING:
    from ultralytics import FastSAM

WEIGHTS_SOURCE = (
    "download FastSAM-x.pt from the Ultralytics assets releases "
    "(https://github.com/ultralytics/assets/releases) or the FastSAM authors' page, "
    "and pass its path with --fastsam"
)
# "n" is no FastSAM release: the smallest YOLOv8-seg, a stand-in for random-init exports.
VARIANT_YAML = {"n": "yolov8n-seg.yaml", "s": "yolov8s-seg.yaml", "x": "yolov8x-seg.yaml"}


@contextlib.contextmanager
def preserve_thread_settings() -> Iterator[None]:
    """Restore torch's and OpenCV's thread counts after ultralytics has changed them."""
    torch_threads = torch.get_num_threads()
    cv2_threads = cv2.getNumThreads()
    omp = os.environ.get("OMP_NUM_THREADS")
    try:
        yield
    finally:
        torch.set_num_threads(torch_threads)
        cv2.setNumThreads(cv2_threads)
        if omp is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = omp


def _import_ultralytics():
    # Importing ultralytics probes the network unless told otherwise: never wait on DNS.
    os.environ.setdefault("YOLO_OFFLINE", "1")
    # Read once, when ultralytics is first imported: restricted checkpoint loading, always.
    os.environ["ULTRALYTICS_SAFE_LOAD"] = "1"
    with preserve_thread_settings():
        import ultralytics

    return ultralytics


def _check_restricted_loading() -> None:
    """OmamaError unless ultralytics will load checkpoints with its restricted unpickler.

    Its restricted mode needs torch's checkpoint scan (torch >= 2.6; without it ultralytics
    silently loads unrestricted) and must have been switched on when ultralytics was first
    imported in this process.
    """
    import inspect

    from ultralytics.nn import tasks

    if not hasattr(torch.serialization, "get_unsafe_globals_in_checkpoint") or (
        "safe_only" not in inspect.signature(tasks.torch_safe_load).parameters
    ):
        raise OmamaError(
            "this torch / ultralytics cannot load a FastSAM checkpoint without unpickling "
            "arbitrary code (restricted loading needs torch >= 2.6 and an ultralytics with "
            "ULTRALYTICS_SAFE_LOAD): upgrade them"
        )
    if not getattr(tasks, "SAFE_LOAD", False):
        raise OmamaError(
            "ultralytics was imported before omama turned on its restricted checkpoint "
            "loading: set ULTRALYTICS_SAFE_LOAD=1 in the environment"
        )


def load_fastsam(weights_path: str | os.PathLike) -> FastSAM:
    """Load a FastSAM checkpoint (e.g. ``FastSAM-x.pt``) from a local file; never downloads.

    Raises :class:`OmamaError` when the file is missing (saying where the weights come
    from) or is not an ultralytics segmentation checkpoint.
    """
    path = Path(weights_path)
    if not path.is_file():
        raise OmamaError(f"FastSAM weights not found at {path}; {WEIGHTS_SOURCE}")
    ultralytics = _import_ultralytics()
    _check_restricted_loading()
    with preserve_thread_settings():
        try:
            model = ultralytics.FastSAM(str(path))
        except Exception as exc:  # ultralytics raises many types for a bad file
            detail = " ".join(str(exc).replace("ERROR ❌️", "").split())
            raise OmamaError(
                f"{path} is not a loadable ultralytics FastSAM checkpoint "
                f"({type(exc).__name__}: {detail})"
            ) from exc
    if model.task != "segment":
        raise OmamaError(f"{path} holds a '{model.task}' model, not a FastSAM segmentation model")
    return model


def build_random_fastsam(path: str | os.PathLike, variant: str = "s", seed: int = 0) -> Path:
    """Write a FastSAM-architecture checkpoint with random weights to ``path`` (no download).

    The network is ultralytics' bundled YOLOv8{s,x}-seg definition with one class, which is
    FastSAM-{s,x}'s architecture; ultralytics' ``FastSAM`` refuses yaml files, hence the
    detour through a saved ``.pt``. For tests, demos and timing only: its masks are noise.
    Returns the checkpoint path.
    """
    if variant not in VARIANT_YAML:
        raise OmamaError(
            f"FastSAM variant must be one of {', '.join(VARIANT_YAML)}, got {variant!r}"
        )
    ultralytics = _import_ultralytics()
    from ultralytics.nn.tasks import SegmentationModel, yaml_model_load

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with preserve_thread_settings():
        torch.manual_seed(seed)
        wrapper = ultralytics.YOLO(VARIANT_YAML[variant], task="segment")
        cfg = yaml_model_load(VARIANT_YAML[variant])  # carries the scale (s / x) of the name
        cfg["nc"] = 1
        net = SegmentationModel(cfg, verbose=False)
        net.args = wrapper.model.args
        net.task = "segment"
        net.names = {0: "object"}
        wrapper.model = net
        wrapper.save(str(path))
    return path


def unletterbox_masks(masks: torch.Tensor, image_hw: tuple[int, int]) -> torch.Tensor:
    """Masks on ultralytics' letterboxed input (N, h_in, w_in) -> (N, H, W) on the image.

    Crops the centred content (the padding ultralytics adds to reach a stride multiple),
    then resizes it nearest-neighbour with index gathers on the masks' own device (no
    float copies of N masks, no full-size transfer to the host). The resize follows the torch
    rule (``F.interpolate(mode="nearest")``), as O-MaMa resizes FastSAM masks of another size.
    """
    h_in, w_in = masks.shape[1:]
    h, w = image_hw
    gain = min(h_in / h, w_in / w)
    content_h, content_w = max(round(h * gain), 1), max(round(w * gain), 1)
    top = round((h_in - content_h) / 2 - 0.1)  # the letterbox's own rounding
    left = round((w_in - content_w) / 2 - 0.1)
    rows = torch.as_tensor(nearest_indices(content_h, h, "torch") + top, device=masks.device)
    cols = torch.as_tensor(nearest_indices(content_w, w, "torch") + left, device=masks.device)
    return masks.index_select(1, rows).index_select(2, cols)


def segment_everything(
    model: FastSAM,
    image_rgb: np.ndarray,
    imgsz: int = 1024,
    conf: float = 0.4,
    iou: float = 0.9,
    retina_masks: bool = True,
    device: str = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """FastSAM "everything" mode on one image.

    Arguments:
        model: from :func:`load_fastsam`.
        image_rgb: (H, W, 3) uint8 RGB.
        imgsz: network input size (the long side is letterboxed to it).
        conf: confidence threshold; iou: NMS IoU threshold.
        retina_masks: compute masks at the image's resolution (the reference setting);
            without it ultralytics computes masks at the network's input resolution and
            they are resized (nearest) to the image size (coarser edges).
        device: ``cpu``, ``cuda`` or ``cuda:N``.
    Returns:
        masks (N, H, W) uint8 0/1 and boxes (N, 4) float32 ``x1, y1, w, h`` in image pixels,
        ordered by decreasing confidence; N = 0 gives (0, H, W) and (0, 4).
    """
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or image_rgb.dtype != np.uint8:
        raise OmamaError(
            f"segment_everything expects an (H, W, 3) uint8 RGB image, got "
            f"{image_rgb.shape} {image_rgb.dtype}"
        )
    h, w = image_rgb.shape[:2]
    # ultralytics reads numpy images as BGR (OpenCV order).
    image_bgr = np.ascontiguousarray(image_rgb[:, :, ::-1])
    with preserve_thread_settings(), torch.inference_mode():
        result = model.predict(
            image_bgr,
            imgsz=imgsz,
            conf=conf,
            iou=iou,
            retina_masks=retina_masks,
            device=device,
            verbose=False,
        )[0]
        if result.masks is None or len(result) == 0:
            return np.zeros((0, h, w), np.uint8), np.zeros((0, 4), np.float32)
        masks = result.masks.data
        if masks.dtype != torch.uint8:  # ultralytics gives uint8 0/1; anything else is binarised
            masks = (masks > 0.5).to(torch.uint8)
        if tuple(masks.shape[1:]) != (h, w):
            masks = unletterbox_masks(masks, (h, w))
        masks_np = masks.cpu().numpy()
        xyxy = result.boxes.xyxy.float().cpu().numpy()
    boxes = np.empty((len(xyxy), 4), np.float32)
    boxes[:, :2] = xyxy[:, :2]
    boxes[:, 2:] = xyxy[:, 2:] - xyxy[:, :2]
    return np.ascontiguousarray(masks_np), boxes
