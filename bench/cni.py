"""CNI ADD/DEL latency of the qnf plugin against the reference `bridge`+`host-local` plugins.

What it measures: the wall time a container runtime would see per plugin exec, p50 and p99, for

  1. `qnf` alone (a one-plugin conflist from `cni.install.conflist`) vs the reference `bridge`
     with `host-local` IPAM (`isGateway`, bridge `cnibench0`, 10.211.0.0/16);
  2. `qnf` + `portmap` vs `bridge`+`host-local` + `portmap`, one host port per container: the total
     time of the chain, ADD in order and DEL in reverse order with the ADD result as prevResult,
     the way libcni runs a conflist;

each sequentially (N ADDs, then N DELs) and W in parallel (a thread pool of W workers, each
running one container's ADD or whole chain). Also the bare start-up cost of each plugin binary:
the median of `CNI_COMMAND=VERSION` execs.

How: one throwaway node namespace runs the whole fabric (`qnf up`, with nats-server and mutual
TLS, as in `bench.vnet`), and the qnf network (10.210.0.0/16, default-allow) is created through
the signed bus as the gateway identity. Our launcher is installed with `install_plugin` into a
temporary CNI_PATH beside links to the reference plugins in /usr/lib/cni. Every exec — ours and the
reference's alike — is `subprocess.run(["nsenter", "--net=/run/netns/NODE", PLUGIN])` with the
CNI_* environment and the JSON config on stdin, exactly as `tests/netns/test_cni.py` drives it.
`nsenter` adds a constant exec cost (a fork/exec and a setns) to both sides equally; it is printed
as `nsenter + /bin/true` so it can be subtracted by eye. The fabric keeps running (and using CPU)
while the reference plugins are measured: same machine, same run, same conditions.

Container namespaces (`qnfcb-<hex>`) are created before each measurement and removed after it;
everything — container namespaces, the fabric, the node namespace with the reference bridge and
portmap's rules inside it, the host-local data dir — is removed at the end, also on failure or
Ctrl-C. The vnet agent's own ADD phase histogram is scraped from the node's metrics port to show
where our ADD time goes. Target checks are informational: the exit status is 0 whenever every exec
succeeded.

    python -m bench.cni [--n 50] [--parallel 8]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from pyroute2 import NetNS, netns

from cni.install import conflist, install_plugin

REFERENCE_DIR = Path("/usr/lib/cni")
REFERENCE_PLUGINS = ("bridge", "host-local", "portmap")
CNI_VERSION = "1.0.0"  # Debian's reference plugins stop at 1.0.0; conflist() defaults to it too
QNF_NETWORK = "cnibench"
QNF_SUBNET = "10.210.0.0/16"
REF_NETWORK = "cnibench-ref"
REF_SUBNET = "10.211.0.0/16"
REF_BRIDGE = "cnibench0"
HOST_PORT_BASE = 20000
METRICS_URL = "http://127.0.0.1:9460/metrics"  # the vnet service's metrics inside the node namespace
TARGET_ADD_P50_MS = 30.0
TARGET_DEL_RATIO = 2.0
EXEC_TIMEOUT_S = 60.0
STARTUP_REPS = 30

Doc = dict[str, Any]


class PluginFailed(RuntimeError):
    """A plugin exec returned non-zero: the benchmark stops, loudly."""


@dataclass
class Node:
    ns: str
    bin_dir: Path
    spaces: set[str] = field(default_factory=set)

    def make_spaces(self, n: int) -> list[str]:
        names = []
        for _ in range(n):
            name = f"qnfcb-{uuid.uuid4().hex[:8]}"
            netns.create(name)
            self.spaces.add(name)
            names.append(name)
        return names

    def drop_spaces(self, names: list[str]) -> None:
        for name in names:
            netns.remove(name)
            self.spaces.discard(name)


@dataclass
class Run:
    case: str
    side: str  # "qnf" or "reference"
    label: str
    mode: str
    adds: list[float]
    dels: list[float]
    agent: dict[str, float] | None = None  # agent-side means (ms) from the metrics delta, qnf only


def _exec(node: Node, argv: list[str], env: dict[str, str], stdin: bytes) -> tuple[float, int, str, str]:
    started = time.perf_counter()
    proc = subprocess.run(
        ["nsenter", f"--net=/run/netns/{node.ns}", *argv],
        input=stdin,
        env=env,
        capture_output=True,
        timeout=EXEC_TIMEOUT_S,
    )
    elapsed = time.perf_counter() - started
    return elapsed, proc.returncode, proc.stdout.decode(), proc.stderr.decode()


def exec_plugin(
    node: Node,
    plugin: str,
    command: str,
    config: Doc,
    *,
    container: str = "",
    netns_path: str = "",
    ifname: str = "eth0",
) -> tuple[float, Doc | None]:
    """One plugin exec as a runtime does it; (wall seconds, parsed stdout). Raises on rc != 0."""
    env = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": container,
        "CNI_NETNS": netns_path,
        "CNI_IFNAME": ifname,
        "CNI_ARGS": "",
        "CNI_PATH": str(node.bin_dir),
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
    }
    elapsed, rc, out, err = _exec(node, [str(node.bin_dir / plugin)], env, json.dumps(config).encode())
    if rc != 0:
        raise PluginFailed(
            f"{plugin} {command} container={container!r} exited {rc}: stdout={out.strip()!r} "
            f"stderr={err.strip()!r}"
        )
    out = out.strip()
    return elapsed, (json.loads(out) if out else None)


def run_chain(
    node: Node,
    doc: Doc,
    command: str,
    container: str,
    netns_path: str,
    runtime: Doc,
    prev: Doc | None = None,
) -> tuple[float, Doc | None]:
    """What libcni does with a conflist: each plugin in turn (reverse for DEL), prevResult threaded.

    Returns the wall time of the whole chain and the final result (ADD) or None.
    """
    plugins = doc["plugins"] if command != "DEL" else list(reversed(doc["plugins"]))
    result = prev
    started = time.perf_counter()
    for plugin in plugins:
        config = {**plugin, "name": doc["name"], "cniVersion": doc["cniVersion"]}
        caps = {k: v for k, v in runtime.items() if plugin.get("capabilities", {}).get(k)}
        if caps:
            config["runtimeConfig"] = caps
        if result is not None:
            config["prevResult"] = result
        _, out = exec_plugin(
            node, plugin["type"], command, config, container=container, netns_path=netns_path
        )
        if command == "ADD":
            result = out
    return time.perf_counter() - started, (result if command == "ADD" else None)


def measure(
    node: Node, doc: Doc, n: int, width: int, runtime_for: Callable[[int], Doc]
) -> tuple[list[float], list[float]]:
    """N fresh container namespaces: ADD all, then DEL all; width 1 is sequential."""
    spaces = node.make_spaces(n)
    results: dict[int, Doc | None] = {}

    def add(i: int) -> float:
        elapsed, results[i] = run_chain(
            node, doc, "ADD", spaces[i], f"/run/netns/{spaces[i]}", runtime_for(i)
        )
        return elapsed

    def delete(i: int) -> float:
        elapsed, _ = run_chain(
            node, doc, "DEL", spaces[i], f"/run/netns/{spaces[i]}", runtime_for(i), prev=results[i]
        )
        return elapsed

    try:
        if width <= 1:
            adds = [add(i) for i in range(n)]
            dels = [delete(i) for i in range(n)]
        else:
            pool = ThreadPoolExecutor(max_workers=width, thread_name_prefix="cnibench")
            try:
                adds = list(pool.map(add, range(n)))
                dels = list(pool.map(delete, range(n)))
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
    finally:
        node.drop_spaces(spaces)
    return adds, dels


# ---------------------------------------------------------------------- metrics


_SAMPLE = re.compile(r"^([A-Za-z_:][\w:]*)(\{[^}]*\})?\s+(\S+)")


def scrape(node: Node) -> dict[tuple[str, str], float]:
    """The vnet agent's qnf_vnet_endpoint_* samples, keyed by (name, labels)."""
    code = f"import urllib.request;print(urllib.request.urlopen({METRICS_URL!r}, timeout=10).read().decode())"
    _, rc, out, err = _exec(node, [sys.executable, "-c", code], dict(os.environ), b"")
    if rc != 0:
        raise RuntimeError(f"could not fetch {METRICS_URL} in {node.ns}: {err.strip()}")
    samples: dict[tuple[str, str], float] = {}
    for line in out.splitlines():
        match = _SAMPLE.match(line)
        if match and match.group(1).startswith("qnf_vnet_endpoint_"):
            samples[(match.group(1), match.group(2) or "")] = float(match.group(3))
    return samples


