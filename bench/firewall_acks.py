"""Convergence and the cost of denied-flow logging, through the real fabric (issue 6).

The whole fabric (`qnf up`) runs in a throwaway node namespace.

  1. Policy change to all-acked. N endpoint records (1,000 and `--endpoints`) are written to
     `qnf-endpoints` as the admin identity (records of this node without veths: the firewall
     compiles and enforces them like any other, only no packets flow), then `--changes` policy
     changes (a policy selecting a tenth of them is created, then deleted, alternately), each
     timed from sending the signed request to `policy.wait` returning complete: the time an
     operator waits for "enforced everywhere". Its own `seconds` (ack collection alone) too.
  2. Denied-flow flood. Two real endpoints; one sends UDP to the other, whose ingress is denied,
     as fast as one process can for `--flood` seconds. Reported: packets dropped (the kernel
     counter, exact), flow.denied events published, and the firewall agent's CPU time over the
     flood (from /proc), against an idle interval of the same length.

    python -m bench.firewall_acks [--endpoints 10000] [--changes 20] [--flood 5]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

NET = "acks"
SUBNET = IPv4Network("10.96.0.0/14")
CMD = "qnf.v1.cmd"


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def record(i: int) -> dict[str, Any]:
    address = IPv4Address(int(SUBNET.network_address) + 1000 + i)
    return {
        "endpoint_id": f"bench{i:06d}",
        "request_id": f"r{i}",
        "container_id": f"bench{i:06d}",
        "ifname": "eth0",
        "netns": f"/run/netns/bench{i}",
        "node": "n1",
        "network": NET,
        "name": f"b{i}",
        "labels": {"app": str(i % 50)},
        "identity": f"spiffe://qnf.local/network/{NET}/endpoint/b{i}",
        "mac": f"02:42:{(i >> 16) & 255:02x}:{(i >> 8) & 255:02x}:{i & 255:02x}:01",
        "mtu": 1500,
        "host_ifname": f"qb{i:08d}",
        "addresses": [f"{address}/{SUBNET.prefixlen}"],
        "gateways": [str(SUBNET.network_address + 1)],
        "created_ms": 1,
    }


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks of 1/100 s


def converge(gw: Any, admin: Any, have: int, want: int, changes: int) -> dict[str, Any]:
    for i in range(have, want):
        admin.kv_put("qnf-endpoints", f"bench{i:06d}", "Endpoint", record(i))
    deadline = time.monotonic() + 300
    while True:
        status = gw.call("qnf.v1.node.n1.firewall.status")
        if status["in_sync"] and status["endpoints"] >= want:
            break
        assert time.monotonic() < deadline, status
        time.sleep(0.2)
    total, acks = [], []
    for c in range(changes):
        started = time.perf_counter()
        if c % 2 == 0:
            body = {
                "name": "tenth",
                "network": NET,
                "endpointSelector": {
                    "matchExpressions": [
                        {"key": "app", "operator": "In", "values": ["1", "2", "3", "4", "5"]}
                    ]
                },
                "ingress": [
                    {"peers": [{"endpointSelector": {"matchLabels": {"app": "7"}}}], "ports": [{"port": 443}]}
                ],
            }
            revision = gw.call(f"{CMD}.firewall.policy.create", body)["revision"]
        else:
            revision = gw.call(f"{CMD}.firewall.policy.delete", {"name": "tenth", "network": NET})["revision"]
        done = gw.call(f"{CMD}.firewall.policy.wait", {"revision": revision, "timeout_s": 30}, timeout=40)
        assert done["complete"], done
        total.append(time.perf_counter() - started)
        acks.append(done["seconds"])
    return {"endpoints": want, "total": total, "acks": acks}


def flood(fabric: Any, gw: Any, seconds: float) -> dict[str, Any]:
    from libs.common.testing import Containers

    containers = Containers()
    try:
        gw.call(f"{CMD}.vnet.network.create", {"name": "flood", "subnet": "10.95.0.0/24"})
        _, target = containers.attach(gw, "flood", "target", labels={"app": "target"})
        space, _ = containers.attach(gw, "flood", "sender", labels={"app": "sender"})
        revision = gw.call(
            f"{CMD}.firewall.policy.create",
            {
                "name": "sender-out",
                "network": "flood",
                "endpointSelector": {"matchLabels": {"app": "sender"}},
                "policyTypes": ["Egress"],
                "egress": [{}],
            },
        )["revision"]
        gw.call(f"{CMD}.firewall.policy.wait", {"revision": revision})
        (pid,) = fabric.service_pids("firewall")
        idle_before = cpu_seconds(pid)
        time.sleep(seconds)
        idle = cpu_seconds(pid) - idle_before
        before_events = len(gw.events("qnf.v1.evt.firewall.flow.denied", quiet=0.5))
        code = (
            "import socket, sys, time\n"
            "u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"end = time.monotonic() + {seconds}; n = 0\n"
            "while time.monotonic() < end:\n"
            "    for _ in range(256):\n"
            f"        u.sendto(b'x', ('{target}', 9000)); n += 1\n"
            "print(n)\n"
        )
        cpu_before = cpu_seconds(pid)
        sent = int(
            subprocess.run(
                ["nsenter", f"--net=/run/netns/{space}", sys.executable, "-c", code],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        cpu = cpu_seconds(pid) - cpu_before
        time.sleep(1.0)
        events = len(gw.events("qnf.v1.evt.firewall.flow.denied", quiet=0.5)) - before_events
        return {"sent": sent, "events": events, "cpu_s": cpu, "idle_cpu_s": idle, "seconds": seconds}
    finally:
        containers.close()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--endpoints", type=int, default=10_000)
    parser.add_argument("--changes", type=int, default=20)
    parser.add_argument("--flood", type=float, default=5.0)
    args = parser.parse_args()

    from libs.common.ids import SpiffeId
    from libs.common.testing import fabric_on_new_node

    with tempfile.TemporaryDirectory() as tmp, fabric_on_new_node(Path(tmp) / "state") as fabric:
        gw = fabric.client()
        admin = fabric.client(SpiffeId.user("qnf.local", "admin"))
        try:
            f = flood(fabric, gw, args.flood)
            print(
                f"denied-flow flood, {f['seconds']:g} s: {f['sent']} datagrams sent to a denied port, "
                f"{f['events']} flow.denied events published; firewall agent CPU {f['cpu_s']:.2f} s "
                f"({100 * f['cpu_s'] / f['seconds']:.1f}% of one CPU;"
                f" idle: {100 * f['idle_cpu_s'] / f['seconds']:.1f}%)"
            )
            gw.call(f"{CMD}.vnet.network.create", {"name": NET, "subnet": str(SUBNET)})
            have = 0
            for want in sorted({1000, args.endpoints}):
                r = converge(gw, admin, have, want, args.changes)
                have = want
                print(
                    f"policy change -> all acked at {want} endpoints, {args.changes} changes: "
                    f"p50 {_pct(r['total'], 0.5):.0f} ms, p99 {_pct(r['total'], 0.99):.0f} ms "
                    f"(ack collection in policy.wait: p50 {_pct(r['acks'], 0.5):.0f} ms,"
                    f" p99 {_pct(r['acks'], 0.99):.0f} ms)",
                    flush=True,
                )
        finally:
            admin.close()
            gw.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
