"""Drawing for ``omama-run`` outputs (OpenCV + numpy): masks on frames, confidence, panels.

Images are (H, W, 3) uint8 **RGB** and colours are RGB triples, like every frame in the
runtime (decoded video, pipeline inputs). Functions return new images unless they say
otherwise; masks of another size than the image are resized to it (nearest).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import cv2
import numpy as np

from runtime.errors import OmamaError

if TYPE_CHECKING:
    from runtime.pipeline import Match

QUERY_RGB = (40, 200, 230)  # the query mask on the source view
PRED_RGB = (235, 60, 60)  # the predicted mask on the destination view
TEXT_RGB = (245, 245, 245)
FONT = cv2.FONT_HERSHEY_SIMPLEX
CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")


def _check_image(image: np.ndarray, what: str = "image") -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise OmamaError(f"{what} must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
    return image


def fit_mask(mask: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """A binary mask as (H, W) uint8 0/1 at ``size_hw`` (nearest resize when needed)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise OmamaError(f"a mask must be 2-D (H, W), got shape {mask.shape}")
    binary = (mask != 0).astype(np.uint8)
    h, w = size_hw
    if binary.shape != (h, w):
        binary = cv2.resize(binary, (w, h), interpolation=cv2.INTER_NEAREST)
    return binary


def overlay_mask(
    image_rgb: np.ndarray,
    mask: np.ndarray,
    color_rgb: tuple[int, int, int] = PRED_RGB,
    alpha: float = 0.45,
    outline_px: int = 2,
) -> np.ndarray:
    """The image with ``mask`` blended in (``alpha`` of ``color_rgb``) and its outline drawn.

    Only the mask's bounding box is touched, so drawing a small object on a large frame is
    cheap. An empty mask returns an unchanged copy.
    """
    out = _check_image(image_rgb).copy()
    binary = fit_mask(mask, out.shape[:2])
    rows, cols = np.flatnonzero(binary.any(axis=1)), np.flatnonzero(binary.any(axis=0))
    if len(rows) == 0:
        return out
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    roi, sel = out[y0:y1, x0:x1], binary[y0:y1, x0:x1]
    on = sel.astype(bool)
    color = np.asarray(color_rgb, np.float32)
    roi[on] = (roi[on].astype(np.float32) * (1.0 - alpha) + color * alpha + 0.5).astype(np.uint8)
    if outline_px > 0:
        contours, _ = cv2.findContours(
            np.ascontiguousarray(sel), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE, offset=(x0, y0)
        )
        cv2.drawContours(
            out, contours, -1, tuple(int(c) for c in color_rgb), outline_px, cv2.LINE_AA
        )
    return out


def text_scale(size_hw: tuple[int, int]) -> float:
    """Font scale that stays readable from thumbnails (~0.5) to 4K frames (~2)."""
    return float(np.clip(min(size_hw) / 600.0, 0.45, 2.5))


