"""The CNI plugin driven exactly as a runtime drives it: exec with CNI_* env and stdin config.

Scope: every verb (ADD, DEL, CHECK, VERSION, STATUS, GC) against the fabric in a test node
namespace; chains with the reference portmap, tuning and bandwidth plugins run the way libcni
runs them (prevResult threaded through, DEL in reverse); every error path and its code.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from pyroute2 import NetNS

from cni.install import conflist, install_plugin
from libs.common.testing import FabricNode, start_fabric, stop_fabric

REFERENCE_PLUGINS = Path("/usr/lib/cni")


@pytest.fixture
def plugin_dir(tmp_path: Path) -> Path:
    """Our launcher beside links to the reference plugins, as a runtime's CNI_PATH would have."""
    bin_dir = tmp_path / "cni-bin"
    install_plugin(bin_dir)
    for name in ("portmap", "tuning", "bandwidth", "bridge", "host-local"):
        (bin_dir / name).symlink_to(REFERENCE_PLUGINS / name)
    return bin_dir


def exec_plugin(
    fabric: FabricNode,
    bin_dir: Path,
    plugin: str,
    command: str,
    config: dict[str, Any] | bytes,
    *,
    container: str = "",
    netns: str = "",
    ifname: str = "eth0",
    args: str = "",
    env_drop: tuple[str, ...] = (),
) -> tuple[int, dict[str, Any] | None]:
    env = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": container,
        "CNI_NETNS": netns,
        "CNI_IFNAME": ifname,
        "CNI_ARGS": args,
        "CNI_PATH": str(bin_dir),
        "PATH": os.environ["PATH"],
    }
    for name in env_drop:
        env.pop(name, None)
    stdin = config if isinstance(config, bytes) else json.dumps(config).encode()
    proc = subprocess.run(
        ["nsenter", f"--net=/run/netns/{fabric.ns}", str(bin_dir / plugin)],
        input=stdin,
        env=env,
        capture_output=True,
        timeout=60,
    )
    out = proc.stdout.decode().strip()
    return proc.returncode, (json.loads(out) if out else None)


def net_config(fabric: FabricNode, network: str, **extra: Any) -> dict[str, Any]:
    return {"cniVersion": "1.1.0", "name": network, "type": "qnf", "stateDir": str(fabric.state), **extra}


def run_chain(
    fabric: FabricNode,
    bin_dir: Path,
    command: str,
    doc: dict[str, Any],
    container: str,
    netns: str,
    runtime_config: dict[str, Any],
    prev: dict[str, Any] | None = None,
) -> tuple[int, dict[str, Any] | None]:
    """What libcni does with a conflist: each plugin in turn (reverse for DEL), prevResult threaded."""
    plugins = doc["plugins"] if command != "DEL" else list(reversed(doc["plugins"]))
    result = prev
    for plugin in plugins:
        config = {**plugin, "name": doc["name"], "cniVersion": doc["cniVersion"]}
        caps = {k: v for k, v in runtime_config.items() if plugin.get("capabilities", {}).get(k)}
        if caps:
            config["runtimeConfig"] = caps
        if result is not None:
            config["prevResult"] = result
        rc, out = exec_plugin(
            fabric, bin_dir, plugin["type"], command, config, container=container, netns=netns
        )
        if rc != 0:
            return rc, out
        if command == "ADD":
            result = out
    return 0, result


@pytest.fixture
def gw(fabric_node: FabricNode):  # type: ignore[no-untyped-def]
    client = fabric_node.client()
    client.call(
        "qnf.v1.cmd.vnet.network.create",
        {"name": "blue", "subnet": "10.77.0.0/24", "isolation": "default-allow"},
    )
    yield client
    client.close()


def test_version(fabric_node, plugin_dir) -> None:  # type: ignore[no-untyped-def]
    rc, out = exec_plugin(fabric_node, plugin_dir, "qnf", "VERSION", {"cniVersion": "1.1.0"})
    assert rc == 0 and out is not None
    assert out["cniVersion"] == "1.1.0" and {"0.4.0", "1.0.0", "1.1.0"} <= set(out["supportedVersions"])


