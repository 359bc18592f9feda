"""The firewall you can trust: start gating, convergence acks (issue 6), with real packets.

Scope: one fabric in a test node namespace (module scope), a zero-trust network with a server
endpoint. A container added through the real CNI plugin must not get a single packet past its
policy right after ADD returns; `policy.wait` must return only once the kernel enforces a change
(a probe right after proves it) and must name a node whose agent does not ack.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cni.install import install_plugin
from libs.common.ids import SpiffeId
from libs.common.testing import Containers, FabricNode, NodeClient, fabric_on_new_node
from tests.netns.test_cni import exec_plugin, net_config

CMD = "qnf.v1.cmd"
NODE_CMD = "qnf.v1.node.n1"
UDP_PORT = 9999
ECHO_PORT = 7000

# A long-lived TCP connection that sends a byte every 20 ms for `seconds` and prints the wall
# clock of every echo, so a test can see when its packets stopped passing.
STREAMER = """
import json, socket, sys, time
host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
c = socket.create_connection((host, port), timeout=2); c.settimeout(0.02)
print('connected', flush=True)
echoes = []
end = time.monotonic() + seconds
while time.monotonic() < end:
    try:
        c.sendall(b'x')
    except OSError:
        pass
    try:
        if c.recv(64):
            echoes.append(time.time())
    except OSError:
        pass
    time.sleep(0.02)
