"""The firewall actor: its handler table and lifecycle.

Only the base endpoints (diag.echo, and the nats micro protocol) are served so far; the
service's own commands arrive with its issue.
"""

from __future__ import annotations

from typing import Any

from libs.common.bus import Endpoint
from libs.common.service import Context


class FirewallActor:
    """Owns the firewall service's state; handlers run one mailbox key at a time."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    def endpoints(self) -> list[Endpoint[Any, Any]]:
        return []

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass
