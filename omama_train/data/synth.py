"""Synthetic Ego-Exo4D takes: a rendered tabletop seen by a moving ego camera and static exos.

Every take is a small room with a table and 3-6 textured prisms (boxes, books, cans, mugs,
plates, blocks, wedges) of distinct colours. The ego camera (the head of a person standing
at the table) pans and tilts smoothly, so objects leave and re-enter its view; 1-3 exo
cameras stand further away on tripods, where the objects look small, and see the person
move. The geometry is exact: every planar face is projected by the pinhole camera
(a homography for textured faces, ``cv2.warpPerspective``), and a per-pixel inverse-depth
buffer resolves occlusion, so the instance masks are exactly the rendered pixels.

Output (the real dataset's layout)::

    OUT/takes/<take_name>/frame_aligned_videos/<cam>.mp4  ego aria01_214-1, exo cam01..cam03
    OUT/annotations/relations_<split>.json    official relations format, LZString RLE masks
    OUT/split.json                            {"train": [take_uid], "val": [...], "test": [...]}
    OUT/synth_meta.json                       recipe (seed, sizes) and per take: cams, objects

World frame: metres, z up, table top at z = 0. Camera frame: x right, y down, z forward.
Everything is a pure function of (seed, take index, size preset, frames, annotate_every).
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import typer

from runtime import rle
from runtime.atomic import atomic_path, write_json
from runtime.egoexo import SPLITS
from runtime.errors import OmamaError

EGO_CAM = "aria01_214-1"
EXO_CAMS = ("cam01", "cam02", "cam03")
FPS = 30
SCENARIO = "Synthetic tabletop"
GENERATOR = "omama-synth/1"  # bump when the rendering changes, so old videos are not reused
NEAR_M = 0.03  # near clipping plane

# Light: a mostly overhead directional light plus ambient.
LIGHT_DIR = np.array([0.35, -0.45, 1.0]) / np.linalg.norm([0.35, -0.45, 1.0])
AMBIENT, DIFFUSE = 0.55, 0.45

ROOM_HALF_M = 3.5
FLOOR_Z_M, CEILING_Z_M = -0.75, 1.8
TABLE_HALF_M = (0.6, 0.4)  # half extents along x, y
TABLE_THICKNESS_M = 0.03


@dataclass(frozen=True)
class SizePreset:
    """Video sizes (width, height) in pixels and default take length."""

    ego_size_px: tuple[int, int]
    exo_size_px: tuple[int, int]
    frames: int
    annotate_every: int
    exo_cams: tuple[int, int]  # inclusive range of exo cameras per take


FULL = SizePreset((1408, 1408), (3840, 2160), frames=90, annotate_every=10, exo_cams=(1, 3))
SMALL = SizePreset((448, 448), (896, 504), frames=30, annotate_every=5, exo_cams=(1, 2))

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (205, 35, 35),
    "green": (40, 160, 65),
    "blue": (35, 80, 210),
    "yellow": (235, 205, 35),
    "orange": (240, 125, 25),
    "purple": (130, 50, 170),
    "pink": (235, 110, 175),
    "cyan": (30, 190, 200),
    "white": (236, 236, 228),
    "black": (32, 32, 36),
}

# kind -> (footprint, ranges in metres: rectangles (width, depth, height), others (radius, height))
KINDS: dict[str, tuple[str, tuple[tuple[float, float], ...]]] = {
    "box": ("rect", ((0.12, 0.2), (0.1, 0.17), (0.07, 0.15))),
    "book": ("rect", ((0.18, 0.26), (0.14, 0.19), (0.03, 0.05))),
    "can": ("circle", ((0.04, 0.055), (0.11, 0.16))),
    "mug": ("circle", ((0.05, 0.065), (0.09, 0.12))),
    "plate": ("circle", ((0.09, 0.13), (0.015, 0.025))),
    "block": ("hexagon", ((0.06, 0.09), (0.05, 0.09))),
    "wedge": ("triangle", ((0.08, 0.11), (0.04, 0.07))),
}
_FOOTPRINT_SIDES = {"circle": 28, "hexagon": 6, "triangle": 3}


# --------------------------------------------------------------------------- geometry


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _lambert(normal: np.ndarray) -> float:
    return float(AMBIENT + DIFFUSE * max(0.0, float(np.dot(normal, LIGHT_DIR))))


@dataclass(frozen=True)
class PinholeCamera:
    """A pinhole camera with square pixels and the principal point at the image centre.

    ``rotation`` (3, 3) maps world directions to camera axes (rows: x right, y down,
    z forward); ``eye_m`` (3,) is the camera centre in world metres.
    """

    width: int
    height: int
    focal_px: float
    rotation: np.ndarray
    eye_m: np.ndarray

    @classmethod
    def looking(
        cls,
        size_px: tuple[int, int],
        hfov_deg: float,
        eye_m: np.ndarray,
        forward: np.ndarray,
        roll_rad: float = 0.0,
    ) -> PinholeCamera:
        """Camera at ``eye_m`` looking along ``forward`` with the world z axis up."""
        width, height = size_px
        z_axis = _unit(np.asarray(forward, dtype=np.float64))
        x_axis = _unit(np.cross(z_axis, [0.0, 0.0, 1.0]))
        y_axis = np.cross(z_axis, x_axis)
        if roll_rad:
            c, s = math.cos(roll_rad), math.sin(roll_rad)
            x_axis, y_axis = c * x_axis + s * y_axis, -s * x_axis + c * y_axis
        focal = (width / 2.0) / math.tan(math.radians(hfov_deg) / 2.0)
        rotation = np.stack([x_axis, y_axis, z_axis])
        return cls(width, height, focal, rotation, np.asarray(eye_m, dtype=np.float64))

    @property
    def centre_px(self) -> tuple[float, float]:
        return (self.width - 1) / 2.0, (self.height - 1) / 2.0

    @property
    def intrinsics(self) -> np.ndarray:
        """K (3, 3)."""
        cx, cy = self.centre_px
        return np.array([[self.focal_px, 0.0, cx], [0.0, self.focal_px, cy], [0.0, 0.0, 1.0]])

    def to_camera(self, points_m: np.ndarray) -> np.ndarray:
        """World points (N, 3) -> camera coordinates (N, 3)."""
        return (points_m - self.eye_m) @ self.rotation.T

    def project(self, camera_points: np.ndarray) -> np.ndarray:
        """Camera coordinates (N, 3) with z > 0 -> pixel coordinates (N, 2)."""
        cx, cy = self.centre_px
        z = camera_points[:, 2]
        return np.stack(
            [
                self.focal_px * camera_points[:, 0] / z + cx,
                self.focal_px * camera_points[:, 1] / z + cy,
            ],
            axis=1,
        )

    def describe(self) -> dict:
        return {
            "width": self.width,
            "height": self.height,
            "focal_px": round(self.focal_px, 4),
            "eye_m": [round(float(v), 5) for v in self.eye_m],
            "rotation": [[round(float(v), 6) for v in row] for row in self.rotation],
        }


def _clip_near(points: np.ndarray, near: float) -> np.ndarray:
    """Clip a convex polygon (N, 3) in camera coordinates to the half-space z >= near."""
    inside = points[:, 2] >= near
    if inside.all():
        return points
    if not inside.any():
        return points[:0]
    clipped = []
    n = len(points)
    for i in range(n):
        a, b = points[i], points[(i + 1) % n]
        if inside[i]:
            clipped.append(a)
        if inside[i] != inside[(i + 1) % n]:
            t = (near - a[2]) / (b[2] - a[2])
            clipped.append(a + t * (b - a))
    return np.asarray(clipped)


def _polygon_area(points: np.ndarray) -> float:
    """Area of a planar polygon given by (N, 2) or (N, 3) vertices."""
    if points.shape[1] == 2:
        x, y = points[:, 0], points[:, 1]
        return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))
    cross = np.cross(points, np.roll(points, -1, axis=0)).sum(axis=0)
    return 0.5 * float(np.linalg.norm(cross))


# --------------------------------------------------------------------------- surfaces


@dataclass(frozen=True)
class Texture:
    """An RGB image (H, W, 3) uint8 with a mip pyramid; ``wrap`` tiles it beyond its frame."""

    levels: tuple[np.ndarray, ...]
    wrap: bool = False

    @classmethod
    def of(cls, image: np.ndarray, wrap: bool = False, n_levels: int = 4) -> Texture:
        import cv2

        levels = [np.ascontiguousarray(image)]
        while len(levels) < n_levels and min(levels[-1].shape[:2]) >= 16:
            levels.append(cv2.pyrDown(levels[-1]))
        return cls(tuple(levels), wrap)


@dataclass(frozen=True)
class Face:
    """A convex planar polygon, seen from the side its ``normal`` points to.

    ``polygon_m`` (N, 3) world vertices. Painted either with the flat colour ``rgb`` or
    with ``texture``, whose image spans ``tex_frame_m`` (3, 3) columns (u axis, v axis,
    origin): texel (i, j) of an (h, w) image lies at origin + i/w * u + j/h * v.
    """

    polygon_m: np.ndarray
    normal: np.ndarray
    shade: float
    instance: int = 0  # 0: room, table and person; k + 1: object k
    rgb: tuple[int, int, int] = (0, 0, 0)
    texture: Texture | None = None
    tex_frame_m: np.ndarray | None = None


def _prism_faces(
    footprint_xy: np.ndarray,
    z0: float,
    z1: float,
    rgb: tuple[int, int, int],
    *,
    instance: int = 0,
    top_texture: Texture | None = None,
    top_frame_m: np.ndarray | None = None,
) -> list[Face]:
    """Faces of a vertical prism over a convex world footprint (N, 2), from z0 to z1 metres."""
    xy = np.asarray(footprint_xy, dtype=np.float64)
    if _signed_area(xy) < 0:  # counter-clockwise, so edge normals point outwards
        xy = xy[::-1]
    n = len(xy)
    faces = []
    for i in range(n):
        a, b = xy[i], xy[(i + 1) % n]
        edge = b - a
        normal = _unit(np.array([edge[1], -edge[0], 0.0]))
        quad = np.array([[*a, z0], [*b, z0], [*b, z1], [*a, z1]])
        faces.append(Face(quad, normal, _lambert(normal), instance, _darker(rgb, 0.92)))
    top = np.column_stack([xy, np.full(n, z1)])
    up = np.array([0.0, 0.0, 1.0])
    faces.append(Face(top, up, _lambert(up), instance, rgb, top_texture, top_frame_m))
    bottom = np.column_stack([xy[::-1], np.full(n, z0)])
    faces.append(Face(bottom, -up, AMBIENT, instance, _darker(rgb, 0.8)))
    return faces


def _signed_area(xy: np.ndarray) -> float:
    x, y = xy[:, 0], xy[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def _darker(rgb: tuple[int, int, int], factor: float) -> tuple[int, int, int]:
    return tuple(int(round(c * factor)) for c in rgb)  # type: ignore[return-value]


class _Canvas:
    """Colour, instance and inverse-depth buffers of one camera image (z-buffered painting).

    ``gain_rgb`` (3,) is the camera's exposure and white balance, applied to each face as
    it is painted (cheaper than scaling whole frames).
    """

    def __init__(self, camera: PinholeCamera, gain_rgb: np.ndarray) -> None:
        self.camera = camera
        self.gain_rgb = np.asarray(gain_rgb, dtype=np.float64)
        self.rgb = np.zeros((camera.height, camera.width, 3), np.uint8)
        self.ids = np.zeros((camera.height, camera.width), np.uint8)
        self.inv_depth = np.zeros((camera.height, camera.width), np.float32)  # 0: empty

    def copy(self) -> _Canvas:
        other = _Canvas.__new__(_Canvas)
        other.camera, other.gain_rgb = self.camera, self.gain_rgb
        other.rgb, other.ids, other.inv_depth = (
            self.rgb.copy(),
            self.ids.copy(),
            self.inv_depth.copy(),
        )
        return other

    def paint(self, face: Face, background: bool = False) -> None:
        """Paint ``face`` where it is nearer than what is already there. ``background``
        faces (the room, painted first) are behind everything and write no depth."""
        import cv2

        cam = self.camera
        if float(np.dot(face.normal, cam.eye_m - face.polygon_m[0])) <= 1e-9:
            return  # back face
        cam_pts = _clip_near(cam.to_camera(face.polygon_m), NEAR_M)
        if len(cam_pts) < 3:
            return
        px = cam.project(cam_pts)
        x0 = max(int(np.floor(px[:, 0].min())), 0)
        x1 = min(int(np.ceil(px[:, 0].max())) + 1, cam.width)
        y0 = max(int(np.floor(px[:, 1].min())), 0)
        y1 = min(int(np.ceil(px[:, 1].max())) + 1, cam.height)
        if x0 >= x1 or y0 >= y1:
            return
        roi_h, roi_w = y1 - y0, x1 - x0
        cover = np.zeros((roi_h, roi_w), np.uint8)
        vertices = np.round((px - (x0, y0)) * 16.0).astype(np.int32)  # 4 fractional bits
        cv2.fillPoly(cover, [vertices], 1, cv2.LINE_8, 4)

        if background:
            sel = cover.view(bool)
        else:
            # A plane n.X = d (camera frame) has inverse depth 1/z affine in the pixel position.
            n_cam = cam.rotation @ face.normal
            d = float(n_cam @ cam_pts[0])
            cx, cy = cam.centre_px
            f = cam.focal_px
            xs = np.arange(x0, x1, dtype=np.float32) - np.float32(cx)
            ys = np.arange(y0, y1, dtype=np.float32) - np.float32(cy)
            inv_depth = (np.float32(n_cam[0] / (f * d)) * xs)[None, :] + (
                np.float32(n_cam[1] / (f * d)) * ys + np.float32(n_cam[2] / d)
            )[:, None]
            depth_roi = self.inv_depth[y0:y1, x0:x1]
            sel = cover.view(bool) & (inv_depth > depth_roi)
            if not sel.any():
                return
            np.copyto(depth_roi, inv_depth, where=sel)
        rgb_roi = self.rgb[y0:y1, x0:x1]
        if face.texture is None:
            colour = np.asarray(face.rgb) * (face.shade * self.gain_rgb)
            colour = np.clip(np.round(colour), 0, 255).astype(np.uint8)
        else:
            colour = self._texture_patch(face, cam_pts, px, (x0, y0), (roi_w, roi_h))
        np.copyto(rgb_roi, colour, where=sel[..., None])
        np.copyto(self.ids[y0:y1, x0:x1], np.uint8(face.instance), where=sel)

    def _texture_patch(
        self,
        face: Face,
        cam_pts: np.ndarray,
        px: np.ndarray,
        origin_px: tuple[int, int],
        size_px: tuple[int, int],
    ) -> np.ndarray:
        """The face's texture warped onto the ROI (h, w, 3) uint8, shaded and gained."""
        import cv2

        cam = self.camera
        texture = face.texture
        assert texture is not None and face.tex_frame_m is not None
        u_axis, v_axis, origin = face.tex_frame_m.T
        # Mip level: about one texel per pixel on average over the visible polygon.
        base_h, base_w = texture.levels[0].shape[:2]
        texels_per_m2 = (base_w / np.linalg.norm(u_axis)) * (base_h / np.linalg.norm(v_axis))
        texels = _polygon_area(cam_pts) * texels_per_m2
        ratio = texels / max(_polygon_area(px), 1.0)
        level = 0 if ratio <= 1.0 else min(int(0.5 * math.log2(ratio)), len(texture.levels) - 1)
        image = texture.levels[level]
        tex_h, tex_w = image.shape[:2]
        rot = cam.rotation
        to_camera = np.column_stack(
            [rot @ (u_axis / tex_w), rot @ (v_axis / tex_h), rot @ (origin - cam.eye_m)]
        )
        shift = np.array([[1.0, 0.0, -origin_px[0]], [0.0, 1.0, -origin_px[1]], [0.0, 0.0, 1.0]])
        homography = shift @ cam.intrinsics @ to_camera
        patch = cv2.warpPerspective(
            image,
            homography,
            size_px,
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_WRAP if texture.wrap else cv2.BORDER_REPLICATE,
        )
        return cv2.multiply(patch, (*(face.shade * self.gain_rgb), 0.0))