def _phases(samples: dict[tuple[str, str], float]) -> list[str]:
    found = {
        labels for name, labels in samples if name == "qnf_vnet_endpoint_add_phase_seconds_count" and labels
    }
    return sorted(found)


def agent_means(
    before: dict[tuple[str, str], float], after: dict[tuple[str, str], float]
) -> dict[str, float]:
    """Mean ms per call, agent side, over the calls between two scrapes."""

    def delta(name: str, labels: str = "") -> float:
        return after.get((name, labels), 0.0) - before.get((name, labels), 0.0)

    def mean(base: str, labels: str = "") -> float:
        count = delta(f"{base}_count", labels)
        return delta(f"{base}_sum", labels) / count * 1000 if count else float("nan")

    out = {
        "add": mean("qnf_vnet_endpoint_add_seconds"),
        "del": mean("qnf_vnet_endpoint_remove_seconds"),
    }
    for labels in _phases(after):
        out[_phase_name(labels)] = mean("qnf_vnet_endpoint_add_phase_seconds", labels)
    return out


def _phase_name(labels: str) -> str:
    match = re.search(r'phase="([^"]*)"', labels)
    return match.group(1) if match else labels


# ---------------------------------------------------------------------- report


def _pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile in ms (for n <= 100, p99 is the maximum)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def _p50(values: list[float]) -> float:
    return _pct(values, 0.5)


