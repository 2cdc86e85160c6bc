"""The synthetic scenes: a room with a table and 3-6 textured prisms, an ego camera on a
moving head, 1-3 exo cameras on tripods; a take is a pure function of its recipe.

Every take is a small room with a table and 3-6 textured prisms (boxes, books, cans, mugs,
plates, blocks, wedges) of distinct colours. The ego camera (the head of a person standing
at the table) pans and tilts smoothly, so objects leave and re-enter its view; 1-3 exo
cameras stand further away on tripods, where the objects look small, and see the person
move. World frame: metres, z up, table top at z = 0. Everything is a pure function of
(seed, take index, size preset, frames, annotate_every).
"""

from __future__ import annotations

import hashlib
import math
import uuid
from dataclasses import asdict, dataclass, field

import numpy as np

from omama_train.data.synth_render import (
    Canvas,
    Face,
    PinholeCamera,
    Texture,
    darker,
    floor_texture,
    lambert,
    object_texture,
    prism_faces,
    wall_texture,
    wood_texture,
)
from runtime.errors import OmamaError

EGO_CAM = "aria01_214-1"
EXO_CAMS = ("cam01", "cam02", "cam03")
FPS = 30
SCENARIO = "Synthetic tabletop"
GENERATOR = "omama-synth/1"  # bump when the rendering changes, so old videos are not reused

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
OBJECT_KINDS: dict[str, tuple[str, tuple[tuple[float, float], ...]]] = {
    "box": ("rect", ((0.12, 0.2), (0.1, 0.17), (0.07, 0.15))),
    "book": ("rect", ((0.18, 0.26), (0.14, 0.19), (0.03, 0.05))),
    "can": ("circle", ((0.04, 0.055), (0.11, 0.16))),
    "mug": ("circle", ((0.05, 0.065), (0.09, 0.12))),
    "plate": ("circle", ((0.09, 0.13), (0.015, 0.025))),
    "block": ("hexagon", ((0.06, 0.09), (0.05, 0.09))),
    "wedge": ("triangle", ((0.08, 0.11), (0.04, 0.07))),
}
_FOOTPRINT_SIDES = {"circle": 28, "hexagon": 6, "triangle": 3}


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
    _static: dict[str, Canvas] = field(default_factory=dict, repr=False)
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

    def _paint_static(self, camera: PinholeCamera, gain_rgb: np.ndarray) -> Canvas:
        """Room, table and objects (everything but the person) seen by ``camera``."""
        canvas = Canvas(camera, gain_rgb)
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
            *prism_faces(torso, FLOOR_Z_M, float(eye[2]) - 0.2, shirt),
            *prism_faces(head_footprint, float(eye[2]) - 0.15, float(eye[2]) + 0.1, head),
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
    floor_tex = Texture.of(floor_texture(rng), wrap=True)
    faces.append(Face(floor, up, lambert(up), texture=floor_tex, tex_frame_m=floor_frame))
    ceiling_tex = Texture.of(wall_texture(rng, (128, 128)) // 2 + 110)
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
        texture = Texture.of(wall_texture(rng, (512, 192)))
        frame = np.column_stack([u_axis, v_axis, corner])
        faces.append(Face(quad, normal, lambert(normal), texture=texture, tex_frame_m=frame))
    return faces


def _table_faces(rng: np.random.Generator) -> list[Face]:
    hx, hy = TABLE_HALF_M
    top_tex = Texture.of(wood_texture(rng, (448, 288)))
    top_frame = np.column_stack([[2 * hx, 0, 0], [0, 2 * hy, 0], [-hx, -hy, 0.0]])
    edge_rgb = darker(tuple(int(c) for c in top_tex.levels[-1].reshape(-1, 3).mean(0)), 0.8)
    slab = _rect_footprint((0.0, 0.0), 2 * hx, 2 * hy, 0.0)
    faces = prism_faces(
        slab, -TABLE_THICKNESS_M, 0.0, edge_rgb, top_texture=top_tex, top_frame_m=top_frame
    )
    for sx in (-1, 1):
        for sy in (-1, 1):
            leg = _rect_footprint((sx * (hx - 0.06), sy * (hy - 0.06)), 0.05, 0.05, 0.0)
            faces += prism_faces(leg, FLOOR_Z_M, -TABLE_THICKNESS_M, darker(edge_rgb, 0.8))
    return faces


def _place_objects(rng: np.random.Generator, count: int) -> list[SynthObject]:
    """``count`` objects of distinct kinds and colours, not overlapping, on the table."""
    kinds = [str(k) for k in rng.choice(list(OBJECT_KINDS), size=count, replace=False)]
    colours = [str(c) for c in rng.choice(list(COLOURS), size=count, replace=False)]
    hx, hy = TABLE_HALF_M
    placed: list[tuple[float, float, float]] = []  # (x, y, radius)
    objects = []
    for i, (kind, colour) in enumerate(zip(kinds, colours, strict=True)):
        footprint_kind, ranges = OBJECT_KINDS[kind]
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
        texture = Texture.of(object_texture(rng, rgb))
        faces = prism_faces(
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
