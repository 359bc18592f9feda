"""Endpoint add/remove latency through the bus, on a real kernel, sequential and 4 in parallel.

The whole fabric (`qnf up`) runs in a throwaway node namespace; an inner process in that
namespace acts as the gateway identity and sends signed `endpoint.add`/`endpoint.remove`
requests to the node's vnet agent for N container namespaces (real bridge, veth pairs,
addresses, routes, KV leases and records). Latency is per request as the caller sees it.

    python -m bench.vnet [--n 100]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from pydantic import BaseModel, ConfigDict
from pyroute2 import netns

from libs.common.bus import Bus
from libs.common.config import load_settings
from libs.common.ids import SpiffeId
from libs.common.messages import EndpointAdd, EndpointRemove, NetworkDelete, NetworkSpec

NODE_CMD = "qnf.v1.node.n1.vnet"


class _Reply(BaseModel):
    model_config = ConfigDict(extra="allow")


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def inner(state: str, n: int) -> None:
    settings = load_settings(state_dir=Path(state))
    bus = await Bus.connect_as(settings, SpiffeId.service(settings.trust_domain, "gateway"), service="bench")
    await bus.request(
        "qnf.v1.cmd.vnet.network.create", NetworkSpec(name="bench", subnet="10.200.0.0/16"), _Reply
    )
    spaces = [f"qnfb-{uuid.uuid4().hex[:8]}" for _ in range(n)]
    for name in spaces:
        netns.create(name)
    try:

        async def add(name: str) -> float:
            t = time.perf_counter()
            await bus.request(
                f"{NODE_CMD}.endpoint.add",
                EndpointAdd(
                    request_id=name,
                    container_id=name,
                    ifname="eth0",
                    netns=f"/run/netns/{name}",
                    network="bench",
                ),
                _Reply,
                timeout=30,
            )
            return time.perf_counter() - t

        async def remove(name: str) -> float:
            t = time.perf_counter()
            await bus.request(
                f"{NODE_CMD}.endpoint.remove",
                EndpointRemove(container_id=name, ifname="eth0"),
                _Reply,
                timeout=30,
            )
            return time.perf_counter() - t

        async def parallel(fn, names: list[str], width: int) -> list[float]:  # type: ignore[no-untyped-def]
            gate = asyncio.Semaphore(width)

            async def one(name: str) -> float:
                async with gate:
                    return await fn(name)  # type: ignore[no-any-return]

            return list(await asyncio.gather(*(one(x) for x in names)))

        rows = []
        seq_add = [await add(x) for x in spaces]
        seq_rm = [await remove(x) for x in spaces]
        par_add = await parallel(add, spaces, 4)
        par_rm = await parallel(remove, spaces, 4)
        for label, values in (
            ("add, sequential", seq_add),
            ("remove, sequential", seq_rm),
            ("add, 4 in parallel", par_add),
            ("remove, 4 in parallel", par_rm),
        ):
            rows.append(f"{label:24} {len(values):>5} {_pct(values, 0.5):>9.2f} {_pct(values, 0.99):>9.2f}")
        print(f"qnf vnet endpoint latency through the signed bus ({n} endpoints, real veths, one node)")
        print(f"{'operation':24} {'n':>5} {'p50 ms':>9} {'p99 ms':>9}")
        print("\n".join(rows))
        await bus.request("qnf.v1.cmd.vnet.network.delete", NetworkDelete(name="bench", force=True), _Reply)
    finally:
        for name in spaces:
            netns.remove(name)
        await bus.close()


def outer(n: int) -> int:
    from libs.common.testing import fabric_on_new_node

    with tempfile.TemporaryDirectory() as tmp, fabric_on_new_node(Path(tmp) / "state") as fabric:
        inner_cmd = [sys.executable, "-m", "bench.vnet", "--inner", str(fabric.state), "--n", str(n)]
        return subprocess.run(["nsenter", f"--net=/run/netns/{fabric.ns}", *inner_cmd]).returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--inner", metavar="STATE_DIR")
    args = parser.parse_args()
    if args.inner:
        asyncio.run(inner(args.inner, args.n))
        return 0
    return outer(args.n)


if __name__ == "__main__":
    sys.exit(main())
