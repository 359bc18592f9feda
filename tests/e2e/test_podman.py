"""A real runtime: podman 4 with its CNI backend starts containers on a qnf network.

Scope: podman execs our plugin (in the test node namespace, where the fabric runs); each
container gets an address of the network, the default route and the fabric's resolver; one
reaches the other over TCP (a default-allow network: the firewall issue brings policies); `podman
rm` leaves no veth, no lease and no endpoint record behind.
"""

from __future__ import annotations

import json
import time

from pyroute2 import NetNS

from cni.install import conflist, write_conflist
from libs.common.ids import SpiffeId
from libs.common.testing import FabricNode, Podman


def test_two_containers_talk_and_leave_nothing(fabric_node: FabricNode, podman: Podman) -> None:
    gw = fabric_node.client()
    try:
        gw.call(
            "qnf.v1.cmd.vnet.network.create",
            {"name": "blue", "subnet": "10.66.0.0/24", "isolation": "default-allow"},
        )
    finally:
        gw.close()
    write_conflist(podman.root / "net", conflist("blue", state_dir=fabric_node.state, chain=[]))

    podman(
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        "blue",
        "qnf-busybox:test",
        "httpd",
        "-f",
        "-p",
        "8080",
        "-h",
        "/etc",
    )
    podman("run", "-d", "--name", "client", "--network", "blue", "qnf-busybox:test", "sleep", "600")
    web = json.loads(podman("inspect", "web").stdout)[0]["NetworkSettings"]["Networks"]["blue"]
    assert web["IPAddress"].startswith("10.66.0.") and web["Gateway"] == "10.66.0.1"
    routes = podman("exec", "client", "ip", "route").stdout
    assert "default via 10.66.0.1 dev eth0" in routes
    resolv = podman("exec", "client", "cat", "/etc/resolv.conf").stdout
    assert "nameserver 10.66.0.1" in resolv and "search blue.qnf.local" in resolv
    deadline = time.monotonic() + 15
    while True:  # httpd was started detached: wait until it listens (busybox wget -T crashes: use timeout)
        page = podman(
            "exec",
            "client",
            "timeout",
            "3",
            "wget",
            "-q",
            "-O",
            "-",
            f"http://{web['IPAddress']}:8080/passwd",
            check=False,
        )
        if page.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert page.stdout.startswith("root:x:0:0"), page.stderr

    podman("rm", "-f", "-t", "0", "web", "client")
    admin = fabric_node.client(SpiffeId.user("qnf.local", "admin"))
    try:
        assert admin.kv_keys("qnf-ipam") == [] and admin.kv_keys("qnf-endpoints") == []
    finally:
        admin.close()
    with NetNS(f"/run/netns/{fabric_node.ns}") as node:
        names = [link.get("ifname") for link in node.get_links()]
    assert [n for n in names if n.startswith("q") and not n.startswith("qnf-")] == []


