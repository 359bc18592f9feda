"""libnftables transactions are atomic: a batch that fails leaves the previous ruleset in force.

Scope: the firewall's nft adapter in a throwaway namespace (libnftables acts in the caller's
namespace, so the check runs in a child process entered into it).
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
from pyroute2 import netns

CHILD = r"""
import asyncio, json, sys
from ipaddress import ip_address, ip_interface
from libs.common.errors import AdapterError
from libs.common.messages import Endpoint, Network, Policy
from services.firewall.adapters.nft import LibNftables
from services.firewall.core.compiler import compile_model
from services.firewall.core.model import build

net = Network(name="blue", subnet="10.1.0.0/24", gateway="10.1.0.1", bridge="qnf-x", created_ms=0)
ep = Endpoint(endpoint_id="e1", request_id="r", container_id="c1", ifname="eth0", netns="/x",
              node="n1", network="blue", name="e1", labels={"app": "db"}, identity="spiffe://t/e1",
              mac="02:00:00:00:00:01", mtu=1500, host_ifname="q0000000001",
              addresses=[ip_interface("10.1.0.2/24")], gateways=[ip_address("10.1.0.1")], created_ms=0)
policy = Policy.model_validate({"name": "db", "network": "blue", "endpointSelector": {},
                                "ingress": [{"ports": [{"port": 5432}]}]})

async def main():
    nft = LibNftables()
    await nft.apply(compile_model(build([net], [ep], [policy], node="n1"), [ep]).full())
    before = nft._ctx().cmd("list ruleset")[1]
    # A batch whose second half is broken: a valid element, then a set that does not exist.
    def add(name, addr):
        return {"add": {"element": {"family": "inet", "table": "qnf", "name": name, "elem": [addr]}}}
    broken = [add("local4", "10.1.0.99"), add("no_such_set", "10.1.0.98")]
    try:
        await nft.apply(broken)
        print("applied?!")
    except AdapterError as exc:
        print("error:", str(exc)[:80])
    after = nft._ctx().cmd("list ruleset")[1]
    print("unchanged" if before == after else "CHANGED")
    await nft.close()

asyncio.run(main())
"""


@pytest.fixture
def scratch_ns() -> Iterator[str]:
    """An empty namespace for one transaction test (function scope)."""
    name = f"qnfn-{uuid.uuid4().hex[:8]}"
    netns.create(name)
    try:
        yield name
    finally:
        netns.remove(name)


def test_a_failed_batch_changes_nothing(scratch_ns: str) -> None:
    out = subprocess.run(
        ["nsenter", f"--net=/run/netns/{scratch_ns}", sys.executable, "-c", CHILD],
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith("error: nftables transaction failed"), out.stdout + out.stderr
    assert lines[1] == "unchanged"
