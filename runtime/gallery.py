"""Evaluation gallery: the best, median and worst observations, as researchers read them.

For each chosen observation a panel shows the source view with the query mask and the
destination view with the GT (green) and predicted (red) masks, captioned with take,
object, cameras, frame, confidence and IoU. :func:`write_gallery` writes

    DIR/index.html            summary table, histogram, contact sheet, every panel
    DIR/contact_sheet.png     one row per group (best / median / worst)
    DIR/iou_histogram.png     histogram of per-observation IoU
    DIR/panels/<group>_<k>.png

Frames come from a processed root (``runtime.egoexo.frame_image_path``); without one, or
when a frame is missing, the masks are drawn alone on a grey canvas of the mask's shape.
Drawn with OpenCV and numpy only.
"""

from __future__ import annotations

import html
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from runtime import rle
from runtime.atomic import atomic_path
from runtime.egoexo import frame_image_path
from runtime.errors import OmamaError
from runtime.metrics import pair_key, resize_nearest, working_masks

log = logging.getLogger(__name__)

TILE_PX = 256
GAP_PX = 6
CAPTION_PX = 58
FONT = cv2.FONT_HERSHEY_SIMPLEX
# BGR colours
QUERY_BGR = (230, 200, 40)
GT_BGR = (70, 200, 70)
PRED_BGR = (60, 60, 235)
CANVAS_GREY = 48
GROUPS: tuple[tuple[str, str], ...] = (
    ("best", "Best (highest IoU)"),
    ("median", "Median IoU"),
    ("worst", "Worst (lowest IoU)"),
)


@dataclass(frozen=True)
class GalleryItem:
    """One observation chosen for the gallery (an entry of the report's per-observation lists)."""

    group: str
    rank: int
    take: str
    obj: str
    src_cam: str
    dst_cam: str
    frame: str
    confidence: float
    iou: float

    @property
    def slug(self) -> str:
        return f"{self.group}_{self.rank}"


def select_observations(report: dict, per_group: int) -> list[GalleryItem]:
    """Up to ``per_group`` best, median and worst GT-visible observations by IoU, no repeats.

    Ties keep the reference order. Worst are listed lowest first, best highest first.
    """
    if per_group < 1:
        raise OmamaError(f"--gallery-per-group must be at least 1, got {per_group}")
    po = report["per_observation"]
    ious = po["iou_per_obs"]
    order = sorted(range(len(ious)), key=lambda i: (ious[i], i))
    worst = order[:per_group]
    taken = set(worst)
    best = [i for i in reversed(order) if i not in taken][:per_group]
    taken |= set(best)
    mid = (len(order) - 1) / 2
    rest = [pos for pos, i in enumerate(order) if i not in taken]
    median = sorted(sorted(rest, key=lambda pos: (abs(pos - mid), pos))[:per_group])
    chosen = {"best": best, "median": [order[pos] for pos in median], "worst": worst}
    items = []
    for group, _ in GROUPS:
        for rank, i in enumerate(chosen[group], start=1):
            take, obj, src, dst, frame = po["observation_per_obs"][i]
            items.append(
                GalleryItem(
                    group, rank, take, obj, src, dst, frame, po["confidence_per_obs"][i], ious[i]
                )
            )
    return items


# ----------------------------------------------------------------------------- drawing


def _ascii(text: str) -> str:
    """OpenCV's Hershey fonts draw ASCII only."""
    return text.encode("ascii", "replace").decode("ascii")


def _fit_text(text: str, width_px: int, scale: float) -> str:
    text = _ascii(text)
    if cv2.getTextSize(text, FONT, scale, 1)[0][0] <= width_px:
        return text
    while text and cv2.getTextSize(text + "...", FONT, scale, 1)[0][0] > width_px:
        text = text[:-1]
    return text + "..."


def _put(
    img: np.ndarray, text: str, org: tuple[int, int], scale: float = 0.42, color=(235, 235, 235)
) -> None:
    cv2.putText(img, text, org, FONT, scale, color, 1, cv2.LINE_AA)


