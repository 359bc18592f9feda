"""The bus against a real nats-server with real mutual TLS and the generated permissions.

Scope: who the server lets in, what it lets each identity publish, and how a serving actor
treats forged, malformed, replayed, expired and invalid messages (rejected, counted, reported
as a security event, answered with a stable code that leaks nothing).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import json
import ssl
import time

import nats
import nats.errors
import pytest
from cryptography import x509
from prometheus_client import CollectorRegistry

from libs.common.bus import Bus, serve, tls_context
from libs.common.envelope import HDR_SIG
from libs.common.errors import InvalidRequest, Unauthorized
from libs.common.ids import EVENTS_STREAM, inbox_prefix
from libs.common.messages import Echo
from libs.common.pki import CertificateAuthority, PkiDirectory
from libs.common.service import echo_endpoint
from libs.common.state import ensure_state
from libs.common.testing import NODE, TRUST_DOMAIN, FabricPki, NatsServer, wait_until

ECHO = "qnf.v1.cmd.vnet.diag.echo"


async def _collect_refused() -> None:
    await asyncio.sleep(0.05)
    gc.collect()


async def _raw_connect(server: NatsServer, ctx: ssl.SSLContext, inbox: str = "_INBOX") -> nats.NATS:
    errors: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        errors.append(exc)

    nc = await nats.connect(
        server.url,
        tls=ctx,
        tls_handshake_first=True,
        allow_reconnect=False,
        connect_timeout=2,
        inbox_prefix=inbox,
        error_cb=on_error,
    )
    nc._test_errors = errors  # type: ignore[attr-defined]
    return nc


# nats-py leaves the TLS transport of a refused connection for the garbage collector; collect it
# inside the refusing test, so the warning is attributed (and ignored) there and not in a later test.
_REFUSED_LEAKS = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@_REFUSED_LEAKS
async def test_client_without_certificate_is_refused(fabric_pki: FabricPki, nats_server: NatsServer) -> None:
    ctx = ssl.create_default_context(cafile=str(fabric_pki.pki.ca_cert_path))
    with pytest.raises((nats.errors.Error, OSError, ssl.SSLError)):
        await _raw_connect(nats_server, ctx)
    await _collect_refused()


@_REFUSED_LEAKS
async def test_certificate_from_another_ca_is_refused(fabric_pki: FabricPki, nats_server: NatsServer) -> None:
    other = PkiDirectory(fabric_pki.root / "other")
    now = dt.datetime.now(dt.UTC)
    ca = other.ensure_ca(TRUST_DOMAIN, now=now)
    gateway = fabric_pki.identity("service", "gateway")
    other.ensure_identity(ca, gateway, now=now, lifetime=dt.timedelta(hours=1))
    ctx = ssl.create_default_context(cafile=str(fabric_pki.pki.ca_cert_path))  # trusts the real server
    ctx.load_cert_chain(other.identity_dir(gateway) / "tls.crt", other.identity_dir(gateway) / "tls.key")
    with pytest.raises((nats.errors.Error, OSError, ssl.SSLError)):
        await _raw_connect(nats_server, ctx)
    await _collect_refused()


@_REFUSED_LEAKS
async def test_unknown_identity_from_the_fabric_ca_is_refused(
    fabric_pki: FabricPki, nats_server: NatsServer
) -> None:
    mallory = fabric_pki.identity("user", "mallory")  # a valid certificate, but no user on the server
    fabric_pki.issue(mallory)
    with pytest.raises((nats.errors.Error, OSError)):
        await _raw_connect(nats_server, tls_context(fabric_pki.pki, mallory))
    await _collect_refused()


async def test_publish_outside_permissions_is_refused_by_the_server(
    fabric_pki: FabricPki, nats_server: NatsServer
) -> None:
    cni = fabric_pki.identity("node", "cni", NODE)
    nc = await _raw_connect(nats_server, tls_context(fabric_pki.pki, cni), inbox_prefix(cni))
    try:
        await nc.publish("qnf.v1.cmd.vnet.network.delete", b"{}")  # the shim may only talk to its vnet agent
        await nc.flush()
        await wait_until(lambda: bool(nc._test_errors))  # type: ignore[attr-defined]
        assert "permissions violation" in str(nc._test_errors[0]).lower()  # type: ignore[attr-defined]
        await nc.subscribe("_INBOX_service-gateway.>")  # nor read another identity's replies
        await nc.flush()
        await wait_until(lambda: len(nc._test_errors) > 1)  # type: ignore[attr-defined]
        assert "subscription" in str(nc._test_errors[-1]).lower()  # type: ignore[attr-defined]
    finally:
        await nc.close()


@pytest.fixture
async def echo_service(fabric_pki: FabricPki, nats_server: NatsServer, connect_bus):  # type: ignore[no-untyped-def]
    """The vnet identity serving only diag.echo; returns (bus, registry). Needs the events stream."""
    admin = await _raw_connect(nats_server, tls_context(fabric_pki.pki, fabric_pki.identity("user", "admin")))
    await ensure_state(admin.jetstream())
    registry = CollectorRegistry()
    bus: Bus = await connect_bus(fabric_pki.identity("node", "vnet", NODE), registry=registry)
    served = await serve(bus, [echo_endpoint()], version="0.0.1")
    yield bus, registry, admin
    await served.stop()
    await admin.close()


def _rejected(registry: CollectorRegistry, reason: str) -> float:
    value = registry.get_sample_value("qnf_bus_rejected_total", {"service": "vnet", "reason": reason})
    return value or 0.0


async def _security_events(admin: nats.NATS) -> list[dict]:
    js = admin.jetstream()
    sub = await js.subscribe("qnf.v1.evt.vnet.security.rejected", stream=EVENTS_STREAM, ordered_consumer=True)
    out = []
    try:
        while True:
            msg = await sub.next_msg(timeout=0.5)
            out.append(json.loads(msg.data))
    except nats.errors.TimeoutError:
        pass
    finally:
        await sub.unsubscribe()
    return out


async def test_signed_echo_round_trip(echo_service, connect_bus, fabric_pki: FabricPki) -> None:  # type: ignore[no-untyped-def]
    gateway: Bus = await connect_bus(fabric_pki.identity("service", "gateway"))
    reply = await gateway.request(ECHO, Echo(text="hello"), Echo, expect=lambda who: who.name == "vnet")
    assert reply.text == "hello"


async def test_forged_message_is_rejected_counted_and_reported(echo_service, connect_bus, fabric_pki) -> None:  # type: ignore[no-untyped-def]
    _, registry, admin = echo_service
    gateway: Bus = await connect_bus(fabric_pki.identity("service", "gateway"))
    body = Echo(text="transfer everything").model_dump_json().encode()
    headers = gateway.sign(ECHO, Echo(text="hello").model_dump_json().encode())  # signature of another body
    msg = await gateway.nc.request(ECHO, body, headers=headers, timeout=2)
    assert msg.headers["Nats-Service-Error-Code"] == "unauthorized"
    assert json.loads(msg.data) == {
        "code": "unauthorized",
        "message": "request rejected: unauthorized",
        "retryable": False,
        "correlation_id": None,
    }
    assert _rejected(registry, "bad_signature") == 1
    events: list[dict] = []
    deadline = asyncio.get_running_loop().time() + 5
    while (
        not events and asyncio.get_running_loop().time() < deadline
    ):  # events are published in the background
        events = await _security_events(admin)
    assert [(e["reason"], e["subject"], e["claimed_sender"]) for e in events] == [
        ("bad_signature", ECHO, gateway.identity.uri)
    ]


async def test_unsigned_and_malformed_envelopes_are_rejected(echo_service, connect_bus, fabric_pki) -> None:  # type: ignore[no-untyped-def]
    _, registry, _ = echo_service
    gateway: Bus = await connect_bus(fabric_pki.identity("service", "gateway"))
    msg = await gateway.nc.request(ECHO, b'{"text":"x"}', timeout=2)
    assert msg.headers["Nats-Service-Error-Code"] == "unauthorized"
    headers = gateway.sign(ECHO, b'{"text":"x"}')
    headers[HDR_SIG] = "garbage"
    msg = await gateway.nc.request(ECHO, b'{"text":"x"}', headers=headers, timeout=2)
    assert msg.headers["Nats-Service-Error-Code"] == "unauthorized"
    assert "Traceback" not in msg.data.decode() and "Error(" not in msg.data.decode()
    assert _rejected(registry, "malformed") == 2


async def test_replayed_message_is_rejected(echo_service, connect_bus, fabric_pki) -> None:  # type: ignore[no-untyped-def]
    _, registry, _ = echo_service
    gateway: Bus = await connect_bus(fabric_pki.identity("service", "gateway"))
    body = b'{"text":"once"}'
    headers = gateway.sign(ECHO, body)
    first = await gateway.nc.request(ECHO, body, headers=headers, timeout=2)
    assert "Nats-Service-Error-Code" not in (first.headers or {})
    again = await gateway.nc.request(ECHO, body, headers=headers, timeout=2)
    assert again.headers["Nats-Service-Error-Code"] == "unauthorized"
    assert _rejected(registry, "replay") == 1


async def test_body_failing_validation_gets_invalid(echo_service, connect_bus, fabric_pki) -> None:  # type: ignore[no-untyped-def]
    _, registry, _ = echo_service
    gateway: Bus = await connect_bus(fabric_pki.identity("service", "gateway"))
    for body in (b'{"text": 5}', b'{"text":"x","extra":1}', b"not json"):
        msg = await gateway.nc.request(ECHO, body, headers=gateway.sign(ECHO, body), timeout=2)
        assert msg.headers["Nats-Service-Error-Code"] == "invalid"
        assert msg.headers["Nats-Service-Error"].startswith("invalid request:")
    assert _rejected(registry, "invalid") == 3
    with pytest.raises(InvalidRequest):
        await gateway.request(ECHO, Echo.model_construct(text="x" * 5000), Echo)


async def test_expired_certificate_on_an_open_connection_is_rejected(
    echo_service, connect_bus, fabric_pki: FabricPki
) -> None:  # type: ignore[no-untyped-def]
    _, registry, _ = echo_service
    gateway_id = fabric_pki.identity("service", "gateway")
    # Valid for the TLS handshake now, expired a moment later: nats-server keeps the connection.
    now = dt.datetime.now(dt.UTC)
    fabric_pki.issue(
        gateway_id,
        now=now - dt.timedelta(seconds=58) + dt.timedelta(minutes=1),
        lifetime=dt.timedelta(seconds=2),
    )
    cert = x509.load_pem_x509_certificate((fabric_pki.pki.identity_dir(gateway_id) / "tls.crt").read_bytes())
    gateway: Bus = await connect_bus(gateway_id)
    await asyncio.sleep(max(0.0, cert.not_valid_after_utc.timestamp() - time.time()) + 0.5)
    assert gateway.nc.is_connected
    with pytest.raises(Unauthorized):
        await gateway.request(ECHO, Echo(text="late"), Echo)
    assert _rejected(registry, "expired") == 1


async def test_certificate_not_from_fabric_ca_in_envelope_is_rejected(
    echo_service, connect_bus, fabric_pki
) -> None:  # type: ignore[no-untyped-def]
    """An allowed connection signing with keys of a foreign CA is refused by the service."""
    _, registry, _ = echo_service
    gateway: Bus = await connect_bus(fabric_pki.identity("service", "gateway"))
    foreign = CertificateAuthority.create(TRUST_DOMAIN, now=dt.datetime.now(dt.UTC))
    gateway.signer.rotate(
        foreign.issue(gateway.identity, now=dt.datetime.now(dt.UTC), lifetime=dt.timedelta(hours=1))
    )
    with pytest.raises(Unauthorized):
        await gateway.request(ECHO, Echo(text="x"), Echo)
    assert _rejected(registry, "untrusted") == 1
