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