def test_zero_trust_network_needs_a_policy(fabric_node: FabricNode, podman: Podman) -> None:
    gw = fabric_node.client()
    try:
        gw.call("qnf.v1.cmd.vnet.network.create", {"name": "zt", "subnet": "10.67.0.0/24"})
        write_conflist(podman.root / "net", conflist("zt", state_dir=fabric_node.state, chain=[]))
        podman(
            "run",
            "-d",
            "--name",
            "web",
            "--network",
            "zt",
            "--label",
            "app=web",
            "qnf-busybox:test",
            "httpd",
            "-f",
            "-p",
            "8080",
            "-h",
            "/etc",
        )
        podman("run", "-d", "--name", "client", "--network", "zt", "qnf-busybox:test", "sleep", "600")
        web_ip = json.loads(podman("inspect", "web").stdout)[0]["NetworkSettings"]["Networks"]["zt"][
            "IPAddress"
        ]

        def fetch() -> bool:
            out = podman(
                "exec",
                "client",
                "timeout",
                "3",
                "wget",
                "-q",
                "-O",
                "-",
                f"http://{web_ip}:8080/passwd",
                check=False,
            )
            return out.stdout.startswith("root:x:0:0")

        assert not fetch()  # zero trust: no policy, no packet
        # podman passes the container name as K8S_POD_NAME: the plugin makes it a label and the DNS name.
        endpoints = gw.call("qnf.v1.node.n1.vnet.endpoint.list", {"network": "zt"})["endpoints"]
        assert {e["name"]: e["labels"] for e in endpoints}["web"] == {"k8s.pod/name": "web"}
        gw.call(
            "qnf.v1.cmd.firewall.policy.create",
            {
                "name": "web-in",
                "network": "zt",
                "endpointSelector": {"matchLabels": {"k8s.pod/name": "web"}},
                "ingress": [{"ports": [{"port": 8080}]}],
            },
        )
        gw.call(
            "qnf.v1.cmd.firewall.policy.create",
            {
                "name": "all-out",
                "network": "zt",
                "endpointSelector": {},
                "policyTypes": ["Egress"],
                "egress": [{}],
            },
        )
        deadline = time.monotonic() + 15
        while not fetch():
            assert time.monotonic() < deadline, "the policy was not enforced in time"
            time.sleep(0.2)
    finally:
        gw.close()


def test_podman_publishes_ports_through_the_fabric(fabric_node: FabricNode, podman: Podman) -> None:
    """`podman run -p` with qnf's own portMappings capability: no portmap plugin in the chain."""
    with NetNS(f"/run/netns/{fabric_node.ns}") as node:  # the node's "uplink" (no dummy module here)
        node.link("add", ifname="up0", kind="veth", peer={"ifname": "up1"})
        up = node.link_lookup(ifname="up0")[0]
        node.addr("add", index=up, address="192.0.2.1", prefixlen=32)
        node.link("set", index=up, state="up")
    gw = fabric_node.client()
    try:
        gw.call(
            "qnf.v1.cmd.vnet.network.create",
            {"name": "pubp", "subnet": "10.68.0.0/24", "isolation": "default-allow"},
        )
        write_conflist(podman.root / "net", conflist("pubp", state_dir=fabric_node.state, chain=[]))
        podman(
            "run", "-d", "--name", "web", "--network", "pubp", "-p", "8080:8080",
            "qnf-busybox:test", "httpd", "-f", "-p", "8080", "-h", "/etc",
        )  # fmt: skip
        ports = gw.call("qnf.v1.node.n1.nat.port.list", {})["ports"]
        published = [(p["host_port"], p["container_port"], p["source"]) for p in ports]
        assert published == [(8080, 8080, "endpoint")]
        podman("run", "-d", "--name", "client", "--network", "pubp", "qnf-busybox:test", "sleep", "600")
        deadline = time.monotonic() + 15
        while True:  # through the node's address and the published port (hairpin)
            page = podman(
                "exec", "client", "timeout", "3", "wget", "-q", "-O", "-", "http://192.0.2.1:8080/passwd",
                check=False,
            )  # fmt: skip
            if page.stdout.startswith("root:x:0:0") or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert page.stdout.startswith("root:x:0:0"), page.stderr

        # The same host port again: refused, and the refused container leaves nothing behind.
        clash = podman(
            "run", "-d", "--name", "web2", "--network", "pubp", "-p", "8080:80",
            "qnf-busybox:test", "sleep", "60", check=False,
        )  # fmt: skip
        assert clash.returncode != 0 and "8080" in clash.stderr, clash.stderr
        endpoints = gw.call("qnf.v1.node.n1.vnet.endpoint.list", {"network": "pubp"})["endpoints"]
        assert sorted(e["name"] for e in endpoints) == ["client", "web"]

        podman("rm", "-f", "-t", "0", "web")
        deadline = time.monotonic() + 5
        while gw.call("qnf.v1.node.n1.nat.port.list", {})["ports"]:
            assert time.monotonic() < deadline, "the published port outlived its container"
            time.sleep(0.05)
    finally:
        gw.close()
