"""``omama serve`` before Ray starts: one line without the ray extra, for a bad folder or a
busy port; the resources each replica declares."""

from __future__ import annotations

import socket
import sys

import pytest

from omama_train.cli import build_app
from runtime.clikit import run_app
from runtime.errors import OmamaError
from runtime.serve.app import Resources, check_port_free, deployment_options
from runtime.serve.service import ServeConfig


def omama(capsys, *argv) -> tuple[int, str]:
    code = run_app(build_app(), [str(a) for a in argv])
    return code, capsys.readouterr().err


def test_serve_without_ray_says_how_to_install_it(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    code, err = omama(capsys, "serve", "--artifacts", tmp_path)
    assert (code, err.strip()) == (1, "error: needs Ray: pip install 'omama[ray]'")


def test_serve_refuses_a_missing_folder_in_one_line(capsys, tmp_path):
    pytest.importorskip("ray")
    code, err = omama(capsys, "serve", "--artifacts", tmp_path / "nothing")
    assert code == 1 and err.count("\n") == 1
    assert err.startswith("error: artifacts folder not found")


def test_a_bad_name_is_refused_in_one_line_before_ray_starts(capsys, tmp_path):
    pytest.importorskip("ray")
    code, err = omama(capsys, "serve", "--artifacts", tmp_path / "nothing", "--name", "a/b")
    assert code == 1 and err.count("\n") == 1
    assert err.startswith("error: --name 'a/b': a name is 1 to 63 letters")


def test_a_busy_port_is_refused_in_one_line():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(OmamaError, match=rf"cannot listen on 127.0.0.1:{port} .*--port"):
            check_port_free("127.0.0.1", port)


def test_connections_of_a_stopped_server_do_not_make_its_port_busy():
    """A service stopped and started again on its port (TIME_WAIT connections remain)."""
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn listens
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        accepted.close()  # the server side closes first: its end lingers in TIME_WAIT
        client.close()
    check_port_free("127.0.0.1", port)


@pytest.mark.parametrize(
    ("device", "cluster_gpus", "actor"),
    [
        ("cpu", 8.0, {"num_cpus": 0.5}),
        ("auto", 0.0, {"num_cpus": 0.5}),
        ("auto", 2.0, {"num_cpus": 0.5, "num_gpus": 0.25}),
        ("cuda:0", 0.0, {"num_cpus": 0.5, "num_gpus": 0.25}),
    ],
)
def test_replicas_declare_cpus_and_gpus_on_cuda(device, cluster_gpus, actor):
    config = ServeConfig("artifacts", device=device, max_batch=4)
    options = deployment_options(config, Resources(3, 0.5, 0.25), cluster_gpus)
    assert options["ray_actor_options"] == actor
    assert options["num_replicas"] == 3
    assert options["max_ongoing_requests"] == 16  # 4 batches: one running, 3 merging


def test_a_crashed_replica_is_noticed_within_two_seconds():
    """Serve notices a dead replica only at its next health check (10 s apart by default),
    and a one-replica service answers nothing until then."""
    options = deployment_options(ServeConfig("artifacts"), Resources(), 0.0)
    assert options["health_check_period_s"] == 2.0
    assert options["health_check_timeout_s"] == 30.0


def test_replicas_the_cluster_cannot_hold_are_refused_in_one_line():
    from runtime.serve.app import check_cluster

    node = {"CPU": 4.0, "GPU": 1.0}
    check_cluster(ServeConfig("a", device="cuda"), Resources(2, 2.0, 0.5), node)
    with pytest.raises(OmamaError, match=r"3 replicas of 2 CPU need 6 CPUs but the Ray "
                       r"cluster has 4: lower --replicas or --cpus-per-replica"):  # fmt: skip
        check_cluster(ServeConfig("a", device="cpu"), Resources(3, 2.0, 1.0), node)
    with pytest.raises(OmamaError, match=r"2 replicas of 1 GPU need 2 GPUs .* has 1: lower "
                       r"--replicas or --gpus-per-replica"):  # fmt: skip
        check_cluster(ServeConfig("a", device="auto"), Resources(2, 1.0, 1.0), node)
    # On the CPU no GPU is asked for, whatever --gpus-per-replica says.
    check_cluster(ServeConfig("a", device="cpu"), Resources(4, 1.0, 1.0), node)


@pytest.mark.timeout(60)
def test_a_ray_address_nobody_answers_on_is_refused_before_ray_starts():
    """`ray.init` to a dead HOST:PORT waits for minutes; the service says so at once."""
    pytest.importorskip("ray")
    from runtime.serve.app import start_service

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        with pytest.raises(OmamaError, match=rf"cannot reach the Ray cluster at 127.0.0.1:{port}"):
            start_service(ServeConfig("a"), Resources(), ray_address=f"127.0.0.1:{port}")
