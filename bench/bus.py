"""Request/reply cost of the signed, mutual-TLS bus against plain nats-py on the same server.

What it measures, in one process against one nats-server it starts itself (temporary directory,
ephemeral port, the fabric's generated config: mTLS with verify_and_map, TLS first, TLS 1.3 only,
per-identity permissions, JetStream):

  plain    nats-py request/reply over the same mTLS connection setup as the bus: the gateway
           identity requests `qnf.v1.cmd.vnet.bench.plain`, a vnet-agent subscription answers
           with `msg.respond(msg.data)`. The body has the same size as the signed case's.
  signed   `Bus.request("qnf.v1.cmd.vnet.diag.echo", Echo(...), Echo)` from the gateway identity,
           answered by `serve(bus, [echo_endpoint()])` as the vnet agent: sign, verify, authorize,
           validate, dispatch through the keyed serializer, sign the reply, verify it, validate it.
  envelope `Signer.headers` and `Verifier.verify` alone, on distinct messages (so the replay cache
           accepts every one), plus the raw signature primitives of the suite for reference.

For each bus case: a warm-up, sequential latency (p50/p99 from per-request `perf_counter_ns`), and
throughput with `--concurrency` requesters sharing one request counter. A signed round trip signs
and verifies twice (request and reply) on its critical path; here both ends also share one Python
process, so throughput is bounded by the CPU work of both ends together.

Why: the fabric's target is a signed bus at <= 1.5x the p50 of plain nats-py request/reply; the
ratios are printed next to the figures. The verdict is informational: the exit code ignores it.

    python -m bench.bus [--n 2000] [--concurrency 16] [--payload 64] [--suite ed25519|hybrid|all]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import platform
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any, Final

import nats
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from prometheus_client import CollectorRegistry

from fabric.node import find_nats_server
from libs.common.authz import may_publish
from libs.common.bus import Bus, serve, tls_context, trust_anchors
from libs.common.config import Settings
from libs.common.envelope import SUITES, Signer, SuiteName, Verifier
from libs.common.ids import SpiffeId, inbox_prefix
from libs.common.messages import Echo
from libs.common.metrics import BusMetrics
from libs.common.pki import PkiDirectory
from libs.common.service import echo_endpoint
from libs.common.state import ensure_state
from libs.common.testing import NODE, TRUST_DOMAIN, FabricPki, make_fabric_pki, run_nats_server

PLAIN_SUBJECT: Final = "qnf.v1.cmd.vnet.bench.plain"
ECHO_SUBJECT: Final = "qnf.v1.cmd.vnet.diag.echo"
WARMUP: Final = 200
TARGET_P50_RATIO: Final = 1.5
REQUEST_TIMEOUT_S: Final = 5.0

RESPONDER = SpiffeId.node_agent(TRUST_DOMAIN, NODE, "vnet")
REQUESTER = SpiffeId.service(TRUST_DOMAIN, "gateway")
ADMIN = SpiffeId.user(TRUST_DOMAIN, "admin")

Call = Callable[[], Awaitable[Any]]


# --- the fabric under test ---------------------------------------------------------------------


def make_pki(root: Path) -> tuple[Settings, PkiDirectory]:
    """A fresh CA, the identities of node n1 and the server certificate, valid for one hour."""
    made = make_fabric_pki(root)
    return made.settings, made.pki


@contextmanager
def nats_server(root: Path, settings: Settings, pki: PkiDirectory) -> Iterator[str]:
    """Run nats-server with the fabric's config on an ephemeral port; yield its URL; stop it by PID."""
    with run_nats_server(FabricPki(root, pki, pki.load_ca(TRUST_DOMAIN), settings)) as server:
        yield server.url


def nats_server_version() -> str:
    out = subprocess.run([str(find_nats_server()), "--version"], capture_output=True, text=True, check=False)
    return out.stdout.strip().removeprefix("nats-server: ") or "unknown"


async def connect_plain(url: str, pki: PkiDirectory, identity: SpiffeId) -> Client:
    """A nats-py connection with the bus's connection setup (mTLS, TLS first, own inbox prefix)."""
    return await nats.connect(
        url,
        tls=tls_context(pki, identity),
        tls_handshake_first=True,
        name=f"qnf-bench-{identity.slug}",
        inbox_prefix=inbox_prefix(identity),
        allow_reconnect=False,
        connect_timeout=3,
    )


async def connect_bus(url: str, pki: PkiDirectory, identity: SpiffeId, suite: SuiteName) -> Bus:
    anchors = trust_anchors(pki, TRUST_DOMAIN)
    return await Bus.connect(
        url=url,
        tls=tls_context(pki, identity),
        service=identity.name,
        node=identity.node or NODE,
        signer=Signer(pki.load_identity(identity), suite, clock=time.time),
        verifier=Verifier(anchors, suite, authorize=may_publish, clock=time.time),
        metrics=BusMetrics(CollectorRegistry()),
        request_timeout=REQUEST_TIMEOUT_S,
        reconnect=False,
    )


# --- measurement -------------------------------------------------------------------------------


