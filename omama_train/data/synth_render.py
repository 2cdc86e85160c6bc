"""How the synthetic scenes are drawn: pinhole cameras, textured planar faces, a canvas with
an inverse-depth buffer, and procedural textures.

Every planar face is projected by the pinhole camera (a homography for textured faces,
``cv2.warpPerspective``), and a per-pixel inverse-depth buffer resolves occlusion, so the
instance masks are exactly the rendered pixels. Camera frame: x right, y down, z forward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

NEAR_M = 0.03  # near clipping plane

# Light: a mostly overhead directional light plus ambient.
LIGHT_DIR = np.array([0.35, -0.45, 1.0]) / np.linalg.norm([0.35, -0.45, 1.0])
AMBIENT, DIFFUSE = 0.55, 0.45


# --------------------------------------------------------------------------- geometry


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def lambert(normal: np.ndarray) -> float:
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


def prism_faces(
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
        faces.append(Face(quad, normal, lambert(normal), instance, darker(rgb, 0.92)))
    top = np.column_stack([xy, np.full(n, z1)])
    up = np.array([0.0, 0.0, 1.0])
    faces.append(Face(top, up, lambert(up), instance, rgb, top_texture, top_frame_m))
    bottom = np.column_stack([xy[::-1], np.full(n, z0)])
    faces.append(Face(bottom, -up, AMBIENT, instance, darker(rgb, 0.8)))
    return faces


def _signed_area(xy: np.ndarray) -> float:
    x, y = xy[:, 0], xy[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def darker(rgb: tuple[int, int, int], factor: float) -> tuple[int, int, int]:
    return tuple(int(round(c * factor)) for c in rgb)  # type: ignore[return-value]


class Canvas:
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

    def copy(self) -> Canvas:
        other = Canvas.__new__(Canvas)
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


def object_texture(
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


def wood_texture(rng: np.random.Generator, size_px: tuple[int, int]) -> np.ndarray:
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


def floor_texture(rng: np.random.Generator, size: int = 256) -> np.ndarray:
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


def wall_texture(rng: np.random.Generator, size_px: tuple[int, int]) -> np.ndarray:
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