# --------------------------------------------------------------------------- textures


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """Low-frequency noise (h, w) float32 in about [0, 1]."""
    import cv2

    coarse = rng.random((cells, cells)).astype(np.float32)
    return cv2.resize(coarse, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)


def _grain(rng: np.random.Generator, shape: tuple[int, int], amplitude: float) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(amplitude)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def _object_texture(
    rng: np.random.Generator, rgb: tuple[int, int, int], size: int = 128
) -> np.ndarray:
    """Top texture of an object: its colour with a pattern and a darker rim, (size, size, 3)."""
    yy, xx = (np.mgrid[0:size, 0:size].astype(np.float32) + 0.5) / size
    pattern = rng.choice(["stripes", "checker", "dots", "rings", "grid"])
    freq = rng.uniform(2.5, 5.5)
    if pattern == "stripes":
        angle = rng.uniform(0.0, math.pi)
        marks = ((xx * math.cos(angle) + yy * math.sin(angle)) * freq) % 1.0 < 0.4
    elif pattern == "checker":
        marks = (np.floor(xx * freq) + np.floor(yy * freq)) % 2 == 0
    elif pattern == "dots":
        fx, fy = (xx * freq) % 1.0 - 0.5, (yy * freq) % 1.0 - 0.5
        marks = fx**2 + fy**2 < rng.uniform(0.2, 0.32) ** 2
    elif pattern == "rings":
        marks = (np.hypot(xx - 0.5, yy - 0.5) * freq * 2.0) % 1.0 < 0.45
    else:
        marks = ((xx * freq) % 1.0 < 0.18) | ((yy * freq) % 1.0 < 0.18)
    base = np.asarray(rgb, np.float32)
    # Accent: darker on bright colours, lighter on dark ones, so the pattern always shows.
    accent = base * 0.5 if base.mean() > 100 else base * 0.4 + 255.0 * 0.45
    image = np.where(marks[..., None], accent, base)
    rim = np.minimum(np.minimum(xx, 1 - xx), np.minimum(yy, 1 - yy)) < 0.05
    image[rim] = base * 0.6
    image += _grain(rng, (size, size, 1), 5.0)
    return _to_uint8(image)


