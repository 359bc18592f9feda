"""Entry point of the vnet service: build the actor from real adapters and run it."""

from __future__ import annotations

import sys

from libs.common.service import Context
from libs.common.service import main as run_main
from services.vnet.actor import VnetActor
from services.vnet.adapters.netlink import KernelDataplane
from services.vnet.adapters.store import Stores


async def build(ctx: Context) -> VnetActor:
    return VnetActor(ctx, await Stores.open(ctx.bus), KernelDataplane())


def main() -> int:
    return run_main("vnet", build)


if __name__ == "__main__":
    sys.exit(main())