def startup(node: Node) -> dict[str, float]:
    """Median ms of a VERSION exec per plugin, and of `nsenter + /bin/true`, interleaved."""
    times: dict[str, list[float]] = {"nsenter + /bin/true": [], "qnf VERSION": [], "bridge VERSION": []}
    env = {"CNI_COMMAND": "VERSION", "CNI_PATH": str(node.bin_dir), "PATH": os.environ.get("PATH", "")}
    for _ in range(STARTUP_REPS):
        elapsed, rc, _, _ = _exec(node, ["/bin/true"], env, b"")
        assert rc == 0
        times["nsenter + /bin/true"].append(elapsed)
        for plugin in ("qnf", "bridge"):
            elapsed, _ = exec_plugin(node, plugin, "VERSION", {"cniVersion": CNI_VERSION})
            times[f"{plugin} VERSION"].append(elapsed)
    return {k: statistics.median(v) * 1000 for k, v in times.items()}


def report(runs: list[Run], boot: dict[str, float], totals: dict[tuple[str, str], float], n: int) -> None:
    print()
    print(f"plugin start-up (median of {STARTUP_REPS} execs, each through nsenter into the node namespace)")
    for label, ms in boot.items():
        print(f"  {label:22} {ms:8.2f} ms")
    ratio = boot["qnf VERSION"] / boot["bridge VERSION"]
    print(f"  {'qnf/bridge':22} {ratio:8.2f}x")

    print()
    print(f"CNI exec latency, {n} containers per row (ms; p99 is nearest-rank)")
    header = (
        f"{'case':30} {'mode':13} {'ADD p50':>8} {'ADD p99':>8} {'DEL p50':>8} {'DEL p99':>8}"
        f" {'ADD x':>7} {'DEL x':>7}"
    )
    print(header)
    print("-" * len(header))
    by_key = {(r.case, r.side, r.mode): r for r in runs}
    for r in runs:
        ratios = ""
        if r.side == "qnf":
            ref = by_key[(r.case, "reference", r.mode)]
            ratios = f" {_p50(r.adds) / _p50(ref.adds):6.2f}x {_p50(r.dels) / _p50(ref.dels):6.2f}x"
        print(
            f"{r.label:30} {r.mode:13} {_p50(r.adds):8.2f} {_pct(r.adds, 0.99):8.2f}"
            f" {_p50(r.dels):8.2f} {_pct(r.dels, 0.99):8.2f}{ratios}"
        )
    print("(ADD x / DEL x: qnf p50 / reference p50 of the same case and mode)")

    print()
    print("where qnf's time goes: agent-side means per call (ms), from qnf_vnet_endpoint_* deltas")
    phase_names = [_phase_name(p) for p in _phases(totals)]
    cols = ["exec ADD", "agent add", *phase_names, "exec DEL", "agent del"]
    print(f"{'case':30} {'mode':13} " + " ".join(f"{c:>9}" for c in cols))
    for r in runs:
        if r.agent is None:
            continue
        values = [
            statistics.mean(r.adds) * 1000,
            r.agent["add"],
            *(r.agent.get(p, float("nan")) for p in phase_names),
            statistics.mean(r.dels) * 1000,
            r.agent["del"],
        ]
        print(f"{r.label:30} {r.mode:13} " + " ".join(f"{v:9.2f}" for v in values))
    print("(exec ADD/DEL: mean wall time of the plugin chain; agent add/del: inside the vnet agent)")

    print()
    print("vnet agent histograms at the end of the run (cumulative over every qnf ADD/DEL above)")
    for (name, labels), value in sorted(totals.items()):
        if name.endswith(("_sum", "_count")) and "_bucket" not in name:
            shown = f"{value:.4f} s" if name.endswith("_sum") else f"{int(value)}"
            print(f"  {name}{labels} {shown}")

    print()
    print("targets (informational)")
    for mode in sorted({r.mode for r in runs}, key=lambda m: (m != "sequential", m)):
        qnf = by_key[("plugin", "qnf", mode)]
        ref = by_key[("plugin", "reference", mode)]
        qchain = by_key[("chain", "qnf", mode)]
        rchain = by_key[("chain", "reference", mode)]
        checks = [
            (
                f"qnf ADD p50 {_p50(qnf.adds):.2f} ms <= {TARGET_ADD_P50_MS:.0f} ms",
                _p50(qnf.adds) <= TARGET_ADD_P50_MS,
            ),
            (
                f"qnf DEL p50 {_p50(qnf.dels):.2f} ms <= {TARGET_DEL_RATIO:.0f}x reference "
                f"{_p50(ref.dels):.2f} ms",
                _p50(qnf.dels) <= TARGET_DEL_RATIO * _p50(ref.dels),
            ),
            (
                f"qnf+portmap ADD p50 {_p50(qchain.adds):.2f} ms < bridge+portmap {_p50(rchain.adds):.2f} ms",
                _p50(qchain.adds) < _p50(rchain.adds),
            ),
            (
                f"qnf+portmap DEL p50 {_p50(qchain.dels):.2f} ms < bridge+portmap {_p50(rchain.dels):.2f} ms",
                _p50(qchain.dels) < _p50(rchain.dels),
            ),
        ]
        for text, ok in checks:
            print(f"  {'PASS' if ok else 'FAIL'}  [{mode}] {text}")


