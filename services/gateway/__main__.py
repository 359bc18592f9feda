"""Entry point of the gateway service: build the actor from real adapters and run it."""

from __future__ import annotations

import sys

from libs.common.service import Context
from libs.common.service import main as run_main
from services.gateway.actor import GatewayActor


async def build(ctx: Context) -> GatewayActor:
    return GatewayActor(ctx)


def main() -> int:
    return run_main("gateway", build)


if __name__ == "__main__":
    sys.exit(main())
