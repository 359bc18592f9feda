"""The kernel side of vnet, through pyroute2 netlink sockets; never by running `ip`.

Invariants:
- Only links whose names match `core.names` patterns (`qnf-<8 hex>`, `q<10 hex>`) are ever
  changed or deleted here; everything else in the node's namespace is left alone.
- Every operation is idempotent: ensure_* tolerates EEXIST, remove_* tolerates ENODEV/ESRCH.
- Netlink errors are translated once, in `_netlink`, into the qnf error tree.
- Container namespaces are reached through a netlink socket *bound* to them: the netlink worker
  thread setns()es into the container's namespace only long enough to open the socket, then
  back (the socket stays bound to where it was created). This is thread-local (setns changes the
  calling thread only) and confined to the one netlink thread, never the event loop's thread.
  pyroute2's NetNS does the same from a forked helper and costs ~9 ms per open here, vs ~1.5 ms.

`PyrouteDataplane` is blocking; `KernelDataplane` runs it on one dedicated thread, because
pyroute2's sync sockets run an event loop of their own (they cannot be created inside the
service's loop) and are not safe to share between threads.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import re
import socket
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from ipaddress import IPv4Interface
from typing import Any, Protocol, TypeVar

import pyroute2.config
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from libs.common.errors import AdapterError, Busy, InvalidRequest
from services.vnet.core.names import OWNED_BRIDGE, OWNED_VETH
from services.vnet.core.plan import BridgePlan, Interface, VethPlan

T = TypeVar("T")

# Defensive: pyroute2's helper children (NetNS forks one; vnet no longer uses it) are stopped with
# SIGTERM and inherit asyncio's signal wakeup fd, so a Python-level SIGTERM handler there would
# tell the parent's loop that the *service* got SIGTERM. Default disposition in children avoids it.
pyroute2.config.disable_mp_signal = True

IFA_F_NODAD = 0x02  # IPv6: the fabric assigned the address, duplicate detection only delays it


class Dataplane(Protocol):
    """What vnet needs from the kernel (async: the actor awaits it)."""

    async def ensure_bridge(self, plan: BridgePlan) -> None: ...
    async def add_veth(self, plan: VethPlan) -> None: ...
    async def remove_veth(self, host_ifname: str) -> bool: ...
    async def remove_bridge(self, name: str) -> bool: ...
    async def owned_links(self) -> OwnedLinks: ...
    async def veth_healthy(self, plan: VethPlan) -> bool: ...
    async def container_healthy(self, plan: VethPlan) -> bool: ...
    async def close(self) -> None: ...


@dataclass(frozen=True)
class OwnedLinks:
    bridges: frozenset[str]
    veths: frozenset[str]


@contextmanager
def _netlink(what: str) -> Iterator[None]:
    try:
        yield
    except NetlinkError as exc:
        if exc.code in (errno.EBUSY, errno.EAGAIN):
            raise Busy(f"{what}: {os.strerror(exc.code)}") from exc
        raise AdapterError(f"{what}: {os.strerror(exc.code) if exc.code else exc}") from exc


def _family(addr: Interface) -> int:
    return socket.AF_INET if isinstance(addr, IPv4Interface) else socket.AF_INET6


def _ensure_forwarding() -> None:
    """The node routes between its networks (and to the world): IP forwarding on, as Docker does.

    Per network namespace: this is the node's own setting, wherever the agent runs.
    """
    for path in ("/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding"):
        try:
            with open(path) as f:
                if f.read().strip() == "1":
                    continue
            with open(path, "w") as f:
                f.write("1")
        except OSError as exc:
            raise AdapterError(f"cannot enable forwarding ({path}): {exc.strerror}") from exc


_libc = ctypes.CDLL("libc.so.6", use_errno=True)
CLONE_NEWNET = 0x40000000


@contextmanager
def _netlink_in(netns_path: str) -> Iterator[Any]:
    """An IPRoute socket bound to the network namespace at `netns_path` (see the module docstring)."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            target = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise InvalidRequest(f"cannot open network namespace {netns_path}: {exc.strerror}") from exc
        try:
            if _libc.setns(target, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise InvalidRequest(f"{netns_path} is not a network namespace: {os.strerror(err)}")
            try:
                ipr = IPRoute()
            finally:
                if _libc.setns(own, CLONE_NEWNET) != 0:
                    # The thread would keep acting in the container's namespace: stop the process
                    # rather than touch the wrong kernel state; the supervisor restarts it.
                    os._exit(70)
        finally:
            os.close(target)
    finally:
        os.close(own)
    try:
        yield ipr
    finally:
        ipr.close()


class PyrouteDataplane:
    """The node's links, in this process's network namespace."""

    def __init__(self) -> None:
        self._ipr = IPRoute()

    def close(self) -> None:
        self._ipr.close()

    def _index(self, ipr: Any, ifname: str) -> int | None:
        found = ipr.link_lookup(ifname=ifname)
        return int(found[0]) if found else None

    def _add_address(self, ipr: Any, index: int, addr: Interface, what: str) -> None:
        kwargs: dict[str, Any] = {
            "index": index,
            "address": str(addr.ip),
            "prefixlen": addr.network.prefixlen,
        }
        if _family(addr) == socket.AF_INET6:
            kwargs["flags"] = IFA_F_NODAD
        try:
            ipr.addr("add", **kwargs)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise AdapterError(f"{what}: adding {addr}: {os.strerror(exc.code)}") from exc

    def ensure_bridge(self, plan: BridgePlan) -> None:
        """Create the bridge if missing; set MTU, gateway addresses, up; let the node route."""
        _ensure_forwarding()
        with _netlink(f"bridge {plan.name}"):
            if self._index(self._ipr, plan.name) is None:
                try:
                    self._ipr.link("add", ifname=plan.name, kind="bridge")
                except NetlinkError as exc:
                    if exc.code != errno.EEXIST:
                        raise
            index = self._index(self._ipr, plan.name)
            assert index is not None
            self._ipr.link("set", index=index, mtu=plan.mtu, address=plan.mac, state="up")
            for addr in plan.addresses:
                self._add_address(self._ipr, index, addr, f"bridge {plan.name}")

    def add_veth(self, plan: VethPlan) -> None:
        """Create the pair with its peer directly in the container's netns, configure both ends."""
        if plan.handoff is not None:
            self._add_handoff_veth(plan)
            return
        if not os.path.exists(plan.netns):
            raise InvalidRequest(f"network namespace {plan.netns} does not exist")
        bridge = self._index(self._ipr, plan.bridge)
        if bridge is None:
            raise AdapterError(f"bridge {plan.bridge} is missing")
        with _netlink_in(plan.netns) as container:
            if container.link_lookup(ifname=plan.ifname):
                raise InvalidRequest(f"interface {plan.ifname} already exists in {plan.netns}")
            with _netlink(f"creating veth {plan.host_ifname}"):
                self._ipr.link(
                    "add",
                    ifname=plan.host_ifname,
                    kind="veth",
                    peer={
                        "ifname": plan.ifname,
                        "net_ns_fd": plan.netns,
                        "address": plan.mac,
                        "mtu": plan.mtu,
                    },
                )
            with _netlink(f"configuring {plan.ifname} in {plan.netns}"):
                self._configure_container(container, plan)
            with _netlink(f"attaching {plan.host_ifname} to {plan.bridge}"):
                host = self._index(self._ipr, plan.host_ifname)
                assert host is not None
                self._ipr.link("set", index=host, master=bridge, mtu=plan.mtu, state="up")
                self._hairpin(host)

    def _add_handoff_veth(self, plan: VethPlan) -> None:
        """The pair with both ends here: the runtime moves the peer and gives it its addresses.

        Docker creates a container's namespace only after the driver's Join has answered, so the
        peer cannot be put there now; Docker moves `plan.handoff` in and renames it itself.
        """
        assert plan.handoff is not None
        bridge = self._index(self._ipr, plan.bridge)
        if bridge is None:
            raise AdapterError(f"bridge {plan.bridge} is missing")
        with _netlink(f"creating veth {plan.host_ifname}"):
            self._ipr.link(
                "add",
                ifname=plan.host_ifname,
                kind="veth",
                peer={"ifname": plan.handoff, "address": plan.mac, "mtu": plan.mtu},
            )
        with _netlink(f"attaching {plan.host_ifname} to {plan.bridge}"):
            host = self._index(self._ipr, plan.host_ifname)
            assert host is not None
            self._ipr.link("set", index=host, master=bridge, mtu=plan.mtu, state="up")
            self._hairpin(host)

    def _hairpin(self, port: int) -> None:
        """Let the bridge send a frame back out the port it came in on.

        A container reaching its own published port through the node's address is DNATed back
        to itself by br_netfilter, which then bridges the frame to the port it arrived on.
        """
        self._ipr.brport("set", index=port, mode=1)

    def _configure_container(self, ns: Any, plan: VethPlan) -> None:
        lo = self._index(ns, "lo")
        if lo is not None:
            ns.link("set", index=lo, state="up")
        index = self._index(ns, plan.ifname)
        if index is None:
            raise AdapterError(f"{plan.ifname} did not appear in {plan.netns}")
        ns.link("set", index=index, address=plan.mac, mtu=plan.mtu, state="up")
        for addr in plan.addresses:
            self._add_address(ns, index, addr, f"{plan.ifname} in {plan.netns}")
        for gateway in plan.gateways:
            dst = "0.0.0.0/0" if gateway.version == 4 else "::/0"
            family = socket.AF_INET if gateway.version == 4 else socket.AF_INET6
            try:
                ns.route("add", dst=dst, gateway=str(gateway), oif=index, family=family)
            except NetlinkError as exc:
                if exc.code != errno.EEXIST:
                    raise

    def remove_veth(self, host_ifname: str) -> bool:
        """Delete the pair by its host end; False if it was already gone."""
        return self._remove_owned(host_ifname, OWNED_VETH, "veth")

    def remove_bridge(self, name: str) -> bool:
        """Delete a network's bridge; False if it was already gone."""
        return self._remove_owned(name, OWNED_BRIDGE, "bridge")

    def _remove_owned(self, ifname: str, owned: re.Pattern[str], what: str) -> bool:
        # The name check is the guarantee that the fabric never deletes a link it does not own.
        if not owned.match(ifname):
            raise AdapterError(f"refusing to delete {ifname}: not a fabric {what}")
        with _netlink(f"deleting {what} {ifname}"):
            try:
                self._ipr.link("del", ifname=ifname)
            except NetlinkError as exc:
                if exc.code in (errno.ENODEV, errno.ESRCH):
                    return False
                raise
        return True

    def owned_links(self) -> OwnedLinks:
        names = [link.get("ifname") for link in self._ipr.get_links()]
        return OwnedLinks(
            frozenset(n for n in names if n and OWNED_BRIDGE.match(n)),
            frozenset(n for n in names if n and OWNED_VETH.match(n)),
        )

    def veth_healthy(self, plan: VethPlan) -> bool:
        """The host end exists, is up and is a port of the network's bridge."""
        host = self._ipr.link_lookup(ifname=plan.host_ifname)
        bridge = self._ipr.link_lookup(ifname=plan.bridge)
        if not host or not bridge:
            return False
        link = self._ipr.get_links(host[0])[0]
        return bool(link.get("master") == bridge[0] and link.get("operstate") != "DOWN")

    def container_healthy(self, plan: VethPlan) -> bool:
        """The container end exists in its netns, is up, and has the planned MAC and addresses."""
        if not os.path.exists(plan.netns):
            return False
        with _netlink_in(plan.netns) as ns:
            index = self._index(ns, plan.ifname)
            if index is None:
                return False
            link = ns.get_links(index)[0]
            have = {(a.get("address"), a.get("prefixlen")) for a in ns.get_addr(index=index)}
        want = {(str(a.ip), a.network.prefixlen) for a in plan.addresses}
        return bool(link.get("address") == plan.mac and link.get("state") == "up" and want <= have)


class KernelDataplane:
    """`PyrouteDataplane` behind one worker thread, awaitable from the actor."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="netlink")
        self._dp: PyrouteDataplane | None = None

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, fn, *args)

    def _ensure_open(self) -> PyrouteDataplane:
        if self._dp is None:
            self._dp = PyrouteDataplane()
        return self._dp

    async def ensure_bridge(self, plan: BridgePlan) -> None:
        await self._run(lambda: self._ensure_open().ensure_bridge(plan))

    async def add_veth(self, plan: VethPlan) -> None:
        await self._run(lambda: self._ensure_open().add_veth(plan))

    async def remove_veth(self, host_ifname: str) -> bool:
        return await self._run(lambda: self._ensure_open().remove_veth(host_ifname))

    async def remove_bridge(self, name: str) -> bool:
        return await self._run(lambda: self._ensure_open().remove_bridge(name))

    async def owned_links(self) -> OwnedLinks:
        return await self._run(lambda: self._ensure_open().owned_links())

    async def veth_healthy(self, plan: VethPlan) -> bool:
        return await self._run(lambda: self._ensure_open().veth_healthy(plan))

    async def container_healthy(self, plan: VethPlan) -> bool:
        return await self._run(lambda: self._ensure_open().container_healthy(plan))

    async def close(self) -> None:
        if self._dp is not None:
            await self._run(self._dp.close)
        self._pool.shutdown(wait=False)
