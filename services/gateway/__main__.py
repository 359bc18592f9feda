"""Entry point of the gateway service: open the token store, make the actor, run it."""

from __future__ import annotations

import sys

from libs.common.service import main as run_main
from services.gateway.actor import build_actor


def main() -> int:
    return run_main("gateway", build_actor)


if __name__ == "__main__":
    sys.exit(main())
