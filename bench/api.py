"""REST and gRPC API latency and throughput, with the bare bus round trip of the same verbs beside it.

The whole fabric (`qnf up`) runs in a throwaway node namespace; this process enters that
namespace (pyroute2 `pushns`) and measures, for network create / get / list:

- REST: HTTPS + bearer token through the gateway (one keep-alive client per worker), sequential
  p50/p99 and throughput with `--concurrency` workers;
- gRPC: TLS + bearer token in metadata, the same verbs (one channel per worker). grpcio opens
  its sockets on threads of its own that do not follow `pushns`, so this part runs in a child
  process started inside the node namespace (`nsenter`), which prints its figures as JSON;
- bus: the same request signed and sent as the gateway identity straight to vnet.

The ratios REST/bus and gRPC/bus are each transport's own cost in the gateway (TLS, HTTP or
HTTP/2, authentication, validation, JSON or protobuf mapping).

    python -m bench.api [--n 200] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import ssl
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from pydantic import BaseModel
from pyroute2.netns import popns, pushns

from libs.common.bus import Bus
from libs.common.config import load_settings
from libs.common.ids import SpiffeId
from libs.common.messages import Empty, Network, NetworkDelete, NetworkList, NetworkRef, NetworkSpec, Removed
from libs.common.testing import FabricNode, fabric_on_new_node

BASE = "https://127.0.0.1:8480"
GRPC = "127.0.0.1:8481"
ENV = {"QNF_GATEWAY_RATE_PER_S": "100000", "QNF_GATEWAY_RATE_BURST": "100000"}


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def _timed(fn: Callable[[], object], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def _rest(state: Path, n: int, concurrency: int) -> dict[str, tuple[float, float, float]]:
    ctx = ssl.create_default_context(cafile=str(state / "pki" / "ca.crt"))
    token = (state / "gateway" / "admin.token").read_text().strip()

    def client() -> httpx.Client:
        return httpx.Client(
            base_url=BASE, verify=ctx, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )

    results: dict[str, tuple[float, float, float]] = {}
    with client() as c:
        counter = iter(range(10**6))

        def create() -> None:
            i = next(counter)
            r = c.post("/v1/networks", json={"name": f"r{i}", "subnet": f"10.{i // 250}.{i % 250}.0/24"})
            assert r.status_code == 201, r.text

        lat = _timed(create, n)
        results["create"] = (_pct(lat, 0.5), _pct(lat, 0.99), n / sum(lat))
        lat = _timed(lambda: c.get("/v1/networks/r0").raise_for_status(), n)
        results["get"] = (_pct(lat, 0.5), _pct(lat, 0.99), n / sum(lat))
        lat = _timed(lambda: c.get("/v1/networks", params={"limit": 50}).raise_for_status(), n)
        results["list"] = (_pct(lat, 0.5), _pct(lat, 0.99), n / sum(lat))

    def worker(k: int) -> int:
        with client() as wc:
            for _ in range(k):
                wc.get("/v1/networks/r0").raise_for_status()
        return k

    per = max(1, n // concurrency)
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        done = sum(pool.map(worker, [per] * concurrency))
    results[f"get x{concurrency}"] = (0.0, 0.0, done / (time.perf_counter() - started))
    with client() as c:
        for i in range(n):
            c.delete(f"/v1/networks/r{i}")
    return results


async def _bus(state: Path, n: int, concurrency: int) -> dict[str, tuple[float, float, float]]:
    settings = load_settings(state_dir=state)
    bus = await Bus.connect_as(settings, SpiffeId.service(settings.trust_domain, "gateway"), service="bench")
    results: dict[str, tuple[float, float, float]] = {}

    async def timed(make: Callable[[int], tuple[str, BaseModel, type[BaseModel]]]) -> list[float]:
        out = []
        for i in range(n):
            subject, req, rep = make(i)
            t = time.perf_counter()
            await bus.request(subject, req, rep)
            out.append(time.perf_counter() - t)
        return out

    try:
        cmd = "qnf.v1.cmd.vnet.network"
        for verb, make in (
            (
                "create",
                lambda i: (
                    f"{cmd}.create",
                    NetworkSpec(name=f"b{i}", subnet=f"10.{100 + i // 250}.{i % 250}.0/24"),
                    Network,
                ),
            ),
            ("get", lambda i: (f"{cmd}.get", NetworkRef(name="b0"), Network)),
            ("list", lambda i: (f"{cmd}.list", Empty(), NetworkList)),
        ):
            lat = await timed(make)
            results[verb] = (_pct(lat, 0.5), _pct(lat, 0.99), n / sum(lat))
        per = max(1, n // concurrency)
        started = time.perf_counter()
        await asyncio.gather(
            *(bus.request(f"{cmd}.get", NetworkRef(name="b0"), Network) for _ in range(per * concurrency))
        )
        results[f"get x{concurrency}"] = (0.0, 0.0, per * concurrency / (time.perf_counter() - started))
        for i in range(n):
            await bus.request(f"{cmd}.delete", NetworkDelete(name=f"b{i}"), Removed)
    finally:
        await bus.close()
    return results


def _grpc(state: Path, n: int, concurrency: int) -> dict[str, tuple[float, float, float]]:
    """The gRPC figures; runs in the child process inside the node namespace."""
    import grpc

    from services.gateway.proto.qnf.v1 import fabric_pb2 as pb
    from services.gateway.proto.qnf.v1 import fabric_pb2_grpc as pb_grpc

    creds = grpc.ssl_channel_credentials((state / "pki" / "ca.crt").read_bytes())
    token = (state / "gateway" / "admin.token").read_text().strip()
    metadata = (("authorization", f"Bearer {token}"),)

    def channel() -> grpc.Channel:
        ch = grpc.secure_channel(GRPC, creds)
        grpc.channel_ready_future(ch).result(timeout=30)
        return ch

    results: dict[str, tuple[float, float, float]] = {}
    with channel() as ch:
        stub = pb_grpc.FabricStub(ch)  # type: ignore[no-untyped-call]
        counter = iter(range(10**6))

        def create() -> None:
            i = next(counter)
            spec = pb.NetworkSpec(name=f"g{i}", subnet=f"10.{60 + i // 250}.{i % 250}.0/24")
            stub.CreateNetwork(spec, metadata=metadata, timeout=30)

        lat = _timed(create, n)
        results["create"] = (_pct(lat, 0.5), _pct(lat, 0.99), n / sum(lat))
        get = pb.GetNetworkRequest(name="g0")
        lat = _timed(lambda: stub.GetNetwork(get, metadata=metadata, timeout=30), n)
        results["get"] = (_pct(lat, 0.5), _pct(lat, 0.99), n / sum(lat))
        page = pb.ListNetworksRequest(page_size=50)
        lat = _timed(lambda: stub.ListNetworks(page, metadata=metadata, timeout=30), n)
        results["list"] = (_pct(lat, 0.5), _pct(lat, 0.99), n / sum(lat))

    def worker(k: int) -> int:
        with channel() as wc:
            ws = pb_grpc.FabricStub(wc)  # type: ignore[no-untyped-call]
            for _ in range(k):
                ws.GetNetwork(get, metadata=metadata, timeout=30)
        return k

    per = max(1, n // concurrency)
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        done = sum(pool.map(worker, [per] * concurrency))
    results[f"get x{concurrency}"] = (0.0, 0.0, done / (time.perf_counter() - started))
    with channel() as ch:
        stub = pb_grpc.FabricStub(ch)  # type: ignore[no-untyped-call]
        for i in range(n):
            stub.DeleteNetwork(pb.DeleteNetworkRequest(name=f"g{i}"), metadata=metadata, timeout=30)
    return results


def _grpc_in(
    fabric: FabricNode, state: Path, n: int, concurrency: int
) -> dict[str, tuple[float, float, float]]:
    argv = [sys.executable, "-m", "bench.api", "--grpc-child", str(state), "--n", str(n)]
    out = fabric.exec(*argv, "--concurrency", str(concurrency), timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"gRPC measurement failed: {out.stderr[-2000:]}")
    return {verb: (a, b, c) for verb, (a, b, c) in json.loads(out.stdout.splitlines()[-1]).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--grpc-child", type=Path, help=argparse.SUPPRESS)  # state dir; in the node
    args = parser.parse_args()
    if args.grpc_child is not None:
        print(json.dumps(_grpc(args.grpc_child, args.n, args.concurrency)))
        return
    state = Path(tempfile.mkdtemp(prefix="qnf-bench-api-")) / "state"
    with fabric_on_new_node(state, env=ENV) as fabric:
        pushns(fabric.ns)
        try:
            rest = _rest(state, args.n, args.concurrency)
            bus = asyncio.run(_bus(state, args.n, args.concurrency))
        finally:
            popns()
        grpc_ = _grpc_in(fabric, state, args.n, args.concurrency)
    print(f"REST and gRPC vs the bus, n={args.n}, {args.concurrency} concurrent workers for throughput")
    print(
        f"{'verb':<10} {'REST p50':>9} {'p99':>8} {'req/s':>7} | {'gRPC p50':>9} {'p99':>8} {'req/s':>7}"
        f" | {'bus p50':>8} {'p99':>8} {'req/s':>7} | REST/bus gRPC/bus REST/gRPC"
    )
    for verb in rest:
        r, g, b = rest[verb], grpc_[verb], bus[verb]
        if b[0]:  # latency rows: ratios of p50
            ratios = f"{r[0] / b[0]:>7.1f}x {g[0] / b[0]:>7.1f}x {r[0] / g[0]:>8.2f}x"
        else:  # throughput rows: how many times fewer requests a second than the bus
            ratios = f"{b[2] / r[2]:>6.1f}x< {b[2] / g[2]:>6.1f}x< {g[2] / r[2]:>7.2f}x<"
        print(
            f"{verb:<10} {r[0]:>7.2f}ms {r[1]:>6.2f}ms {r[2]:>7.0f}"
            f" | {g[0]:>7.2f}ms {g[1]:>6.2f}ms {g[2]:>7.0f}"
            f" | {b[0]:>6.2f}ms {b[1]:>6.2f}ms {b[2]:>7.0f} | {ratios}"
        )
    print("latency rows: p50 ratios (times slower); 'x<' rows: throughput ratios (times fewer req/s)")


if __name__ == "__main__":
    main()
