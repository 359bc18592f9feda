"""vnet on real kernels: the fabric runs in a test node namespace, containers are namespaces.

Scope: network lifecycle and validation over the bus, endpoint add/remove with real bridges and
veths, real ICMP and TCP between endpoints, MTU and MAC, IPAM under two replicas, recovery from
a killed agent, and bad input leaving nothing behind.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid

import pytest
from pyroute2 import NetNS

from libs.common.ids import SpiffeId
from libs.common.testing import FabricNode, NodeClient

NODE_CMD = "qnf.v1.node.n1.vnet"
CMD = "qnf.v1.cmd.vnet"
ADMIN = SpiffeId.user("qnf.local", "admin")


def _add(client: NodeClient, net: str, ns: str, **extra) -> dict:  # type: ignore[no-untyped-def]
    body = {
        "request_id": uuid.uuid4().hex,
        "container_id": ns,
        "ifname": "eth0",
        "netns": f"/run/netns/{ns}",
        "network": net,
        **extra,
    }
    return client.request(f"{NODE_CMD}.endpoint.add", body)


def _links(fabric: FabricNode) -> list[str]:
    with NetNS(f"/run/netns/{fabric.ns}") as ns:
        return sorted(link.get("ifname") for link in ns.get_links())


def _owned_veths(fabric: FabricNode) -> list[str]:
    return [n for n in _links(fabric) if n.startswith("q") and not n.startswith("qnf-")]


def _in(ns: str, *argv: str, timeout: float = 10) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["nsenter", f"--net=/run/netns/{ns}", *argv], capture_output=True, text=True, timeout=timeout
    )


def _tcp_ok(server_ns: str, client_ns: str, address: str) -> bool:
    server = subprocess.Popen(
        [
            "nsenter",
            f"--net=/run/netns/{server_ns}",
            sys.executable,
            "-c",
            "import socket\ns=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
            "s.bind(('0.0.0.0', 8080)); s.listen(); print('up', flush=True)\n"
            "c,_=s.accept(); c.sendall(c.recv(64).upper()); c.close()",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "up"
        out = _in(
            client_ns,
            sys.executable,
            "-c",
            f"import socket\nc=socket.create_connection(('{address}', 8080), timeout=3)\n"
            "c.sendall(b'hello'); print(c.recv(64).decode())",
        )
        return out.stdout.strip() == "HELLO"
    finally:
        server.kill()
        server.wait()
        assert server.stdout is not None
        server.stdout.close()


@pytest.fixture
def gw(fabric_node: FabricNode):  # type: ignore[no-untyped-def]
    """A bus client with the gateway identity inside the node (function scope)."""
    client = fabric_node.client()
    yield client
    client.close()


def test_endpoints_reach_each_other_with_mtu_and_mac(fabric_node, gw, container_netns) -> None:  # type: ignore[no-untyped-def]
    net = gw.call(
        f"{CMD}.network.create",
        {"name": "blue", "subnet": "10.10.0.0/24", "mtu": 1400, "isolation": "default-allow"},
    )
    assert net["gateway"] == "10.10.0.1" and net["bridge"].startswith("qnf-")
    a, b = container_netns(), container_netns()
    ea = _add(gw, "blue", a, mac="02:00:00:aa:bb:01")["reply"]
    eb = _add(gw, "blue", b)["reply"]
    assert ea["addresses"] == ["10.10.0.2/24"] and eb["addresses"] == ["10.10.0.3/24"]
    with NetNS(f"/run/netns/{a}") as ns:
        link = ns.get_links(ns.link_lookup(ifname="eth0")[0])[0]
        assert (link.get("address"), link.get("mtu")) == ("02:00:00:aa:bb:01", 1400)
        routes = [r for r in ns.get_routes(family=2) if r.get("dst_len") == 0]
        assert [r.get("gateway") for r in routes] == ["10.10.0.1"]
        assert ns.get_links(ns.link_lookup(ifname="lo")[0])[0].get("state") == "up"
    ping = _in(a, "ping", "-c", "1", "-W", "2", "10.10.0.3")
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert _in(a, "ping", "-c", "1", "-W", "2", "10.10.0.1").returncode == 0  # the gateway on the bridge
    assert _tcp_ok(b, a, "10.10.0.3")
    gone = gw.call(f"{NODE_CMD}.endpoint.remove", {"container_id": a, "ifname": "eth0"})
    assert gone == {"existed": True}
    assert gw.call(f"{NODE_CMD}.endpoint.remove", {"container_id": a, "ifname": "eth0"}) == {"existed": False}
    assert ea["host_ifname"] not in _links(fabric_node)
    assert _in(b, "ping", "-c", "1", "-W", "1", "10.10.0.2").returncode != 0


def test_networks_do_not_share_a_bridge_and_ipv6_works(fabric_node, gw, container_netns) -> None:  # type: ignore[no-untyped-def]
    red = gw.call(
        f"{CMD}.network.create",
        {"name": "red", "subnet": "10.20.0.0/24", "subnet6": "fd00:20::/64", "isolation": "default-allow"},
    )
    green = gw.call(f"{CMD}.network.create", {"name": "green", "subnet": "10.30.0.0/24"})
    assert red["bridge"] != green["bridge"]
    a, b, c = container_netns(), container_netns(), container_netns()
    ea, eb = _add(gw, "red", a)["reply"], _add(gw, "red", b)["reply"]
    ec = _add(gw, "green", c)["reply"]
    assert ea["addresses"] == ["10.20.0.2/24", "fd00:20::2/64"]
    with NetNS(f"/run/netns/{fabric_node.ns}") as ns:

        def master(ifname: str) -> int:
            return ns.get_links(ns.link_lookup(ifname=ifname)[0])[0].get("master")

        assert master(ea["host_ifname"]) == master(eb["host_ifname"]) != master(ec["host_ifname"])
    assert _in(a, "ping", "-c", "1", "-W", "2", "fd00:20::3").returncode == 0
    # No wait for the firewall: ADD returned only once it enforced c (the start gate).
    assert _in(a, "ping", "-c", "1", "-W", "1", ec["addresses"][0].split("/")[0]).returncode != 0


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"name": "bad", "subnet": "10.0.0.1/24"}, "invalid"),  # host bits set
        ({"name": "bad", "subnet": "not-a-cidr"}, "invalid"),
        ({"name": "bad", "subnet": "10.0.0.0/31"}, "invalid"),
        ({"name": "bad", "subnet": "10.0.0.0/24", "gateway": "10.0.1.1"}, "invalid"),
        ({"name": "bad", "subnet": "10.0.0.0/24", "gateway": "10.0.0.255"}, "invalid"),
        ({"name": "Bad Name", "subnet": "10.0.0.0/24"}, "invalid"),
        ({"name": "overlap", "subnet": "10.40.0.0/16"}, "conflict"),
    ],
    ids=["host-bits", "garbage", "too-small", "gw-outside", "gw-broadcast", "bad-name", "overlap"],
)
def test_bad_networks_are_refused(fabric_node, gw, body, code) -> None:  # type: ignore[no-untyped-def]
    gw.call(f"{CMD}.network.create", {"name": "base", "subnet": "10.40.1.0/24"})
    out = gw.request(f"{CMD}.network.create", body)
    assert out["error"]["code"] == code, out
    names = [n["name"] for n in gw.call(f"{CMD}.network.list")["networks"]]
    assert names == ["base"]


def test_bad_endpoint_requests_leave_nothing(fabric_node, gw, container_netns) -> None:  # type: ignore[no-untyped-def]
    gw.call(f"{CMD}.network.create", {"name": "blue", "subnet": "10.50.0.0/24"})
    a = container_netns()
    assert _add(gw, "blue", a)["reply"]["addresses"] == ["10.50.0.2/24"]
    cases = [
        (dict(netns="/run/netns/does-not-exist"), "invalid"),
        (dict(ifname="a-very-long-interface-name"), "invalid"),
        (dict(network="nope"), "not_found"),
        (dict(ips=["10.50.0.2"]), "conflict"),  # static request of an address in use
        (dict(ips=["10.60.0.9"]), "invalid"),  # outside the subnet
    ]
    for extra, code in cases:
        out = _add(gw, "blue", container_netns(), **extra)
        assert out.get("error", {}).get("code") == code, (extra, out)
    dup = _add(gw, "blue", a)  # same container and ifname, a new request
    assert dup["error"]["code"] == "conflict"
    admin = fabric_node.client(ADMIN)
    try:
        assert admin.kv_keys("qnf-ipam") == ["blue.10.50.0.2"]
        assert len(admin.kv_keys("qnf-endpoints")) == 1
    finally:
        admin.close()
    assert len(_owned_veths(fabric_node)) == 1


def test_retry_with_the_same_request_id_is_idempotent(fabric_node, gw, container_netns) -> None:  # type: ignore[no-untyped-def]
    gw.call(f"{CMD}.network.create", {"name": "blue", "subnet": "10.70.0.0/24"})
    a = container_netns()
    body = {
        "request_id": "r-1",
        "container_id": a,
        "ifname": "eth0",
        "netns": f"/run/netns/{a}",
        "network": "blue",
    }
    first = gw.call(f"{NODE_CMD}.endpoint.add", body)
    again = gw.call(f"{NODE_CMD}.endpoint.add", body)
    assert first == again
    assert gw.call(f"{CMD}.network.create", {"name": "blue", "subnet": "10.70.0.0/24"})["name"] == "blue"


def test_delete_network_refused_while_attached_unless_forced(fabric_node, gw, container_netns) -> None:  # type: ignore[no-untyped-def]
    net = gw.call(f"{CMD}.network.create", {"name": "blue", "subnet": "10.80.0.0/24"})
    a = container_netns()
    ep = _add(gw, "blue", a)["reply"]
    assert gw.request(f"{CMD}.network.delete", {"name": "blue"})["error"]["code"] == "conflict"
    assert gw.call(f"{CMD}.network.delete", {"name": "blue", "force": True}) == {"existed": True}
    links = _links(fabric_node)
    assert ep["host_ifname"] not in links and net["bridge"] not in links
    admin = fabric_node.client(ADMIN)
    try:
        assert admin.kv_keys("qnf-ipam") == [] and admin.kv_keys("qnf-endpoints") == []
    finally:
        admin.close()


def _start_second_vnet(fabric: FabricNode) -> subprocess.Popen[bytes]:
    import os

    env = {
        **os.environ,
        "QNF_STATE_DIR": str(fabric.state),
        "QNF_NODE": fabric.node,
        "QNF_METRICS_BASE_PORT": "19460",
    }
    proc = subprocess.Popen(
        ["nsenter", f"--net=/run/netns/{fabric.ns}", sys.executable, "-m", "services.vnet"],
        env=env,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while len(fabric.service_pids("vnet")) < 2:
        assert time.monotonic() < deadline, "second vnet did not start"
        time.sleep(0.1)
    time.sleep(1.5)  # let it subscribe
    return proc


def test_fifty_parallel_adds_on_two_replicas(fabric_node, gw, container_netns) -> None:  # type: ignore[no-untyped-def]
    second = _start_second_vnet(fabric_node)
    try:
        gw.call(f"{CMD}.network.create", {"name": "big", "subnet": "10.90.0.0/26"})  # 61 usable
        spaces = [container_netns() for _ in range(50)]
        adds = [
            (
                f"{NODE_CMD}.endpoint.add",
                {
                    "request_id": s,
                    "container_id": s,
                    "ifname": "eth0",
                    "netns": f"/run/netns/{s}",
                    "network": "big",
                },
            )
            for s in spaces
        ]
        results = gw.batch(adds)
        assert all("reply" in r for r in results), [r for r in results if "reply" not in r][:3]
        addresses = {r["reply"]["addresses"][0] for r in results}
        assert len(addresses) == 50
        removes = [(f"{NODE_CMD}.endpoint.remove", {"container_id": s, "ifname": "eth0"}) for s in spaces]
        removed = gw.batch(removes)
        assert all(r.get("reply") == {"existed": True} for r in removed), [
            r for r in removed if "reply" not in r
        ][:3]
        assert _owned_veths(fabric_node) == []
        # The pool is whole again: every one of the 61 addresses can be handed out.
        refill = [container_netns() for _ in range(61)]
        results = gw.batch(
            [
                (
                    f"{NODE_CMD}.endpoint.add",
                    {
                        "request_id": s,
                        "container_id": s,
                        "ifname": "eth0",
                        "netns": f"/run/netns/{s}",
                        "network": "big",
                    },
                )
                for s in refill
            ]
        )
        assert all("reply" in r for r in results), [r for r in results if "reply" not in r][:3]
        assert _add(gw, "big", container_netns())["error"]["code"] == "exhausted"
    finally:
        second.terminate()
        second.wait(15)


def test_killed_agent_leaves_nothing_after_reconcile(fabric_node, gw, container_netns) -> None:  # type: ignore[no-untyped-def]
    import os
    import signal

    gw.call(
        f"{CMD}.network.create", {"name": "burst", "subnet": "10.100.0.0/24", "isolation": "default-allow"}
    )
    spaces = [container_netns() for _ in range(30)]
    client = fabric_node.client()
    try:
        import threading

        results: list[dict] = []
        burst = threading.Thread(
            target=lambda: results.extend(
                client.batch(
                    [
                        (
                            f"{NODE_CMD}.endpoint.add",
                            {
                                "request_id": s,
                                "container_id": s,
                                "ifname": "eth0",
                                "netns": f"/run/netns/{s}",
                                "network": "burst",
                            },
                        )
                        for s in spaces
                    ]
                )
            )
        )
        burst.start()
        time.sleep(0.4)
        for pid in fabric_node.service_pids("vnet"):
            os.kill(pid, signal.SIGKILL)
        burst.join(60)
    finally:
        client.close()
    # The supervisor restarts vnet; its start-up reconcile cleans what the killed one left.
    deadline = time.monotonic() + 30
    while True:
        out = gw.request(f"{NODE_CMD}.endpoint.list", {})
        if "reply" in out:
            break
        assert time.monotonic() < deadline, out
        time.sleep(0.3)
    recorded = out["reply"]["endpoints"]
    admin = fabric_node.client(ADMIN)
    try:
        leases = admin.kv_keys("qnf-ipam")
    finally:
        admin.close()
    assert sorted(leases) == sorted(f"burst.{e['addresses'][0].split('/')[0]}" for e in recorded)
    assert sorted(_owned_veths(fabric_node)) == sorted(e["host_ifname"] for e in recorded)
    for e in recorded:
        assert _in(e["container_id"], "ping", "-c", "1", "-W", "2", "10.100.0.1").returncode == 0
    # and the endpoints the burst lost can be added again
    for s in spaces:
        if s not in {e["container_id"] for e in recorded}:
            assert "reply" in _add(gw, "burst", s), s
