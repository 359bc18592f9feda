"""The gateway actor: serves the REST API (uvicorn) and the gRPC API (grpc.aio), both in this
process, over the bus.

It answers no bus verbs of its own (the base endpoints only: diag.echo, nats micro); it is a
client of the other services. `build` (in __main__) opens the token bucket and makes the
bootstrap admin token before the service answers PING, so `qnf up` can print its file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from libs.common.bus import Endpoint
from libs.common.config import Settings
from libs.common.pki import PkiDirectory
from libs.common.service import Context, package_version
from services.gateway.api import Gateway, open_gateway
from services.gateway.grpc_server import GrpcApi, GrpcServer
from services.gateway.rest import PEER_CERT, create_app

log = logging.getLogger("qnf.gateway")

SERVER_CERT = "gateway-server"  # pki/<name>.crt|key, issued by the supervisor (fabric.node)
CERT_RELOAD_S = 30.0


class _PeerCertProtocol(H11Protocol):
    """HTTP/1.1 that puts the verified client certificate (DER) into the connection's ASGI state.

    uvicorn does not expose the TLS peer certificate to the app; the state dict is copied into
    every request's scope, so a per-connection copy carries it to the authentication code.
    """

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if der:
            self.app_state = {**self.app_state, PEER_CERT: der}


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: the service base owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def server_tls(settings: Settings) -> ssl.SSLContext:
    """TLS 1.3 with the gateway's certificate; a client certificate from the fabric CA is optional."""
    pki = PkiDirectory(settings.pki_dir)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca_cert_path))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_OPTIONAL
    ctx.load_cert_chain(pki.root / f"{SERVER_CERT}.crt", pki.root / f"{SERVER_CERT}.key")
    return ctx


class GatewayActor:
    """Runs the API server for as long as the service runs."""

    def __init__(self, ctx: Context, gateway: Gateway) -> None:
        self._ctx = ctx
        self._settings = ctx.settings
        self.gateway = gateway
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._reload: asyncio.Task[None] | None = None
        self._grpc: GrpcServer | None = None
        self.port = 0
        self.grpc_port = 0

    def endpoints(self) -> list[Endpoint[Any, Any]]:
        return []

    async def start(self) -> None:
        s = self._settings
        await self.gateway.start()
        app = create_app(
            self.gateway,
            registry=self._ctx.registry,
            ready=lambda: self._server is not None and self._server.started,
            rate_per_s=s.gateway_rate_per_s,
            rate_burst=s.gateway_rate_burst,
            max_body=s.gateway_max_body_bytes,
            version=package_version(),
        )
        tls = None if s.gateway_insecure_http else server_tls(s)
        config = uvicorn.Config(
            app,
            host=s.gateway_host,
            port=s.gateway_port,
            http=_PeerCertProtocol,
            ws="none",
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=3,
            ssl_context_factory=(lambda config, default: tls) if tls is not None else None,
        )
        self._server = _Server(config)
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises why it could not start
                raise RuntimeError(f"the API server did not start on {s.gateway_host}:{s.gateway_port}")
            await asyncio.sleep(0.02)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        if tls is not None:
            self._reload = asyncio.create_task(self._reload_certificate(tls))
        log.info("REST API listening", extra={"url": s.gateway_url.rsplit(":", 1)[0] + f":{self.port}"})
        await self._start_grpc()

    async def _start_grpc(self) -> None:
        s = self._settings
        root = PkiDirectory(s.pki_dir).root
        self._grpc = GrpcServer(
            GrpcApi(self.gateway, rate_per_s=s.gateway_rate_per_s, rate_burst=s.gateway_rate_burst),
            host=s.gateway_host,
            port=s.gateway_grpc_port,
            cert=None if s.gateway_insecure_http else root / f"{SERVER_CERT}.crt",
            key=None if s.gateway_insecure_http else root / f"{SERVER_CERT}.key",
        )
        await self._grpc.start()
        self.grpc_port = self._grpc.port
        log.info("gRPC API listening", extra={"address": f"{s.gateway_host}:{self.grpc_port}"})

    async def stop(self) -> None:
        if self._grpc is not None:
            await self._grpc.stop()
        if self._reload is not None:
            self._reload.cancel()
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await asyncio.gather(self._task, return_exceptions=True)
        await self.gateway.stop()

    async def _reload_certificate(self, tls: ssl.SSLContext) -> None:
        """New connections get the renewed certificate once the supervisor has written it."""
        root = PkiDirectory(self._settings.pki_dir).root
        cert, key = root / f"{SERVER_CERT}.crt", root / f"{SERVER_CERT}.key"
        seen = _mtime(cert)
        while True:
            await asyncio.sleep(CERT_RELOAD_S)
            now = _mtime(cert)
            if now != seen:
                try:
                    tls.load_cert_chain(cert, key)
                    seen = now
                    log.info("reloaded the API server certificate")
                except (OSError, ssl.SSLError) as exc:
                    log.warning("cannot reload the API server certificate: %s", exc)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


async def build_actor(ctx: Context) -> GatewayActor:
    s = ctx.settings
    gateway = await open_gateway(
        ctx.bus, node=s.node, trust_domain=s.trust_domain, registry=ctx.registry, timeout=s.request_timeout_s
    )
    await gateway.bootstrap_admin_token(s.gateway_admin_token_path)
    return GatewayActor(ctx, gateway)
