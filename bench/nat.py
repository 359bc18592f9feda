"""NAT: the cost of a published port and of changing one with many in force.

What it measures, in one run on one throwaway node (the whole fabric, `qnf up`, in a test node
namespace, and an "outside" namespace beyond the node's uplink):

  1. TCP throughput (iperf3, one stream) from the outside host to a container, through a
     published port on the node's address vs straight to the container's address (the outside
     host gets a route for that), printed as a ratio. Both paths cross the same firewall (a
     default-allow network), so the ratio is what DNAT costs.
  2. Publishing and unpublishing one port over the signed bus with 1,000 published ports in
     force, p50/p99, vs a signed diag.echo round trip to the same agent (the bus floor). A reply
     to publish/unpublish means the kernel enforces it; the agent's own apply time (the
     element delta through libnftables) is read from its `qnf_nat_apply_seconds` histogram.

Everything is removed at the end, also on failure.

    python -m bench.nat [--seconds 5] [--ports 1000] [--n 100]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pyroute2 import NetNS

from libs.common.testing import Containers, FabricNode, NodeClient, fabric_on_new_node, outside_host

CMD = "qnf.v1.cmd"
NAT = "qnf.v1.node.n1.nat"
NODE_UPLINK, OUTSIDE = "192.0.2.1", "192.0.2.2"
NAT_METRICS = "http://127.0.0.1:9463/metrics"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


def iperf(outside: str, host: str, seconds: int) -> float:
    """Gbit/s received, one TCP stream from the outside host."""
    out = subprocess.run(
        ["nsenter", f"--net=/run/netns/{outside}", "iperf3", "-c", host, "-t", str(seconds), "-J"],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
    )
    if out.returncode != 0:
        raise RuntimeError(f"iperf3 to {host} failed: {out.stdout[-500:]} {out.stderr[-500:]}")
    return float(json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"]) / 1e9


def timed(gw: NodeClient, subject: str, body: dict[str, object]) -> float:
    started = time.perf_counter()
    gw.call(subject, body)
    return (time.perf_counter() - started) * 1000


def apply_histogram(fabric: FabricNode) -> tuple[float, float]:
    """(sum seconds, count) of the nat agent's port applies so far."""
    code = f"import urllib.request;print(urllib.request.urlopen({NAT_METRICS!r}, timeout=10).read().decode())"
    text = fabric.exec(sys.executable, "-c", code).stdout
    total = re.search(r'qnf_nat_apply_seconds_sum\{kind="ports"\} (\S+)', text)
    count = re.search(r'qnf_nat_apply_seconds_count\{kind="ports"\} (\S+)', text)
    return (float(total.group(1)) if total else 0.0, float(count.group(1)) if count else 0.0)


def run(seconds: int, ports: int, n: int) -> None:
    containers = Containers()
    server: subprocess.Popen[bytes] | None = None
    with (
        tempfile.TemporaryDirectory(prefix="qnf-bench-nat-") as tmp,
        fabric_on_new_node(Path(tmp) / "state") as fabric,
        outside_host(fabric.ns, node_address=NODE_UPLINK, address=OUTSIDE) as outside,
    ):
        gw = fabric.client()
        try:
            gw.call(
                f"{CMD}.vnet.network.create",
                {"name": "bench", "subnet": "10.150.0.0/16", "isolation": "default-allow"},
            )
            space, ip = containers.attach(gw, "bench", "srv")
            server = subprocess.Popen(
                ["nsenter", f"--net=/run/netns/{space}", "iperf3", "-s"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(0.5)
            gw.call(f"{NAT}.port.publish", {"container_id": space, "host_port": 5201, "container_port": 5201})
            published = iperf(outside, NODE_UPLINK, seconds)
            with NetNS(outside) as out:
                out.route("add", dst="10.150.0.0/16", gateway=NODE_UPLINK)
            direct = iperf(outside, ip, seconds)

            # Many ports in force, published concurrently (the agent checks them one at a time).
            batch = [
                (f"{NAT}.port.publish", {"container_id": space, "host_port": 20000 + i, "container_port": 80})
                for i in range(ports)
            ]
            started = time.perf_counter()
            for i in range(0, len(batch), 100):
                for reply in gw.batch(batch[i : i + 100]):
                    assert "reply" in reply, reply
            bulk_s = time.perf_counter() - started
            echo = [timed(gw, f"{CMD}.nat.diag.echo", {"text": "x"}) for _ in range(n)]
            apply_before = apply_histogram(fabric)
            pub, unpub = [], []
            for i in range(n):
                body = {"container_id": space, "host_port": 40000 + i, "container_port": 80}
                pub.append(timed(gw, f"{NAT}.port.publish", body))
                unpub.append(timed(gw, f"{NAT}.port.unpublish", {"id": f"n1.tcp.{40000 + i}.any"}))
            apply_after = apply_histogram(fabric)
        finally:
            if server is not None:
                server.kill()
                server.wait()
            gw.close()
            containers.close()

    print(f"TCP throughput, outside host -> container, one iperf3 stream of {seconds} s")
    print(f"  direct to the container address   {direct:8.2f} Gbit/s")
    print(f"  through a published port (DNAT)   {published:8.2f} Gbit/s")
    print(f"  published / direct                {published / direct:8.2f}x")
    print()
    print(f"one port published then unpublished, {n} times, with {ports} other ports in force (ms)")
    print(f"  {'':28} {'p50':>8} {'p99':>8}")
    for label, values in (("publish", pub), ("unpublish", unpub), ("bus floor: diag.echo", echo)):
        print(f"  {label:28} {statistics.median(values):8.2f} {pct(values, 0.99):8.2f}")
    floor = statistics.median(echo)
    print(f"  publish / echo p50            {statistics.median(pub) / floor:8.2f}x")
    print(f"  unpublish / echo p50          {statistics.median(unpub) / floor:8.2f}x")
    (s0, c0), (s1, c1) = apply_before, apply_after
    if c1 > c0:
        print(f"  agent's kernel apply, mean    {(s1 - s0) / (c1 - c0) * 1000:8.2f} ms (one port)")
    print(f"  publishing the first {ports} ports took {bulk_s:.1f} s ({bulk_s / ports * 1000:.2f} ms each)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--ports", type=int, default=1000)
    parser.add_argument("--n", type=int, default=100)
    args = parser.parse_args()
    run(args.seconds, args.ports, args.n)


if __name__ == "__main__":
    main()