@dataclass(frozen=True)
class BusResult:
    name: str
    p50_us: float
    p99_us: float
    mean_us: float
    rps: float
    wire_bytes: int  # request body + headers as sent


@dataclass(frozen=True)
class EnvelopeResult:
    suite: str
    sign_us: float
    verify_us: float
    header_bytes: int
    raw: dict[str, tuple[float, float]]  # algorithm -> (sign µs, verify µs) of the bare primitive


def percentile(sorted_ns: list[int], q: float) -> float:
    """Nearest-rank percentile of sorted nanosecond samples, in microseconds."""
    rank = max(1, math.ceil(q * len(sorted_ns)))
    return sorted_ns[rank - 1] / 1000


async def measure(name: str, call: Call, *, n: int, concurrency: int, wire_bytes: int) -> BusResult:
    """Warm up, then sequential latency over `n` requests, then throughput of `n` requests."""
    for _ in range(WARMUP):
        await call()
    samples: list[int] = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        await call()
        samples.append(time.perf_counter_ns() - t0)
    samples.sort()

    remaining = n

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await call()

    t0 = time.perf_counter_ns()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed_s = (time.perf_counter_ns() - t0) / 1e9
    return BusResult(
        name,
        percentile(samples, 0.50),
        percentile(samples, 0.99),
        sum(samples) / len(samples) / 1000,
        n / elapsed_s,
        wire_bytes,
    )


def headers_size(headers: dict[str, str]) -> int:
    """Bytes the headers add on the wire (NATS/1.0 block: `Name: value\\r\\n` per header)."""
    return len("NATS/1.0\r\n\r\n") + sum(len(k) + len(v) + 4 for k, v in headers.items())


async def bench_plain(url: str, pki: PkiDirectory, body: bytes, *, n: int, concurrency: int) -> BusResult:
    async with AsyncExitStack() as stack:
        responder = await connect_plain(url, pki, RESPONDER)
        stack.push_async_callback(responder.close)
        requester = await connect_plain(url, pki, REQUESTER)
        stack.push_async_callback(requester.close)

        async def respond(msg: Msg) -> None:
            await msg.respond(msg.data)

        await responder.subscribe(PLAIN_SUBJECT, cb=respond)
        await responder.flush()

        async def call() -> Msg:
            return await requester.request(PLAIN_SUBJECT, body, timeout=REQUEST_TIMEOUT_S)

        if (await call()).data != body:
            raise RuntimeError("plain responder answered with a different body")
        return await measure("plain nats-py", call, n=n, concurrency=concurrency, wire_bytes=len(body))


async def bench_signed(
    url: str, pki: PkiDirectory, suite: SuiteName, payload: Echo, *, n: int, concurrency: int
) -> BusResult:
    async with AsyncExitStack() as stack:
        server = await connect_bus(url, pki, RESPONDER, suite)
        stack.push_async_callback(server.close)
        client = await connect_bus(url, pki, REQUESTER, suite)
        stack.push_async_callback(client.close)
        served = await serve(server, [echo_endpoint()], version="0.0.1")
        stack.push_async_callback(served.stop)

        async def call() -> Echo:
            return await client.request(ECHO_SUBJECT, payload, Echo)

        if await call() != payload:
            raise RuntimeError("echo endpoint answered with a different payload")
        body = payload.model_dump_json().encode()
        wire = len(body) + headers_size(client.sign(ECHO_SUBJECT, body))
        return await measure(f"signed {suite}", call, n=n, concurrency=concurrency, wire_bytes=wire)


def bench_envelope(pki: PkiDirectory, suite: SuiteName, body: bytes, n: int) -> EnvelopeResult:
    """Signer.headers and Verifier.verify per message, on `n` distinct messages (fresh nonces)."""
    material = pki.load_identity(REQUESTER)
    signer = Signer(material, suite, clock=time.time)
    verifier = Verifier(trust_anchors(pki, TRUST_DOMAIN), suite, authorize=may_publish, clock=time.time)
    for _ in range(WARMUP):  # also fills the verifier's certificate cache
        verifier.verify(ECHO_SUBJECT, signer.headers(ECHO_SUBJECT, body), body)

    t0 = time.perf_counter_ns()
    signed = [signer.headers(ECHO_SUBJECT, body) for _ in range(n)]
    sign_ns = time.perf_counter_ns() - t0
    t0 = time.perf_counter_ns()
    for headers in signed:
        verifier.verify(ECHO_SUBJECT, headers, body)
    verify_ns = time.perf_counter_ns() - t0

    raw: dict[str, tuple[float, float]] = {}
    data = b"x" * 200  # about the size of the envelope's signing input
    keys: dict[str, Any] = {"ed25519": material.ed25519_key, "mldsa65": material.mldsa_key}
    for alg in SUITES[suite]:
        key = keys[alg]
        public = key.public_key()
        t0 = time.perf_counter_ns()
        sigs = [key.sign(data) for _ in range(n)]
        t1 = time.perf_counter_ns()
        for sig in sigs:
            public.verify(sig, data)
        t2 = time.perf_counter_ns()
        raw[alg] = ((t1 - t0) / n / 1000, (t2 - t1) / n / 1000)
    return EnvelopeResult(suite, sign_ns / n / 1000, verify_ns / n / 1000, headers_size(signed[0]), raw)


