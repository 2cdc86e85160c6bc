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
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("ray", reason="needs Ray: pip install 'omama[ray]'")
torch = pytest.importorskip("torch")

from runtime import rle  # noqa: E402
from runtime.serve.client import info, match, match_body, request_json  # noqa: E402
from runtime.serve.protocol import encode_multipart  # noqa: E402
from tests.runtime.assets import EGO, EXO  # noqa: E402
from tests.runtime.runs.cli import omama_run  # noqa: E402

pytestmark = pytest.mark.timeout(900)
START_TIMEOUT_S = 240


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Service:
    """A running ``omama serve`` process and what it printed."""

    def __init__(self, argv: list[str]) -> None:
        env = {**os.environ, "YOLO_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from omama_train.cli import main; main()", *argv],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
            start_new_session=True,  # its Ray processes are cleaned up with its group
        )  # fmt: skip
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not any("Ctrl-C to stop" in line for line in self.lines):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"omama serve did not start:\n{self.output()[-3000:]}")
            time.sleep(0.5)

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(30)


@pytest.fixture(scope="module")
def pair_files(assets, tmp_path_factory):
    """exo.png, ego.png and two query PNGs (the take's objects at frame 2)."""
    import cv2

    from runtime.egoexo import ProcessedRoot
    from runtime.video import VideoReader

    folder = tmp_path_factory.mktemp("serve_inputs")
    with VideoReader(assets.video(EXO)) as src, VideoReader(assets.video(EGO)) as dst:
        cv2.imwrite(str(folder / "exo.png"), src.read(2)[:, :, ::-1])
        cv2.imwrite(str(folder / "ego.png"), dst.read(2)[:, :, ::-1])
    index = ProcessedRoot(assets.root)
    queries = []
    for obj in index.objects(assets.take):
        found = index.mask_rle(assets.take, obj, EXO, 2)
        if found is not None and len(queries) < 2:
            queries.append(folder / f"query{len(queries)}.png")
            cv2.imwrite(str(queries[-1]), rle.decode(found) * 255)
    return folder / "exo.png", folder / "ego.png", queries


@pytest.fixture(scope="module")
def service(assets):
    port = free_port()
    running = Service(["serve", "--artifacts", str(assets.random), "--port", str(port),
                       "--backend", "onnxruntime", "--device", "cpu", "--threads", "1",
                       "--cpus-per-replica", "0.5", "--max-batch", "2", "--batch-wait-ms",
                       "1000", "--max-body-mb", "4"])  # fmt: skip
    running.wait_ready(START_TIMEOUT_S)
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
