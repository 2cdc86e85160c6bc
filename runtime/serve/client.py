"""A Python client of ``omama serve`` on the standard library (urllib), no extra dependency.

Example::

    from runtime.serve.client import match

    objects = match("http://127.0.0.1:8000", "exo.jpg", "ego.jpg", ["cup.png"])
    objects[0]["rle"], objects[0]["confidence"], objects[0]["candidate"]
"""

from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from runtime import rle
from runtime.errors import OmamaError
from runtime.serve.protocol import INFO_PATH, MATCH_PATH

Image = str | os.PathLike | bytes
Query = str | os.PathLike | bytes | dict | np.ndarray


def _image_bytes(image: Image) -> bytes:
    """Encoded image bytes: bytes as given, else the file's content."""
    if isinstance(image, bytes):
        return image
    path = Path(image)
    if not path.is_file():
        raise OmamaError(f"image file not found: {path}")
    return path.read_bytes()


def encode_query(query: Query) -> dict | str:
    """One query as the protocol takes it: an RLE dict as given, a mask array as its RLE,
    PNG bytes or a PNG file as base64."""
    if isinstance(query, dict):
        return query
    if isinstance(query, np.ndarray):
        return rle.encode(query)
    return base64.b64encode(_image_bytes(query)).decode("ascii")


def match_body(src_image: Image, dst_image: Image, queries: Sequence[Query],
               candidates: dict | None = None) -> dict:  # fmt: skip
    """The JSON body of ``POST /v1/match``."""
    body = {
        "src_image": base64.b64encode(_image_bytes(src_image)).decode("ascii"),
        "dst_image": base64.b64encode(_image_bytes(dst_image)).decode("ascii"),
        "queries": [encode_query(q) for q in queries],
    }
    if candidates is not None:
        body["candidates"] = candidates
    return body


def request_json(url: str, body: bytes | None = None, content_type: str = "application/json",
                 timeout_s: float = 120.0) -> tuple[int, dict]:  # fmt: skip
    """(status, JSON) of a GET (``body`` None) or POST; 4xx / 5xx are returned, not raised."""
    headers = {"Content-Type": content_type} if body is not None else {}
    req = urllib.request.Request(url, data=body, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        text = exc.read()
        try:
            return exc.code, json.loads(text)
        except json.JSONDecodeError:
            return exc.code, {"error": text.decode("utf-8", errors="replace")[:200]}
    except (urllib.error.URLError, OSError) as exc:
        raise OmamaError(f"cannot reach omama serve at {url}: {exc}") from exc


def match(url: str, src_image: Image, dst_image: Image, queries: Sequence[Query],
          candidates: dict | None = None, timeout_s: float = 120.0) -> list[dict]:  # fmt: skip
    """Match ``queries`` (masks on ``src_image``) into ``dst_image`` on the service at ``url``.

    Arguments:
        url: the service, e.g. ``http://127.0.0.1:8000``.
        src_image, dst_image: image files or their encoded bytes (PNG, JPEG).
        queries: each an (H, W) mask array, a COCO RLE dict, PNG bytes or a PNG file.
        candidates: ``{"masks": [RLE, ...], "boxes": [[x1, y1, w, h], ...]}`` of the
            destination image (default: FastSAM on the service).

    Returns one dict per query: ``rle`` (at the destination image's size), ``confidence``,
    ``visible``, ``candidate``, ``similarity``, ``box_xywh``, ``top5``, ``candidates``,
    ``mask_size_hw``; each carries the request's ``latency_ms``. Raises OmamaError with the
    service's one-line error on a 4xx / 5xx.
    """
    body = json.dumps(match_body(src_image, dst_image, queries, candidates)).encode()
    status, answer = request_json(url.rstrip("/") + MATCH_PATH, body, timeout_s=timeout_s)
    if status != 200:
        raise OmamaError(f"omama serve answered {status}: {answer.get('error', answer)}")
    return [{**obj, "latency_ms": answer["latency_ms"]} for obj in answer["objects"]]


def info(url: str, timeout_s: float = 30.0) -> dict:
    """``GET /v1/info``: artifacts, backend, device, precision, verification, counters."""
    status, answer = request_json(url.rstrip("/") + INFO_PATH, timeout_s=timeout_s)
    if status != 200:
        raise OmamaError(f"omama serve answered {status}: {answer.get('error', answer)}")
    return answer
