"""The driver: each Docker call becomes signed bus requests to vnet, as the node's `docker` identity.

It keeps nothing of its own. A Docker network is found again through the label its qnf network
carries (`docker/network-id`), a Docker endpoint by its id, which is the qnf endpoint's
container id (interface `eth0`). Teardown calls (Leave, DeleteEndpoint) succeed for endpoints that
are gone already, as vnet's DEL does; every call fails with a clear `Err` for a network the fabric
does not know.

The HTTP side (`app`) is Starlette on a unix socket; errors are JSON `{"Err": ...}`: 400 for a
request that does not decode, 200 for one the fabric refuses (what libnetwork's remote driver
reads as "cannot complete"), 500 for a bug, 404 for a call this driver does not implement.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from docker_plugin import protocol as p
from docker_plugin.labels import LabelSync
from libs.common.bus import Bus
from libs.common.errors import NotFound, QnfError
from libs.common.ids import cmd_subject, node_subject
from libs.common.messages import (
    Empty,
    Endpoint,
    EndpointRef,
    EndpointRemove,
    Network,
    NetworkDelete,
    NetworkList,
    PortPublish,
    PublishedPort,
    PublishedPortFilter,
    PublishedPortList,
    PublishedPortRef,
    Removed,
)

log = logging.getLogger("qnf.docker")


class Driver:
    """Docker's calls, translated; one instance per plugin process."""

    def __init__(self, bus: Bus, node: str, labels: LabelSync | None = None) -> None:
        self._bus = bus
        self._node = node
        self._labels = labels

    def _vnet(self, verb: str) -> str:
        return node_subject(self._node, "vnet", verb)

    def _nat(self, verb: str) -> str:
        return node_subject(self._node, "nat", verb)

    async def _network(self, network_id: str) -> Network:
        p.check_id(network_id, "NetworkID")
        networks = await self._bus.request(cmd_subject("vnet", "network.list"), Empty(), NetworkList)
        for network in networks.networks:
            if network.labels.get(p.NETWORK_ID_LABEL) == network_id[: p.ID_CHARS]:
                return network
        raise p.DriverError(f"network {network_id[:12]} is not a qnf network (never created, or deleted)")

    async def _endpoint(self, network: Network, endpoint_id: str) -> Endpoint | None:
        p.check_id(endpoint_id, "EndpointID")
        try:
            endpoint = await self._bus.request(
                self._vnet("endpoint.get"), EndpointRef(container_id=endpoint_id, ifname=p.IFNAME), Endpoint
            )
        except NotFound:
            return None
        if endpoint.network != network.name:
            raise p.DriverError(f"endpoint {endpoint_id[:12]} belongs to network {endpoint.network}")
        return endpoint

    async def activate(self, _: dict[str, Any]) -> dict[str, Any]:
        # No IpamDriver: Docker's IPAM addresses are leased in qnf's IPAM as static requests, and
        # with `--ipam-driver null` qnf's IPAM is the only one; a second allocator adds nothing.
        return {"Implements": ["NetworkDriver"]}

    async def capabilities(self, _: dict[str, Any]) -> dict[str, Any]:
        return {"Scope": "local", "ConnectivityScope": "local"}

    async def create_network(self, body: dict[str, Any]) -> dict[str, Any]:
        spec = p.network_spec(p.CreateNetworkRequest.model_validate(body))
        await self._bus.request(cmd_subject("vnet", "network.create"), spec, Network)
        return {}

    async def delete_network(self, body: dict[str, Any]) -> dict[str, Any]:
        network = await self._network(p.NetworkRequest.model_validate(body).NetworkID)
        # Docker has let go of the network: endpoints it did not delete (a crashed daemon) go too.
        await self._bus.request(
            cmd_subject("vnet", "network.delete"), NetworkDelete(name=network.name, force=True), Removed
        )
        return {}

    async def create_endpoint(self, body: dict[str, Any]) -> dict[str, Any]:
        req = p.CreateEndpointRequest.model_validate(body)
        network = await self._network(req.NetworkID)
        add = p.endpoint_add(req, network.name)
        endpoint = await self._bus.request(self._vnet("endpoint.add"), add, Endpoint, timeout=15)
        return p.create_endpoint_reply(req, endpoint)

    async def delete_endpoint(self, body: dict[str, Any]) -> dict[str, Any]:
        req = p.EndpointRequest.model_validate(body)
        await self._network(req.NetworkID)
        p.check_id(req.EndpointID, "EndpointID")
        remove = EndpointRemove(container_id=req.EndpointID, ifname=p.IFNAME)
        await self._bus.request(self._vnet("endpoint.remove"), remove, Removed)
        return {}

    async def oper_info(self, body: dict[str, Any]) -> dict[str, Any]:
        req = p.EndpointRequest.model_validate(body)
        endpoint = await self._endpoint(await self._network(req.NetworkID), req.EndpointID)
        if endpoint is None:
            raise p.DriverError(f"endpoint {req.EndpointID[:12]} does not exist")
        return p.oper_info(endpoint)

    async def join(self, body: dict[str, Any]) -> dict[str, Any]:
        req = p.JoinRequest.model_validate(body)
        endpoint = await self._endpoint(await self._network(req.NetworkID), req.EndpointID)
        if endpoint is None:
            raise p.DriverError(f"endpoint {req.EndpointID[:12]} does not exist: join before create")
        if self._labels is not None:
            self._labels.joined(req.NetworkID, req.EndpointID, p.IFNAME)
        return p.join_reply(endpoint)

    async def leave(self, body: dict[str, Any]) -> dict[str, Any]:
        # Docker moves the interface back out of the sandbox itself; DeleteEndpoint removes the pair.
        req = p.EndpointRequest.model_validate(body)
        await self._endpoint(await self._network(req.NetworkID), req.EndpointID)
        return {}

    async def program_external_connectivity(self, body: dict[str, Any]) -> dict[str, Any]:
        """Publish the endpoint's ports (`-p`, recorded at CreateEndpoint) through the node's NAT
        agent, which refuses a host port already taken; a refusal unpublishes what this call did."""
        req = p.EndpointRequest.model_validate(body)
        endpoint = await self._endpoint(await self._network(req.NetworkID), req.EndpointID)
        if endpoint is None:
            raise p.DriverError(f"endpoint {req.EndpointID[:12]} does not exist")
        done: list[PublishedPort] = []
        try:
            for mapping in endpoint.port_mappings:
                publish = PortPublish(
                    **mapping.model_dump(), container_id=endpoint.container_id, ifname=p.IFNAME
                )
                done.append(await self._bus.request(self._nat("port.publish"), publish, PublishedPort))
        except QnfError:
            for port in done:
                await self._bus.request(self._nat("port.unpublish"), PublishedPortRef(id=port.id), Removed)
            raise
        return {}

    async def revoke_external_connectivity(self, body: dict[str, Any]) -> dict[str, Any]:
        req = p.EndpointRequest.model_validate(body)
        endpoint = await self._endpoint(await self._network(req.NetworkID), req.EndpointID)
        if endpoint is None:
            return {}  # already gone, and its ports with it
        ports = await self._bus.request(
            self._nat("port.list"), PublishedPortFilter(endpoint_id=endpoint.endpoint_id), PublishedPortList
        )
        for port in ports.ports:
            await self._bus.request(self._nat("port.unpublish"), PublishedPortRef(id=port.id), Removed)
        return {}

    async def discover(self, _: dict[str, Any]) -> dict[str, Any]:
        return {}  # node discovery is for global-scope drivers; the fabric has its own

    async def not_supported(self, _: dict[str, Any]) -> dict[str, Any]:
        raise p.DriverError("not supported: qnf is a local-scope driver, not a swarm network allocator")


Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def routes(driver: Driver) -> dict[str, Handler]:
    return {
        "/Plugin.Activate": driver.activate,
        "/NetworkDriver.GetCapabilities": driver.capabilities,
        "/NetworkDriver.CreateNetwork": driver.create_network,
        "/NetworkDriver.DeleteNetwork": driver.delete_network,
        "/NetworkDriver.CreateEndpoint": driver.create_endpoint,
        "/NetworkDriver.DeleteEndpoint": driver.delete_endpoint,
        "/NetworkDriver.EndpointOperInfo": driver.oper_info,
        "/NetworkDriver.Join": driver.join,
        "/NetworkDriver.Leave": driver.leave,
        "/NetworkDriver.ProgramExternalConnectivity": driver.program_external_connectivity,
        "/NetworkDriver.RevokeExternalConnectivity": driver.revoke_external_connectivity,
        "/NetworkDriver.DiscoverNew": driver.discover,
        "/NetworkDriver.DiscoverDelete": driver.discover,
        "/NetworkDriver.AllocateNetwork": driver.not_supported,
        "/NetworkDriver.FreeNetwork": driver.not_supported,
    }