# --- report ------------------------------------------------------------------------------------


def report(
    args: argparse.Namespace,
    body_bytes: int,
    plain: BusResult,
    signed: list[BusResult],
    envelopes: list[EnvelopeResult],
) -> str:
    lines = [
        f"qnf bus benchmark: nats-server {nats_server_version()}, nats-py {version('nats-py')}, "
        f"cryptography {version('cryptography')}, Python {platform.python_version()}",
        f"n={args.n} sequential (after {WARMUP} warm-up), throughput: n={args.n} over "
        f"{args.concurrency} concurrent requesters, request body {body_bytes} B",
        "wire B: request body + headers as sent",
        "",
        f"{'case':<18}{'p50 µs':>10}{'p99 µs':>10}{'mean µs':>10}{'req/s':>10}{'wire B':>9}",
    ]
    for r in (plain, *signed):
        lines.append(
            f"{r.name:<18}{r.p50_us:>10.1f}{r.p99_us:>10.1f}{r.mean_us:>10.1f}{r.rps:>10.0f}{r.wire_bytes:>9}"
        )
    lines += [
        "",
        "envelope, per message (Signer.headers / Verifier.verify on distinct messages)",
        f"{'suite':<18}{'sign µs':>10}{'verify µs':>10}{'sum µs':>10}{'hdr B':>9}"
        "   raw primitive sign/verify µs",
    ]
    for e in envelopes:
        raw = ", ".join(f"{alg} {s:.1f}/{v:.1f}" for alg, (s, v) in e.raw.items())
        lines.append(
            f"{e.suite:<18}{e.sign_us:>10.1f}{e.verify_us:>10.1f}{e.sign_us + e.verify_us:>10.1f}"
            f"{e.header_bytes:>9}   {raw}"
        )
    for e in envelopes:
        lines.append(
            f"{e.suite}: a signed round trip signs and verifies twice, "
            f"≈ {2 * (e.sign_us + e.verify_us):.0f} µs of envelope work per request"
        )
    lines += ["", "ratios against plain nats-py"]
    for r in signed:
        p50 = r.p50_us / plain.p50_us
        verdict = "PASS" if p50 <= TARGET_P50_RATIO else "FAIL"
        lines.append(
            f"{r.name:<18}p50 {p50:.2f}x   p99 {r.p99_us / plain.p99_us:.2f}x   "
            f"throughput plain/signed {plain.rps / r.rps:.2f}x   "
            f"target p50 ratio <= {TARGET_P50_RATIO}: {verdict}"
        )
    return "\n".join(lines)


# --- entry point -------------------------------------------------------------------------------


class _QuietSslEof(logging.Filter):
    """Drop asyncio's warning on every TLS close of a nats-py connection (StreamReaderProtocol's eof)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "eof_received() has no effect when using ssl" not in record.getMessage()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM unwinds like Ctrl-C, so the server is still stopped by PID


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.bus", description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2000, help="requests per measurement (default 2000)")
    p.add_argument("--concurrency", type=int, default=16, help="concurrent requesters for throughput")
    p.add_argument("--payload", type=int, default=64, help="characters of Echo.text (default 64, max 4096)")
    p.add_argument("--suite", choices=["ed25519", "hybrid", "all"], default="ed25519")
    args = p.parse_args(argv)
    if args.n < 1 or args.concurrency < 1 or not 0 <= args.payload <= 4096:
        p.error("--n and --concurrency must be >= 1 and --payload within 0..4096")
    return args


async def run(args: argparse.Namespace, url: str, pki: PkiDirectory) -> str:
    admin = await connect_plain(url, pki, ADMIN)
    try:
        await ensure_state(admin.jetstream())  # as the supervisor does before services start
    finally:
        await admin.close()

    suites: list[SuiteName] = ["ed25519", "hybrid"] if args.suite == "all" else [args.suite]
    payload = Echo(text="x" * args.payload)
    body = payload.model_dump_json().encode()
    n, concurrency = args.n, args.concurrency
    plain = await bench_plain(url, pki, body, n=n, concurrency=concurrency)
    signed = [await bench_signed(url, pki, s, payload, n=n, concurrency=concurrency) for s in suites]
    envelopes = [bench_envelope(pki, s, body, args.n) for s in suites]
    return report(args, len(body), plain, signed, envelopes)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.getLogger("asyncio").addFilter(_QuietSslEof())
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        with tempfile.TemporaryDirectory(prefix="qnf-bench-") as tmp:
            root = Path(tmp)
            settings, pki = make_pki(root)
            with nats_server(root, settings, pki) as url:  # stopped by PID on any exit from this block
                print(asyncio.run(run(args, url, pki)))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (OSError, RuntimeError, ssl.SSLError, nats.errors.Error) as exc:
        print(f"bench.bus: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
