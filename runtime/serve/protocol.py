"""The HTTP protocol of ``omama serve``: request bodies in, checked arrays out; responses; 4xx.

``POST /v1/match`` takes either

- JSON: ``{"src_image": b64, "dst_image": b64, "queries": [QUERY, ...],
  "candidates": {"masks": [RLE, ...], "boxes": [[x1, y1, w, h], ...]}}`` where images are
  PNG or JPEG files in base64, a QUERY is a COCO RLE
  ``{"size": [H, W], "counts": str}`` or a base64 PNG mask, and ``candidates`` (optional,
  boxes optional too: tight boxes of the masks) are the destination image's candidates;
- or ``multipart/form-data``: files ``src_image``, ``dst_image`` and one or more ``query``
  (PNG masks), and optional fields ``queries`` (a JSON list of QUERY, added after the files)
  and ``candidates`` (JSON as above).

:func:`parse_match` turns a body into a :class:`MatchRequest` or raises
:class:`RequestError` (HTTP status and one line naming the problem); :func:`check_match`
then checks it against the opened model (image aspect ratios, each query at the source
image's size or a resolution of its aspect ratio, non-empty, not vanishing at the model
size) as ``omama-run pair`` does. Nothing here imports Ray.

What a request decodes to is bounded before anything is decoded: an RLE's size and a PNG
or JPEG header's dimensions are read first (a 44-byte RLE or a small PNG can claim
gigabytes), each array is at most ``max_pixels`` (``--max-pixels``), all of a request's
arrays together at most ``REQUEST_PIXELS_FACTOR`` times that, and queries and candidates
are counted before they are decoded (413 otherwise).
"""

from __future__ import annotations

import base64
import binascii
import email.parser
import email.policy
import hashlib
import json
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import cv2
import numpy as np

from runtime import rle
from runtime.candidates import Candidates
from runtime.errors import OmamaError

if TYPE_CHECKING:  # the pipeline loads the sessions: only needed to check a request
    from runtime.pipeline import Match, Pipeline

MATCH_PATH, INFO_PATH, HEALTH_PATH = "/v1/match", "/v1/info", "/healthz"
JSON_TYPE = "application/json"
MULTIPART_TYPE = "multipart/form-data"
MAX_QUERIES = 256  # per request: the matcher runs them in one call
MAX_CANDIDATES = 1024  # per request: FastSAM keeps far fewer
MAX_PIXELS = 64_000_000  # per decoded image or mask (--max-pixels): 8x a 3840x2160 frame
REQUEST_PIXELS_FACTOR = 16  # every array of a request together: 16 x --max-pixels


