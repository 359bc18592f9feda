"""The fabric's resolver against dnsmasq: queries per second and latency, same machine, same run.

What it measures, for two query sets — fabric names (`ep<i>.bench.qnf.local A`, answered from
the fabric's own records) and forwarded names (`fwd<i>.example.test A`, answered by a test
upstream once and then from the fabric's forwarding cache) — against dnsmasq serving the very
same names and addresses from its own records (no upstream at all):

  1. saturation: dnsperf with 4 sockets, 2 threads and up to 100 queries outstanding for
     `--seconds`: queries per second completed, lost queries, mean latency;
  2. unloaded latency: dnsperf paced at 1000 queries/s (>= 2000 queries; a query takes well
     under 1 ms, so there is one in flight at a time), each query's round trip from `-v`,
     p50/p99 — the same method for every server. (`-q 1` would say "one outstanding" outright,
     but dnsperf 2.10 then stalls between queries, down to ~20 queries/s here: `-q 10` it is);
  3. paced: 1900 queries/s of fabric names, just under the resolver's per-client limit, so the
     two servers can be compared under load where the limit does not decide the outcome;
  4. where the time goes: the CPU time (user + system, /proc/PID/stat) the answering process
     spent per query in each run above, and for qnf its own receive-to-reply-sent time per fabric
     answer from its `qnf_dns_query_seconds` histogram (scraped from the dns service's metrics);

printed side by side with the ratio qnf/dnsmasq, and informational PASS/FAIL against the targets
(>= 0.9x dnsmasq's qps for fabric names, p50 <= 30 us unloaded).

How: one throwaway node namespace runs the whole fabric (`qnf up`, as in `bench.vnet`), with
QNF_DNS_UPSTREAMS pointing at a tiny dnslib resolver on the node's loopback (like
`tests/netns/test_dns.py`). Two networks are created through the signed bus as the gateway
identity: `bench` (10.160.0.0/24, `--endpoints` container namespaces named ep0..) and `other`
(10.161.0.0/24, one endpoint `x0`). dnsperf runs inside ep0's namespace: queries come from the
bench network's subnet, so the resolver's scope check applies to every one of them. The reference
dnsmasq runs in the node namespace, bound to the bench gateway's address on port 5300, so both
servers get the same packets on the same path (container veth, bridge, br_netfilter and the
fabric's nftables with conntrack) and differ only in the process that answers; the ratios are
against it. A second dnsmasq on ep0's own loopback shows what that path costs (and is where
figures such as "144k qps, p50 19 us" come from); it is for reference only.

Why the qnf saturation number is what it is: the resolver limits each client address to
RATE_PER_CLIENT queries/s with a burst of BURST_PER_CLIENT (services/dns/adapters/server.py) and
drops the excess without an answer. dnsperf sends from one address, so the as-is saturation
figure is the limiter's, not the resolver's: the report prints the limiter's ceiling, the lost
queries and dnsperf's per-second rates beside it, and the CPU time per query, from which the
resolver's own one-core ceiling can be read. The service is measured unmodified.

Correctness is checked in the same run: a sample of fabric and forwarded names answers with the
right address from every server; a name and a reverse name of the `other` network get NXDOMAIN
with no records from ep0 (while x0 resolves its own name); every qnf answer in every dnsperf run
is NOERROR, and 2 s of dnsperf queries for the other network's name from ep0 are all NXDOMAIN.
The exit status is 1 when a check fails; the targets are informational.

Everything — both dnsmasqs, the upstream, the fabric, the container and node namespaces, the
temporary directory — is removed at the end, also on failure, Ctrl-C or SIGTERM; processes are
stopped by their PID.

    python -m bench.dns [--endpoints 50] [--seconds 5] [--forwarded 50]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from dnslib import RCODE, DNSRecord

from libs.common.ids import SERVICES
from services.dns.adapters.server import BURST_PER_CLIENT, RATE_PER_CLIENT

if TYPE_CHECKING:
    from libs.common.testing import FabricNode, NodeClient

DOMAIN = "qnf.local"
NETWORK = "bench"
SUBNET = "10.160.0.0/24"
GATEWAY = "10.160.0.1"
OTHER = "other"
OTHER_SUBNET = "10.161.0.0/24"
OTHER_GATEWAY = "10.161.0.1"
OTHER_NAME = "x0"
FORWARD_ZONE = "example.test"
UPSTREAM_PORT = 5353  # the test upstream, on the node's loopback
DNSMASQ_PORT = 5300  # dnsmasq, on the bench network's gateway address and on ep0's loopback
LOOPBACK = "dnsmasq lo"  # the reference row for dnsmasq on the client's own loopback
UNLOADED_QUERIES = 2000
UNLOADED_QPS = 1000
PACED_QPS = 1900  # just under RATE_PER_CLIENT
SATURATION = ["-c", "4", "-T", "2", "-q", "100", "-t", "1"]
TARGET_QPS_RATIO = 0.9
TARGET_P50_US = 30.0
DNSPERF_SLACK_S = 60.0
METRICS_URL = f"http://127.0.0.1:{9460 + SERVICES.index('dns')}/metrics"  # in the node namespace

UPSTREAM = f"""
import re, socket
from dnslib import DNSRecord, RR, A, QTYPE, RCODE
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", {UPSTREAM_PORT}))
name = re.compile(r"fwd(\\d+)\\.{re.escape(FORWARD_ZONE)}\\.$")
print("ready", flush=True)
while True:
    data, addr = s.recvfrom(4096)
    try:
        q = DNSRecord.parse(data)
    except Exception:
        continue
    r = q.reply()
    m = name.match(str(q.q.qname).lower())
    if m is None:
        r.header.rcode = RCODE.NXDOMAIN
    elif q.q.qtype == QTYPE.A:
        n = int(m.group(1))
        r.add_answer(RR(q.q.qname, QTYPE.A, rdata=A("198.18.%d.%d" % (n // 250, n % 250 + 1)), ttl=3600))
    s.sendto(r.pack(), addr)
"""


def forwarded_address(i: int) -> str:
    """What the test upstream answers for fwd<i> (the same formula as in UPSTREAM)."""
    return f"198.18.{i // 250}.{i % 250 + 1}"


# ---------------------------------------------------------------------- dnsperf


@dataclass
class Perf:
    """One dnsperf run, parsed from its report."""

    sent: int
    completed: int
    lost: int
    qps: float
    avg_latency_s: float
    rcodes: dict[str, int]
    latencies: list[float] = field(default_factory=list)  # seconds, from -v
    intervals: list[float] = field(default_factory=list)  # qps per -S interval
    cpu_s: float = float("nan")  # CPU time (user + system) of the answering process during the run
    served: tuple[float, float] | None = None  # qnf: (seconds, count) added to qnf_dns_query_seconds

    @property
    def lost_pct(self) -> float:
        return 100.0 * self.lost / self.sent if self.sent else 0.0


_NUM = {
    "sent": re.compile(r"Queries sent:\s+(\d+)"),
    "completed": re.compile(r"Queries completed:\s+(\d+)"),
    "lost": re.compile(r"Queries lost:\s+(\d+)"),
    "qps": re.compile(r"Queries per second:\s+([\d.]+)"),
    "avg": re.compile(r"Average Latency \(s\):\s+([\d.]+)"),
}
_RCODES = re.compile(r"Response codes:\s+(.*)")
_VERBOSE = re.compile(r"^> (\S+) \S+ \S+ ([\d.]+)$", re.M)
_INTERVAL = re.compile(r"^\d+\.\d+: ([\d.]+)$", re.M)


def parse_dnsperf(text: str) -> Perf:
    """The numbers of a dnsperf 2.x report (and its -v / -S lines when present)."""
    found = {key: rx.search(text) for key, rx in _NUM.items()}
    missing = [key for key, m in found.items() if m is None]
    if missing:
        raise RuntimeError(f"dnsperf report without {missing}:\n{text[-2000:]}")
    value = {key: m.group(1) for key, m in found.items() if m is not None}
    codes = _RCODES.search(text)
    rcodes = {k: int(v) for k, v in re.findall(r"(\w+) (\d+) \(", codes.group(1))} if codes else {}
    return Perf(
        sent=int(value["sent"]),
        completed=int(value["completed"]),
        lost=int(value["lost"]),
        qps=float(value["qps"]),
        avg_latency_s=float(value["avg"]),
        rcodes=rcodes,
        latencies=[float(m.group(2)) for m in _VERBOSE.finditer(text)],
        intervals=[float(m.group(1)) for m in _INTERVAL.finditer(text)],
    )


def dnsperf(space: str, server: str, port: int, data: Path, args: list[str], seconds: float) -> Perf:
    """dnsperf inside `space` against server:port with the query file `data`."""
    argv = ["nsenter", f"--net=/run/netns/{space}", "dnsperf", "-s", server, "-p", str(port)]
    proc = subprocess.run(
        [*argv, "-d", str(data), *args], capture_output=True, text=True, timeout=seconds + DNSPERF_SLACK_S
    )
    if proc.returncode != 0:
        raise RuntimeError(f"dnsperf exited {proc.returncode}: {proc.stderr.strip()} {proc.stdout[-1000:]}")
    return parse_dnsperf(proc.stdout)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of `pids` (all their threads), from /proc/PID/stat."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / tick


_SAMPLE = re.compile(r"^(qnf_dns_query_seconds_(?:sum|count))\s+(\S+)$", re.M)


def served(node: str) -> tuple[float, float]:
    """(sum, count) of the resolver's own qnf_dns_query_seconds: receive to reply sent, per query."""
    code = f"import urllib.request;print(urllib.request.urlopen({METRICS_URL!r}, timeout=10).read().decode())"
    proc = subprocess.run(
        ["nsenter", f"--net=/run/netns/{node}", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"could not fetch {METRICS_URL} in {node}: {proc.stderr.strip()}")
    found = dict(_SAMPLE.findall(proc.stdout))
    return float(found.get("qnf_dns_query_seconds_sum", 0)), float(
        found.get("qnf_dns_query_seconds_count", 0)
    )


# ---------------------------------------------------------------------- probe (inside a namespace)


def probe(server: str, port: int) -> int:
    """`--probe`: answer the JSON list of [name, qtype] on stdin with one JSON list on stdout.

    Runs inside a container namespace (through nsenter); sequential queries, 2 s timeout each,
    None for a query that got no answer.
    """
    questions = json.load(sys.stdin)
    out: list[dict[str, Any] | None] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2.0)
        for name, qtype in questions:
            query = DNSRecord.question(name, qtype)
            sock.sendto(query.pack(), (server, port))
            try:
                while True:
                    reply = DNSRecord.parse(sock.recv(65535))
                    if reply.header.id == query.header.id:
                        break
            except TimeoutError:
                out.append(None)
                continue
            out.append(
                {
                    "rcode": RCODE.get(reply.header.rcode),
                    "aa": bool(reply.header.aa),
                    "answers": sorted(str(rr.rdata) for rr in reply.rr),
                }
            )
    print(json.dumps(out))
    return 0


def ask(space: str, server: str, port: int, questions: list[tuple[str, str]]) -> list[dict[str, Any] | None]:
    """Run `--probe` in `space` (a fresh interpreter, so no namespace switching in this one)."""
    proc = subprocess.run(
        [
            "nsenter",
            f"--net=/run/netns/{space}",
            sys.executable,
            "-m",
            "bench.dns",
            "--probe",
            server,
            str(port),
        ],
        input=json.dumps(questions),
        capture_output=True,
        text=True,
        timeout=30 + 2.5 * len(questions),
        cwd=Path(__file__).resolve().parents[1],
    )
    if proc.returncode != 0:
        raise RuntimeError(f"probe in {space} failed: {proc.stderr.strip()}")
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def wait_answer(space: str, server: str, port: int, name: str, want: list[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        got = ask(space, server, port, [(name, "A")])[0]
        if got is not None and got["answers"] == want:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} via {server}:{port} never answered {want}: last {got}")
        time.sleep(0.2)


# ---------------------------------------------------------------------- set-up


@dataclass
class Bench:
    """Everything the run creates, so that `cleanup` can remove it in any state."""

    tmp: Path
    node: str
    spaces: dict[str, str] = field(default_factory=dict)  # endpoint name -> namespace
    ips: dict[str, str] = field(default_factory=dict)  # endpoint name -> IPv4 address
    procs: dict[str, subprocess.Popen[str]] = field(default_factory=dict)
    fabric: FabricNode | None = None
    gw: NodeClient | None = None
    node_created: bool = False
    owner: int = field(default_factory=os.getpid)  # only this process may clean up

    def spawn(
        self, label: str, argv: list[str], ready: str | None = None, space: str | None = None
    ) -> subprocess.Popen[str]:
        """A process in `space` (default: the node), in its own session (Ctrl-C reaches us, not it)."""
        proc = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{space or self.node}", *argv],
            stdout=subprocess.PIPE if ready else subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        self.procs[label] = proc
        if ready is not None:
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            if line != ready:
                raise RuntimeError(f"{label} did not start: {line!r}")
        return proc

    def add_endpoint(self, name: str, network: str) -> None:
        from pyroute2 import netns

        assert self.gw is not None
        space = f"qnfdc-{uuid.uuid4().hex[:8]}"
        self.spaces[name] = space  # first: an interrupt right after create still removes it
        netns.create(space)
        ep = self.gw.call(
            "qnf.v1.node.n1.vnet.endpoint.add",
            {
                "request_id": space,
                "container_id": space,
                "ifname": "eth0",
                "netns": f"/run/netns/{space}",
                "network": network,
                "name": name,
            },
            timeout=30,
        )
        self.ips[name] = ep["addresses"][0].split("/")[0]

    def cleanup(self) -> None:
        if os.getpid() != self.owner:
            return  # a forked helper unwinding: the run is not its to tear down
        from pyroute2 import netns

        from libs.common.testing import pids_in_netns, stop_fabric

        def attempt(what: str, fn: Any, *args: Any) -> None:
            try:
                fn(*args)
            except Exception as exc:  # keep cleaning up
                print(f"could not {what}: {exc}", file=sys.stderr)

        for label, proc in self.procs.items():
            attempt(f"stop {label}", _stop, proc)
        if self.gw is not None:
            attempt("close the bus client", self.gw.close)
        if self.fabric is not None:
            attempt("stop the fabric", stop_fabric, self.fabric)
        for space in self.spaces.values():
            attempt(f"remove {space}", netns.remove, space)
        if self.node_created:
            # Anything still in the node namespace was started by this run: it is ours to kill.
            for pid in _safe(pids_in_netns, self.node):
                attempt(f"kill {pid}", subprocess.run, ["kill", "-9", str(pid)])
            attempt(f"remove {self.node}", netns.remove, self.node)
        shutil.rmtree(self.tmp, ignore_errors=True)


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def _safe(fn: Any, *args: Any) -> list[int]:
    try:
        return list(fn(*args))
    except Exception:
        return []


def dnsmasq_argv(tmp: Path, label: str, address: str, hosts: dict[str, str]) -> list[str]:
    """dnsmasq answering `hosts` (name -> address) from its own records only, on address:5300."""
    hosts_file = tmp / f"{label}.hosts"
    hosts_file.write_text("".join(f"{ip} {name}\n" for name, ip in hosts.items()))
    return [
        "dnsmasq",
        "--keep-in-foreground",
        "--conf-file=/dev/null",  # not /etc/dnsmasq.conf
        "--no-resolv",  # no upstream from /etc/resolv.conf ...
        "--no-hosts",  # ... nor names from /etc/hosts
        f"--addn-hosts={hosts_file}",
        f"--local=/{DOMAIN}/",  # unknown names in both zones: NXDOMAIN here, never forwarded
        f"--local=/{FORWARD_ZONE}/",
        "--local-ttl=5",  # the fabric's record TTL
        f"--listen-address={address}",
        "--bind-interfaces",
        f"--port={DNSMASQ_PORT}",
        "--user=root",
        f"--pid-file={tmp / f'{label}.pid'}",
        f"--log-facility={tmp / f'{label}.log'}",
    ]


# ---------------------------------------------------------------------- report


def _pct_us(values: list[float], q: float) -> float:
    """Nearest-rank percentile in microseconds."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e6


@dataclass
class Row:
    server: str
    qset: str
    sat: Perf
    idle: Perf


def _intervals(p: Perf) -> str:
    return ", ".join(f"{v:,.0f}" for v in p.intervals) or "n/a"


def report(
    rows: list[Row],
    paced: dict[str, Perf],
    checks: list[tuple[str, bool]],
    args: argparse.Namespace,
    client_ip: str,
) -> None:
    by = {(r.server, r.qset): r for r in rows}
    print()
    print(
        f"fabric resolver vs dnsmasq {_dnsmasq_version()}, same node, same run: dnsperf in ep0's namespace "
        f"({args.endpoints} fabric names, {args.forwarded} forwarded names)"
    )
    print(f"  {'qnf':10} the fabric's resolver on the bench gateway {GATEWAY}:53")
    print(
        f"  {'dnsmasq':10} dnsmasq on the same gateway address, port {DNSMASQ_PORT}: same path, same packets"
    )
    print(
        f"  {LOOPBACK:10} dnsmasq on ep0's own loopback 127.0.0.1:{DNSMASQ_PORT}: no veth, bridge or "
        "nftables (for reference only)"
    )
    print(
        f"saturation: dnsperf {' '.join(SATURATION)} -l {args.seconds}; unloaded: -q 10 -Q {UNLOADED_QPS}, "
        f">= {UNLOADED_QUERIES} queries, each one's latency from -v (1 us resolution)"
    )
    head = (
        f"{'server':10} {'query set':17} {'sat qps':>9} {'lost %':>7} {'sat avg us':>10}"
        f" {'p50 us':>7} {'p99 us':>7} {'qps x':>7} {'p50 x':>6}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        ratio = ""
        if r.server == "qnf":
            ref = by[("dnsmasq", r.qset)]
            ratio = (
                f" {r.sat.qps / ref.sat.qps:6.3f}x"
                f" {_pct_us(r.idle.latencies, 0.5) / _pct_us(ref.idle.latencies, 0.5):5.2f}x"
            )
        print(
            f"{r.server:10} {r.qset:17} {r.sat.qps:9,.0f} {r.sat.lost_pct:7.2f}"
            f" {r.sat.avg_latency_s * 1e6:10.0f} {_pct_us(r.idle.latencies, 0.5):7.0f}"
            f" {_pct_us(r.idle.latencies, 0.99):7.0f}{ratio}"
        )
    print("(qps x, p50 x: qnf / dnsmasq on the same path, same query set; p50/p99 from the unloaded run)")

    print()
    print(f"paced: {PACED_QPS} qps of fabric names for {args.seconds} s, under the per-client limit (-q 10)")
    for server, p in paced.items():
        print(
            f"  {server:10} {p.qps:7,.0f} qps  lost {p.lost:>4}  avg {p.avg_latency_s * 1e6:5.0f} us"
            f"  p50 {_pct_us(p.latencies, 0.5):4.0f} us  p99 {_pct_us(p.latencies, 0.99):5.0f} us"
        )

    print()
    print(
        "where the time goes: CPU (user+system, all threads, /proc/PID/stat) of the answering process per "
        "query sent,"
    )
    print(
        "and qnf's own receive-to-reply-sent time per answered fabric query (qnf_dns_query_seconds; "
        "forwarded answers are not observed)"
    )
    print(
        f"  {'server':10} {'run':28} {'queries':>8} {'qps':>8} {'CPU us/q':>9} {'in-server us/q':>15}"
        f" {'1-core ceiling':>15}"
    )
    runs: list[tuple[str, str, Perf]] = []
    for r in rows:
        runs.append((r.server, f"{r.qset}, unloaded", r.idle))
    for server, p in paced.items():
        runs.append((server, f"fabric names, paced {PACED_QPS}", p))
    for r in rows:
        runs.append((r.server, f"{r.qset}, saturation", r.sat))
    for server, label, p in runs:
        cpu_us = p.cpu_s / p.sent * 1e6 if p.sent else float("nan")
        inside = "-"
        if p.served is not None and p.served[1] > 0:
            inside = f"{p.served[0] / p.served[1] * 1e6:.1f}"
        print(
            f"  {server:10} {label:28} {p.sent:>8,} {p.qps:>8,.0f} {cpu_us:9.1f} {inside:>15}"
            f" {1e6 / cpu_us:>11,.0f} qps"
        )
    print(
        "  (CPU us/q counts every query received, dropped ones too; 1e6 / CPU us/q is a one-core ceiling, "
        "with /proc's 10 ms tick)"
    )

    print()
    ceiling = RATE_PER_CLIENT + BURST_PER_CLIENT / args.seconds
    print(
        f"per-client rate limit (services/dns/adapters/server.py): {RATE_PER_CLIENT:,.0f} qps, burst "
        f"{BURST_PER_CLIENT:,.0f}, excess dropped without an answer"
    )
    print(
        f"  dnsperf sends from one address ({client_ip}), so qnf's saturation figure is the limiter's: "
        f"at most ~{ceiling:,.0f} qps"
    )
    print(
        f"  over {args.seconds} s ({RATE_PER_CLIENT:,.0f} + {BURST_PER_CLIENT:,.0f}/{args.seconds}); each "
        "dropped query holds a dnsperf slot until its 1 s timeout"
    )
    for r in rows:
        print(
            f"  {r.server:10} {r.qset:17} sent {r.sat.sent:>8,} completed {r.sat.completed:>8,}"
            f" lost {r.sat.lost:>5,}  qps per second: {_intervals(r.sat)}"
        )

    print()
    print("correctness (same run)")
    for text, ok in checks:
        print(f"  {'ok  ' if ok else 'FAIL'}  {text}")

    print()
    print("targets (informational)")
    fab, ref = by[("qnf", "fabric names")], by[("dnsmasq", "fabric names")]
    qps_ratio = fab.sat.qps / ref.sat.qps
    p50 = _pct_us(fab.idle.latencies, 0.5)
    for text, ok in (
        (
            f"fabric names: qnf {fab.sat.qps:,.0f} qps >= {TARGET_QPS_RATIO}x dnsmasq {ref.sat.qps:,.0f} qps "
            f"(is {qps_ratio:.3f}x)",
            qps_ratio >= TARGET_QPS_RATIO,
        ),
        (
            f"fabric names: qnf unloaded p50 {p50:.0f} us <= {TARGET_P50_US:.0f} us (dnsmasq: "
            f"{_pct_us(ref.idle.latencies, 0.5):.0f} us on the same path, "
            f"{_pct_us(by[(LOOPBACK, 'fabric names')].idle.latencies, 0.5):.0f} us on loopback)",
            p50 <= TARGET_P50_US,
        ),
        ("every answer respects the asker's scope (correctness above)", all(ok for _, ok in checks)),
    ):
        print(f"  {'PASS' if ok else 'FAIL'}  {text}")


def _dnsmasq_version() -> str:
    try:
        out = subprocess.run(["dnsmasq", "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "?"
    match = re.search(r"version (\S+)", out)
    return match.group(1) if match else "?"


# ---------------------------------------------------------------------- main


def bench(args: argparse.Namespace) -> int:
    from pyroute2 import NetNS, netns

    from libs.common.testing import start_fabric

    for tool in ("dnsperf", "dnsmasq"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            print(f"{tool} is not installed (Debian package {tool})")
            return 2

    run = Bench(tmp=Path(tempfile.mkdtemp(prefix="qnf-dnsbench-")), node=f"qnfdn-{uuid.uuid4().hex[:6]}")
    try:
        run.node_created = True  # first: an interrupt right after create still removes it
        netns.create(run.node)
        with NetNS(run.node) as nsh:
            nsh.link("set", index=nsh.link_lookup(ifname="lo")[0], state="up")
        run.spawn("upstream", [sys.executable, "-c", UPSTREAM], ready="ready")
        run.fabric = start_fabric(
            run.node, run.tmp / "state", env={"QNF_DNS_UPSTREAMS": f'["127.0.0.1:{UPSTREAM_PORT}"]'}
        )
        run.gw = run.fabric.client()
        # default-allow only so that ep0 may reach dnsmasq on the gateway's port 5300; port 53 is
        # accepted before any policy, and answered packets take the conntrack "established" rule
        # either way, so the resolver's packet path is the same as on a zero-trust network.
        run.gw.call(
            "qnf.v1.cmd.vnet.network.create",
            {"name": NETWORK, "subnet": SUBNET, "isolation": "default-allow"},
        )
        run.gw.call("qnf.v1.cmd.vnet.network.create", {"name": OTHER, "subnet": OTHER_SUBNET})
        names = [f"ep{i}" for i in range(args.endpoints)]
        started = time.perf_counter()
        for name in names:
            run.add_endpoint(name, NETWORK)
        run.add_endpoint(OTHER_NAME, OTHER)
        print(
            f"  {len(names) + 1} endpoints up in {time.perf_counter() - started:.1f} s",
            file=sys.stderr,
            flush=True,
        )
        client = run.spaces["ep0"]
        fabric_fqdn = {name: f"{name}.{NETWORK}.{DOMAIN}" for name in names}
        forwarded = {f"fwd{i}.{FORWARD_ZONE}": forwarded_address(i) for i in range(args.forwarded)}
        hosts = {fabric_fqdn[n]: run.ips[n] for n in names} | forwarded
        run.spawn("dnsmasq", dnsmasq_argv(run.tmp, "dnsmasq", GATEWAY, hosts))
        with NetNS(client) as nsh:
            nsh.link("set", index=nsh.link_lookup(ifname="lo")[0], state="up")
        run.spawn("dnsmasq-lo", dnsmasq_argv(run.tmp, "dnsmasq-lo", "127.0.0.1", hosts), space=client)
        servers = {
            "qnf": (GATEWAY, 53),
            "dnsmasq": (GATEWAY, DNSMASQ_PORT),
            LOOPBACK: ("127.0.0.1", DNSMASQ_PORT),
        }

        last = names[-1]
        for host, port in servers.values():
            wait_answer(client, host, port, fabric_fqdn[last], [run.ips[last]])
        other_fqdn = f"{OTHER_NAME}.{OTHER}.{DOMAIN}"
        wait_answer(run.spaces[OTHER_NAME], OTHER_GATEWAY, 53, other_fqdn, [run.ips[OTHER_NAME]])

        checks = correctness(run, names, fabric_fqdn, forwarded)  # also warms the forwarding cache

        files = {"fabric names": run.tmp / "fabric.txt", "forwarded cached": run.tmp / "forwarded.txt"}
        files["fabric names"].write_text("".join(f"{fabric_fqdn[n]} A\n" for n in names))
        files["forwarded cached"].write_text("".join(f"{n} A\n" for n in forwarded))
        other_file = run.tmp / "other.txt"
        other_file.write_text(f"{other_fqdn} A\n")
        refill = BURST_PER_CLIENT / RATE_PER_CLIENT + 0.5  # a full bucket before each qnf run
        assert run.fabric is not None
        pids = {
            "qnf": run.fabric.service_pids("dns"),
            "dnsmasq": [run.procs["dnsmasq"].pid],  # nsenter execs dnsmasq: the same PID
            LOOPBACK: [run.procs["dnsmasq-lo"].pid],
        }
        if not pids["qnf"]:
            raise RuntimeError("no dns service process in the node namespace")

        def measured(server: str, data: Path, flags: list[str], seconds: float) -> Perf:
            """One dnsperf run, with the answering process's CPU time and qnf's own time per query."""
            host, port = servers[server]
            before = served(run.node) if server == "qnf" else None
            cpu = cpu_seconds(pids[server])
            perf = dnsperf(client, host, port, data, flags, seconds)
            perf.cpu_s = cpu_seconds(pids[server]) - cpu
            if before is not None:
                after = served(run.node)
                perf.served = (after[0] - before[0], after[1] - before[1])
            return perf

        def step(label: str) -> None:
            print(f"  {label}", file=sys.stderr, flush=True)

        idle: dict[tuple[str, str], Perf] = {}
        for qset, data in files.items():
            runs = math.ceil(UNLOADED_QUERIES / len(data.read_text().splitlines()))
            for server in servers:
                step(f"unloaded {server} {qset}")
                flags = ["-q", "10", "-Q", str(UNLOADED_QPS), "-n", str(runs), "-v"]
                idle[(server, qset)] = measured(server, data, flags, 30)
                time.sleep(refill)
        paced: dict[str, Perf] = {}
        for server in ("qnf", "dnsmasq"):
            step(f"paced {server}")
            flags = ["-q", "10", "-Q", str(PACED_QPS), "-l", str(args.seconds), "-v", "-t", "1"]
            paced[server] = measured(server, files["fabric names"], flags, args.seconds)
            time.sleep(refill)
        rows: list[Row] = []
        for qset, data in files.items():
            for server in servers:
                step(f"saturation {server} {qset}")
                sat = measured(server, data, [*SATURATION, "-l", str(args.seconds), "-S", "1"], args.seconds)
                rows.append(Row(server, qset, sat, idle[(server, qset)]))
                time.sleep(refill)

        # Under load, too: every answer was NOERROR, and the other network stays invisible.
        runs_done = [(f"{s} {q} unloaded", p) for (s, q), p in idle.items()]
        runs_done += [(f"{s} fabric names paced", p) for s, p in paced.items()]
        runs_done += [(f"{r.server} {r.qset} saturation", r.sat) for r in rows]
        for label, perf in runs_done:
            if label.startswith("qnf"):
                bad = {k: v for k, v in perf.rcodes.items() if k != "NOERROR"}
                text = f"{label}: all {perf.completed:,} answers NOERROR" + (f" (got {bad})" if bad else "")
                checks.append((text, perf.completed > 0 and not bad))
        step("scope under load")
        scope = dnsperf(client, GATEWAY, 53, other_file, ["-q", "10", "-Q", "1500", "-l", "2", "-t", "1"], 2)
        checks.append(
            (
                f"{scope.completed:,} queries for {other_fqdn} from ep0 at 1500 qps: all NXDOMAIN "
                f"({scope.rcodes})",
                scope.completed > 0 and set(scope.rcodes) == {"NXDOMAIN"},
            )
        )
        report(rows, paced, checks, args, run.ips["ep0"])
        return 0 if all(ok for _, ok in checks) else 1
    finally:
        run.cleanup()


def correctness(
    run: Bench, names: list[str], fabric_fqdn: dict[str, str], forwarded: dict[str, str]
) -> list[tuple[str, bool]]:
    """Sample answers from every server, and the other network's names from ep0."""
    client = run.spaces["ep0"]
    sample = sorted({names[0], names[len(names) // 2], names[-1], *names[:: max(1, len(names) // 8)]})
    fwd_names = list(forwarded)
    checks: list[tuple[str, bool]] = []
    for server, host, port in (
        ("qnf", GATEWAY, 53),
        ("dnsmasq", GATEWAY, DNSMASQ_PORT),
        (LOOPBACK, "127.0.0.1", DNSMASQ_PORT),
    ):
        questions = [(fabric_fqdn[n], "A") for n in sample] + [(n, "A") for n in fwd_names]
        answers = ask(client, host, port, questions)
        want = [[run.ips[n]] for n in sample] + [[forwarded[n]] for n in fwd_names]
        right = sum(1 for g, w in zip(answers, want, strict=True) if g is not None and g["answers"] == w)
        checks.append(
            (
                f"{server}: {right}/{len(questions)} sampled fabric and forwarded answers right",
                right == len(want),
            )
        )
    other_fqdn = f"{OTHER_NAME}.{OTHER}.{DOMAIN}"
    reverse = ".".join(reversed(run.ips[OTHER_NAME].split("."))) + ".in-addr.arpa"
    own = ask(run.spaces[OTHER_NAME], OTHER_GATEWAY, 53, [(other_fqdn, "A")])[0]
    checks.append(
        (
            f"{other_fqdn} from its own network: {own and own['answers']}",
            own is not None and own["answers"] == [run.ips[OTHER_NAME]],
        )
    )
    seen = ask(client, GATEWAY, 53, [(other_fqdn, "A"), (reverse, "PTR")])
    for question, got in zip((other_fqdn, reverse), seen, strict=True):
        checks.append(
            (
                f"{question} from ep0 ({NETWORK}): {got and got['rcode']}, no records",
                got is not None and got["rcode"] == "NXDOMAIN" and not got["answers"],
            )
        )
    return checks


_OWNER = os.getpid()


def _terminate(signum: int, frame: FrameType | None) -> None:
    """SIGTERM/SIGINT: unwind through `finally` — in this process only.

    pyroute2 forks a helper for every namespace operation (netns.create/remove, NetNS) and stops
    it with SIGTERM; a forked helper (and Ctrl-C reaches the whole process group) inherits this
    handler and a copy of our stack. Raising there would run `Bench.cleanup` in the helper and
    tear the run down under the real process, so a helper just exits.
    """
    if os.getpid() != _OWNER:
        os._exit(128 + signum)
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--endpoints", type=int, default=50, help="container namespaces (default 50)")
    parser.add_argument("--seconds", type=int, default=5, help="length of each loaded run (default 5)")
    parser.add_argument("--forwarded", type=int, default=50, help="forwarded names (default 50)")
    parser.add_argument("--probe", nargs=2, metavar=("SERVER", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        return probe(args.probe[0], int(args.probe[1]))
    if args.endpoints < 1 or args.seconds < 1 or args.forwarded < 1:
        parser.error("--endpoints, --seconds and --forwarded must be >= 1")
    global _OWNER
    _OWNER = os.getpid()
    signal.signal(signal.SIGTERM, _terminate)  # so `finally` cleans up on kill too
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, _terminate)
    return bench(args)


if __name__ == "__main__":
    sys.exit(main())
