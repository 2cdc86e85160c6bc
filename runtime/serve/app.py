"""The Ray Serve application of ``omama serve``: the deployment, starting it and stopping it.

One deployment, ``omama``, in a Serve application named by ``--name`` (:func:`route_prefix`:
the default name ``omama`` serves at ``/``, another name at ``/NAME``, so that services of
several artifacts folders share a cluster): each replica is a Ray actor holding one
:class:`runtime.serve.service.MatchService` (the artifacts opened once) and declaring its
resources (``num_cpus``, and ``num_gpus`` when it runs on CUDA), so Ray places replicas
next to other workloads without oversubscribing a node. ``POST /v1/match`` requests go
through an ``@serve.batch`` method: requests arriving within ``batch_wait_ms`` of each
other (up to ``max_batch``) form a batch, and the batches that wait while the models run are
merged (:class:`runtime.serve.batching.BatchMerger`) into one
:func:`runtime.serve.batching.run_batch` call, in a thread so that ``/healthz`` and
``/v1/info`` answer meanwhile.

Ray Serve restarts a replica whose actor dies or whose ``check_health`` fails or hangs
(every ``HEALTH_CHECK_PERIOD_S``, 30 s timeout); a replica whose constructor fails is
retried 3 times (a folder that does not open on a node will not open on the fourth try
either).

Ray is imported inside the functions: importing this module needs no Ray.
"""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from runtime import raykit
from runtime.errors import OmamaError
from runtime.serve.batching import BatchMerger
from runtime.serve.protocol import HEALTH_PATH, INFO_PATH, MATCH_PATH, RequestError, error_body
from runtime.serve.service import MatchService, ServeConfig

log = logging.getLogger(__name__)

APP_NAME = "omama"  # the default --name; its routes stay at the root (/v1/match)
DEPLOYMENT_NAME = "omama"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")
CONSTRUCTOR_RETRIES = 3
# Batches @serve.batch may hand over at once: they wait in the merger, not in Ray's queue.
CONCURRENT_BATCHES = 4
# Serve notices a dead replica only when its next health check fails: at Serve's default of
# 10 s a one-replica service answered nothing for up to 10 s after a crash (2 to 11 s
# measured); the check itself reads two attributes.
HEALTH_CHECK_PERIOD_S = 2.0
HEALTH_CHECK_TIMEOUT_S = 30.0


def check_name(name: str) -> None:
    """One line when ``name`` cannot name an application: it becomes a route prefix, so
    letters, digits, ``-`` and ``_`` only, and not the first part of the default
    application's routes (Serve's proxy matches the longest prefix: ``/v1`` would take
    ``/v1/match`` away from the application at ``/``)."""
    if not NAME_PATTERN.fullmatch(name):
        raise OmamaError(f"--name {name!r}: a name is 1 to 63 letters, digits, '-' or '_', "
                         "starting with a letter or digit")  # fmt: skip
    first_parts = {path.split("/")[1] for path in (HEALTH_PATH, INFO_PATH, MATCH_PATH)}
    if name in first_parts:
        raise OmamaError(f"--name {name!r}: its route prefix /{name} would take the routes of "
                         f"the default application {APP_NAME}: choose another name")  # fmt: skip


def route_prefix(name: str) -> str:
    """The route prefix of application ``name``: ``/`` for the default name (``POST
    /v1/match``), ``/NAME`` for any other (``POST /NAME/v1/match``)."""
    check_name(name)
    return "/" if name == APP_NAME else f"/{name}"


def ray_serve() -> tuple:
    """``(ray, ray.serve, starlette's JSONResponse)``: the only place this package imports
    them, so the lean runtime (and its image) need none; one line without the ray extra."""
    ray = raykit.import_ray("serve")
    try:
        from starlette.responses import JSONResponse
    except ImportError as exc:  # Ray Serve brings it; a broken install may not
        raise OmamaError(raykit.NEEDS_RAY) from exc
    return ray, ray.serve, JSONResponse


def require_ray() -> None:
    """One line when the ``ray`` extra (Ray Serve) is not installed."""
    ray_serve()


@dataclass(frozen=True)
class Resources:
    """How many replicas and what each declares to Ray (``gpus_per_replica`` only counts
    when the replicas run on CUDA: 0.5 puts two replicas on each GPU)."""

    replicas: int = 1
    cpus_per_replica: float = 1.0
    gpus_per_replica: float = 1.0


def deployment_options(config: ServeConfig, resources: Resources, cluster_gpus: float) -> dict:
    """The deployment's Ray Serve options: replicas, their resources, how many requests
    each may hold (``CONCURRENT_BATCHES`` batches: one running, the others merging), how
    often Serve checks that each is alive and answering."""
    actor: dict[str, float] = {"num_cpus": resources.cpus_per_replica}
    if raykit.uses_gpu(config.device, cluster_gpus):
        actor["num_gpus"] = resources.gpus_per_replica
    return {
        "num_replicas": resources.replicas,
        "ray_actor_options": actor,
        "max_ongoing_requests": CONCURRENT_BATCHES * config.max_batch,
        "max_constructor_retry_count": CONSTRUCTOR_RETRIES,
        "health_check_period_s": HEALTH_CHECK_PERIOD_S,
        "health_check_timeout_s": HEALTH_CHECK_TIMEOUT_S,
    }


