"""``omama serve``'s request parsing without Ray: JSON and multipart bodies, RLE and PNG
queries, precomputed candidates, and the one-line 4xx of each bad request."""

from __future__ import annotations

import base64
import json

import cv2
import numpy as np
import pytest

from runtime import rle
from runtime.serve.protocol import (
    RequestError,
    encode_multipart,
    error_body,
    parse_match,
)

SRC_HW, DST_HW = (36, 64), (40, 40)


def png(array: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", array)
    assert ok
    return data.tobytes()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    src = rng.integers(0, 255, (*SRC_HW, 3), dtype=np.uint8)
    dst = rng.integers(0, 255, (*DST_HW, 3), dtype=np.uint8)
    mask = np.zeros(SRC_HW, np.uint8)
    mask[5:20, 10:30] = 1
    return src, dst, mask


def body(images, **change) -> dict:
    src, dst, mask = images
    out = {"src_image": b64(png(src[:, :, ::-1])), "dst_image": b64(png(dst[:, :, ::-1])),
           "queries": [rle.encode(mask)]}  # fmt: skip
    out.update(change)
    return {k: v for k, v in out.items() if v is not None}


def parse(payload: dict):
    return parse_match(json.dumps(payload).encode(), "application/json")


def refused(payload, content_type="application/json") -> RequestError:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    with pytest.raises(RequestError) as info:
        parse_match(data, content_type)
    assert "\n" not in str(info.value)
    return info.value


def test_json_request_decodes_images_and_rle_and_png_queries(images):
    src, dst, mask = images
    request = parse(body(images, queries=[rle.encode(mask), b64(png(mask * 255))]))
    np.testing.assert_array_equal(request.src_rgb, src)
    np.testing.assert_array_equal(request.dst_rgb, dst)
    assert len(request.queries) == 2
    for query in request.queries:
        np.testing.assert_array_equal(query, mask)
    assert request.candidates is None
    data_url = "data:image/png;base64," + body(images)["dst_image"]
    np.testing.assert_array_equal(parse(body(images, dst_image=data_url)).dst_rgb, dst)


def test_png_query_rules_match_the_pair_command(images):
    """Grey non-zero, colour any channel, RGBA the alpha channel (tracks.read_mask_png)."""
    _, _, mask = images
    colour = np.zeros((*SRC_HW, 3), np.uint8)
    colour[..., 2] = mask * 7
    rgba = np.full((*SRC_HW, 4), 255, np.uint8)
    rgba[..., 3] = mask * 200
    request = parse(body(images, queries=[b64(png(colour)), b64(png(rgba))]))
    for query in request.queries:
        np.testing.assert_array_equal(query, mask)


def test_same_bytes_give_the_same_keys_and_candidates_change_the_destination_key(images):
    first, second = parse(body(images)), parse(body(images))
    assert first.dst_key == second.dst_key and first.src_key == second.src_key
    assert first.src_key != first.dst_key
    cands = np.zeros((2, *DST_HW), np.uint8)
    cands[0, :10, :10] = 1
    cands[1, 20:, 5:30] = 1
    with_cands = parse(body(images, candidates={"masks": [rle.encode(m) for m in cands]}))
    assert with_cands.dst_key != first.dst_key
    assert with_cands.candidates.masks.shape == (2, *DST_HW)
    np.testing.assert_array_equal(with_cands.candidates.boxes, [[0, 0, 9, 9], [5, 20, 24, 19]])
    boxes = [[0, 0, 10, 10], [5, 20, 25, 20]]
    boxed = parse(
        body(images, candidates={"masks": [rle.encode(m) for m in cands], "boxes": boxes})
    )
    np.testing.assert_array_equal(boxed.candidates.boxes, boxes)
    assert boxed.dst_key != with_cands.dst_key


def test_multipart_request_with_files_and_json_fields(images):
    src, dst, mask = images
    data, content_type = encode_multipart(
        {"queries": json.dumps([rle.encode(mask)])},
        [("src_image", "src.png", png(src[:, :, ::-1])), ("dst_image", "dst.jpg",
          png(dst[:, :, ::-1])), ("query", "cup.png", png(mask * 255))],
    )  # fmt: skip
    request = parse_match(data, content_type)
    np.testing.assert_array_equal(request.src_rgb, src)
    np.testing.assert_array_equal(request.dst_rgb, dst)
    assert len(request.queries) == 2  # the file first, then the JSON list
    for query in request.queries:
        np.testing.assert_array_equal(query, mask)
    assert request.dst_key == parse(body(images)).dst_key


def test_each_bad_request_gets_a_4xx_naming_the_problem(images):
    _, _, mask = images
    cases = [
        (b"{not json", 400, "not valid JSON"),
        ([1, 2], 400, "must be a JSON object"),
        (body(images, src_image=None), 400, "missing field src_image"),
        (body(images, queries=None), 400, "missing field queries"),
        (body(images, queries=[]), 400, "missing field queries"),
        (body(images, dst_image="%%%"), 400, "dst_image is not valid base64"),
        (
            body(images, dst_image=b64(b"not an image at all")),
            400,
            "dst_image could not be decoded",
        ),
        (body(images, queries=[{"size": [36, 64], "counts": "0"}]), 400, "queries[0]: RLE"),
        (body(images, queries=[{"size": [36, 64]}]), 400, "queries[0]: not an RLE"),
        (body(images, queries=[{"size": [36, 64], "counts": "\x7f\x7f"}]), 400, "queries[0]"),
        (body(images, queries=[7]), 400, "queries[0] must be an RLE object"),
        (body(images, queries=[b64(b"garbage")]), 400, "queries[0] could not be decoded"),
        (body(images, queries=rle.encode(mask)), 400, "queries must be a list"),
        (body(images, candidates={"masks": []}), 400, "candidates.masks is empty"),
        (
            body(
                images,
                candidates={"masks": [rle.encode(np.ones((4, 4))), rle.encode(np.ones((5, 4)))]},
            ),
            400,
            "different sizes",
        ),
        (
            body(images, candidates={"masks": [rle.encode(np.ones((4, 4)))], "boxes": [[0, 0, 1]]}),
            400,
            "boxes",
        ),
    ]
    for payload, status, words in cases:
        error = refused(payload)
        assert error.status == status, (words, error)
        assert words in str(error), (words, str(error))
        assert error.body() == {"error": str(error)}


def test_unsupported_content_types_get_415(images):
    error = refused(json.dumps(body(images)).encode(), "text/plain")
    assert error.status == 415 and "text/plain" in str(error)
    assert refused(b"--x--", "multipart/form-data").status == 400  # no boundary


def test_error_bodies_are_one_line():
    assert error_body("two\nlines  here") == {"error": "two lines here"}


def _png_header(height: int, width: int) -> bytes:
    """A PNG whose header claims ``height x width`` pixels (its data never decodes to that)."""
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk
            + struct.pack(">I", zlib.crc32(chunk)) + b"\x00" * 64)  # fmt: skip