def _wood_texture(rng: np.random.Generator, size_px: tuple[int, int]) -> np.ndarray:
    """Table top (h, w, 3): wood tone with warped grain along the width."""
    w, h = size_px
    tones = [(150, 105, 65), (170, 125, 80), (120, 82, 52), (185, 150, 105)]
    base = np.asarray(tones[rng.integers(len(tones))], np.float32)
    yy = (np.arange(h, dtype=np.float32)[:, None] + 0.5) / h
    warp = _smooth_noise(rng, (h, w), 6)
    grain = np.sin(2 * math.pi * (yy * rng.uniform(18, 30) + 2.5 * warp))
    light = 1.0 + 0.08 * grain + 0.1 * (_smooth_noise(rng, (h, w), 4) - 0.5)
    image = base * light[..., None] + _grain(rng, (h, w, 1), 4.0)
    return _to_uint8(image)


def _floor_texture(rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """One metre of floor (size, size, 3), 2 x 2 tiles with grout; tiles seamlessly."""
    yy, xx = (np.mgrid[0:size, 0:size].astype(np.float32) + 0.5) / size
    light = np.asarray([rng.uniform(170, 200), rng.uniform(160, 190), rng.uniform(140, 170)])
    dark = light * rng.uniform(0.7, 0.85)
    checker = (np.floor(xx * 2) + np.floor(yy * 2)) % 2 == 0
    image = np.where(checker[..., None], light, dark).astype(np.float32)
    grout = ((xx * 2) % 1.0 < 0.025) | ((yy * 2) % 1.0 < 0.025)
    image[grout] = light * 0.45
    image += _grain(rng, (size, size, 1), 6.0)
    return _to_uint8(image)


def _wall_texture(rng: np.random.Generator, size_px: tuple[int, int]) -> np.ndarray:
    """A painted wall (h, w, 3) with a skirting board and a few framed pictures."""
    import cv2

    w, h = size_px
    paint = np.asarray([rng.uniform(190, 235) for _ in range(3)], np.float32)
    image = paint * (0.92 + 0.12 * _smooth_noise(rng, (h, w), 5))[..., None]
    image[int(h * 0.94) :] = paint * 0.35  # skirting board
    for _ in range(int(rng.integers(1, 4))):
        pw, ph = int(w * rng.uniform(0.06, 0.14)), int(h * rng.uniform(0.15, 0.3))
        x, y = int(rng.uniform(0.02, 0.9) * w), int(rng.uniform(0.15, 0.5) * h)
        frame_rgb = tuple(float(c) for c in rng.uniform(20, 90, 3))
        # Muted picture colours: distinct from the saturated object colours.
        inner = tuple(float(c) for c in rng.uniform(90, 170, 3))
        cv2.rectangle(image, (x, y), (x + pw, y + ph), frame_rgb, -1)
        cv2.rectangle(image, (x + 3, y + 3), (x + pw - 3, y + ph - 3), inner, -1)
        cv2.line(image, (x + 3, y + ph - 3), (x + pw - 3, y + 3), frame_rgb, 2)
    image += _grain(rng, (h, w, 1), 3.0)
    return _to_uint8(image)


# --------------------------------------------------------------------------- scene


@dataclass(frozen=True)
class SynthObject:
    """One annotated object; ``instance`` = index + 1 in the instance buffers."""

    name: str
    kind: str
    colour: str
    instance: int
    centre_m: tuple[float, float]
    yaw_deg: float
    size_m: tuple[float, ...]  # rect: (width, depth, height); others: (radius, height)
    faces: tuple[Face, ...] = field(repr=False)

    def describe(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "colour": self.colour,
            "rgb": list(COLOURS[self.colour]),
            "centre_m": [round(v, 5) for v in self.centre_m],
            "yaw_deg": round(self.yaw_deg, 3),
            "size_m": [round(v, 5) for v in self.size_m],
        }


@dataclass(frozen=True)
class EgoMotion:
    """Head motion over normalised time s in [0, 1]: one full pan sweep, two tilt cycles."""

    eye_m: tuple[float, float, float]
    yaw0_deg: float
    yaw_amp_deg: float
    yaw_phase: float
    pitch0_deg: float
    pitch_amp_deg: float
    pitch_phase: float
    roll_amp_deg: float
    roll_phase: float
    sway_m: float
    hfov_deg: float

    def pose(self, s: float) -> tuple[np.ndarray, np.ndarray, float, float]:
        """(eye (3,), forward (3,), yaw rad, roll rad) at time s."""
        tau = 2.0 * math.pi * s
        yaw = math.radians(self.yaw0_deg + self.yaw_amp_deg * math.sin(tau + self.yaw_phase))
        pitch = math.radians(
            self.pitch0_deg + self.pitch_amp_deg * math.sin(2.0 * tau + self.pitch_phase)
        )
        roll = math.radians(self.roll_amp_deg * math.sin(1.5 * tau + self.roll_phase))
        eye = np.asarray(self.eye_m) + self.sway_m * np.array(
            [math.sin(tau + 1.0), 0.5 * math.sin(2.0 * tau), 0.3 * math.sin(3.0 * tau)]
        )
        forward = np.array(
            [math.cos(pitch) * math.sin(yaw), math.cos(pitch) * math.cos(yaw), math.sin(pitch)]
        )
        return eye, forward, yaw, roll


def take_uid(seed: int, index: int) -> str:
    """Deterministic uuid-like take id of take ``index`` of seed ``seed``."""
    digest = hashlib.sha256(f"omama-synth/{seed}/{index}".encode()).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


def take_name(index: int) -> str:
    return f"synth_tabletop_{index:03d}"


@dataclass
class SynthTake:
    """One synthetic take: cameras, objects, and a deterministic renderer per (cam, frame)."""

    index: int
    take_uid: str
    take_name: str
    frames: int
    annotated_frames: list[int]
    ego_size_px: tuple[int, int]
    exo_cameras: dict[str, PinholeCamera]
    ego_motion: EgoMotion
    objects: list[SynthObject]
    room: list[Face]  # floor, ceiling, walls: behind everything else
    table: list[Face]
    person_rgb: tuple[tuple[int, int, int], tuple[int, int, int]]  # shirt, head
    camera_gain: dict[str, tuple[float, float, float]]
    noise_seed: int
    _static: dict[str, _Canvas] = field(default_factory=dict, repr=False)
    _noise: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def cam_names(self) -> list[str]:
        return [EGO_CAM, *self.exo_cameras]

    def size_px(self, cam: str) -> tuple[int, int]:
        """(width, height) of camera ``cam``."""
        if cam == EGO_CAM:
            return self.ego_size_px
        camera = self._exo(cam)
        return camera.width, camera.height

    def camera(self, cam: str, frame: int) -> PinholeCamera:
        """The camera ``cam`` at ``frame`` (exo cameras are static)."""
        if cam != EGO_CAM:
            return self._exo(cam)
        eye, forward, _, roll = self.ego_motion.pose(self._time(frame))
        return PinholeCamera.looking(self.ego_size_px, self.ego_motion.hfov_deg, eye, forward, roll)

    def render(self, cam: str, frame: int) -> tuple[np.ndarray, np.ndarray]:
        """Frame ``frame`` of ``cam``: RGB (H, W, 3) uint8 as written to the video, and the
        instance ids (H, W) uint8 (0: no object, k + 1: ``objects[k]``)."""
        if not 0 <= frame < self.frames:
            raise OmamaError(
                f"frame {frame} is outside take {self.take_name} (0..{self.frames - 1})"
            )
        if cam == EGO_CAM:
            canvas = self._paint_static(self.camera(cam, frame), self._gain(cam, frame))
        else:  # only the person moves in front of a static camera
            if cam not in self._static:
                self._static[cam] = self._paint_static(self._exo(cam), self._gain(cam, frame))
            canvas = self._static[cam].copy()
        for face in self._person_faces(frame):
            canvas.paint(face)
        return self._add_noise(cam, frame, canvas.rgb), canvas.ids

    def describe(self) -> dict:
        cams = {
            EGO_CAM: {
                "role": "ego",
                "width": self.ego_size_px[0],
                "height": self.ego_size_px[1],
                "gain_rgb": [round(g, 5) for g in self.camera_gain[EGO_CAM]],
                "motion": {
                    k: [round(x, 5) for x in v] if isinstance(v, tuple) else round(v, 5)
                    for k, v in asdict(self.ego_motion).items()
                },
            }
        }
        for name, camera in self.exo_cameras.items():
            cams[name] = {
                "role": "exo",
                **camera.describe(),
                "gain_rgb": [round(g, 5) for g in self.camera_gain[name]],
            }
        return {
            "take_uid": self.take_uid,
            "take_name": self.take_name,
            "frames": self.frames,
            "fps": FPS,
            "annotated_frames": list(self.annotated_frames),
            "cams": cams,
            "objects": [obj.describe() for obj in self.objects],
        }

    def _exo(self, cam: str) -> PinholeCamera:
        try:
            return self.exo_cameras[cam]
        except KeyError:
            cams = ", ".join(self.cam_names)
            raise OmamaError(
                f"take {self.take_name} has no camera {cam!r} (cameras: {cams})"
            ) from None

    def _time(self, frame: int) -> float:
        return frame / max(self.frames - 1, 1)

    def _paint_static(self, camera: PinholeCamera, gain_rgb: np.ndarray) -> _Canvas:
        """Room, table and objects (everything but the person) seen by ``camera``."""
        canvas = _Canvas(camera, gain_rgb)
        for face in self.room:
            canvas.paint(face, background=True)
        for face in self.table:
            canvas.paint(face)
        for obj in self.objects:
            for face in obj.faces:
                canvas.paint(face)
        return canvas

    def _person_faces(self, frame: int) -> list[Face]:
        """The ego camera's wearer: a torso facing the table and a head turning with the
        gaze. The eye sits inside the head, whose faces all point away from it."""
        eye, _, yaw, _ = self.ego_motion.pose(self._time(frame))
        shirt, head = self.person_rgb
        torso = _rect_footprint((eye[0], eye[1] - 0.16), 0.38, 0.22, 0.0)
        head_centre = (eye[0] - 0.07 * math.sin(yaw), eye[1] - 0.07 * math.cos(yaw))
        head_footprint = _ngon_footprint(head_centre, 0.1, 8, yaw)
        return [
            *_prism_faces(torso, FLOOR_Z_M, float(eye[2]) - 0.2, shirt),
            *_prism_faces(head_footprint, float(eye[2]) - 0.15, float(eye[2]) + 0.1, head),
        ]

    def _gain(self, cam: str, frame: int) -> np.ndarray:
        """Exposure and white balance (3,) of ``cam`` at ``frame``."""
        gain = np.asarray(self.camera_gain[cam])
        if cam == EGO_CAM:  # auto-exposure drifts a little as the head turns
            gain = gain * (1.0 + 0.04 * math.sin(2.0 * math.pi * 1.3 * self._time(frame)))
        return gain

    def _add_noise(self, cam: str, frame: int, rgb: np.ndarray) -> np.ndarray:
        """Sensor noise (sigma 1.5 levels), a different crop of a fixed field every frame."""
        import cv2

        height, width = rgb.shape[:2]
        if cam not in self._noise:
            rng = np.random.default_rng([self.noise_seed, self.cam_names.index(cam)])
            tile = rng.standard_normal((256, 256, 3), dtype=np.float32)
            tile = np.clip(np.rint(tile * 1.5), -6, 6).astype(np.int8)
            # A 256 px period is invisible at this amplitude and costs nothing to make.
            reps = (-(-(height + 16) // 256), -(-(width + 16) // 256), 1)
            self._noise[cam] = np.tile(tile, reps)[: height + 16, : width + 16]
        dy, dx = (frame * 7) % 16, (frame * 11 + 5) % 16
        noise = self._noise[cam][dy : dy + height, dx : dx + width]
        return cv2.add(rgb, noise, dtype=cv2.CV_8U)


def _rect_footprint(
    centre: tuple[float, float], width: float, depth: float, yaw_rad: float
) -> np.ndarray:
    corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * [width / 2.0, depth / 2.0]
    c, s = math.cos(yaw_rad), math.sin(yaw_rad)
    return corners @ np.array([[c, s], [-s, c]]) + centre


def _ngon_footprint(
    centre: tuple[float, float], radius: float, sides: int, yaw_rad: float
) -> np.ndarray:
    angles = yaw_rad + 2.0 * math.pi * np.arange(sides) / sides
    return np.column_stack([np.cos(angles), np.sin(angles)]) * radius + centre


def _room_faces(rng: np.random.Generator) -> list[Face]:
    """Floor, ceiling and four walls (normals inward); cameras are always inside."""
    r, z0, z1 = ROOM_HALF_M, FLOOR_Z_M, CEILING_Z_M
    wall_h = z1 - z0
    faces = []
    floor = np.array([[-r, -r, z0], [r, -r, z0], [r, r, z0], [-r, r, z0]])
    floor_frame = np.column_stack([[1.0, 0, 0], [0, 1.0, 0], [-r, -r, z0]])  # tiles of 1 m
    up = np.array([0.0, 0.0, 1.0])
    floor_tex = Texture.of(_floor_texture(rng), wrap=True)
    faces.append(Face(floor, up, _lambert(up), texture=floor_tex, tex_frame_m=floor_frame))
    ceiling_tex = Texture.of(_wall_texture(rng, (128, 128)) // 2 + 110)
    ceiling_frame = np.column_stack([[2 * r, 0, 0], [0, 2 * r, 0], [-r, -r, z1]])
    faces.append(
        Face(
            floor[::-1] + [0, 0, z1 - z0], -up, 0.8, texture=ceiling_tex, tex_frame_m=ceiling_frame
        )
    )
    # Each wall: top-left corner, u axis along the wall, inward normal.
    walls = [
        ([-r, r, z1], [2 * r, 0, 0], [0, -1.0, 0]),
        ([r, -r, z1], [-2 * r, 0, 0], [0, 1.0, 0]),
        ([r, r, z1], [0, -2 * r, 0], [-1.0, 0, 0]),
        ([-r, -r, z1], [0, 2 * r, 0], [1.0, 0, 0]),
    ]
    for corner, u_axis, normal in walls:
        corner, u_axis, normal = np.array(corner), np.array(u_axis), np.array(normal)
        v_axis = np.array([0.0, 0.0, -wall_h])
        quad = np.array([corner, corner + u_axis, corner + u_axis + v_axis, corner + v_axis])
        texture = Texture.of(_wall_texture(rng, (512, 192)))
        frame = np.column_stack([u_axis, v_axis, corner])
        faces.append(Face(quad, normal, _lambert(normal), texture=texture, tex_frame_m=frame))
    return faces


def _table_faces(rng: np.random.Generator) -> list[Face]:
    hx, hy = TABLE_HALF_M
    top_tex = Texture.of(_wood_texture(rng, (448, 288)))
    top_frame = np.column_stack([[2 * hx, 0, 0], [0, 2 * hy, 0], [-hx, -hy, 0.0]])
    edge_rgb = _darker(tuple(int(c) for c in top_tex.levels[-1].reshape(-1, 3).mean(0)), 0.8)
    slab = _rect_footprint((0.0, 0.0), 2 * hx, 2 * hy, 0.0)
    faces = _prism_faces(
        slab, -TABLE_THICKNESS_M, 0.0, edge_rgb, top_texture=top_tex, top_frame_m=top_frame
    )
    for sx in (-1, 1):
        for sy in (-1, 1):
            leg = _rect_footprint((sx * (hx - 0.06), sy * (hy - 0.06)), 0.05, 0.05, 0.0)
            faces += _prism_faces(leg, FLOOR_Z_M, -TABLE_THICKNESS_M, _darker(edge_rgb, 0.8))
    return faces


def _place_objects(rng: np.random.Generator, count: int) -> list[SynthObject]:
    """``count`` objects of distinct kinds and colours, not overlapping, on the table."""
    kinds = [str(k) for k in rng.choice(list(KINDS), size=count, replace=False)]
    colours = [str(c) for c in rng.choice(list(COLOURS), size=count, replace=False)]
    hx, hy = TABLE_HALF_M
    placed: list[tuple[float, float, float]] = []  # (x, y, radius)
    objects = []
    for i, (kind, colour) in enumerate(zip(kinds, colours, strict=True)):
        footprint_kind, ranges = KINDS[kind]
        dims = tuple(float(rng.uniform(lo, hi)) for lo, hi in ranges)
        # Radius of the footprint's bounding circle (rectangles: half the diagonal).
        radius = 0.5 * math.hypot(dims[0], dims[1]) if footprint_kind == "rect" else dims[0]
        for _ in range(500):
            x = float(rng.uniform(-hx + radius + 0.04, hx - radius - 0.04))
            y = float(rng.uniform(-hy + radius + 0.04, hy - radius - 0.04))
            if all(math.hypot(x - px, y - py) > radius + pr + 0.05 for px, py, pr in placed):
                break
        else:  # the table is full: fewer objects
            break
        placed.append((x, y, radius))
        yaw = float(rng.uniform(0.0, 2.0 * math.pi))
        height = dims[-1]
        if footprint_kind == "rect":
            footprint = _rect_footprint((x, y), dims[0], dims[1], yaw)
            extent = (dims[0], dims[1])
        else:
            footprint = _ngon_footprint((x, y), radius, _FOOTPRINT_SIDES[footprint_kind], yaw)
            extent = (2 * radius, 2 * radius)
        # The top texture spans the footprint's box in the object's own (rotated) axes.
        ux = np.array([math.cos(yaw), math.sin(yaw), 0.0])
        uy = np.array([-math.sin(yaw), math.cos(yaw), 0.0])
        corner = np.array([x, y, height]) - 0.5 * extent[0] * ux - 0.5 * extent[1] * uy
        frame = np.column_stack([extent[0] * ux, extent[1] * uy, corner])
        rgb = COLOURS[colour]
        texture = Texture.of(_object_texture(rng, rgb))
        faces = _prism_faces(
            footprint, 0.0, height, rgb, instance=i + 1, top_texture=texture, top_frame_m=frame
        )
        objects.append(
            SynthObject(
                name=f"{colour} {kind}_{i}",
                kind=kind,
                colour=colour,
                instance=i + 1,
                centre_m=(x, y),
                yaw_deg=math.degrees(yaw),
                size_m=dims,
                faces=tuple(faces),
            )
        )
    return objects


def _exo_cameras(
    rng: np.random.Generator, count: int, size_px: tuple[int, int]
) -> dict[str, PinholeCamera]:
    """Tripods 1.8-2.4 m from the table, above it, looking at it from other sides."""
    # Azimuths (degrees, 0 = +x): the wearer stands at 270 (y < 0).
    azimuths = [float(a) for a in rng.permutation([90.0, 25.0, 155.0])[:count]]
    cams = {}
    for name, azimuth in zip(EXO_CAMS, azimuths, strict=False):
        angle = math.radians(azimuth + rng.uniform(-15.0, 15.0))
        radius = rng.uniform(1.8, 2.4)
        eye = np.array([radius * math.cos(angle), radius * math.sin(angle), rng.uniform(0.9, 1.3)])
        target = np.array([rng.uniform(-0.1, 0.1), rng.uniform(-0.1, 0.1), 0.0])
        cams[name] = PinholeCamera.looking(size_px, rng.uniform(55.0, 65.0), eye, target - eye)
    return cams


def build_take(
    seed: int,
    index: int,
    *,
    small: bool = False,
    frames: int | None = None,
    annotate_every: int | None = None,
) -> SynthTake:
    """Take ``index`` of seed ``seed``: the same arguments always give the same take."""
    preset = SMALL if small else FULL
    frames = preset.frames if frames is None else frames
    annotate_every = preset.annotate_every if annotate_every is None else annotate_every
    if frames < 1 or annotate_every < 1:
        raise OmamaError(f"frames ({frames}) and annotate_every ({annotate_every}) must be >= 1")
    rng = np.random.default_rng([seed, index, 0x5EED])
    room = _room_faces(rng)
    table = _table_faces(rng)
    objects = _place_objects(rng, int(rng.integers(3, 7)))
    n_exo = int(rng.integers(preset.exo_cams[0], preset.exo_cams[1] + 1))
    exo_cameras = _exo_cameras(rng, n_exo, preset.exo_size_px)
    # The wearer sits close to the table's near edge (y = -0.4) and looks down at it.
    eye = (
        float(rng.uniform(-0.15, 0.15)),
        float(rng.uniform(-0.68, -0.6)),
        float(rng.uniform(0.42, 0.52)),
    )
    motion = EgoMotion(
        eye_m=eye,
        yaw0_deg=math.degrees(math.atan2(-eye[0], -eye[1])),
        yaw_amp_deg=float(rng.uniform(50.0, 65.0)),
        yaw_phase=float(rng.uniform(0.0, 2.0 * math.pi)),
        pitch0_deg=float(rng.uniform(-55.0, -45.0)),
        pitch_amp_deg=float(rng.uniform(8.0, 14.0)),
        pitch_phase=float(rng.uniform(0.0, 2.0 * math.pi)),
        roll_amp_deg=float(rng.uniform(2.0, 5.0)),
        roll_phase=float(rng.uniform(0.0, 2.0 * math.pi)),
        sway_m=float(rng.uniform(0.02, 0.05)),
        hfov_deg=70.0,
    )
    shirts = [(60, 70, 90), (90, 90, 95), (70, 95, 80), (110, 80, 70)]
    heads = [(205, 170, 140), (160, 120, 90), (110, 80, 60)]
    person_rgb = (shirts[rng.integers(len(shirts))], heads[rng.integers(len(heads))])
    gains = {
        cam: tuple(float(rng.uniform(0.92, 1.06) * rng.uniform(0.97, 1.03, 3)[c]) for c in range(3))
        for cam in [EGO_CAM, *exo_cameras]
    }
    return SynthTake(
        index=index,
        take_uid=take_uid(seed, index),
        take_name=take_name(index),
        frames=frames,
        annotated_frames=list(range(0, frames, annotate_every)),
        ego_size_px=preset.ego_size_px,
        exo_cameras=exo_cameras,
        ego_motion=motion,
        objects=objects,
        room=room,
        table=table,
        person_rgb=person_rgb,  # type: ignore[arg-type]
        camera_gain=gains,  # type: ignore[arg-type]
        noise_seed=int(rng.integers(2**31)),
    )


# --------------------------------------------------------------------------- writing


def assign_splits(takes: int) -> list[str]:
    """Split of each take index: 1 take -> test; 2 -> train, test; N >= 3 -> about 60/20/20
    with at least one take in every split."""
    if takes < 1:
        raise OmamaError(f"--takes must be at least 1, got {takes}")
    if takes == 1:
        return ["test"]
    if takes == 2:
        return ["train", "test"]
    n_eval = max(1, round(0.2 * takes))
    n_train = takes - 2 * n_eval
    return ["train"] * n_train + ["val"] * n_eval + ["test"] * n_eval


def write_video(path: Path, frames: Iterable[np.ndarray], size_px: tuple[int, int]) -> int:
    """Encode RGB frames (H, W, 3) uint8 to an H.264 MP4 at a constant 30 fps, atomically.

    Returns the number of frames written.
    """
    import av

    width, height = size_px
    count = 0
    with atomic_path(path) as tmp:
        container = av.open(str(tmp), mode="w", format="mp4")
        try:
            stream = container.add_stream("libx264", rate=FPS)
            stream.width, stream.height = width, height
            stream.pix_fmt = "yuv420p"
            stream.time_base = Fraction(1, FPS)
            stream.codec_context.gop_size = FPS  # a key frame every second: cheap seeking
            # Near-lossless, so colours and the frame-to-frame content survive.
            stream.options = {"crf": "14", "preset": "veryfast"}
            for rgb in frames:
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                frame.pts = count
                container.mux(stream.encode(frame))
                count += 1
            container.mux(stream.encode(None))
        finally:
            container.close()
    return count


def _encoded_mask(mask: np.ndarray) -> str:
    from omama_train.data.lzstring import compress_to_encoded_uri_component

    return compress_to_encoded_uri_component(rle.encode(mask)["counts"])


def _render_and_annotate(
    take: SynthTake,
    cam: str,
    frames: Iterable[int],
    object_masks: dict[str, dict],
    counts: dict[str, int],
    advance: Callable[[int], object],
) -> Iterator[np.ndarray]:
    """Yield the RGB frames of ``cam``; at annotated frames, record each visible object's
    mask in ``object_masks[obj][cam]["annotation"]`` and count the objects out of view."""
    width, height = take.size_px(cam)
    annotated = set(take.annotated_frames)
    hidden_key = "ego_not_visible" if cam == EGO_CAM else "exo_not_visible"
    for frame in frames:
        rgb, ids = take.render(cam, frame)
        if frame in annotated:
            pixels = np.bincount(ids.ravel(), minlength=len(take.objects) + 1)
            # COCO RLE runs down columns: a transposed copy makes every mask Fortran-ordered.
            ids_t = np.ascontiguousarray(ids.T).T
            for obj in take.objects:
                if pixels[obj.instance] == 0:
                    counts[hidden_key] += 1
                    continue
                object_masks[obj.name][cam]["annotation"][str(frame)] = {
                    "width": width,
                    "height": height,
                    "encodedMask": _encoded_mask(ids_t == obj.instance),
                }
                counts["masks"] += 1
        advance(1)
        yield rgb


def _recipe(seed: int, small: bool, frames: int, annotate_every: int) -> dict:
    preset = SMALL if small else FULL
    return {
        "generator": GENERATOR,
        "seed": seed,
        "small": small,
        "fps": FPS,
        "frames": frames,
        "annotate_every": annotate_every,
        "ego_size_px": list(preset.ego_size_px),
        "exo_size_px": list(preset.exo_size_px),
    }


def _reusable_takes(meta_path: Path, meta: dict) -> set[str]:
    """Takes whose videos an earlier run with the same recipe already wrote."""
    try:
        old = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    if not isinstance(old, dict) or old.get("recipe") != meta["recipe"]:
        return set()
    old_takes = {t.get("take_name"): t for t in old.get("takes", []) if isinstance(t, dict)}
    return {t["take_name"] for t in meta["takes"] if old_takes.get(t["take_name"]) == t}


def synthesize(
    out: Path,
    takes: int,
    *,
    small: bool = False,
    seed: int = 0,
    frames: int | None = None,
    annotate_every: int | None = None,
    show_progress: bool = False,
) -> dict:
    """Write ``takes`` synthetic takes under ``out`` (layout in the module docstring).

    Videos of an earlier run with the same recipe (``synth_meta.json``) are kept, so an
    interrupted run resumes; relations, split and meta are always rewritten.
    ``show_progress`` shows a progress bar of rendered frames on stderr. Returns a summary
    dict (counts of takes per split, videos, masks, objects out of view, seconds).
    """
    started = time.perf_counter()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OmamaError(f"--out {out} exists and is not a folder")
    splits = assign_splits(takes)
    preset = SMALL if small else FULL
    frames = preset.frames if frames is None else frames
    annotate_every = preset.annotate_every if annotate_every is None else annotate_every
    synth_takes = [
        build_take(seed, i, small=small, frames=frames, annotate_every=annotate_every)
        for i in range(takes)
    ]
    meta = {
        "recipe": _recipe(seed, small, frames, annotate_every),
        "takes": [
            {**take.describe(), "split": split}
            for take, split in zip(synth_takes, splits, strict=True)
        ],
    }
    meta_path = out / "synth_meta.json"
    reusable = _reusable_takes(meta_path, meta)
    write_json(meta_path, meta, indent=1)
    from tqdm import tqdm

    bar = tqdm(
        total=sum(
            len(take.annotated_frames if take.take_name in reusable else range(take.frames))
            * len(take.cam_names)
            for take in synth_takes
        ),
        unit="frame",
        desc="synth",
        file=sys.stderr,
        disable=not show_progress,
    )

    relations: dict[str, dict] = {split: {} for split in SPLITS}
    counts = {"videos_written": 0, "videos_kept": 0, "masks": 0}
    counts |= {"ego_not_visible": 0, "exo_not_visible": 0}
    for take, split in zip(synth_takes, splits, strict=True):
        object_masks: dict[str, dict] = {
            obj.name: {
                cam: {"annotated_frames": list(take.annotated_frames), "annotation": {}}
                for cam in take.cam_names
            }
            for obj in take.objects
        }
        for cam in take.cam_names:
            video = out / "takes" / take.take_name / "frame_aligned_videos" / f"{cam}.mp4"
            keep = take.take_name in reusable and video.is_file()
            # Kept videos: render the annotated frames only, for their masks.
            frames_rgb = _render_and_annotate(
                take,
                cam,
                take.annotated_frames if keep else range(take.frames),
                object_masks,
                counts,
                bar.update,
            )
            if keep:
                for _ in frames_rgb:
                    pass
                counts["videos_kept"] += 1
            else:
                written = write_video(video, frames_rgb, take.size_px(cam))
                if written != take.frames:  # pragma: no cover - guards the frame-count contract
                    raise OmamaError(f"{video}: wrote {written} frames, expected {take.frames}")
                counts["videos_written"] += 1
        relations[split][take.take_uid] = {
            "take_name": take.take_name,
            "scenario": SCENARIO,
            "object_masks": object_masks,
        }

    bar.close()
    written_relations = []
    for split in SPLITS:
        path = out / "annotations" / f"relations_{split}.json"
        if relations[split]:
            write_json(path, {"annotations": relations[split]})
            written_relations.append(str(path))
        elif path.exists():  # stale from an earlier run with other splits
            path.unlink()
    split_json = {
        split: [t.take_uid for t, s in zip(synth_takes, splits, strict=True) if s == split]
        for split in SPLITS
    }
    write_json(out / "split.json", split_json, indent=1)
    return {
        "out": str(out),
        "takes": takes,
        "splits": {split: len(uids) for split, uids in split_json.items()},
        "frames_per_video": frames,
        "annotated_frames_per_take": len(range(0, frames, annotate_every)),
        "ego_size_px": list(preset.ego_size_px),
        "exo_size_px": list(preset.exo_size_px),
        "objects": sum(len(t.objects) for t in synth_takes),
        "exo_cams": sum(len(t.exo_cameras) for t in synth_takes),
        **counts,
        "relations": written_relations,
        "seconds": round(time.perf_counter() - started, 2),
    }


def add_commands(data_app: typer.Typer) -> None:
    @data_app.command("synth")
    def synth_command(
        out: Path = typer.Option(..., "--out", help="Folder to write the synthetic dataset to."),
        takes: int = typer.Option(..., "--takes", min=1, help="Number of takes to generate."),
        small: bool = typer.Option(
            False, "--small", help="Small videos (ego 448x448, exo 896x504) and short takes."
        ),
        seed: int = typer.Option(0, "--seed", help="Random seed; the same seed, the same data."),
        frames: int | None = typer.Option(
            None, "--frames", min=1, help="Frames per video (default: 30 small, 90 full)."
        ),
        annotate_every: int | None = typer.Option(
            None,
            "--annotate-every",
            min=1,
            help="Annotate frames 0, K, 2K, ... (default: 5 small, 10 full).",
        ),
    ) -> None:
        """Render synthetic Ego-Exo4D-like takes: MP4 videos, relations JSON, split.json.

        A tabletop with textured objects seen by a moving ego camera (aria01_214-1) and
        static exo cameras (cam01..cam03: 1-3 per take, 1-2 with --small); masks are exact
        (rendered with occlusion). Videos of an earlier run with the same recipe are kept.

        Example: omama data synth --out data/synth --takes 6 --small --seed 0
        """
        summary = synthesize(
            out,
            takes,
            small=small,
            seed=seed,
            frames=frames,
            annotate_every=annotate_every,
            show_progress=True,
        )
        typer.echo(
            f"wrote {summary['takes']} takes to {summary['out']} "
            f"(train {summary['splits']['train']}, val {summary['splits']['val']}, "
            f"test {summary['splits']['test']}): {summary['videos_written']} videos written, "
            f"{summary['videos_kept']} kept from an earlier run, {summary['frames_per_video']} "
            f"frames each, {summary['masks']} masks; objects out of view at annotated frames: "
            f"ego {summary['ego_not_visible']}, exo {summary['exo_not_visible']} "
            f"({summary['seconds']} s)"
        )
