"""REST API latency and throughput, with the bare bus round trip of the same verbs beside it.

The whole fabric (`qnf up`) runs in a throwaway node namespace; this process enters that
namespace (pyroute2 `pushns`) and measures, for network create / get / list:

- REST: HTTPS + bearer token through the gateway (one keep-alive client per worker), sequential
  p50/p99 and throughput with `--concurrency` workers;
- bus: the same request signed and sent as the gateway identity straight to vnet.

The ratio REST/bus is the gateway's own cost (TLS, HTTP, authentication, validation, JSON).

    python -m bench.api [--n 200] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import ssl
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
from libs.common.testing import fabric_on_new_node

BASE = "https://127.0.0.1:8480"
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    state = Path(tempfile.mkdtemp(prefix="qnf-bench-api-")) / "state"
    with fabric_on_new_node(state, env=ENV) as fabric:
        pushns(fabric.ns)
        try:
            rest = _rest(state, args.n, args.concurrency)
            bus = asyncio.run(_bus(state, args.n, args.concurrency))
        finally:
            popns()
    print(f"REST vs bus, n={args.n}, {args.concurrency} concurrent workers for throughput")
    head = f"{'verb':<10} {'REST p50':>9} {'p99':>8} {'req/s':>8}"
    print(f"{head} | {'bus p50':>8} {'p99':>8} {'req/s':>8} | ratio p50")
    for verb in rest:
        r, b = rest[verb], bus[verb]
        ratio = f"{r[0] / b[0]:.1f}x" if b[0] else f"{b[2] / r[2]:.1f}x slower"
        left = f"{verb:<10} {r[0]:>7.2f}ms {r[1]:>6.2f}ms {r[2]:>8.0f}"
        print(f"{left} | {b[0]:>6.2f}ms {b[1]:>6.2f}ms {b[2]:>8.0f} | {ratio}")


if __name__ == "__main__":
    main()
