"""``omama serve`` for real: the command started on a free port (one Ray + Serve start for
the module), answered over HTTP like ``omama-run pair``, each bad request refused with its
4xx while good ones keep getting 200, concurrent requests for one destination frame
batched into one encode, and SIGTERM stopping it cleanly.

The artifacts are ``tests.runtime.assets``' random-init export (exo 896x504 source, ego
448x448 destination frames of the synthetic take).
"""

from __future__ import annotations

import base64
import json
import signal
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("ray", reason="needs Ray: pip install 'omama[ray]'")
torch = pytest.importorskip("torch")

from runtime import rle  # noqa: E402
from runtime.serve.client import info, match, match_body, request_json  # noqa: E402
from runtime.serve.protocol import encode_multipart  # noqa: E402
from tests.runtime.runs.cli import omama_run  # noqa: E402
from tests.runtime.serve.services import Service, free_port  # noqa: E402

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def service(assets):
    port = free_port()
    running = Service(["serve", "--artifacts", str(assets.random), "--port", str(port),
                       "--backend", "onnxruntime", "--device", "cpu", "--threads", "1",
                       "--cpus-per-replica", "0.5", "--max-batch", "2", "--batch-wait-ms",
                       "1000", "--max-body-mb", "4"])  # fmt: skip
    running.wait_ready()
    running.url = f"http://127.0.0.1:{port}"
    yield running
    running.kill()


def test_info_and_health(service, assets):
    status, body = request_json(service.url + "/healthz")
    assert (status, body) == (200, {"status": "ok"})
    described = info(service.url)
    assert described["artifacts"] == str(assets.random.resolve())
    assert (described["direction"], described["backend"], described["device"],
            described["precision"]) == ("exo2ego", "onnxruntime", "cpu", "fp32")  # fmt: skip
    assert described["verification"]["verified"] is True  # the export verified ORT fp32 CPU
    assert described["signature"] == {
        "verified": False, "reason": "not checked: started without --trust"
    }  # fmt: skip
    assert "num_cpus 0.5 each" in service.output()


def test_match_answers_as_omama_run_pair(service, assets, pair_files, tmp_path, capsys):
    src, dst, queries = pair_files
    code, _, err = omama_run(capsys, "pair", src, dst, "--query", queries[0], "--query",
                             queries[1], "--artifacts", assets.random, "--backend",
                             "onnxruntime", "--device", "cpu", "--threads", "1",
                             "--out", tmp_path / "pair")  # fmt: skip
    assert code == 0, err
    want = json.loads((tmp_path / "pair" / "result.json").read_text())["objects"]
    got = match(service.url, src, dst, queries)
    multipart, content_type = encode_multipart(
        {}, [("src_image", "exo.png", src.read_bytes()), ("dst_image", "ego.png",
             dst.read_bytes())] + [("query", q.name, q.read_bytes()) for q in queries],
    )  # fmt: skip
    status, answer = request_json(service.url + "/v1/match", multipart, content_type)
    assert status == 200, answer
    for expected, by_json, by_multipart in zip(want, got, answer["objects"], strict=True):
        for obj in (by_json, by_multipart):
            assert obj["rle"] == expected["rle"]
            assert obj["candidate"] == expected["candidate"] >= 0
            assert obj["confidence"] == pytest.approx(expected["confidence"], abs=1e-6)
            assert obj["visible"] == expected["visible"]
            assert obj["mask_size_hw"] == [448, 448]
    assert got[0]["latency_ms"]["fastsam"] > 0 and got[0]["latency_ms"]["total"] > 0


def _post(url: str, payload) -> tuple[int, dict]:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return request_json(url + "/v1/match", data)


def test_bad_requests_get_4xx_and_good_ones_still_200(service, pair_files):
    src, dst, queries = pair_files
    good = match_body(src, dst, queries[:1])
    wrong_size = np.ones((448, 448), np.uint8)  # the ego size, not the exo source's
    cases = [
        ({**good, "dst_image": base64.b64encode(b"no image").decode()}, 400, "dst_image could"),
        (
            {**good, "queries": [rle.encode(wrong_size)]},
            422,
            "queries[0]: the query mask is 448x448 px but the source image is 896x504",
        ),
        ({**good, "queries": [rle.encode(np.zeros((504, 896)))]}, 422, "mask is empty"),
        ({**good, "queries": [{"size": [504, 896], "counts": "0PPP"}]}, 400, "queries[0]: RLE"),
        ({k: v for k, v in good.items() if k != "src_image"}, 400, "missing field src_image"),
        ({**good, "src_image": good["dst_image"]}, 422, "src_image is 448x448 px"),
        (b"{" + b" " * (5 << 20) + b"}", 413, "limit is 4 MB"),
        (b"[not json", 400, "not valid JSON"),
    ]
    for payload, status, words in cases:
        got_status, body = _post(service.url, payload)
        assert (got_status, list(body)) == (status, ["error"]), (words, body)
        assert words in body["error"] and "\n" not in body["error"]
        if status == 413:  # the service keeps serving after each refusal
            assert _post(service.url, good)[0] == 200
    assert request_json(service.url + "/v1/nothing")[0] == 404
    assert request_json(service.url + "/v1/match")[0] == 405
    status, body = _post(service.url, good)
    assert status == 200 and body["objects"][0]["candidate"] >= 0


def test_concurrent_requests_for_one_frame_share_its_encode(service, pair_files):
    src, dst, queries = pair_files
    before = info(service.url)["counters"]
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda q: _post(service.url, match_body(src, dst, [q])), queries))
    after = info(service.url)["counters"]
    assert [status for status, _ in answers] == [200, 200]
    assert [body["batch"] for _, body in answers] == [
        {"shared_src": 2, "requests": 2, "shared_dst": 2}
    ] * 2
    assert after["requests"] - before["requests"] == 2
    assert after["dst_encodes"] - before["dst_encodes"] == 1
    assert after["matcher_calls"] - before["matcher_calls"] == 1


def test_sigterm_stops_the_service_cleanly(service):
    service.process.send_signal(signal.SIGTERM)
    assert service.process.wait(120) == 0, service.output()[-3000:]
    service.reader.join(10)
    assert "stopping omama serve" in service.lines and service.lines[-1] == "stopped"
    with pytest.raises(Exception, match="cannot reach omama serve"):
        request_json(service.url + "/healthz", timeout_s=5)