def test_add_check_del_lifecycle(fabric_node, plugin_dir, gw, container_netns) -> None:  # type: ignore[no-untyped-def]
    ns = container_netns()
    netns_path = f"/run/netns/{ns}"
    config = net_config(fabric_node, "blue")
    rc, result = exec_plugin(
        fabric_node,
        plugin_dir,
        "qnf",
        "ADD",
        config,
        container="ctr1",
        netns=netns_path,
        args="IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-1;app=web",
    )
    assert rc == 0, result
    assert result is not None and result["cniVersion"] == "1.1.0"
    container_if = result["interfaces"][2]
    assert container_if["name"] == "eth0" and container_if["sandbox"] == netns_path
    assert result["ips"] == [{"address": "10.77.0.2/24", "gateway": "10.77.0.1", "interface": 2}]
    assert result["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.77.0.1"}]
    assert result["dns"]["nameservers"] == ["10.77.0.1"] and result["dns"]["search"][0] == "blue.qnf.local"
    with NetNS(netns_path) as nsh:
        link = nsh.get_links(nsh.link_lookup(ifname="eth0")[0])[0]
        assert link.get("address") == container_if["mac"]
    record = gw.call("qnf.v1.node.n1.vnet.endpoint.get", {"container_id": "ctr1", "ifname": "eth0"})
    assert record["name"] == "web-1" and record["labels"] == {
        "k8s.pod/name": "web-1",
        "k8s.pod/namespace": "shop",
        "app": "web",
    }

    again_rc, again = exec_plugin(
        fabric_node, plugin_dir, "qnf", "ADD", config, container="ctr1", netns=netns_path
    )
    assert again_rc == 0 and again == result  # a runtime's retry of the same ADD

    rc, out = exec_plugin(
        fabric_node,
        plugin_dir,
        "qnf",
        "CHECK",
        {**config, "prevResult": result},
        container="ctr1",
        netns=netns_path,
    )
    assert (rc, out) == (0, None)
    with NetNS(netns_path) as nsh:  # break it: CHECK must notice
        nsh.addr("del", index=nsh.link_lookup(ifname="eth0")[0], address="10.77.0.2", prefixlen=24)
    rc, out = exec_plugin(
        fabric_node,
        plugin_dir,
        "qnf",
        "CHECK",
        {**config, "prevResult": result},
        container="ctr1",
        netns=netns_path,
    )
    assert rc == 1 and out is not None and out["code"] == 7

    for _ in range(2):  # DEL, and DEL again: both succeed with no output
        rc, out = exec_plugin(
            fabric_node,
            plugin_dir,
            "qnf",
            "DEL",
            {**config, "prevResult": result},
            container="ctr1",
            netns=netns_path,
        )
        assert (rc, out) == (0, None)
    with NetNS(f"/run/netns/{fabric_node.ns}") as node:
        assert not node.link_lookup(ifname=result["interfaces"][1]["name"])


@pytest.mark.parametrize("version", ["0.4.0", "1.0.0"])
def test_older_result_versions(fabric_node, plugin_dir, gw, container_netns, version) -> None:  # type: ignore[no-untyped-def]
    ns = container_netns()
    rc, result = exec_plugin(
        fabric_node,
        plugin_dir,
        "qnf",
        "ADD",
        {**net_config(fabric_node, "blue"), "cniVersion": version},
        container=ns,
        netns=f"/run/netns/{ns}",
    )
    assert rc == 0 and result is not None and result["cniVersion"] == version
    assert ("version" in result["ips"][0]) == (version == "0.4.0")
    assert "mtu" not in result["interfaces"][2]