def check_cluster(config: ServeConfig, resources: Resources, cluster: dict) -> None:
    """One line when the cluster (``ray.cluster_resources()``) cannot hold every replica:
    Serve would wait for them forever."""
    raykit.check_fits(cluster, "CPU", resources.replicas, resources.cpus_per_replica,
                      "replica", "--replicas or --cpus-per-replica")  # fmt: skip
    if raykit.uses_gpu(config.device, float(cluster.get("GPU", 0.0))):
        raykit.check_fits(cluster, "GPU", resources.replicas, resources.gpus_per_replica,
                          "replica", "--replicas or --gpus-per-replica")  # fmt: skip


# ----------------------------------------------------------------------------- HTTP


async def read_body(request, max_bytes: int) -> bytes:
    """The request body, or 413 when it exceeds ``max_bytes``.

    Nothing past the limit is kept, and at most twice the limit is read: a body declared
    (``Content-Length``) larger than that is refused before reading any of it, and one that
    turns out larger (chunked, or an understating header) once that much was read; the
    connection then closes after the answer. Between the two, the rest is read and dropped:
    clients without ``Expect: 100-continue`` (urllib, requests) send all of it before
    reading the answer, and a connection closed under them reads as "connection reset"."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > 2 * max_bytes:
        raise _too_large(int(declared), max_bytes)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > 2 * max_bytes:
            raise _too_large(size, max_bytes, more=True)
        if size <= max_bytes:
            chunks.append(chunk)
    if size > max_bytes:
        raise _too_large(size, max_bytes)
    return b"".join(chunks)


def _too_large(size: int, max_bytes: int, more: bool = False) -> RequestError:
    return RequestError(413, f"the body is {'over ' * more}{size / 2**20:.1f} MB; the limit "
                        f"is {max_bytes / 2**20:g} MB (--max-body-mb)")  # fmt: skip


def route_of(scope: dict) -> tuple[str, str]:
    """``(route prefix, path under it)`` of an ASGI request: Serve's proxy keeps the whole
    path and puts the application's route prefix in ``root_path`` (``""`` at ``/``)."""
    root, path = scope.get("root_path", "").rstrip("/"), scope["path"]
    if root and (path == root or path.startswith(root + "/")):
        path = path[len(root) :]
    return root, path.rstrip("/") or "/"


async def respond(service: MatchService, match_batch: Callable, request) -> tuple[int, dict]:
    """(status, JSON) of one HTTP request; ``match_batch`` is the batched match call."""
    (root, path), method = route_of(request.scope), request.method
    routes = {HEALTH_PATH: "GET", INFO_PATH: "GET", MATCH_PATH: "POST"}
    if path not in routes:
        return 404, error_body(f"no route {root}{path}: use POST {root}{MATCH_PATH}, GET "
                               f"{root}{INFO_PATH} or GET {root}{HEALTH_PATH}")  # fmt: skip
    if method != routes[path]:
        return 405, error_body(f"{root}{path} takes {routes[path]}, not {method}")
    if path == HEALTH_PATH:
        problem = service.health_problem()
        return (503, error_body(problem)) if problem else (200, {"status": "ok"})
    if path == INFO_PATH:
        return 200, service.info()
    try:
        body = await read_body(request, service.config.max_body_bytes)
        content_type = request.headers.get("content-type", "")
        parsed = await asyncio.to_thread(service.prepare, body, content_type)
        result = await match_batch(parsed)
    except RequestError as exc:
        return exc.status, exc.body()
    if isinstance(result, RequestError):
        return result.status, result.body()
    return 200, result


def build_app(config: ServeConfig, options: dict):
    """The bound Ray Serve application (``serve.run`` target)."""
    _, serve, JSONResponse = ray_serve()

    @serve.deployment(name=DEPLOYMENT_NAME)
    class OmamaDeployment:
        def __init__(self, config: ServeConfig) -> None:
            self.service = MatchService(config)
            self.merger = BatchMerger(self.service.run_batch, config.max_batch)
            self.match_batch.set_max_batch_size(config.max_batch)
            self.match_batch.set_batch_wait_timeout_s(config.batch_wait_ms / 1e3)

        @serve.batch(max_batch_size=1, max_concurrent_batches=CONCURRENT_BATCHES)
        async def match_batch(self, requests: list) -> list:
            return await self.merger.submit(requests)

        def check_health(self) -> None:
            self.service.check_health()

        async def __call__(self, request):
            try:
                status, body = await respond(self.service, self.match_batch, request)
            except Exception as exc:  # one JSON line for the client; the traceback in the log
                log.exception("omama serve: request failed")
                status, body = 500, error_body(f"internal error: {type(exc).__name__}: {exc}")
            return JSONResponse(body, status_code=status)

        def __del__(self) -> None:
            service = getattr(self, "service", None)
            if service is not None:
                service.close()

    return OmamaDeployment.options(**options).bind(config)