class RequestError(OmamaError):
    """A request the service refuses: ``status`` (4xx) and a one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status

    def body(self) -> dict:
        return error_body(str(self))


def error_body(message: str) -> dict:
    """The JSON of every error response: ``{"error": "<one line>"}``."""
    return {"error": " ".join(message.split())}


@dataclass
class MatchRequest:
    """One parsed ``/v1/match`` request.

    Attributes:
        src_rgb, dst_rgb: (H, W, 3) uint8 RGB images.
        queries: (h, w) uint8 0/1 masks drawn on the source image.
        candidates: the destination's precomputed candidates, or None for FastSAM.
        src_key, dst_key: sha256 of the source image's bytes; of the destination image's
            bytes and its candidates: requests with equal keys share an encode.
    """

    src_rgb: np.ndarray
    dst_rgb: np.ndarray
    queries: list[np.ndarray]
    candidates: Candidates | None = None
    src_key: str = ""
    dst_key: str = ""
    received_s: float = field(default=0.0, compare=False)


# ----------------------------------------------------------------------------- decoding


class PixelBudget:
    """What one request may still decode: each array at most ``max_pixels``, all of them
    together at most ``REQUEST_PIXELS_FACTOR * max_pixels`` (413 beyond either)."""

    def __init__(self, max_pixels: int = MAX_PIXELS) -> None:
        self.max_pixels = max_pixels
        self.left = REQUEST_PIXELS_FACTOR * max_pixels

    def take(self, height: int, width: int, what: str) -> None:
        pixels = height * width
        if pixels > self.max_pixels:
            raise RequestError(413, f"{what} is {width}x{height} pixels; the limit is "
                               f"{self.max_pixels} pixels (--max-pixels)")  # fmt: skip
        if pixels > self.left:
            total = REQUEST_PIXELS_FACTOR * self.max_pixels
            raise RequestError(413, f"the request's images and masks decode to more than "
                               f"{total} pixels in all ({REQUEST_PIXELS_FACTOR} x "
                               f"--max-pixels) at {what}")  # fmt: skip
        self.left -= pixels


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (baseline, progressive, lossless...): not DHT, JPG, DAC.
JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def image_hw(data: bytes) -> tuple[int, int] | None:
    """(H, W) from a PNG's IHDR or a JPEG's start-of-frame, without decoding; None when the
    bytes are neither or their header is cut short."""
    if data.startswith(PNG_SIGNATURE) and data[12:16] == b"IHDR" and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return height, width
    if not data.startswith(b"\xff\xd8"):
        return None
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD9)):  # markers without a length
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if marker in JPEG_SOF:
            if i + 9 > len(data):
                return None
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return (height, width) if height else None  # 0: a DNL marker sets it later
        if marker == 0xDA or length < 2:  # image data before any frame header
            return None
        i += 2 + length
    return None


def _check_image_size(data: bytes, what: str, budget: PixelBudget) -> None:
    hw = image_hw(data)
    if hw is None:
        raise RequestError(400, f"{what} could not be decoded: not a PNG or JPEG file with a "
                           "complete header (send PNG or JPEG bytes)")  # fmt: skip
    budget.take(*hw, what)


def decode_base64(text: object, what: str) -> bytes:
    if not isinstance(text, str) or not text:
        raise RequestError(400, f"{what} must be a non-empty base64 string")
    if text.startswith("data:") and "," in text:  # a data URL: keep what follows the comma
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RequestError(400, f"{what} is not valid base64: {exc}") from exc


def decode_image(data: bytes, what: str, budget: PixelBudget | None = None) -> np.ndarray:
    """PNG or JPEG bytes -> (H, W, 3) uint8 RGB; 400 when OpenCV cannot decode them, 413 when
    their header claims more pixels than ``budget`` allows."""
    _check_image_size(data, what, budget or PixelBudget())
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    if bgr is None:
        raise RequestError(400, f"{what} could not be decoded as an image (send PNG or JPEG bytes)")
    return np.ascontiguousarray(bgr[:, :, ::-1])


def decode_mask_png(data: bytes, what: str, budget: PixelBudget | None = None) -> np.ndarray:
    """An encoded mask image -> (H, W) uint8 0/1 with the rule of ``omama-run pair``'s query
    PNGs (:func:`runtime.tracks.read_mask_png`): grey non-zero; RGBA its alpha unless fully
    opaque; colour any non-zero channel."""
    _check_image_size(data, what, budget or PixelBudget())
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) if data else None
    if image is None:
        raise RequestError(400, f"{what} could not be decoded as a mask image (send a PNG)")
    if image.ndim == 2:
        values = image
    elif image.shape[2] == 4 and (image[:, :, 3] != image[:, :, 3].max()).any():
        values = image[:, :, 3]
    else:
        values = image[:, :, :3].max(axis=2)
    return (values != 0).astype(np.uint8)


def decode_rle(value: object, what: str, budget: PixelBudget | None = None) -> np.ndarray:
    """A COCO RLE dict -> (H, W) uint8 0/1, checked by :mod:`runtime.rle` (400 if malformed;
    413, from its size alone, when it would decode to more pixels than ``budget`` allows)."""
    if not isinstance(value, dict):
        raise RequestError(400, f"{what} must be an RLE object or a base64 PNG string")
    size = value.get("size")
    if isinstance(size, list) and len(size) == 2 and all(isinstance(n, int) for n in size):
        (budget or PixelBudget()).take(max(0, size[0]), max(0, size[1]), what)
    try:
        return rle.decode(value)
    except OmamaError as exc:
        raise RequestError(400, f"{what}: {exc}") from exc


def decode_query(value: object, what: str, budget: PixelBudget | None = None) -> np.ndarray:
    """One query: an RLE dict or a base64 PNG string -> (H, W) uint8 0/1."""
    if isinstance(value, str):
        return decode_mask_png(decode_base64(value, what), what, budget)
    return decode_rle(value, what, budget)


def decode_candidates(value: object, budget: PixelBudget | None = None) -> Candidates:
    """``{"masks": [RLE, ...], "boxes": [[x1, y1, w, h], ...] (optional)}`` -> Candidates."""
    if not isinstance(value, dict) or not isinstance(value.get("masks"), list):
        raise RequestError(400, "candidates must be an object with a list of RLE 'masks'")
    if len(value["masks"]) > MAX_CANDIDATES:
        raise RequestError(413, f"{len(value['masks'])} candidate masks in one request; at "
                           f"most {MAX_CANDIDATES}")  # fmt: skip
    budget = budget or PixelBudget()
    masks = [decode_rle(m, f"candidates.masks[{i}]", budget)
             for i, m in enumerate(value["masks"])]  # fmt: skip
    if not masks:
        raise RequestError(400, "candidates.masks is empty (leave candidates out for FastSAM)")
    if len({m.shape for m in masks}) > 1:
        sizes = sorted({f"{m.shape[1]}x{m.shape[0]}" for m in masks})
        raise RequestError(400, f"candidates.masks have different sizes: {', '.join(sizes)}")
    stack = np.stack(masks)
    boxes = value.get("boxes")
    if boxes is None:
        return Candidates.from_masks(stack)
    try:
        array = np.asarray(boxes, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise RequestError(400, "candidates.boxes must be a list of [x1, y1, w, h]") from exc
    try:
        return Candidates(stack, array.reshape(-1, 4) if array.size == 0 else array)
    except OmamaError as exc:
        raise RequestError(400, str(exc)) from exc


# ----------------------------------------------------------------------------- bodies


def parse_match(body: bytes, content_type: str, max_pixels: int = MAX_PIXELS) -> MatchRequest:
    """A ``/v1/match`` body (JSON or multipart, by ``content_type``) -> :class:`MatchRequest`;
    every image and mask at most ``max_pixels`` (``--max-pixels``), checked before decoding."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media == JSON_TYPE or (not media and body[:1] == b"{"):
        fields, files = _json_fields(body), {}
    elif media == MULTIPART_TYPE:
        fields, files = _multipart_fields(body, content_type)
    else:
        raise RequestError(415, f"content type {media or '(none)'} is not supported: send "
                           f"{JSON_TYPE} or {MULTIPART_TYPE}")  # fmt: skip
    images = {}
    for name in ("src_image", "dst_image"):
        if name in files:
            data = files[name][0]
        elif name in fields:
            data = decode_base64(fields[name], name)
        else:
            raise RequestError(400, f"missing field {name}")
        images[name] = data
    budget = PixelBudget(max_pixels)
    src_rgb = decode_image(images["src_image"], "src_image", budget)
    dst_rgb = decode_image(images["dst_image"], "dst_image", budget)
    queries = _decode_queries(files.get("query", []), fields.get("queries", []), budget)
    candidates = None
    if fields.get("candidates") is not None:
        candidates = decode_candidates(fields["candidates"], budget)
    dst_key = hashlib.sha256(images["dst_image"])
    if candidates is not None:
        dst_key.update(candidates.masks.tobytes())
        dst_key.update(candidates.boxes.tobytes())
        dst_key.update(repr(candidates.masks.shape).encode())
    return MatchRequest(
        src_rgb=src_rgb,
        dst_rgb=dst_rgb,
        queries=queries,
        candidates=candidates,
        src_key=hashlib.sha256(images["src_image"]).hexdigest(),
        dst_key=dst_key.hexdigest(),
    )


def _decode_queries(files: list[bytes], listed: object, budget: PixelBudget) -> list[np.ndarray]:
    """Query PNG files, then the JSON list's queries; counted before any is decoded."""
    if not isinstance(listed, list):
        raise RequestError(400, "queries must be a list of RLE objects or base64 PNG strings")
    count = len(files) + len(listed)
    if not count:
        raise RequestError(400, "missing field queries (at least one query mask)")
    if count > MAX_QUERIES:
        raise RequestError(413, f"{count} queries in one request; at most {MAX_QUERIES}")
    queries = [decode_mask_png(data, f"query file {i}", budget) for i, data in enumerate(files)]
    return queries + [decode_query(q, f"queries[{i}]", budget) for i, q in enumerate(listed)]


def _json_fields(body: bytes) -> dict:
    try:
        fields = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(400, f"the body is not valid JSON: {exc}") from exc
    if not isinstance(fields, dict):
        raise RequestError(400, "the body must be a JSON object")
    return fields


def _multipart_fields(body: bytes, content_type: str) -> tuple[dict, dict[str, list[bytes]]]:
    """(JSON-decoded text fields, {file field: [contents]}) of a multipart/form-data body."""
    if "boundary=" not in content_type:
        raise RequestError(400, "multipart/form-data without a boundary")
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not message.is_multipart() or message.defects:
        raise RequestError(400, "the multipart/form-data body could not be parsed")
    fields: dict = {}
    files: dict[str, list[bytes]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not name:
            raise RequestError(400, "a multipart part has no name")
        data = part.get_payload(decode=True) or b""
        if part.get_filename() is not None or name in ("src_image", "dst_image", "query"):
            files.setdefault(name, []).append(data)
        elif name in ("queries", "candidates"):
            try:
                fields[name] = json.loads(data)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise RequestError(400, f"multipart field {name} is not valid JSON") from exc
        else:
            fields[name] = data.decode("utf-8", errors="replace")
    return fields, files


def encode_multipart(fields: dict[str, str], files: list[tuple[str, str, bytes]]) -> tuple:
    """(body, content type) of a multipart/form-data request: text ``fields`` and
    ``(field, filename, bytes)`` files (the client's and the tests' encoder)."""
    boundary = (
        "omama-"
        + hashlib.sha256(
            b"".join(data for _, _, data in files) + json.dumps(fields).encode()
        ).hexdigest()[:24]
    )
    lines: list[bytes] = []
    for name, value in fields.items():
        lines += [f"--{boundary}".encode(), f'Content-Disposition: form-data; name="{name}"'
                  .encode(), b"", value.encode()]  # fmt: skip
    for name, filename, data in files:
        lines += [
            f"--{boundary}".encode(),
            f'Content-Disposition: form-data; name="{name}"; filename="{filename}"'.encode(),
            b"Content-Type: application/octet-stream",
            b"",
            data,
        ]
    lines += [f"--{boundary}--".encode(), b""]
    return b"\r\n".join(lines), f"{MULTIPART_TYPE}; boundary={boundary}"


# ----------------------------------------------------------------------------- checks


def check_match(request: MatchRequest, pipeline: Pipeline) -> None:
    """422 unless the images fit the model's views and every query fits the source image."""
    try:
        pipeline.check_image(request.src_rgb.shape[:2], "src", "src_image")
        pipeline.check_image(request.dst_rgb.shape[:2], "dst", "dst_image")
    except OmamaError as exc:
        raise RequestError(422, str(exc)) from exc
    for i, mask in enumerate(request.queries):
        problem = pipeline.query_problem(mask, request.src_rgb.shape[:2])
        if problem:
            raise RequestError(422, f"queries[{i}]: {problem}")


# ----------------------------------------------------------------------------- responses


def match_object(match: Match) -> dict:
    """One query's answer: the RLE as ``omama-run pair`` writes it, and the match's JSON."""
    return {"rle": rle.encode(match.mask), **match.to_json()}


def match_response(matches: list[Match], latency_ms: dict[str, float], batch: dict) -> dict:
    """The ``/v1/match`` answer: one object per query, the request's per-stage latency and
    what it shared with the other requests of its batch."""
    return {
        "objects": [match_object(m) for m in matches],
        "latency_ms": {k: round(v, 3) for k, v in latency_ms.items()},
        "batch": batch,
    }