def test_chained_with_reference_plugins(fabric_node, plugin_dir, gw, container_netns) -> None:  # type: ignore[no-untyped-def]
    gw.call(
        "qnf.v1.cmd.vnet.network.create",
        {"name": "dual", "subnet": "10.78.0.0/24", "subnet6": "fd00:78::/64"},
    )
    ns = container_netns()
    doc = conflist("dual", state_dir=fabric_node.state, chain=["portmap", "tuning", "bandwidth"])
    runtime = {
        "portMappings": [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}],
        "bandwidth": {
            "ingressRate": 10_000_000,
            "ingressBurst": 1_000_000,
            "egressRate": 10_000_000,
            "egressBurst": 1_000_000,
        },
    }
    rc, result = run_chain(fabric_node, plugin_dir, "ADD", doc, ns, f"/run/netns/{ns}", runtime)
    assert rc == 0, result
    assert result is not None and [ip["address"] for ip in result["ips"]] == ["10.78.0.2/24", "fd00:78::2/64"]
    nft = fabric_node.exec("nft", "list", "ruleset").stdout
    assert "18080" in nft  # portmap programmed the mapping from our prevResult
    somaxconn = subprocess.run(
        ["nsenter", f"--net=/run/netns/{ns}", "cat", "/proc/sys/net/core/somaxconn"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert somaxconn == "1024"  # tuning acted in our sandbox
    host_if = result["interfaces"][1]["name"]
    assert "tbf" in fabric_node.exec("tc", "qdisc", "show", "dev", host_if).stdout  # bandwidth found our veth
    # Debian's portmap (1.1.1) fails its own CHECK, looking for IPv4 rules in the IPv6 table; check the rest.
    checkable = {**doc, "plugins": [p for p in doc["plugins"] if p["type"] != "portmap"]}
    rc, out = run_chain(
        fabric_node, plugin_dir, "CHECK", checkable, ns, f"/run/netns/{ns}", runtime, prev=result
    )
    assert rc == 0, out
    rc, out = run_chain(fabric_node, plugin_dir, "DEL", doc, ns, f"/run/netns/{ns}", runtime, prev=result)
    assert rc == 0, out
    assert "18080" not in fabric_node.exec("nft", "list", "ruleset").stdout
    assert (
        gw.request("qnf.v1.node.n1.vnet.endpoint.get", {"container_id": ns, "ifname": "eth0"})["error"][
            "code"
        ]
        == "not_found"
    )


def test_status_and_gc(fabric_node, plugin_dir, gw, container_netns) -> None:  # type: ignore[no-untyped-def]
    config = net_config(fabric_node, "blue")
    assert exec_plugin(fabric_node, plugin_dir, "qnf", "STATUS", config) == (0, None)
    rc, out = exec_plugin(fabric_node, plugin_dir, "qnf", "STATUS", net_config(fabric_node, "nope"))
    assert rc == 1 and out is not None and out["code"] == 50
    keep, drop = container_netns(), container_netns()
    for ns in (keep, drop):
        assert (
            exec_plugin(
                fabric_node, plugin_dir, "qnf", "ADD", config, container=ns, netns=f"/run/netns/{ns}"
            )[0]
            == 0
        )
    gc = {**config, "cni.dev/valid-attachments": [{"containerID": keep, "ifname": "eth0"}]}
    assert exec_plugin(fabric_node, plugin_dir, "qnf", "GC", gc) == (0, None)
    listed = gw.call("qnf.v1.node.n1.vnet.endpoint.list", {"network": "blue"})["endpoints"]
    assert [e["container_id"] for e in listed] == [keep]


@pytest.mark.parametrize(
    ("stdin", "env", "code"),
    [
        (b"{not json", {}, 6),
        (b"[1, 2]", {}, 6),
        (None, {"drop": ("CNI_COMMAND",)}, 4),
        (None, {"command": "FROB"}, 4),
        (None, {"drop": ("CNI_CONTAINERID",)}, 4),
        (None, {"drop": ("CNI_NETNS",)}, 4),
        (None, {"ifname": "an-interface-name-too-long"}, 4),
        (None, {"args": "notapair"}, 4),
        (None, {"config": {"cniVersion": "9.9.9"}}, 1),
        (None, {"config": {"cniVersion": ""}}, 7),
        (None, {"config": {"name": ""}}, 7),
        (None, {"config": {"network": "nope"}}, 7),
        (None, {"netns": "/run/netns/vanished"}, 3),
        (None, {"config": {"runtimeConfig": {"ips": ["10.99.0.5/24"]}}}, 7),
    ],
    ids=[
        "bad-json",
        "not-object",
        "no-command",
        "bad-command",
        "no-containerid",
        "no-netns",
        "long-ifname",
        "bad-args",
        "bad-version",
        "no-version",
        "no-name",
        "unknown-network",
        "vanished-netns",
        "ip-outside",
    ],
)
def test_add_errors(fabric_node, plugin_dir, gw, container_netns, stdin, env, code) -> None:  # type: ignore[no-untyped-def]
    ns = container_netns()
    config = {**net_config(fabric_node, "blue"), **env.get("config", {})}
    rc, out = exec_plugin(
        fabric_node,
        plugin_dir,
        "qnf",
        env.get("command", "ADD"),
        stdin or config,
        container="c-err",
        netns=env.get("netns", f"/run/netns/{ns}"),
        ifname=env.get("ifname", "eth0"),
        args=env.get("args", ""),
        env_drop=env.get("drop", ()),
    )
    assert rc == 1 and out is not None, out
    assert out["code"] == code and out["msg"], out
    assert gw.call("qnf.v1.node.n1.vnet.endpoint.list", {})["endpoints"] == []


def test_agent_unreachable(fabric_node, plugin_dir, gw, container_netns, tmp_path) -> None:  # type: ignore[no-untyped-def]
    ns = container_netns()
    config = net_config(fabric_node, "blue")
    rc, result = exec_plugin(
        fabric_node, plugin_dir, "qnf", "ADD", config, container="c1", netns=f"/run/netns/{ns}"
    )
    assert rc == 0 and result is not None
    stop_fabric(fabric_node)
    other = container_netns()
    rc, out = exec_plugin(
        fabric_node, plugin_dir, "qnf", "ADD", config, container="c2", netns=f"/run/netns/{other}"
    )
    assert rc == 1 and out is not None and out["code"] == 11
    rc, out = exec_plugin(fabric_node, plugin_dir, "qnf", "STATUS", config)
    assert rc == 1 and out is not None and out["code"] == 50
    # DEL while the agent is down succeeds, and leaves a durable request...
    assert exec_plugin(
        fabric_node, plugin_dir, "qnf", "DEL", config, container="c1", netns=f"/run/netns/{ns}"
    ) == (0, None)
    assert len(list((fabric_node.state / "run" / "cni-pending").glob("*.json"))) == 1
    # ...that the agent finishes when it is back: nothing leaks.
    restarted = start_fabric(fabric_node.ns, fabric_node.state)
    fabric_node.proc = restarted.proc  # so the fixture's teardown stops the new one
    client = restarted.client()
    try:
        assert client.call("qnf.v1.node.n1.vnet.endpoint.list", {})["endpoints"] == []
    finally:
        client.close()
    assert list((fabric_node.state / "run" / "cni-pending").glob("*.json")) == []
    with NetNS(f"/run/netns/{fabric_node.ns}") as node:
        assert not node.link_lookup(ifname=result["interfaces"][1]["name"])


def test_runtime_config_ips_and_mac(fabric_node, plugin_dir, gw, container_netns) -> None:  # type: ignore[no-untyped-def]
    ns = container_netns()
    config = net_config(
        fabric_node, "blue", runtimeConfig={"ips": ["10.77.0.50/24"], "mac": "02:11:22:33:44:55"}
    )
    rc, result = exec_plugin(
        fabric_node, plugin_dir, "qnf", "ADD", config, container="c-static", netns=f"/run/netns/{ns}"
    )
    assert rc == 0 and result is not None, result
    assert (
        result["ips"][0]["address"] == "10.77.0.50/24"
        and result["interfaces"][2]["mac"] == "02:11:22:33:44:55"
    )
    with NetNS(f"/run/netns/{ns}") as nsh:
        link = nsh.get_links(nsh.link_lookup(ifname="eth0")[0])[0]
        assert link.get("address") == "02:11:22:33:44:55"
        assert [a.get_attr("IFA_ADDRESS") for a in nsh.get_addr(index=link["index"], family=2)] == [
            "10.77.0.50"
        ]
