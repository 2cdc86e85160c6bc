"""Two ``omama serve`` services on one Ray cluster (``ray start --head``, as docs/serve.md
says): the default name at ``/`` and ``--name cups`` at ``/cups``, each on its own artifacts
folder, both answering; the name that runs already refused and left running; the default
service's replica killed hard (SIGKILL) and restarted by Ray Serve, answering the same again
while the other service keeps answering; stopping one service leaves the other running.

Ray runs in child processes only (the cluster, the services, the replica lookup)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("ray", reason="needs Ray: pip install 'omama[ray]'")
pytest.importorskip("torch")  # the shared assets are exported with torch

from runtime.errors import OmamaError  # noqa: E402
from runtime.serve.client import info, match_body, request_json  # noqa: E402
from tests.runtime.serve.services import Service, free_port  # noqa: E402

pytestmark = pytest.mark.timeout(900)
REPO = Path(__file__).resolve().parents[3]
RAY = Path(sys.executable).with_name("ray")
RESTART_TIMEOUT_S = 180
# `ray start` turns token authentication on when ~/.ray/auth_token exists (any local
# `ray.init` writes one) but a driver joining it does not, unless told (docs/serve.md).
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token"}


@pytest.fixture(scope="module")
def cluster():
    """The GCS address of a Ray head node of 2 CPUs on the loopback, with every fixed port
    it opens chosen free and its own temp folder (short: Ray's socket paths), so that other
    Ray instances on this machine neither collide with it nor join it."""
    port = free_port()
    temp = Path(tempfile.mkdtemp(prefix="omr", dir="/tmp"))
    log = temp / "ray_start.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [str(RAY), "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
             "--num-gpus=0", "--node-ip-address=127.0.0.1", f"--temp-dir={temp}",
             "--disable-usage-stats", f"--dashboard-port={free_port()}",
             f"--ray-client-server-port={free_port()}",
             f"--dashboard-agent-listen-port={free_port()}"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, **RAY_ENV},
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while "block forever" not in log.read_text():  # printed once the node runs
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"ray start failed:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        process.send_signal(signal.SIGTERM)  # `ray start --block` stops its node
        try:
            process.wait(90)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)
        shutil.rmtree(temp, ignore_errors=True)


def serve_argv(artifacts: Path, address: str, port: int, *extra: str) -> list[str]:
    return ["serve", "--artifacts", str(artifacts), "--ray-address", address, "--port",
            str(port), "--backend", "onnxruntime", "--device", "cpu", "--threads", "1",
            "--cpus-per-replica", "0.5", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def services(cluster, assets, tmp_path_factory):
    """{"default": the service at /, "cups": the service named cups, on a copy of the
    artifacts}, both joined to ``cluster`` and listening on one port (Serve's proxy)."""
    port = free_port()
    cups_artifacts = shutil.copytree(assets.random, tmp_path_factory.mktemp("cups") / "a")
    running = {}
    try:
        # The default service holds a lone request 2 s for a batch to fill: long enough to
        # kill its replica while a request is inside it.
        for key, artifacts, extra in [
            ("default", assets.random, ("--max-batch", "2", "--batch-wait-ms", "2000")),
            ("cups", cups_artifacts, ("--name", "cups", "--max-batch", "1")),
        ]:
            running[key] = Service(serve_argv(artifacts, cluster, port, *extra), RAY_ENV)
            running[key].wait_ready()
        running["default"].url = f"http://127.0.0.1:{port}"
        running["cups"].url = f"http://127.0.0.1:{port}/cups"
        running["cups"].artifacts = Path(cups_artifacts)
        yield running
    finally:
        for service in running.values():
            service.kill()


def answer(url: str, body: bytes, timeout_s: float = 60.0) -> dict:
    status, got = request_json(url + "/v1/match", body, timeout_s=timeout_s)
    assert status == 200, got
    return got["objects"][0]


@pytest.fixture(scope="module")
def good_body(pair_files) -> bytes:
    src, dst, queries = pair_files
    return json.dumps(match_body(src, dst, queries[:1])).encode()


def test_two_named_services_answer_side_by_side(services, assets, good_body):
    default, cups = services["default"], services["cups"]
    assert f"omama serve cups: {cups.url} (" in cups.output()
    assert "POST /cups/v1/match, GET /cups/v1/info, GET /cups/healthz" in cups.output()
    assert f"omama serve omama: {default.url} (" in default.output()
    assert info(default.url)["artifacts"] == str(assets.random.resolve())
    assert info(cups.url)["artifacts"] == str(cups.artifacts.resolve())
    for service in (default, cups):
        assert request_json(service.url + "/healthz") == (200, {"status": "ok"})
    by_default, by_cups = answer(default.url, good_body), answer(cups.url, good_body)
    assert by_default["candidate"] >= 0 and by_default["rle"] == by_cups["rle"]
    assert by_default["confidence"] == pytest.approx(by_cups["confidence"], abs=1e-6)
    status, body = request_json(cups.url + "/v1/nothing")
    assert (status, body["error"]) == (
        404, "no route /cups/v1/nothing: use POST /cups/v1/match, GET /cups/v1/info or GET "
        "/cups/healthz")  # fmt: skip


def test_a_name_running_already_is_refused_and_left_running(services, cluster, assets,
                                                           good_body):  # fmt: skip
    cups = services["cups"]
    again = Service(serve_argv(assets.random, cluster, free_port(), "--name", "cups"), RAY_ENV)
    try:
        assert again.process.wait(240) == 1, again.output()[-3000:]
    finally:
        again.kill()
    again.reader.join(10)
    assert again.lines[-1] == (
        "error: a Serve application named cups runs on this Ray cluster already: give this "
        "service another --name, or stop that one first (Ctrl-C where it runs)"
    )
    assert info(cups.url)["artifacts"] == str(cups.artifacts.resolve())  # not replaced
    assert answer(cups.url, good_body)["candidate"] >= 0


def replica(action: str, address: str, app: str) -> int:
    done = subprocess.run(
        [sys.executable, "-m", "tests.runtime.serve.replicas", action, address, app],
        cwd=REPO, capture_output=True, text=True, timeout=120, env={**os.environ, **RAY_ENV},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    return int(done.stdout.split()[-1])


def ask(url: str, body: bytes | None = None) -> str:
    """What a client sees of one request (GET without ``body``): ``200``, the status and
    its error, or no answer."""
    try:
        status, got = request_json(url, body, timeout_s=60)
    except OmamaError as exc:
        return f"no answer: {str(exc)[:100]}"
    return "200" if status == 200 else f"{status} {got.get('error', '')[:100]}"


def test_a_killed_replica_is_restarted_and_answers_the_same_again(services, cluster,
                                                                  good_body):  # fmt: skip
    default, cups = services["default"], services["cups"]
    before = answer(default.url, good_body)
    killed = replica("pid", cluster, "omama")
    with ThreadPoolExecutor(1) as pool:  # one request in the replica when it dies
        in_flight = pool.submit(ask, default.url + "/v1/match", good_body)
        time.sleep(1.0)  # it waits 2 s in the replica for a batch to fill
        os.kill(killed, signal.SIGKILL)
        started = time.monotonic()
        seen = [f"in flight: {in_flight.result()}"]
    while seen[-1] != "200":  # then /healthz in a row until the new replica answers
        assert time.monotonic() - started < RESTART_TIMEOUT_S, seen
        got = ask(default.url + "/healthz")
        if seen[-1] != got:
            seen.append(got)
        time.sleep(0.2 * (got != "200"))
    answered_s = time.monotonic() - started
    print(f"killed replica {killed}: answered again {answered_s:.1f} s later; seen {seen}")
    assert seen[0] == "in flight: 200" or seen[0].startswith("in flight: 5"), seen
    again = answer(default.url, good_body)
    assert again["rle"] == before["rle"] and again["candidate"] == before["candidate"]
    assert again["confidence"] == pytest.approx(before["confidence"], abs=1e-6)
    assert request_json(default.url + "/healthz") == (200, {"status": "ok"})
    assert replica("pid", cluster, "omama") != killed  # a new replica process answered
    assert answer(cups.url, good_body)["rle"] == before["rle"]  # the other app unharmed
    assert default.process.poll() is None  # the driver keeps serving


def test_stopping_one_service_leaves_the_other_running(services, good_body):
    default, cups = services["default"], services["cups"]
    cups.process.send_signal(signal.SIGTERM)
    assert cups.process.wait(120) == 0, cups.output()[-3000:]
    assert request_json(cups.url + "/healthz")[0] == 404  # its route is gone
    assert answer(default.url, good_body)["candidate"] >= 0
    default.process.send_signal(signal.SIGTERM)
    assert default.process.wait(120) == 0, default.output()[-3000:]
