"""Entry point of the dns service: build the actor from real adapters and run it."""

from __future__ import annotations

import sys

from libs.common.kv import TypedKV
from libs.common.messages import Endpoint, Network, Service
from libs.common.service import Context
from libs.common.service import main as run_main
from services.dns.actor import DnsActor


async def build(ctx: Context) -> DnsActor:
    js = ctx.bus.nc.jetstream(timeout=ctx.bus.request_timeout)
    networks = TypedKV(
        await js.key_value("qnf-networks"),
        "qnf-networks",
        Network,
        signer=ctx.bus.signer,
        verifier=ctx.bus.verifier,
    )
    endpoints = TypedKV(
        await js.key_value("qnf-endpoints"),
        "qnf-endpoints",
        Endpoint,
        signer=ctx.bus.signer,
        verifier=ctx.bus.verifier,
    )
    services = TypedKV(
        await js.key_value("qnf-services"),
        "qnf-services",
        Service,
        signer=ctx.bus.signer,
        verifier=ctx.bus.verifier,
    )
    return DnsActor(ctx, networks=networks, endpoints=endpoints, services=services)


def main() -> int:
    return run_main("dns", build)


if __name__ == "__main__":
    sys.exit(main())
