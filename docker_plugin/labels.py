"""Container labels from Docker's engine API onto qnf endpoints, after the fact.

Docker never sends a network driver a container's labels, so policies could not select Docker
containers by label. After Join, a background task asks the engine which container holds the
endpoint (`GET /networks/{id}`, then `GET /containers/{id}/json`) and sets its labels on the
endpoint over the bus (`endpoint.labels`). Until then the endpoint has no labels: zero trust
denies what a label would allow, never the reverse. The engine is only asked from background
tasks: calling back into dockerd while it waits on this driver's reply could deadlock it.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import httpx
from pydantic import TypeAdapter, ValidationError

from libs.common.bus import Bus
from libs.common.errors import QnfError
from libs.common.ids import node_subject
from libs.common.messages import Endpoint, EndpointLabels, Labels

log = logging.getLogger("qnf.docker")

PATIENCE_S = 60.0  # dockerd records the endpoint on the container a moment after Join
FIRST_INTERVAL_S, MAX_INTERVAL_S = 0.1, 2.0
_LABELS: TypeAdapter[Labels] = TypeAdapter(Labels)


def endpoint_labels(docker_labels: dict[str, str] | None) -> dict[str, str]:
    """The container's labels that are valid endpoint labels (others, e.g. too long, are left out)."""
    out = {}
    for key, value in (docker_labels or {}).items():
        try:
            out.update(_LABELS.validate_python({key: value}))
        except ValidationError:
            log.debug("container label %s is not a valid endpoint label; left out", key)
    return out


class LabelSync:
    """Copies container labels to endpoints; one task per joined endpoint, bounded retries."""

    def __init__(self, bus: Bus, node: str, docker_host: str) -> None:
        self._bus, self._node = bus, node
        path = docker_host.removeprefix("unix://")
        self._engine = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=path), base_url="http://docker", timeout=5
        )
        self._available = Path(path).is_socket
        self._tasks: set[asyncio.Task[None]] = set()

    def joined(self, network_id: str, endpoint_id: str, ifname: str) -> None:
        if not self._available():
            return  # no engine API here (a test speaking the protocol itself): nothing to copy
        task = asyncio.create_task(self._sync(network_id, endpoint_id, ifname))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _sync(self, network_id: str, endpoint_id: str, ifname: str) -> None:
        try:
            interval, deadline = FIRST_INTERVAL_S, asyncio.get_running_loop().time() + PATIENCE_S
            while asyncio.get_running_loop().time() < deadline:
                container = await self._container_of(network_id, endpoint_id)
                if container is not None:
                    labels = endpoint_labels((container.get("Config") or {}).get("Labels"))
                    if labels:
                        await self._bus.request(
                            node_subject(self._node, "vnet", "endpoint.labels"),
                            EndpointLabels(container_id=endpoint_id, ifname=ifname, labels=labels),
                            Endpoint,
                        )
                    return
                await asyncio.sleep(interval)
                interval = min(interval * 2, MAX_INTERVAL_S)
            log.warning("no container holds endpoint %s: its labels were not copied", endpoint_id[:12])
        except (httpx.HTTPError, QnfError, ValueError) as exc:
            log.warning("copying container labels to endpoint %s failed: %s", endpoint_id[:12], exc)

    async def _container_of(self, network_id: str, endpoint_id: str) -> dict[str, Any] | None:
        network = (await self._engine.get(f"/networks/{network_id}")).raise_for_status().json()
        for cid, attached in (network.get("Containers") or {}).items():
            # While a sandbox is being set up dockerd lists its endpoint under "ep-<endpoint id>",
            # not yet under the container: not found yet, ask again.
            if attached.get("EndpointID") == endpoint_id and not cid.startswith("ep-"):
                reply = await self._engine.get(f"/containers/{cid}/json")
                if reply.status_code == 404:
                    return None
                return dict(reply.raise_for_status().json())
        return None

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._engine.aclose()
