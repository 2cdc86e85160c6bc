"""``runtime.serve.app`` without Ray: reading a request body under its limit, the routes
under an application's route prefix, the application name."""

from __future__ import annotations

import asyncio

import pytest

from runtime.errors import OmamaError
from runtime.serve.app import APP_NAME, check_name, read_body, respond, route_prefix
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


class FakeRoute:
    """What respond uses of a request routed by Serve's proxy: the ASGI scope keeps the
    whole path and names the application's route prefix as ``root_path``."""

    def __init__(self, path: str, root_path: str = "", method: str = "GET") -> None:
        self.scope = {"path": path, "root_path": root_path}
        self.method = method
        self.url = type("URL", (), {"path": path})()


class HealthyService:
    def health_problem(self) -> None:
        return None


@pytest.mark.parametrize(
    ("path", "root_path"), [("/healthz", ""), ("/b/healthz", "/b"), ("/b/healthz/", "/b")]
)
def test_routes_answer_under_the_application_route_prefix(path, root_path):
    status, body = asyncio.run(respond(HealthyService(), None, FakeRoute(path, root_path)))
    assert (status, body) == (200, {"status": "ok"})


def test_an_unknown_route_names_the_routes_under_its_prefix():
    status, body = asyncio.run(respond(HealthyService(), None, FakeRoute("/b/v2/match", "/b")))
    assert status == 404
    assert body["error"] == (
        "no route /b/v2/match: use POST /b/v1/match, GET /b/v1/info or GET /b/healthz"
    )
    status, body = asyncio.run(respond(HealthyService(), None, FakeRoute("/b/v1/match", "/b")))
    assert (status, body["error"]) == (405, "/b/v1/match takes POST, not GET")


def test_the_default_name_keeps_the_routes_at_the_root_and_others_move_under_it():
    assert route_prefix(APP_NAME) == "/" and APP_NAME == "omama"
    assert route_prefix("cups-v2") == "/cups-v2"
    assert route_prefix("A_1") == "/A_1"


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("", "a name is 1 to 63 letters"),
        ("a/b", "a name is 1 to 63 letters"),
        ("-a", "a name is 1 to 63 letters"),
        ("x" * 64, "a name is 1 to 63 letters"),
        ("v1", "its route prefix /v1 would take the routes of the default application"),
        ("healthz", "its route prefix /healthz would take the routes"),
    ],
)
def test_a_bad_name_is_refused_in_one_line(name, why):
    with pytest.raises(OmamaError, match=f"--name {name!r}: ") as info:
        check_name(name)
    assert why in str(info.value) and "\n" not in str(info.value)