# ---------------------------------------------------------------------- main


def reference_doc(data_dir: Path, chain: bool) -> Doc:
    bridge: Doc = {
        "type": "bridge",
        "bridge": REF_BRIDGE,
        "isGateway": True,
        "ipam": {"type": "host-local", "subnet": REF_SUBNET, "dataDir": str(data_dir)},
    }
    plugins = [bridge]
    if chain:
        # The very same portmap entry our conflist chains, so only the first plugin differs.
        plugins.append(conflist("x", state_dir=data_dir, chain=["portmap"])["plugins"][1])
    return {"cniVersion": CNI_VERSION, "name": REF_NETWORK, "plugins": plugins}


def bench(n: int, width: int) -> int:
    from libs.common.testing import FabricNode, start_fabric, stop_fabric

    missing = [p for p in REFERENCE_PLUGINS if not (REFERENCE_DIR / p).exists()]
    if missing:
        print(f"reference plugins missing from {REFERENCE_DIR}: {missing} (containernetworking-plugins)")
        return 2

    tmp = Path(tempfile.mkdtemp(prefix="qnf-cnibench-"))
    node = Node(ns=f"qnfcbn-{uuid.uuid4().hex[:6]}", bin_dir=tmp / "cni-bin")
    fabric: FabricNode | None = None
    netns.create(node.ns)
    try:
        with NetNS(node.ns) as nsh:
            nsh.link("set", index=nsh.link_lookup(ifname="lo")[0], state="up")
        install_plugin(node.bin_dir)
        for name in REFERENCE_PLUGINS:
            (node.bin_dir / name).symlink_to(REFERENCE_DIR / name)
        state = tmp / "state"
        fabric = start_fabric(node.ns, state)
        client = fabric.client()
        try:
            client.call(
                "qnf.v1.cmd.vnet.network.create",
                {"name": QNF_NETWORK, "subnet": QNF_SUBNET, "isolation": "default-allow"},
            )
        finally:
            client.close()

        boot = startup(node)  # doubles as a warm-up of both binaries (page cache, .pyc)

        def no_ports(_: int) -> Doc:
            return {}

        def ports(i: int) -> Doc:
            return {
                "portMappings": [{"hostPort": HOST_PORT_BASE + i, "containerPort": 80, "protocol": "tcp"}]
            }

        cases: list[tuple[str, str, str, Doc, Callable[[int], Doc]]] = [
            ("plugin", "qnf", "qnf", conflist(QNF_NETWORK, state_dir=state, chain=[]), no_ports),
            ("plugin", "reference", "bridge+host-local", reference_doc(tmp / "host-local", False), no_ports),
            (
                "chain",
                "qnf",
                "qnf + portmap",
                conflist(QNF_NETWORK, state_dir=state, chain=["portmap"]),
                ports,
            ),
            (
                "chain",
                "reference",
                "bridge+host-local + portmap",
                reference_doc(tmp / "host-local", True),
                ports,
            ),
        ]
        runs: list[Run] = []
        for mode, w in (("sequential", 1), (f"{width} parallel", width)):
            for case, side, label, doc, runtime_for in cases:
                before = scrape(node) if side == "qnf" else None
                started = time.perf_counter()
                adds, dels = measure(node, doc, n, w, runtime_for)
                print(
                    f"  {label:30} {mode:13} done in {time.perf_counter() - started:6.1f} s",
                    file=sys.stderr,
                    flush=True,
                )
                run = Run(case, side, label, mode, adds, dels)
                if before is not None:
                    run.agent = agent_means(before, scrape(node))
                runs.append(run)
        # Present each case's rows together: sequential then parallel, qnf then reference.
        runs.sort(key=lambda r: (r.case != "plugin", r.mode != "sequential", r.side != "qnf"))
        report(runs, boot, scrape(node), n)
        return 0
    finally:
        for name in sorted(node.spaces):
            try:
                netns.remove(name)
            except Exception as exc:  # keep cleaning up
                print(f"could not remove {name}: {exc}", file=sys.stderr)
        if fabric is not None:
            try:
                stop_fabric(fabric)
            except Exception as exc:
                print(f"could not stop the fabric: {exc}", file=sys.stderr)
        netns.remove(node.ns)
        shutil.rmtree(tmp, ignore_errors=True)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=50, help="containers per measurement (default 50)")
    parser.add_argument("--parallel", type=int, default=8, help="workers of the parallel mode (default 8)")
    args = parser.parse_args()
    if args.n < 1 or args.parallel < 2:
        parser.error("--n must be >= 1 and --parallel >= 2")
    signal.signal(signal.SIGTERM, _terminate)  # so `finally` cleans up on kill too
    return bench(args.n, args.parallel)


if __name__ == "__main__":
    sys.exit(main())
