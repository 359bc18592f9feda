"""Entry point of the firewall service: build the actor from real adapters and run it."""

from __future__ import annotations

import sys

from libs.common.kv import TypedKV
from libs.common.messages import Endpoint, Network, Policy
from libs.common.service import Context
from libs.common.service import main as run_main
from services.firewall.actor import FirewallActor
from services.firewall.adapters.nft import LibNftables


async def build(ctx: Context) -> FirewallActor:
    js = ctx.bus.nc.jetstream(timeout=ctx.bus.request_timeout)

    async def kv(bucket: str, model: type) -> TypedKV:  # type: ignore[type-arg]
        return TypedKV(
            await js.key_value(bucket), bucket, model, signer=ctx.bus.signer, verifier=ctx.bus.verifier
        )

    return FirewallActor(
        ctx,
        policies=await kv("qnf-policies", Policy),
        networks=await kv("qnf-networks", Network),
        endpoints=await kv("qnf-endpoints", Endpoint),
        nft=LibNftables(),
    )


def main() -> int:
    return run_main("firewall", build)


if __name__ == "__main__":
    sys.exit(main())