# ----------------------------------------------------------------------------- lifecycle


@dataclass
class RunningService:
    """A started application: its name, URL (with its route prefix) and whether this
    process started Ray (then stopping it shuts Serve and Ray down; on a shared cluster it
    deletes only the application, and only once this process deployed it: a start refused
    because the name runs already leaves that one alone)."""

    name: str
    url: str
    started_ray: bool
    options: dict
    deployed: bool = False

    def stop(self) -> None:
        ray, serve, _ = ray_serve()
        try:
            if self.started_ray:
                serve.shutdown()
            elif self.deployed:
                serve.delete(self.name)
        finally:
            if ray.is_initialized():
                ray.shutdown()


def check_port_free(host: str, port: int) -> None:
    """One line when something listens on ``host:port`` already (Serve's proxy would fail
    to start and Serve would wait for it). Connections of a stopped server, lingering in
    TIME_WAIT, do not count: the probe reuses the address as uvicorn does."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise OmamaError(
                f"cannot listen on {host}:{port} ({exc.strerror}): choose another --port or --host"
            ) from exc


def check_name_free(serve, name: str) -> None:
    """One line when an application named ``name`` runs on the cluster already: deploying
    again would replace it, and with it another artifacts folder's service."""
    if name in serve.status().applications:
        raise OmamaError(
            f"a Serve application named {name} runs on this Ray cluster already: give this "
            "service another --name, or stop that one first (Ctrl-C where it runs)"
        )


def start_service(
    config: ServeConfig,
    resources: Resources,
    host: str = "127.0.0.1",
    port: int = 8000,
    ray_address: str | None = None,
    after_ray_init: Callable[[], None] | None = None,
    name: str = APP_NAME,
) -> RunningService:
    """Start (or join, with ``ray_address``) Ray, Serve on ``host:port`` and the
    application ``name`` (at :func:`route_prefix`); returns once every replica has opened
    the artifacts. A name that runs on the cluster already is refused, not replaced.

    ``after_ray_init`` runs right after ``ray.init`` (which installs its own SIGTERM handler:
    :func:`serve_until_signal` puts its own back there). An interrupt while starting stops
    what was started and propagates."""
    prefix = route_prefix(name)
    ray, serve, _ = ray_serve()
    if ray_address is None:
        check_port_free(host, port)
    raykit.check_reachable(ray_address)
    url = f"http://{host}:{port}{prefix.rstrip('/')}"
    running = RunningService(name, url, ray_address is None, {})
    try:
        ray.init(address=ray_address or "local")
        if after_ray_init is not None:
            after_ray_init()
        check_name_free(serve, name)
        cluster = ray.cluster_resources()
        check_cluster(config, resources, cluster)
        running.options = deployment_options(config, resources, float(cluster.get("GPU", 0.0)))
        serve.start(http_options={"host": host, "port": port})
        running.deployed = True  # from here on a stop deletes what this process deployed
        serve.run(build_app(config, running.options), name=name, route_prefix=prefix)
    except BaseException as exc:
        running.stop()
        if isinstance(exc, Exception) and not isinstance(exc, OmamaError):
            first = next((ln for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
            raise OmamaError(f"omama serve did not start: {first.strip()}") from exc
        raise
    return running


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def serve_until_signal(
    config: ServeConfig,
    resources: Resources,
    host: str,
    port: int,
    ray_address: str | None = None,
    echo: Callable[[str], None] = print,
    name: str = APP_NAME,
) -> RunningService:
    """Start the service, call ``echo`` with where it listens, block until SIGINT (Ctrl-C) or
    SIGTERM, then stop it cleanly (Serve's replicas drain and close their models).

    Both signals mean "stop" from the first instant: while starting they interrupt the
    start (a replica Ray cannot place would otherwise wait forever), once serving they end
    the wait. Ray's own SIGTERM handler aborts the process with a stack dump; it is
    replaced right after ``ray.init``."""
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.getsignal(sig) for sig in signals}

    def arm() -> None:
        for sig in signals:
            signal.signal(sig, _interrupt)

    arm()
    try:
        try:
            running = start_service(config, resources, host, port, ray_address, arm, name)
        except KeyboardInterrupt:
            echo("interrupted while starting: stopped")
            raise
        echo(started_line(running, config, resources))
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            echo("stopping omama serve")
        running.stop()
        echo("stopped")
        return running
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def started_line(running: RunningService, config: ServeConfig, resources: Resources) -> str:
    actor = running.options["ray_actor_options"]
    each = ", ".join(f"{k} {v:g}" for k, v in actor.items())
    root = route_prefix(running.name).rstrip("/")
    return (
        f"omama serve {running.name}: {running.url} ({resources.replicas} replica"
        f"{'s' * (resources.replicas > 1)}, {each} each; max batch {config.max_batch}, wait "
        f"{config.batch_wait_ms:g} ms): POST {root}{MATCH_PATH}, GET {root}{INFO_PATH}, GET "
        f"{root}{HEALTH_PATH}; Ctrl-C to stop"
    )