def draw_label(
    image_rgb: np.ndarray,
    text: str,
    corner: str = "top-left",
    scale: float | None = None,
    color_rgb: tuple[int, int, int] = TEXT_RGB,
) -> np.ndarray:
    """The image with ``text`` on a dark box in one of its corners (ASCII only)."""
    if corner not in CORNERS:
        raise OmamaError(f"corner must be one of {', '.join(CORNERS)}, got {corner!r}")
    out = _check_image(image_rgb).copy()
    h, w = out.shape[:2]
    scale = text_scale((h, w)) if scale is None else scale
    thickness = max(1, round(scale * 1.5))
    text = text.encode("ascii", "replace").decode("ascii")
    (tw, th), baseline = cv2.getTextSize(text, FONT, scale, thickness)
    pad = max(3, round(6 * scale))
    box_w, box_h = tw + 2 * pad, th + baseline + 2 * pad
    x0 = 0 if corner.endswith("left") else max(w - box_w, 0)
    y0 = 0 if corner.startswith("top") else max(h - box_h, 0)
    region = out[y0 : y0 + box_h, x0 : x0 + box_w]
    region[:] = (region.astype(np.uint16) * 3 // 10).astype(np.uint8)  # darken, keep context
    cv2.putText(
        out, text, (x0 + pad, y0 + pad + th), FONT, scale, color_rgb, thickness, cv2.LINE_AA
    )
    return out


def confidence_text(confidence: float, threshold: float = 0.5) -> str:
    """``conf 0.87 visible`` / ``conf 0.12 not visible`` (visible when > threshold)."""
    visible = "visible" if confidence > threshold else "not visible"
    return f"conf {confidence:.2f} {visible}"


def side_by_side(
    left_rgb: np.ndarray,
    right_rgb: np.ndarray,
    height_px: int | None = None,
    gap_px: int = 8,
    gap_rgb: tuple[int, int, int] = (24, 24, 24),
) -> np.ndarray:
    """Both images at the same height (``height_px``, default the taller one's height),
    left and right of a ``gap_px`` strip: (height, w_left + gap + w_right, 3)."""
    left, right = _check_image(left_rgb, "left image"), _check_image(right_rgb, "right image")
    height = int(height_px or max(left.shape[0], right.shape[0]))
    if height < 1:
        raise OmamaError(f"panel height must be positive, got {height}")
    parts = []
    for image in (left, right):
        h, w = image.shape[:2]
        width = max(1, round(w * height / h))
        if (h, w) != (height, width):
            shrink = height < h
            image = cv2.resize(
                image,
                (width, height),
                interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR,
            )
        parts.append(image)
    gap = np.empty((height, max(gap_px, 0), 3), np.uint8)
    gap[:] = gap_rgb
    return np.concatenate([parts[0], gap, parts[1]], axis=1)


def render_pair(
    src_rgb: np.ndarray,
    query_mask: np.ndarray,
    dst_rgb: np.ndarray,
    pred_mask: np.ndarray | None,
    confidence: float,
    height_px: int | None = None,
    labels: tuple[str, str] = ("source", "destination"),
    threshold: float = 0.5,
) -> np.ndarray:
    """The ``omama-run`` overlay: query on the source, prediction on the destination,
    confidence in the destination's top-right corner, side by side.

    ``pred_mask`` None (no candidate) draws the destination without a mask. The
    prediction is drawn whatever the confidence; the corner says whether it counts as
    visible (confidence > ``threshold``).
    """
    src = draw_label(overlay_mask(src_rgb, query_mask, QUERY_RGB), labels[0])
    dst = _check_image(dst_rgb, "destination image")
    if pred_mask is not None:
        dst = overlay_mask(dst, pred_mask, PRED_RGB)
    dst = draw_label(dst, labels[1])
    dst = draw_label(dst, confidence_text(confidence, threshold), corner="top-right")
    return side_by_side(src, dst, height_px=height_px)


_PALETTE = (
    (235, 60, 60),
    (60, 200, 90),
    (70, 130, 240),
    (240, 200, 40),
    (200, 80, 220),
    (40, 210, 220),
    (250, 140, 40),
    (160, 160, 160),
)


def render_objects(
    src_rgb: np.ndarray,
    dst_rgb: np.ndarray,
    names: Sequence[str],
    queries: Sequence[np.ndarray],
    matches: Sequence[Match],
    height_px: int | None = None,
) -> np.ndarray:
    """Queries on the source, predictions on the destination, confidences in the corner.

    One object: :func:`render_pair`. Several: one colour per object, a
    legend of ``name conf`` lines on the destination; predictions that are not visible
    (confidence <= 0.5) are drawn as an outline only.
    """
    if len(names) == 1:
        return render_pair(
            src_rgb, queries[0], dst_rgb, matches[0].mask, matches[0].confidence, height_px
        )
    src, dst = np.array(src_rgb), np.array(dst_rgb)
    for i, (query, match) in enumerate(zip(queries, matches, strict=True)):
        color = _PALETTE[i % len(_PALETTE)]
        src = overlay_mask(src, query, color)
        if match.candidate >= 0:
            dst = overlay_mask(dst, match.mask, color, alpha=0.45 if match.visible else 0.0)
    src = draw_label(src, "source")
    dst = draw_label(dst, "destination", corner="bottom-left")
    scale = text_scale(dst.shape[:2]) * 0.8
    thickness = max(1, round(scale * 1.5))
    y = 0
    for i, (name, match) in enumerate(zip(names, matches, strict=True)):
        text = f"{name}: {confidence_text(match.confidence)}"
        text = text.encode("ascii", "replace").decode("ascii")
        (tw, th), base = cv2.getTextSize(text, FONT, scale, thickness)
        pad = max(2, round(4 * scale))
        x0 = max(dst.shape[1] - tw - 2 * pad, 0)
        region = dst[y : y + th + base + 2 * pad, x0:]
        region[:] = (region.astype(np.uint16) * 3 // 10).astype(np.uint8)
        cv2.putText(dst, text, (x0 + pad, y + pad + th), FONT, scale,
                    _PALETTE[i % len(_PALETTE)], thickness, cv2.LINE_AA)  # fmt: skip
        y += th + base + 2 * pad
    return side_by_side(src, dst, height_px=height_px)