def _jpeg_header(height: int, width: int) -> bytes:
    """A JPEG whose start-of-frame claims ``height x width`` pixels."""
    import struct

    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + app0 + sof + b"\x00" * 64


def test_requests_that_decode_to_huge_arrays_are_refused_before_decoding(images, monkeypatch):
    """A 44-byte RLE or a small PNG/JPEG header can claim gigabytes: 413 before any decode."""
    _, _, mask = images
    calls = []
    real_decode = rle.decode
    monkeypatch.setattr(rle, "decode", lambda rle_: calls.append(rle_["size"]) or real_decode(rle_))
    huge_rle = {"size": [50000, 50000], "counts": [50000 * 50000]}
    cases = [
        (body(images, queries=[huge_rle]), "queries[0] is 50000x50000"),
        (body(images, candidates={"masks": [huge_rle]}), "candidates.masks[0] is 50000x50000"),
        (body(images, dst_image=b64(_png_header(30000, 40000))), "dst_image is 40000x30000"),
        (body(images, src_image=b64(_jpeg_header(20000, 20000))), "src_image is 20000x20000"),
        (body(images, queries=[b64(_png_header(9000, 9000))]), "queries[0] is 9000x9000"),
    ]
    for payload, words in cases:
        error = refused(payload)
        assert error.status == 413, (words, error)
        assert words in str(error) and "--max-pixels" in str(error), (words, str(error))
    assert [50000, 50000] not in calls  # refused from the RLE's size alone
    # The cap is the service's: a 36x64 source passes at 2304 pixels, not at 2303.
    request = body(images)
    assert parse_match(json.dumps(request).encode(), "application/json", max_pixels=2304)
    with pytest.raises(RequestError, match="src_image is 64x36 .* 2303"):
        parse_match(json.dumps(request).encode(), "application/json", max_pixels=2303)
    # Formats whose size cannot be read from the header are refused, not decoded.
    ok, bmp = cv2.imencode(".bmp", np.zeros((4, 4, 3), np.uint8))
    error = refused(body(images, dst_image=b64(bmp.tobytes())))
    assert error.status == 400 and "PNG or JPEG" in str(error)


def test_candidate_and_query_counts_and_their_total_pixels_are_capped(images):
    from runtime.serve.protocol import MAX_CANDIDATES, MAX_QUERIES

    _, _, mask = images
    small = rle.encode(np.ones((2, 2), np.uint8))
    error = refused(body(images, candidates={"masks": [small] * (MAX_CANDIDATES + 1)}))
    assert error.status == 413 and f"at most {MAX_CANDIDATES}" in str(error)
    error = refused(body(images, queries=[rle.encode(mask)] * (MAX_QUERIES + 1)))
    assert error.status == 413 and f"at most {MAX_QUERIES}" in str(error)
    # 600 masks of 64x36 pixels each pass one by one but not together (16 x --max-pixels).
    many = {"masks": [rle.encode(np.ones((36, 64), np.uint8))] * 600}
    payload = json.dumps(body(images, candidates=many)).encode()
    with pytest.raises(RequestError, match=r"16 x --max-pixels") as info:
        parse_match(payload, "application/json", max_pixels=80_000)
    assert info.value.status == 413
    assert parse_match(payload, "application/json", max_pixels=90_000).candidates is not None
