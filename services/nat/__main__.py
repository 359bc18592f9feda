"""Entry point of the nat service: build the actor from real adapters and run it."""

from __future__ import annotations

import sys

from libs.common.messages import Endpoint, Network, PublishedPort
from libs.common.nftables import LibNftables
from libs.common.service import Context
from libs.common.service import main as run_main
from services.nat.actor import NatActor
from services.nat.adapters.addresses import node_addresses


async def build(ctx: Context) -> NatActor:
    return NatActor(
        ctx,
        ports=await ctx.bus.kv("qnf-ports", PublishedPort),
        networks=await ctx.bus.kv("qnf-networks", Network),
        endpoints=await ctx.bus.kv("qnf-endpoints", Endpoint),
        nft=LibNftables(),
        node_addresses=node_addresses,
    )


def main() -> int:
    return run_main("nat", build)


if __name__ == "__main__":
    sys.exit(main())
