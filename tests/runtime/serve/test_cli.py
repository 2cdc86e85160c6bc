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
