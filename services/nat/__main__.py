"""Entry point of the nat service: build the actor from real adapters and run it."""

from __future__ import annotations

import sys

from libs.common.service import Context
from libs.common.service import main as run_main
from services.nat.actor import NatActor


async def build(ctx: Context) -> NatActor:
    return NatActor(ctx)


def main() -> int:
    return run_main("nat", build)


if __name__ == "__main__":
    sys.exit(main())
