"""Unit tests of the CNI protocol core (cni.spec) and the dispatcher's error exit (cni.main).

No I/O except the dispatcher's agent call, which here finds no agent (a state dir with no socket).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from cni.main import dispatch
from cni.spec import CniError, Invocation, labels_and_name, parse, parse_args, result

VIEW = {
    "bridge": "qnf-1",
    "host_ifname": "q0123456789",
    "ifname": "eth0",
    "mac": "02:00:00:00:00:01",
    "mtu": 1400,
    "netns": "/run/netns/x",
    "addresses": ["10.0.0.2/24", "fd00::2/64"],
    "gateways": ["10.0.0.1", "fd00::1"],
    "dns_domain": "qnf.local",
    "network": "blue",
}


def env(**kw: str) -> dict[str, str]:
    return {
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": "c1",
        "CNI_NETNS": "/run/netns/x",
        "CNI_IFNAME": "eth0",
        **kw,
    }


def test_result_1_1_has_mtu_and_dual_stack_routes() -> None:
    out = result("1.1.0", VIEW)
    assert out["interfaces"][2] == {
        "name": "eth0",
        "mac": "02:00:00:00:00:01",
        "sandbox": "/run/netns/x",
        "mtu": 1400,
    }
    assert out["ips"] == [
        {"address": "10.0.0.2/24", "gateway": "10.0.0.1", "interface": 2},
        {"address": "fd00::2/64", "gateway": "fd00::1", "interface": 2},
    ]
    assert out["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.0.0.1"}, {"dst": "::/0", "gw": "fd00::1"}]
    assert out["dns"] == {
        "nameservers": ["10.0.0.1"],
        "domain": "blue.qnf.local",
        "search": ["blue.qnf.local", "qnf.local"],
    }


def test_result_0_4_has_ip_versions_and_no_mtu() -> None:
    out = result("0.4.0", VIEW)
    assert [ip["version"] for ip in out["ips"]] == ["4", "6"]
    assert "mtu" not in out["interfaces"][2]


def test_labels_from_args_and_config() -> None:
    inv = Invocation(
        "ADD",
        "c1",
        "/n",
        "eth0",
        parse_args(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=Web_1;"
            "K8S_POD_INFRA_CONTAINER_ID=abc;tier=front;bad key=x"
        ),
        "",
        {"args": {"cni": {"labels": [{"key": "team", "value": "a"}]}}},
    )
    labels, name = labels_and_name(inv)
    assert labels == {"k8s.pod/namespace": "shop", "k8s.pod/name": "Web_1", "tier": "front", "team": "a"}
    assert name == "web-1"
    strict = Invocation("ADD", "c1", "/n", "eth0", parse_args("bad key=x"), "", {})
    with pytest.raises(CniError) as info:
        labels_and_name(strict)
    assert info.value.code == 4


@pytest.mark.parametrize(
    ("environ", "stdin", "code"),
    [
        (env(), b"", 6),
        (env(CNI_COMMAND="NOPE"), b"{}", 4),
        (env(), b'{"cniVersion":"0.2.0","name":"n"}', 1),
        (env(CNI_IFNAME="a/b"), b'{"cniVersion":"1.0.0","name":"n"}', 4),
        (env(), b'{"cniVersion":"1.0.0","name":"n","type":"bridge"}', 7),
    ],
    ids=["empty", "bad-command", "old-version", "slash-ifname", "wrong-type"],
)
def test_parse_errors(environ: dict[str, str], stdin: bytes, code: int) -> None:
    with pytest.raises(CniError) as info:
        parse(environ, stdin)
    assert info.value.code == code


def test_dispatch_prints_error_json_and_exits_1(tmp_path: Path) -> None:
    out = io.StringIO()
    config = {"cniVersion": "1.0.0", "name": "blue", "type": "qnf", "stateDir": str(tmp_path)}
    netns = tmp_path / "ns"
    netns.touch()
    rc = dispatch(env(CNI_NETNS=str(netns)), json.dumps(config).encode(), out)
    doc = json.loads(out.getvalue())
    assert rc == 1 and doc["code"] == 11 and doc["cniVersion"] == "1.0.0"  # no agent: try again later
    out = io.StringIO()
    assert (
        dispatch(
            {"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0"},
            json.dumps(config).encode(),
            out,
        )
        == 0
    )
    assert out.getvalue() == "" and len(list((tmp_path / "run" / "cni-pending").iterdir())) == 1
