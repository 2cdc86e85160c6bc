"""What the Ray commands (``omama-run dataset --ray``, ``omama serve``, ``omama data masks
--ray``, ``omama features --ray``) share: importing Ray with the one line naming the extra,
refusing a cluster address nobody answers on, connecting for one run, choosing and refusing
actor resources the cluster cannot hold (Ray would wait for them forever, silently), and
the one line a failed Ray job ends with.

Ray itself is imported only inside :func:`import_ray`: importing this module needs no Ray.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
import socket
from collections.abc import Iterator

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


def worker_device(device: str, gpu_ids: list) -> str:
    """The torch device an actor runs ``device`` on, given the GPUs Ray gave it
    (``ray.get_gpu_ids()``): ``auto`` is CUDA when it got some, else the CPU; Ray shows an
    actor only its own GPUs, as device 0, so ``cuda:N`` is ``cuda`` there."""
    if device == "auto":
        return "cuda" if gpu_ids else "cpu"
    return "cuda" if device.startswith("cuda") else device


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


@contextlib.contextmanager
def connection(address: str | None, *parts: str) -> Iterator[object]:
    """Ray for one run (``parts`` as :func:`import_ray`'s): the Ray this process already
    started (kept running), else ``ray.init(address)`` (None: ``$RAY_ADDRESS`` or a cluster
    started on this machine with ``ray start``, else a new local Ray), disconnected at the
    end (a local Ray started here stops with it; a cluster keeps running)."""
    ray = import_ray(*parts)
    if ray.is_initialized():
        yield ray
        return
    check_reachable(address)
    try:
        ray.init(address=address, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "Ray"
        raise OmamaError(f"cannot start or reach {where}: {first_line(exc)}") from exc
    try:
        yield ray
    finally:
        ray.shutdown()


def actor_resources(
    cluster: dict,
    actors: int,
    cpus: float | None,
    gpus: float | None,
    device: str,
    extra_cpus: float = 0.0,
    extra_what: str = "",
) -> tuple[float, float]:
    """``(cpus, gpus)`` per actor, declared to Ray; refuses what ``cluster`` cannot hold
    (besides ``extra_cpus`` for other tasks, said as ``extra_what``).

    Defaults: a GPU per actor when ``device`` is CUDA (or auto on a cluster with GPUs); an
    equal share of all CPUs but one, at least 0.25, and at most 1 when the models run on
    GPUs (on CPUs the share is their threads: :func:`threads_for`).
    """
    if gpus is None:
        gpus = 1.0 if uses_gpu(device, float(cluster.get("GPU", 0))) else 0.0
    if gpus > 0 and device == "cpu":
        raise OmamaError("--gpus-per-worker asks for GPUs but --device is cpu")
    check_fits(cluster, "GPU", actors, gpus, "worker",
               "--workers or --gpus-per-worker, or use --device cpu")  # fmt: skip
    if cpus is None:
        share = math.floor(4 * (float(cluster.get("CPU", 0)) - 1) / actors) / 4
        cpus = max(0.25, min(1.0, share) if gpus > 0 else share)
    check_fits(cluster, "CPU", actors, cpus, "worker", "--workers or --cpus-per-worker",
               extra_cpus, extra_what)  # fmt: skip
    return cpus, gpus


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def failure_line(exc: BaseException) -> str:
    """One line for a failed Ray job: the OmamaError a worker raised, if any (as an object in
    the cause chain, or in the text of the traceback Ray carries), else the first line of
    Ray's error."""
    seen, cause = set(), exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OmamaError):
            return f"a Ray worker failed: {first_line(cause)}"
        for line in str(cause).splitlines():
            if f"{OmamaError.__name__}: " in line:
                return f"a Ray worker failed: {line.split(f'{OmamaError.__name__}: ', 1)[1]}"
        cause = getattr(cause, "cause", None) or cause.__cause__ or cause.__context__
    return f"the Ray job failed: {type(exc).__name__}: {first_line(exc)}"