print(json.dumps(echoes), flush=True)
"""

SERVER = f"""
import asyncio
async def main():
    for port in (80, 5432):
        await asyncio.start_server(lambda r, w: w.close(), '0.0.0.0', port)
    async def echo(r, w):
        while data := await r.read(64):
            w.write(data)
            await w.drain()
    await asyncio.start_server(echo, None, {ECHO_PORT})  # IPv4 and IPv6
    class Echo(asyncio.DatagramProtocol):
        def connection_made(self, t): self.t = t
        def datagram_received(self, data, addr): self.t.sendto(data, addr)
    await asyncio.get_running_loop().create_datagram_endpoint(Echo, local_addr=('0.0.0.0', {UDP_PORT}))
    print('ready', flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""

# Started inside the container's namespace before ADD; sends the moment it reads a line, so the
# first datagram leaves well under a millisecond after ADD returned.
SENDER = f"""
import json, socket, sys, time
host = sys.argv[1]
sys.stdin.readline()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.setblocking(False)
sent = echoes = 0
first = None
start = time.monotonic()
while time.monotonic() - start < 0.3:
    try:
        u.sendto(b'x', (host, {UDP_PORT})); sent += 1
        first = first if first is not None else time.monotonic() - start
    except OSError:
        pass
    try:
        while True:
            u.recv(16); echoes += 1
    except (BlockingIOError, OSError):
        pass
    time.sleep(0.001)
time.sleep(0.2)
try:
    while True:
        u.recv(16); echoes += 1
except (BlockingIOError, OSError):
    pass
t = socket.socket(); t.settimeout(0.5)
try:
    t.connect((host, 80)); tcp = 'ok'
except OSError:
    tcp = 'blocked'
print(json.dumps({{"sent": sent, "echoes": echoes, "tcp": tcp, "first_s": first}}), flush=True)
"""


@dataclass
class Env:
    fabric: FabricNode
    gw: NodeClient
    admin: NodeClient
    containers: Containers
    srv_ip: str
    srv_space: str
    bin_dir: Path


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    containers = Containers()
    tmp = Path(tmp_path_factory.mktemp("fwtrust"))
    bin_dir = tmp / "cni-bin"
    install_plugin(bin_dir)
    with fabric_on_new_node(tmp / "state") as fabric:
        gw = fabric.client()
        admin = fabric.client(SpiffeId.user("qnf.local", "admin"))
        server = None
        try:
            gw.call(
                f"{CMD}.vnet.network.create",
                {"name": "zt", "subnet": "10.140.0.0/24", "subnet6": "fd00:140::/64"},
            )
            space, srv_ip = containers.attach(gw, "zt", "srv", labels={"app": "srv"})
            server = subprocess.Popen(
                ["nsenter", f"--net=/run/netns/{space}", sys.executable, "-c", SERVER],
                stdout=subprocess.PIPE,
                text=True,
            )
            assert server.stdout is not None and server.stdout.readline().strip() == "ready"
            # srv accepts anything from its own network: only the sender's egress decides.
            gw.call(
                f"{CMD}.firewall.policy.create",
                {
                    "name": "srv-in",
                    "network": "zt",
                    "endpointSelector": {"matchLabels": {"app": "srv"}},
                    "ingress": [{}],
                },
            )
            yield Env(fabric, gw, admin, containers, srv_ip, space, bin_dir)
        finally:
            if server is not None:
                server.kill()
                server.wait()
                assert server.stdout is not None
                server.stdout.close()
            admin.close()
            gw.close()
            containers.close()


def start_sender(space: str, host: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["nsenter", f"--net=/run/netns/{space}", sys.executable, "-c", SENDER, host],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def fire(sender: subprocess.Popen[str]) -> dict:  # type: ignore[type-arg]
    assert sender.stdin is not None and sender.stdout is not None
    sender.stdin.write("go\n")
    sender.stdin.flush()
    out = json.loads(sender.stdout.readline())
    sender.wait(10)
    sender.stdin.close()
    sender.stdout.close()
    return out  # type: ignore[no-any-return]


def cni_add(env: Env, space: str, labels: str) -> dict:  # type: ignore[type-arg]
    rc, out = exec_plugin(
        env.fabric,
        env.bin_dir,
        "qnf",
        "ADD",
        net_config(env.fabric, "zt"),
        container=space,
        netns=f"/run/netns/{space}",
        args=f"IgnoreUnknown=1;{labels}",
    )
    assert rc == 0 and out is not None, out
    return out


def wait_policy(env: Env, revision: int, timeout: float = 5) -> dict:  # type: ignore[type-arg]
    return env.gw.call(
        f"{CMD}.firewall.policy.wait", {"revision": revision, "timeout_s": timeout}, timeout=timeout + 5
    )


def test_no_packet_passes_before_the_firewall_enforces_a_new_container(env: Env) -> None:
    space = env.containers()
    sender = start_sender(space, env.srv_ip)
    try:
        cni_add(env, space, "app=client")
        first = fire(sender)  # the instant ADD returned
    finally:
        if sender.poll() is None:
            sender.kill()
            sender.wait()
    assert first["sent"] > 50 and first["first_s"] < 0.005, first
    # No egress policy selects app=client: not one datagram, not one SYN may get through.
    assert first["echoes"] == 0 and first["tcp"] == "blocked", first

    # The control: once a policy opens its egress (and wait says it is enforced), the same
    # sender gets through, so the silence above was the policy and not a broken path.
    policy = env.gw.call(
        f"{CMD}.firewall.policy.create",
        {
            "name": "client-out",
            "network": "zt",
            "endpointSelector": {"matchLabels": {"app": "client"}},
            "policyTypes": ["Egress"],
            "egress": [{}],
        },
    )
    done = wait_policy(env, policy["revision"])
    assert done["complete"] and done["acked"] == ["n1"] and done["pending"] == [], done
    again = fire(start_sender(space, env.srv_ip))
    assert again["echoes"] > 0 and again["tcp"] == "ok", again
    env.gw.call(f"{CMD}.firewall.policy.delete", {"name": "client-out", "network": "zt"})


def test_wait_returns_once_the_kernel_enforces_a_change(env: Env) -> None:
    space, _ = env.containers.attach(env.gw, "zt", "w1", labels={"app": "w1"})
    for round_ in range(3):
        policy = env.gw.call(
            f"{CMD}.firewall.policy.create",
            {
                "name": f"w1-out-{round_}",
                "network": "zt",
                "endpointSelector": {"matchLabels": {"app": "w1"}},
                "policyTypes": ["Egress"],
                "egress": [{"ports": [{"protocol": "UDP", "port": UDP_PORT}]}],
            },
        )
        done = wait_policy(env, policy["revision"])
        assert done["complete"], done
        assert fire(start_sender(space, env.srv_ip))["echoes"] > 0  # right after wait: enforced
        removed = env.gw.call(f"{CMD}.firewall.policy.delete", {"name": f"w1-out-{round_}", "network": "zt"})
        assert wait_policy(env, removed["revision"])["complete"]
        assert fire(start_sender(space, env.srv_ip))["echoes"] == 0  # and the delete is too


def test_wait_on_an_unknown_revision_is_a_clear_error(env: Env) -> None:
    out = env.gw.request(f"{CMD}.firewall.policy.wait", {"revision": 10_000_000})
    assert out["error"]["code"] == "invalid" and "revision" in out["error"]["message"], out
    out = env.gw.request(f"{CMD}.firewall.policy.wait", {"revision": 0})
    assert out["error"]["code"] == "invalid" and "revision" in out["error"]["message"], out


def test_wait_names_a_node_whose_agent_does_not_ack(env: Env) -> None:
    # Node n2 hosts an endpoint (its record is in KV) but its firewall agent is not running.
    record = {
        "endpoint_id": "n2-ghost",
        "request_id": "r",
        "container_id": "ghost",
        "ifname": "eth0",
        "netns": "/run/netns/ghost",
        "node": "n2",
        "network": "zt",
        "name": "ghost",
        "labels": {},
        "identity": "spiffe://qnf.local/network/zt/endpoint/ghost",
        "mac": "02:00:00:00:00:99",
        "mtu": 1500,
        "host_ifname": "q0000000099",
        "addresses": ["10.140.0.250/24"],
        "gateways": ["10.140.0.1"],
        "created_ms": 1,
    }
    env.admin.kv_put("qnf-endpoints", "n2-ghost", "Endpoint", record)
    try:
        policy = env.gw.call(
            f"{CMD}.firewall.policy.create",
            {"name": "n2-change", "network": "zt", "endpointSelector": {}, "policyTypes": ["Egress"]},
        )
        started = time.monotonic()
        done = wait_policy(env, policy["revision"], timeout=1)
        assert time.monotonic() - started < 4
        assert not done["complete"] and done["acked"] == ["n1"] and done["pending"] == ["n2"], done
    finally:
        env.admin.kv_delete("qnf-endpoints", "n2-ghost")
        env.gw.call(f"{CMD}.firewall.policy.delete", {"name": "n2-change", "network": "zt"})
    latest = env.gw.call(f"{CMD}.firewall.policy.list", {})
    assert all(p["name"] != "n2-change" for p in latest["policies"])


def test_add_is_undone_when_the_firewall_does_not_confirm(env: Env) -> None:
    (pid,) = env.fabric.service_pids("firewall")
    space = env.containers()
    os.kill(pid, signal.SIGSTOP)  # alive but silent: the gate must time out, not hang or pass
    try:
        out = env.gw.request(
            f"{NODE_CMD}.vnet.endpoint.add",
            {
                "request_id": space,
                "container_id": space,
                "ifname": "eth0",
                "netns": f"/run/netns/{space}",
                "network": "zt",
                "name": "gated",
            },
            timeout=20,
        )
    finally:
        os.kill(pid, signal.SIGCONT)
    assert out["error"]["code"] == "unavailable" and "firewall" in out["error"]["message"], out
    assert "undone" in out["error"]["message"]
    eps = env.gw.call(f"{NODE_CMD}.vnet.endpoint.list", {"network": "zt"})["endpoints"]
    assert "gated" not in {e["name"] for e in eps}
    links = env.fabric.exec("ip", "-o", "link").stdout
    assert all(e["host_ifname"] in links for e in eps)
    assert (
        subprocess.run(["ip", "-n", space, "-o", "link"], capture_output=True, text=True).stdout.count("eth0")
        == 0
    )


def stream(space: str, host: str, seconds: float) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [
            "nsenter",
            f"--net=/run/netns/{space}",
            sys.executable,
            "-c",
            STREAMER,
            host,
            str(ECHO_PORT),
            str(seconds),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "connected"
    return proc


def echo_times(proc: subprocess.Popen[str]) -> list[float]:
    assert proc.stdout is not None
    out = json.loads(proc.stdout.readline())
    proc.wait(10)
    proc.stdout.close()
    return out  # type: ignore[no-any-return]


def ipv6_of(env: Env, space: str) -> str:
    ep = env.gw.call("qnf.v1.node.n1.vnet.endpoint.get", {"container_id": space, "ifname": "eth0"})
    return next(a.split("/")[0] for a in ep["addresses"] if ":" in a)


@pytest.mark.parametrize(
    ("keep", "family"), [(False, 4), (True, 4), (False, 6)], ids=["cut", "kept", "cut-ipv6"]
)
def test_a_change_that_denies_an_established_connection_cuts_it(env: Env, keep: bool, family: int) -> None:
    app = f"tcp-{'keep' if keep else 'cut'}-{family}"
    space, ip = env.containers.attach(env.gw, "zt", app, labels={"app": app})
    target = env.srv_ip
    if family == 6:
        ip, target = ipv6_of(env, space), ipv6_of(env, env.srv_space)

    def allow(ports: list[int]) -> int:
        spec = {
            "name": f"{app}-out",
            "network": "zt",
            "endpointSelector": {"matchLabels": {"app": app}},
            "policyTypes": ["Egress"],
            "egress": [{"ports": [{"port": p} for p in ports]}],
            "keepEstablished": keep,
        }
        verb = "update" if ports != [ECHO_PORT] else "create"
        return env.gw.call(f"{CMD}.firewall.policy.{verb}", spec)["revision"]  # type: ignore[no-any-return]

    assert wait_policy(env, allow([ECHO_PORT]))["complete"]
    proc = stream(space, target, 3.0)
    time.sleep(1.0)
    revision = allow([80])  # the flow in progress is now denied to new connections
    changed = time.time()
    assert wait_policy(env, revision)["complete"]
    times = echo_times(proc)
    before = [t for t in times if t < changed]
    after = [t for t in times if t >= changed]
    assert len(before) > 20, times
    if keep:
        assert after and after[-1] > changed + 1.5, after  # keepEstablished: it runs on
    else:
        assert not after or after[-1] < changed + 1.0, after  # cut within one second
        cuts = [
            e
            for e in env.gw.events("qnf.v1.evt.firewall.connection.cut")
            if e["source"] == ip and e["destination"] == target and e["port"] == ECHO_PORT
        ]
        assert len(cuts) == 1 and cuts[0]["protocol"] == "TCP", cuts
    env.gw.call(f"{CMD}.firewall.policy.delete", {"name": f"{app}-out", "network": "zt"})


# Resolves the destination's MAC first (so no datagram waits in, or falls out of, the neighbour
# queue), then on a line from stdin sends `count` datagrams as fast as it can.
BURST = """
import socket, sys, time
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.sendto(b'w', (host, port)); time.sleep(0.3)
print('warm', flush=True)
sys.stdin.readline()
start = time.monotonic()
for _ in range(count):
    u.sendto(b'x', (host, port))
print(time.monotonic() - start, flush=True)
"""

Key = tuple[str, str, str, str]  # verdict, direction, network, policy


def kernel_counters(env: Env) -> dict[Key, float]:
    from prometheus_client.parser import text_string_to_metric_families

    code = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9461/metrics').read().decode())"
    text = env.fabric.exec(sys.executable, "-c", code).stdout
    out: dict[Key, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "qnf_firewall_packets_total":
                key = tuple(sample.labels[k] for k in ("verdict", "direction", "network", "policy"))
                out[key] = sample.value  # type: ignore[index]
    return out


def burst(env: Env, space: str, host: str, port: int, count: int) -> tuple[dict[Key, float], float]:
    """Send `count` datagrams; the change of every kernel counter, and how long sending took."""
    proc = subprocess.Popen(
        ["nsenter", f"--net=/run/netns/{space}", sys.executable, "-c", BURST, host, str(port), str(count)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    assert proc.stdout.readline().strip() == "warm"
    before = kernel_counters(env)
    proc.stdin.write("go\n")
    proc.stdin.flush()
    elapsed = float(proc.stdout.readline())
    proc.wait(10)
    proc.stdin.close()
    proc.stdout.close()
    time.sleep(0.2)
    after = kernel_counters(env)
    # Only counters of the network "attr" and of rules across networks: other tests' leftover
    # traffic (a cut TCP client retransmitting, say) may move the counters of theirs.
    moved = {
        k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0) and k[2] in ("attr", "")
    }
    return moved, elapsed


def denied_events(env: Env, dst: str, port: int) -> list[dict]:  # type: ignore[type-arg]
    events = env.gw.events("qnf.v1.evt.firewall.flow.denied")
    return [e for e in events if e["destination"] == dst and e["port"] == port]


@pytest.fixture(scope="module")
def flood(env: Env) -> tuple[str, str, str]:
    """`flood` may send anywhere (open egress); `locked` accepts nothing. (space, flood ip, locked ip)

    On a network of their own, so that no other test's leftover traffic moves its counters."""
    env.gw.call(f"{CMD}.vnet.network.create", {"name": "attr", "subnet": "10.141.0.0/24"})
    _, locked_ip = env.containers.attach(env.gw, "attr", "locked", labels={"app": "locked"})
    space, flood_ip = env.containers.attach(env.gw, "attr", "flood", labels={"app": "flood"})
    revision = env.gw.call(
        f"{CMD}.firewall.policy.create",
        {
            "name": "flood-out",
            "network": "attr",
            "endpointSelector": {"matchLabels": {"app": "flood"}},
            "policyTypes": ["Egress"],
            "egress": [{}],
        },
    )["revision"]
    assert wait_policy(env, revision)["complete"]
    return space, flood_ip, locked_ip


def test_a_drop_moves_exactly_its_rules_counter_and_names_it_in_an_event(
    env: Env, flood: tuple[str, str, str]
) -> None:
    space, flood_ip, locked_ip = flood
    moved, _ = burst(env, space, locked_ip, 9001, 10)
    # The datagrams pass flood's egress (a new flow's accept) and meet locked's default deny.
    assert moved == {
        ("accept", "egress", "attr", ""): 10,
        ("drop", "ingress", "attr", "default-deny"): 10,
    }, moved
    events = denied_events(env, locked_ip, 9001)
    assert events, "no flow.denied event"
    e = events[0]
    assert (e["source"], e["protocol"], e["direction"], e["network"]) == (flood_ip, "UDP", "ingress", "attr")
    assert e["rule"] == "default-deny/ingress" and e["destination_identity"].endswith("/endpoint/locked")
    assert e["source_identity"].endswith("/endpoint/flood")

    # An admin-tier Deny drops first: its own counter moves, and the event names its rule.
    revision = env.gw.call(
        f"{CMD}.firewall.policy.create",
        {
            "name": "no-5555",
            "tier": "admin",
            "priority": 1,
            "endpointSelector": {"matchLabels": {"app": "flood"}},
            "egress": [{"action": "Deny", "ports": [{"protocol": "UDP", "port": 5555}]}],
        },
    )["revision"]
    try:
        assert wait_policy(env, revision)["complete"]
        moved, _ = burst(env, space, env.srv_ip, 5555, 10)
        assert moved == {("drop", "egress", "", "no-5555"): 10}, moved
        (e, *_) = denied_events(env, env.srv_ip, 5555)
        assert e["rule"] == "no-5555/egress[0]" and e["policy"] == "no-5555" and e["direction"] == "egress"
    finally:
        env.gw.call(f"{CMD}.firewall.policy.delete", {"name": "no-5555"})


def test_a_flood_of_denied_packets_is_counted_exactly_but_not_published_in_full(
    env: Env, flood: tuple[str, str, str]
) -> None:
    space, _, locked_ip = flood
    count = 20_000
    moved, elapsed = burst(env, space, locked_ip, 9002, count)
    assert moved[("drop", "ingress", "attr", "default-deny")] == count, moved
    time.sleep(1.0)  # let the agent publish what it read
    events = denied_events(env, locked_ip, 9002)
    # The kernel logs at most a burst of 20, then 10/s, per endpoint: the bus sees a trickle.
    assert 1 <= len(events) <= 20 + 10 * (elapsed + 1.5), (len(events), elapsed)
