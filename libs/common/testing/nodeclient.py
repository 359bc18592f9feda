"""A bus client that lives inside a test node's namespace, driven over stdin/stdout.

The fabric's nats-server listens on the node namespace's loopback, which the test process (in
the root namespace) cannot reach; this helper runs there (`nsenter --net=...`) and relays
signed requests as JSON lines:

    {"subject": S, "body": {...}, "timeout": 10}             -> {"reply": {...}} | {"error": {...}}
    {"batch": [{"subject": S, "body": {...}}, ...]}          -> {"replies": [...]}   (concurrently)
    {"kv_keys": BUCKET}                                      -> {"keys": [...]}      (admin only)
    {"kv_put": BUCKET, "key": K, "model": M, "value": {...}} -> {"revision": N}      (admin only)
    {"kv_delete": BUCKET, "key": K}                          -> {"deleted": true}    (admin only)
    {"events": SUBJECT, "quiet": 1.0}                        -> {"events": [{...}]}  (retained, until quiet)

Run: python -m libs.common.testing.nodeclient STATE_DIR SPIFFE_ID
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import nats.errors
import nats.js.errors
from pydantic import BaseModel, ConfigDict

from libs.common import messages
from libs.common.bus import Bus
from libs.common.config import load_settings
from libs.common.errors import QnfError
from libs.common.ids import EVENTS_STREAM, SpiffeId


class _Json(BaseModel):
    """Any JSON object, passed through as given: the service under test validates it."""

    model_config = ConfigDict(extra="allow")


async def _one(bus: Bus, item: dict[str, Any]) -> dict[str, Any]:
    try:
        reply = await bus.request(
            item["subject"], _Json(**item.get("body", {})), _Json, timeout=item.get("timeout", 15)
        )
        return {"reply": reply.model_dump()}
    except QnfError as exc:
        return {"error": {"code": exc.code, "message": exc.message}}


async def main(state_dir: str, uri: str) -> None:
    settings = load_settings(state_dir=Path(state_dir))
    bus = await Bus.connect_as(settings, SpiffeId.parse(uri), service="test")
    loop = asyncio.get_running_loop()
    print(json.dumps({"ready": True}), flush=True)
    try:
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                return
            item = json.loads(line)
            if "kv_keys" in item:  # raw read of a bucket, for assertions (admin identity only)
                keys = await (await bus.kv(item["kv_keys"], _Json)).keys()
                out: dict[str, Any] = {"keys": sorted(keys)}
            elif "kv_put" in item:  # a signed record as the admin writes it (e.g. another node's endpoint)
                model = getattr(messages, item["model"])
                typed = await bus.kv(item["kv_put"], model)
                out = {"revision": await typed.put(item["key"], model.model_validate(item["value"]))}
            elif "kv_delete" in item:
                await (await bus.kv(item["kv_delete"], _Json)).delete(item["key"])
                out = {"deleted": True}
            elif "events" in item:  # what QNF_EVENTS holds for a subject, read as a subscriber would
                sub = await bus.nc.jetstream().subscribe(
                    item["events"], stream=EVENTS_STREAM, ordered_consumer=True
                )
                got: list[Any] = []
                try:
                    while True:
                        msg = await sub.next_msg(timeout=item.get("quiet", 1.0))
                        got.append(json.loads(msg.data))
                except nats.errors.TimeoutError:
                    pass
                finally:
                    await sub.unsubscribe()
                out = {"events": got}
            elif "batch" in item:
                out = {"replies": await asyncio.gather(*(_one(bus, i) for i in item["batch"]))}
            else:
                out = await _one(bus, item)
            print(json.dumps(out, default=str), flush=True)
    finally:
        await bus.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
