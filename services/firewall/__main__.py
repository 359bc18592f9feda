"""Entry point of the firewall service: build the actor from real adapters and run it."""

from __future__ import annotations

import sys

from libs.common.messages import Endpoint, Network, Policy
from libs.common.service import Context
from libs.common.service import main as run_main
from services.firewall.actor import FirewallActor
from services.firewall.adapters.conntrack import NetlinkConntrack
from services.firewall.adapters.nflog import NflogReader
from services.firewall.adapters.nft import LibNftables
from services.firewall.core.compiler import NFLOG_GROUP


async def build(ctx: Context) -> FirewallActor:
    return FirewallActor(
        ctx,
        policies=await ctx.bus.kv("qnf-policies", Policy),
        networks=await ctx.bus.kv("qnf-networks", Network),
        endpoints=await ctx.bus.kv("qnf-endpoints", Endpoint),
        nft=LibNftables(),
        conntrack=NetlinkConntrack(),
        denied_log=NflogReader(NFLOG_GROUP),
    )


def main() -> int:
    return run_main("firewall", build)


if __name__ == "__main__":
    sys.exit(main())
