"""Entry point of the dns service: build the actor from real adapters and run it."""

from __future__ import annotations

import sys

from libs.common.messages import Endpoint, Network, Policy, Service
from libs.common.service import Context
from libs.common.service import main as run_main
from services.dns.actor import DnsActor


async def build(ctx: Context) -> DnsActor:
    return DnsActor(
        ctx,
        networks=await ctx.bus.kv("qnf-networks", Network),
        endpoints=await ctx.bus.kv("qnf-endpoints", Endpoint),
        services=await ctx.bus.kv("qnf-services", Service),
        policies=await ctx.bus.kv("qnf-policies", Policy),
    )


def main() -> int:
    return run_main("dns", build)


if __name__ == "__main__":
    sys.exit(main())
