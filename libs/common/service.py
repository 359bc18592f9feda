"""The service base: what every qnf service process does around its actor.

    main(service, build_actor)
      ├── settings, logging, identity files        one clear error line and exit 2 when unusable
      ├── metrics/health HTTP endpoint             /metrics /healthz /readyz
      ├── Bus.connect (mutual TLS, signing)        exit 3 when the bus is unreachable
      ├── serve(actor.endpoints + diag.echo)       nats micro: $SRV.PING|INFO|STATS for free
      ├── actor.start()                            the actor's own background tasks
      ├── certificate reload loop                  picks up renewed certificates from disk
      └── wait for SIGTERM/SIGINT → stop serving, finish in-flight work, actor.stop(), drain

An actor is any object with `endpoints()`, `start()` and `stop()`; the entry point of a service
only builds its actor from real adapters and calls `main`.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Protocol

from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from libs.common.authz import may_publish
from libs.common.bus import Bus, Endpoint, Served, reload_tls, serve, tls_context, trust_anchors
from libs.common.config import Settings, load_settings
from libs.common.envelope import Signer, Verifier
from libs.common.errors import Unavailable
from libs.common.ids import SERVICES, SpiffeId
from libs.common.logs import setup_logging
from libs.common.messages import Echo, ServiceStarted
from libs.common.metrics import BusMetrics, MetricsServer
from libs.common.pki import PkiDirectory

log = logging.getLogger("qnf.service")

CERT_RELOAD_INTERVAL_S = 30.0


def package_version() -> str:
    try:
        return version("qnf")
    except PackageNotFoundError:
        return "0.0.0"


class Actor(Protocol):
    """What a service hands to the base: its handler table and its lifecycle."""

    def endpoints(self) -> list[Endpoint[Any, Any]]: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


@dataclass
class Context:
    """What an actor factory receives: the connected bus, settings and the metrics registry."""

    bus: Bus
    settings: Settings
    registry: CollectorRegistry
    instance: str  # this process's id, announced in the micro-service metadata


ActorFactory = Callable[[Context], Awaitable[Actor]]


def default_identity(service: str, settings: Settings) -> SpiffeId:
    """Node agents are node-scoped identities; the gateway is a cluster-wide one."""
    if service == "gateway":
        return SpiffeId.service(settings.trust_domain, service)
    return SpiffeId.node_agent(settings.trust_domain, settings.node, service)


def echo_endpoint() -> Endpoint[Echo, Echo]:
    """`diag.echo`: a signed round trip through the whole verify/dispatch/sign path."""

    async def echo(req: Echo) -> Echo:
        return req

    return Endpoint("diag.echo", Echo, Echo, echo, key=lambda r: "echo")


class _Fatal(Exception):
    """A start-up failure reported as one line and an exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _fail_line(service: str, message: str) -> None:
    print(f"qnf-{service}: error: {message}", file=sys.stderr)


async def run_service(service: str, build: ActorFactory, settings: Settings, stop: asyncio.Event) -> None:
    """Run one service until `stop` is set; raise _Fatal for unusable configuration."""
    identity = default_identity(service, settings)
    pki = PkiDirectory(settings.pki_dir)
    try:
        material = pki.load_identity(identity)
        tls = tls_context(pki, identity)
        anchors = trust_anchors(pki, settings.trust_domain)
    except (ValueError, OSError) as exc:
        raise _Fatal(f"cannot load identity {identity}: {exc}", 2) from exc

    registry = CollectorRegistry()
    metrics = BusMetrics(registry)
    signer = Signer(material, settings.signature_suite, clock=time.time)
    verifier = Verifier(
        anchors,
        settings.signature_suite,
        authorize=may_publish,
        clock=time.time,
        max_skew_ms=int(settings.max_clock_skew_s * 1000),
    )
    ready = asyncio.Event()
    http = MetricsServer(registry, ready=ready.is_set)
    port = 0 if settings.metrics_base_port == 0 else settings.metrics_base_port + SERVICES.index(service)
    try:
        port = http.start(settings.metrics_host, port)
    except OSError as exc:
        raise _Fatal(
            f"cannot listen for metrics on {settings.metrics_host}:{port}: {exc.strerror}", 2
        ) from exc

    async with AsyncExitStack() as stack:
        stack.callback(http.stop)
        try:
            bus = await Bus.connect(
                url=settings.url,
                tls=tls,
                service=service,
                node=settings.node,
                signer=signer,
                verifier=verifier,
                metrics=metrics,
                request_timeout=settings.request_timeout_s,
            )
        except Unavailable as exc:
            raise _Fatal(str(exc), 3) from exc
        stack.push_async_callback(bus.close)
        instance = uuid.uuid4().hex
        actor = await build(Context(bus, settings, registry, instance))
        served: Served = await serve(
            bus, [*actor.endpoints(), echo_endpoint()], version=package_version(), instance=instance
        )
        stack.push_async_callback(actor.stop)
        stack.push_async_callback(served.stop)  # runs first: stop taking requests, finish in-flight
        await actor.start()
        ready.set()
        reload_task = asyncio.create_task(_reload_certificates(pki, identity, signer, tls, material.kid))
        stack.callback(reload_task.cancel)
        log.info("serving", extra={"identity": identity.uri, "metrics_port": port})
        bus.emit(
            "lifecycle.started",
            ServiceStarted(
                service=service, node=settings.node, identity=identity.uri, version=package_version()
            ),
        )
        await stop.wait()
        log.info("stopping")
        ready.clear()


async def _reload_certificates(
    pki: PkiDirectory, identity: SpiffeId, signer: Signer, tls: Any, kid: str
) -> None:
    """Switch to a renewed certificate once the supervisor has written it."""
    while True:
        await asyncio.sleep(CERT_RELOAD_INTERVAL_S)
        try:
            material = pki.load_identity(identity)
        except ValueError as exc:
            log.warning("cannot reload identity: %s", exc)
            continue
        if material.kid != kid:
            signer.rotate(material)
            reload_tls(tls, pki, identity)
            kid = material.kid
            log.info("certificate renewed", extra={"kid": kid, "not_after": material.not_after.isoformat()})


def main(service: str, build: ActorFactory) -> int:
    """Entry point of a service process: run until SIGTERM/SIGINT; return the exit code."""
    try:
        settings = load_settings()
    except (ValidationError, ValueError) as exc:
        _fail_line(service, f"bad configuration: {exc}".replace("\n", " "))
        return 2
    setup_logging(settings.log_level, service=service, node=settings.node)

    async def amain() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run_service(service, build, settings, stop)

    try:
        asyncio.run(amain())
    except _Fatal as exc:
        _fail_line(service, str(exc))
        return exc.code
    return 0
