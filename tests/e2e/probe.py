"""Run inside a node namespace: `python -m tests.e2e.probe STATE_DIR VERB`; prints JSON results.

Verbs: `ping` — $SRV.PING per service; `info` — $SRV.INFO per service; `echo` — a signed
diag.echo round trip to every service as the admin identity.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import nats
import nats.errors

from libs.common.bus import Bus
from libs.common.config import load_settings
from libs.common.ids import SERVICES, SpiffeId
from libs.common.messages import Echo


async def main(state_dir: str, verb: str) -> dict[str, object]:
    settings = load_settings(state_dir=Path(state_dir))
    admin = SpiffeId.user(settings.trust_domain, "admin")
    bus = await Bus.connect_as(settings, admin, service="probe", reconnect=False)
    out: dict[str, object] = {}
    try:
        for service in SERVICES:
            try:
                if verb == "echo":
                    reply = await bus.request(f"qnf.v1.cmd.{service}.diag.echo", Echo(text=service), Echo)
                    out[service] = reply.text
                else:
                    msg = await bus.nc.request(f"$SRV.{verb.upper()}.qnf-{service}", b"", timeout=2)
                    out[service] = json.loads(msg.data)
            except (nats.errors.Error, Exception) as exc:  # report, do not crash: the test asserts
                out[service] = {"error": repr(exc)}
    finally:
        await bus.close()
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2]))))
