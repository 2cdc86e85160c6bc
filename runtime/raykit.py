"""What the Ray commands (``omama-run dataset --ray``, ``omama serve``) share: importing Ray
with the one line naming the extra, refusing a cluster address nobody answers on, and
refusing actors the cluster cannot hold (Ray would wait for them forever, silently).

Ray itself is imported only inside :func:`import_ray`: importing this module needs no Ray.
"""

from __future__ import annotations

import importlib
import socket

from runtime.errors import OmamaError

NEEDS_RAY = "needs Ray: pip install 'omama[ray]'"


def import_ray(*parts: str):
    """The ``ray`` module after importing ``ray.<part>`` for each of ``parts`` (``data``,
    ``serve``: a core-only install lacks them), or the one line naming the extra."""
    try:
        import ray

        for part in parts:
            importlib.import_module(f"ray.{part}")
    except ImportError as exc:
        raise OmamaError(NEEDS_RAY) from exc
    return ray


def check_reachable(address: str | None, timeout_s: float = 10.0) -> None:
    """Refuse a ``HOST:PORT`` nobody answers on (``ray.init`` would wait for it for minutes,
    silently); other address forms (None, ``auto``, ``ray://``) are left to Ray."""
    if not address:
        return
    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise OmamaError(
            f"cannot reach the Ray cluster at {address} ({exc.strerror or exc}): start it "
            f"there with `ray start --head --port {port}`, or give its address"
        ) from exc


def uses_gpu(device: str, cluster_gpus: float) -> bool:
    """Whether actors running on ``device`` ask Ray for GPUs (``auto``: when the cluster has
    some)."""
    return device.startswith("cuda") or (device == "auto" and cluster_gpus > 0)


def threads_for(cpus: float) -> int:
    """Threads per model of an actor declaring ``cpus`` CPUs: its whole CPUs, at least 1 (not
    every core of the node, which other actors share)."""
    return max(1, int(cpus))


def check_fits(
    cluster: dict,
    resource: str,
    actors: int,
    each: float,
    noun: str,
    flags: str,
    extra: float = 0.0,
    extra_what: str = "",
) -> None:
    """Refuse ``actors`` x ``each`` of ``resource`` (``CPU``, ``GPU``; plus ``extra``, said
    as ``extra_what``) beyond what ``cluster`` (``ray.cluster_resources()``) holds, naming
    the ``flags`` to lower."""
    total = float(cluster.get(resource, 0.0))
    needed = actors * each + extra
    if needed > total:
        raise OmamaError(
            f"{actors} {noun}{'s' * (actors != 1)} of {each:g} {resource}{extra_what} need "
            f"{needed:g} {resource}s but the Ray cluster has {total:g}: lower {flags}"
        )