def letterbox(
    image: np.ndarray, tile_px: int = TILE_PX
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Fit a (H, W, 3) image into a square tile; returns the tile and the placed region
    ``(y, x, h, w)`` so masks can be resized onto the same pixels."""
    h, w = image.shape[:2]
    scale = tile_px / max(h, w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    tile = np.full((tile_px, tile_px, 3), 20, np.uint8)
    y, x = (tile_px - new_h) // 2, (tile_px - new_w) // 2
    tile[y : y + new_h, x : x + new_w] = cv2.resize(
        image, (new_w, new_h), interpolation=cv2.INTER_AREA
    )
    return tile, (y, x, new_h, new_w)


def overlay_mask(
    tile: np.ndarray,
    mask: np.ndarray,
    region: tuple[int, int, int, int],
    color: tuple[int, int, int],
    alpha: float = 0.35,
) -> None:
    """Blend a (H, W) mask into ``region`` of ``tile`` (in place): translucent fill + outline."""
    y, x, h, w = region
    m = np.ascontiguousarray(resize_nearest(mask.astype(np.uint8, copy=False), (h, w)))
    if not m.any():
        return
    view = tile[y : y + h, x : x + w]
    sel = m.astype(bool)
    view[sel] = (view[sel] * (1 - alpha) + np.array(color) * alpha).astype(np.uint8)
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(view, contours, -1, color, 1, cv2.LINE_AA)


def _canvas(
    root: Path | None, take: str, cam: str, frame: str, shape_hw: tuple[int, int]
) -> tuple[np.ndarray, bool]:
    """The frame image of ``cam`` (BGR), or a grey canvas of ``shape_hw`` without one."""
    if root is not None:
        path = frame_image_path(root, take, cam, frame)
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is not None:
            return image, True
        log.warning("gallery: frame image %s not found, drawing the masks alone", path)
    # Same aspect ratio as the mask, already at tile scale (a full-size grey image would
    # only be shrunk again).
    scale = TILE_PX / max(shape_hw)
    small = (max(1, round(shape_hw[0] * scale)), max(1, round(shape_hw[1] * scale)))
    return np.full((*small, 3), CANVAS_GREY, np.uint8), False


def _label(tile: np.ndarray, text: str) -> None:
    text = _fit_text(text, TILE_PX - 10, 0.4)
    (tw, th), _ = cv2.getTextSize(text, FONT, 0.4, 1)
    cv2.rectangle(tile, (0, 0), (tw + 8, th + 8), (0, 0, 0), -1)
    _put(tile, text, (4, th + 4), 0.4)


def render_panel(
    item: GalleryItem,
    gt_annotations: dict,
    pred_takes: dict,
    protocol: str,
    root: Path | None = None,
) -> np.ndarray:
    """(TILE+CAPTION, 2*TILE+GAP, 3) uint8 BGR panel of one observation."""
    cams = gt_annotations[item.take]["masks"][item.obj]
    query = rle.decode(cams[item.src_cam][item.frame])
    gt_full = rle.decode(cams[item.dst_cam][item.frame])
    entry = pred_takes[item.take]["masks"][item.obj][pair_key(item.src_cam, item.dst_cam)][
        item.frame
    ]
    gt, pred, _ = working_masks(gt_full, rle.decode(entry["pred_mask"]), protocol)

    src_img, src_real = _canvas(root, item.take, item.src_cam, item.frame, query.shape)
    src_tile, src_region = letterbox(src_img)
    overlay_mask(src_tile, query, src_region, QUERY_BGR)
    _label(src_tile, f"source {item.src_cam}" + ("" if src_real else " (mask only)"))

    dst_img, dst_real = _canvas(root, item.take, item.dst_cam, item.frame, pred.shape)
    dst_tile, dst_region = letterbox(dst_img)
    overlay_mask(dst_tile, gt, dst_region, GT_BGR)
    overlay_mask(dst_tile, pred, dst_region, PRED_BGR)
    _label(dst_tile, f"destination {item.dst_cam}" + ("" if dst_real else " (mask only)"))

    width = 2 * TILE_PX + GAP_PX
    panel = np.full((TILE_PX + CAPTION_PX, width, 3), 30, np.uint8)
    panel[:TILE_PX, :TILE_PX] = src_tile
    panel[:TILE_PX, TILE_PX + GAP_PX :] = dst_tile
    lines = [
        f"{item.group} #{item.rank}   IoU {item.iou:.3f}   confidence {item.confidence:.3f}",
        f"take {item.take}   object {item.obj}",
        f"{item.src_cam} -> {item.dst_cam}   frame {item.frame}",
    ]
    for k, line in enumerate(lines):
        _put(panel, _fit_text(line, width - 10, 0.42), (5, TILE_PX + 17 + 18 * k))
    return panel


def draw_histogram(
    ious: list[float], bins: int = 10, size_hw: tuple[int, int] = (360, 640)
) -> np.ndarray:
    """(H, W, 3) uint8 BGR bar chart of per-observation IoU over [0, 1], mean marked in red."""
    h, w = size_hw
    img = np.full((h, w, 3), 255, np.uint8)
    left, right, top, bottom = 60, 20, 40, 50
    counts, edges = np.histogram(ious, bins=bins, range=(0.0, 1.0))
    top_count = max(int(counts.max(initial=0)), 1)
    plot_w, plot_h = w - left - right, h - top - bottom
    black, grey = (0, 0, 0), (120, 120, 120)
    for k, count in enumerate(counts):
        x0 = left + round(plot_w * edges[k])
        x1 = left + round(plot_w * edges[k + 1])
        y0 = top + plot_h - round(plot_h * count / top_count)
        cv2.rectangle(img, (x0 + 1, y0), (x1 - 1, top + plot_h), (200, 140, 60), -1)
        if count:
            _put(img, str(int(count)), (x0 + 3, max(y0 - 4, top - 2)), 0.4, black)
    cv2.line(img, (left, top + plot_h), (left + plot_w, top + plot_h), black, 1)
    cv2.line(img, (left, top), (left, top + plot_h), black, 1)
    for k in range(6):
        x = left + round(plot_w * k / 5)
        cv2.line(img, (x, top + plot_h), (x, top + plot_h + 5), black, 1)
        _put(img, f"{k / 5:.1f}", (x - 10, top + plot_h + 20), 0.4, black)
    for value in (0, top_count // 2, top_count):
        y = top + plot_h - round(plot_h * value / top_count)
        cv2.line(img, (left - 5, y), (left, y), black, 1)
        _put(img, str(value), (left - 10 - 9 * len(str(value)), y + 4), 0.4, black)
    if len(ious):
        mean = float(np.mean(ious))
        x = left + round(plot_w * mean)
        for y in range(top, top + plot_h, 8):  # dashed
            cv2.line(img, (x, y), (x, min(y + 4, top + plot_h)), (40, 40, 220), 1)
        _put(img, f"mean {mean:.3f}", (min(x + 4, w - 90), top + 12), 0.4, (40, 40, 220))
    _put(img, f"Per-observation IoU (n={len(ious)})", (left, 24), 0.55, black)
    _put(img, "IoU", (left + plot_w // 2 - 10, h - 10), 0.45, grey)
    _put(img, "obs", (8, top - 12), 0.4, grey)
    return img


def contact_sheet(panels: dict[str, list[np.ndarray]], title: str) -> np.ndarray:
    """Stack the panels of each group in one row under a title and group headers."""
    panel_h, panel_w = TILE_PX + CAPTION_PX, 2 * TILE_PX + GAP_PX
    columns = max((len(p) for p in panels.values()), default=1) or 1
    width = columns * panel_w + (columns + 1) * GAP_PX
    header_h, group_h = 56, 26
    rows = [g for g, _ in GROUPS if panels.get(g)]
    height = header_h + len(rows) * (group_h + panel_h + GAP_PX) + GAP_PX
    sheet = np.full((height, max(width, 700), 3), 16, np.uint8)
    _put(sheet, _fit_text(title, sheet.shape[1] - 20, 0.55), (GAP_PX, 22), 0.55)
    x = GAP_PX
    for text, color in (("query mask", QUERY_BGR), ("GT", GT_BGR), ("prediction", PRED_BGR)):
        cv2.rectangle(sheet, (x, 34), (x + 14, 46), color, -1)
        _put(sheet, text, (x + 20, 45), 0.42)
        x += 40 + cv2.getTextSize(text, FONT, 0.42, 1)[0][0]
    y = header_h
    for group, heading in GROUPS:
        if not panels.get(group):
            continue
        _put(sheet, heading, (GAP_PX, y + 18), 0.5)
        y += group_h
        for k, panel in enumerate(panels[group]):
            x0 = GAP_PX + k * (panel_w + GAP_PX)
            sheet[y : y + panel_h, x0 : x0 + panel_w] = panel
        y += panel_h + GAP_PX
    return sheet


# ----------------------------------------------------------------------------- output


def _write_png(path: Path, image: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), image):
            raise OmamaError(f"could not write image {path}")


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _html(report: dict, items: list[GalleryItem], with_images: bool) -> str:
    esc = html.escape
    agg, counts = report["aggregated_metrics"], report["counts"]

    def fmt(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.4f}"

    rows = "".join(f"<tr><td>{esc(k)}</td><td>{fmt(v)}</td></tr>" for k, v in agg.items())
    count_rows = "".join(f"<tr><td>{esc(k)}</td><td>{v}</td></tr>" for k, v in counts.items())
    sections = []
    for group, heading in GROUPS:
        cards = [
            f'<figure><img src="panels/{it.slug}.png" alt="{esc(it.slug)}"><figcaption>'
            f"<b>IoU {it.iou:.3f}</b> &middot; confidence {it.confidence:.3f}<br>"
            f"take {esc(it.take)} &middot; object {esc(it.obj)}<br>"
            f"{esc(it.src_cam)} &rarr; {esc(it.dst_cam)} &middot; frame {esc(it.frame)}"
            "</figcaption></figure>"
            for it in items
            if it.group == group
        ]
        if cards:
            sections.append(f"<h2>{esc(heading)}</h2><div class='row'>{''.join(cards)}</div>")
    note = "" if with_images else "<p>No processed root given: masks are drawn alone.</p>"
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>omama eval gallery</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; background: #fafafa; }}
table {{ border-collapse: collapse; margin-right: 2em; }}
td {{ border: 1px solid #ccc; padding: 2px 8px; }}
.row {{ display: flex; flex-wrap: wrap; gap: 10px; }}
figure {{ margin: 0; background: #fff; padding: 4px; border: 1px solid #ddd; }}
figcaption {{ font-size: 0.85em; }}
.legend span {{ display: inline-block; width: 1em; height: 1em; margin: 0 4px 0 12px; }}
</style></head><body>
<h1>omama eval: {esc(report["direction"])}, protocol {esc(report["protocol"])}</h1>
<p>{esc(str(report.get("pred_file", "")))} against {esc(str(report.get("gt_file", "")))}</p>
<div class="row"><table>{rows}</table><table>{count_rows}</table>
<img src="iou_histogram.png" alt="IoU histogram"></div>
<p class="legend"><span style="background:#28c8e6"></span>query mask (source)
<span style="background:#46c846"></span>GT (destination)
<span style="background:#eb3c3c"></span>prediction (destination)</p>{note}
{"".join(sections)}
<h2>Contact sheet</h2><img src="contact_sheet.png" alt="contact sheet" style="max-width:100%">
</body></html>
"""


def write_gallery(
    out_dir: str | os.PathLike,
    report: dict,
    gt_annotations: dict,
    pred_takes: dict,
    root: str | os.PathLike | None = None,
    per_group: int = 4,
) -> dict[str, Path]:
    """Write the gallery of ``report`` (from ``runtime.evaluate.build_report``) to ``out_dir``.

    ``gt_annotations`` / ``pred_takes`` are the evaluated GT and predictions (their masks are
    decoded again for the chosen observations only). Returns the written paths by name:
    ``html``, ``contact_sheet``, ``histogram``.
    """
    out = Path(out_dir)
    root_path = Path(root) if root is not None else None
    if root_path is not None and not root_path.is_dir():
        raise OmamaError(f"processed root {root_path} is not a folder")
    items = select_observations(report, per_group)
    panels: dict[str, list[np.ndarray]] = {}
    for item in items:
        panel = render_panel(item, gt_annotations, pred_takes, report["protocol"], root_path)
        _write_png(out / "panels" / f"{item.slug}.png", panel)
        panels.setdefault(item.group, []).append(panel)
    agg = report["aggregated_metrics"]
    mean = "n/a" if agg["iou"] is None else f"{agg['iou']:.4f}"
    title = (
        f"omama eval {report['direction']} ({report['protocol']}): "
        f"{report['counts']['gt_visible']} visible observations, mean IoU {mean}"
    )
    paths = {
        "html": out / "index.html",
        "contact_sheet": out / "contact_sheet.png",
        "histogram": out / "iou_histogram.png",
    }
    _write_png(paths["contact_sheet"], contact_sheet(panels, title))
    _write_png(paths["histogram"], draw_histogram(report["per_observation"]["iou_per_obs"]))
    _write_text(paths["html"], _html(report, items, root_path is not None))
    return paths
