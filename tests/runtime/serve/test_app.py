"""``runtime.serve.app`` without Ray: reading a request body under its limit."""

from __future__ import annotations

import asyncio

import pytest

from runtime.serve.app import read_body
from runtime.serve.protocol import RequestError


class FakeRequest:
    """What read_body uses of a Starlette request: headers and the body's chunks."""

    def __init__(self, chunks: list[bytes], content_length: int | None = None) -> None:
        self.chunks = chunks
        self.read = 0
        self.headers = {} if content_length is None else {"content-length": str(content_length)}

    async def stream(self):
        for chunk in self.chunks:
            self.read += 1
            yield chunk


def test_a_body_over_the_limit_is_refused_without_reading_it_to_its_end():
    declared = FakeRequest([b"x" * 100] * 50, content_length=5000)
    with pytest.raises(RequestError, match=r"limit is .* \(--max-body-mb\)") as info:
        asyncio.run(read_body(declared, 1000))
    assert info.value.status == 413 and declared.read == 0  # from Content-Length alone
    chunked = FakeRequest([b"x" * 100] * 50)  # no Content-Length: stop at twice the limit
    with pytest.raises(RequestError) as info:
        asyncio.run(read_body(chunked, 1000))
    assert info.value.status == 413 and chunked.read == 21
    lying = FakeRequest([b"x" * 100] * 50, content_length=10)  # a header that understates
    with pytest.raises(RequestError):
        asyncio.run(read_body(lying, 1000))
    assert lying.read == 21
    # A little over: read to its end (and dropped), so that a client sending all of it
    # before reading the answer gets the 413, not a reset connection.
    near = FakeRequest([b"x" * 100] * 15, content_length=1500)
    with pytest.raises(RequestError, match="the body is 0.0 MB"):
        asyncio.run(read_body(near, 1000))
    assert near.read == 15
    assert asyncio.run(read_body(FakeRequest([b"ab", b"cd"], content_length=4), 4)) == b"abcd"
    assert asyncio.run(read_body(FakeRequest([b"ab", b"cd"]), 4)) == b"abcd"