def _err(message: str, status: int) -> JSONResponse:
    return JSONResponse({"Err": message}, status_code=status)


def _summary(exc: ValidationError) -> str:
    parts = [f"{'.'.join(str(x) for x in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()[:5]]
    return "malformed request: " + "; ".join(parts)


def _endpoint(name: str, handler: Handler) -> Callable[[Request], Awaitable[JSONResponse]]:
    async def serve(request: Request) -> JSONResponse:
        raw = await request.body()
        try:
            body = json.loads(raw) if raw.strip() else {}
        except ValueError:
            return _err("malformed request: the body is not JSON", 400)
        if not isinstance(body, dict):
            return _err("malformed request: the body is not a JSON object", 400)
        try:
            reply = await handler(body)
        except ValidationError as exc:
            return _err(_summary(exc), 400)
        except (p.DriverError, QnfError) as exc:
            log.info("%s refused: %s", name, exc)
            return _err(str(exc) if isinstance(exc, p.DriverError) else exc.message, 200)
        except Exception:
            log.exception("%s failed", name)
            return _err("internal error; see the qnf docker-plugin log", 500)
        log.debug("%s ok", name)
        return JSONResponse(reply)

    return serve


def make_app(driver: Driver) -> Starlette:
    """Docker's plugin client POSTs `application/vnd.docker.plugins.v1.2+json` to these paths.

    Routing uses the request path only: Docker sends the socket path (or nothing) as the Host
    header, which makes `request.url` meaningless.
    """
    table = routes(driver)
    app_routes = [Route(path, _endpoint(path.lstrip("/"), h), methods=["POST"]) for path, h in table.items()]

    async def unknown(request: Request) -> JSONResponse:
        # 404 tells libnetwork that this driver does not implement the call (not a failure).
        return _err(f"{request.scope['path']} is not implemented", 404)

    app_routes.append(Route("/{rest:path}", unknown, methods=["GET", "POST"]))
    return Starlette(routes=app_routes)
