"""`qnf network|endpoint|policy|service|port|token|events`: the operator's command line.

It talks only to the REST API (httpx): URL, token and CA come from options, else the
environment (QNF_URL, QNF_TOKEN, QNF_CA), else this node's defaults (the gateway URL of the
settings, the bootstrap admin token file and the fabric CA under the state directory, where
readable). Human tables by default, `-o json` for scripts. Errors: one line on stderr (the
problem's status, code, detail and fields) and exit code 1.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import httpx

from libs.common.config import Settings

COMMANDS: Final = ("network", "endpoint", "policy", "service", "port", "token", "events")


class CliError(Exception):
    """One line for stderr."""


def add_commands(sub: Any) -> None:
    """Register the API commands on the `qnf` parser's subparsers."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help="gateway URL (env QNF_URL; default: this node's gateway)")
    common.add_argument("--token", help="API token (env QNF_TOKEN; default: the bootstrap admin token file)")
    common.add_argument("--ca", type=Path, help="CA certificate (env QNF_CA; default: the fabric CA)")
    common.add_argument("-o", "--output", choices=("table", "json"), default="table")

    net = sub.add_parser("network", help="virtual networks").add_subparsers(dest="verb", required=True)
    p = net.add_parser("create", parents=[common], help="create a network")
    p.add_argument("name")
    p.add_argument("--subnet", required=True)
    p.add_argument("--gateway")
    p.add_argument("--subnet6")
    p.add_argument("--mtu", type=int)
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--isolation", choices=("zero-trust", "default-allow"))
    p.add_argument("--no-nat", action="store_true")
    net.add_parser("ls", parents=[common], help="list networks")
    p = net.add_parser("inspect", parents=[common], help="show one network")
    p.add_argument("name")
    p = net.add_parser("rm", parents=[common], help="delete a network")
    p.add_argument("name")
    p.add_argument("--force", action="store_true", help="detach its endpoints first")

    ep = sub.add_parser("endpoint", help="containers attached to networks").add_subparsers(
        dest="verb", required=True
    )
    p = ep.add_parser("ls", parents=[common], help="list endpoints")
    p.add_argument("--network")

    pol = sub.add_parser("policy", help="network policies").add_subparsers(dest="verb", required=True)
    p = pol.add_parser(
        "apply", parents=[common], help="create or update from a file (JSON, or NetworkPolicy YAML)"
    )
    p.add_argument("-f", "--file", type=Path, required=True)
    p.add_argument("--network", help="for a NetworkPolicy that names no namespace")
    p.add_argument(
        "--wait", type=float, metavar="S", help="then wait up to S seconds until every node enforces it"
    )
    p = pol.add_parser("ls", parents=[common], help="list policies")
    p.add_argument("--network")
    for verb in ("get", "rm"):
        p = pol.add_parser(verb, parents=[common], help=f"{verb} a policy")
        p.add_argument("name")
        p.add_argument("--network", help="the policy's network (none: admin tier)")
    p = pol.add_parser("explain", parents=[common], help="what happens to a flow, and why")
    p.add_argument("--from", dest="source", required=True)
    p.add_argument("--to", dest="destination", required=True)
    p.add_argument("--protocol", default="TCP", choices=("TCP", "UDP", "SCTP", "ICMP"))
    p.add_argument("--port", type=int)
    p = pol.add_parser(
        "wait", parents=[common], help="wait until every node enforces a policy revision (exit 1 if not)"
    )
    p.add_argument("revision", type=int, help="from policy apply|get|rm (-o json)")
    p.add_argument("--timeout", type=float, default=5.0, metavar="S", help="at most S seconds (≤ 60)")

    svc = sub.add_parser("service", help="DNS services").add_subparsers(dest="verb", required=True)
    p = svc.add_parser("create", parents=[common], help="a name for the endpoints a selector picks")
    p.add_argument("name")
    p.add_argument("--network", required=True)
    p.add_argument("--selector", action="append", default=[], metavar="KEY=VALUE")
    p = svc.add_parser("ls", parents=[common], help="list services")
    p.add_argument("--network")
    for verb in ("get", "rm"):
        p = svc.add_parser(verb, parents=[common], help=f"{verb} a service")
        p.add_argument("name")
        p.add_argument("--network", required=True)

    port = sub.add_parser("port", help="published ports").add_subparsers(dest="verb", required=True)
    p = port.add_parser("publish", parents=[common], help="publish a container's port on this node")
    p.add_argument("container_id")
    p.add_argument("mapping", metavar="HOST_PORT:CONTAINER_PORT[/PROTO]")
    p.add_argument("--ifname", default="eth0")
    port.add_parser("ls", parents=[common], help="list published ports")
    p = port.add_parser("rm", parents=[common], help="unpublish")
    p.add_argument("id")

    tok = sub.add_parser("token", help="API tokens (admin)").add_subparsers(dest="verb", required=True)
    p = tok.add_parser("create", parents=[common], help="make a token; it is shown once")
    p.add_argument("name")
    p.add_argument("--role", required=True, choices=("viewer", "operator", "admin"))
    p.add_argument("--ttl", type=int, default=30 * 86400, help="lifetime in seconds")
    tok.add_parser("ls", parents=[common], help="list tokens")
    p = tok.add_parser("revoke", parents=[common], help="revoke a token by id")
    p.add_argument("id")

    p = sub.add_parser("events", parents=[common], help="follow the fabric's events")
    p.add_argument("--after", type=int, help="replay from after this sequence")


def _pairs(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CliError(f"{what} {item!r}: expected KEY=VALUE")
        out[key] = value
    return out


def _client(args: argparse.Namespace, settings: Settings) -> httpx.Client:
    url = args.url or os.environ.get("QNF_URL") or settings.gateway_url
    token = args.token or os.environ.get("QNF_TOKEN")
    if token is None:
        try:
            token = settings.gateway_admin_token_path.read_text().strip()
        except OSError:
            token = None
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    verify: ssl.SSLContext | bool = True
    if url.startswith("https:"):
        ca = args.ca or (
            Path(os.environ["QNF_CA"]) if os.environ.get("QNF_CA") else settings.pki_dir / "ca.crt"
        )
        try:
            verify = ssl.create_default_context(cafile=str(ca))
        except OSError as exc:
            raise CliError(f"cannot read the CA certificate {ca}: {exc.strerror}") from exc
    return httpx.Client(base_url=url, headers=headers, verify=verify, timeout=30)


def _check(r: httpx.Response) -> Any:
    if r.status_code < 400:
        return r.json()
    try:
        doc = r.json()
        detail = f"{doc.get('code', '')}: {doc.get('detail', '')}"
        fields = "; ".join(f"{e['field']}: {e['message']}" for e in doc.get("errors", []))
    except (ValueError, AttributeError):
        detail, fields = r.text[:200], ""
    raise CliError(f"{r.status_code} {detail}" + (f" ({fields})" if fields else ""))


def _all(client: httpx.Client, path: str, params: dict[str, Any] | None = None) -> list[Any]:
    items: list[Any] = []
    cursor = None
    while True:
        query = {k: v for k, v in (params or {}).items() if v is not None}
        query["limit"] = 1000
        if cursor:
            query["cursor"] = cursor
        page = _check(client.get(path, params=query))
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items


def _table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    cells = [[h for h, _ in columns]] + [[_cell(row, key) for _, key in columns] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells)


def _cell(row: dict[str, Any], key: str) -> str:
    value: Any = row
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if value is None:
        return "-"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "-"
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "-"
    return str(value)


_NETWORK_COLS: Final = [
    ("NAME", "name"),
    ("SUBNET", "subnet"),
    ("GATEWAY", "gateway"),
    ("SUBNET6", "subnet6"),
    ("ISOLATION", "isolation"),
    ("LABELS", "labels"),
    ("REV", "revision"),
]
_ENDPOINT_COLS: Final = [
    ("CONTAINER", "container_id"),
    ("IF", "ifname"),
    ("NETWORK", "network"),
    ("NAME", "name"),
    ("NODE", "node"),
    ("ADDRESSES", "addresses"),
    ("LABELS", "labels"),
]
_POLICY_COLS: Final = [("NAME", "name"), ("NETWORK", "network"), ("TIER", "tier"), ("REV", "revision")]
_SERVICE_COLS: Final = [
    ("NAME", "name"),
    ("NETWORK", "network"),
    ("SELECTOR", "endpointSelector.matchLabels"),
]
_PORT_COLS: Final = [
    ("ID", "id"),
    ("HOST", "host_port"),
    ("CONTAINER", "container_port"),
    ("PROTO", "protocol"),
    ("ENDPOINT", "container_id"),
    ("NETWORK", "network"),
]
_TOKEN_COLS: Final = [
    ("ID", "id"),
    ("NAME", "name"),
    ("ROLE", "role"),
    ("EXPIRES_MS", "expires_ms"),
    ("REVOKED_MS", "revoked_ms"),
    ("CREATED_BY", "created_by"),
]


def _show(args: argparse.Namespace, data: Any, columns: list[tuple[str, str]] | None = None) -> None:
    if args.output == "json" or columns is None:
        print(json.dumps(data, indent=2))
    else:
        print(_table(data if isinstance(data, list) else [data], columns))


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run one API command; returns the exit code."""
    try:
        with _client(args, settings) as client:
            _dispatch(args, client)
    except CliError as exc:
        print(f"qnf: error: {exc}", file=sys.stderr)
        return 1
    except httpx.HTTPError as exc:
        print(f"qnf: error: cannot reach the gateway: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def _dispatch(args: argparse.Namespace, c: httpx.Client) -> None:
    cmd, verb = args.command, getattr(args, "verb", None)
    if cmd == "network":
        if verb == "create":
            body: dict[str, Any] = {
                "name": args.name,
                "subnet": args.subnet,
                "labels": _pairs(args.label, "label"),
            }
            for key in ("gateway", "subnet6", "mtu", "isolation"):
                if getattr(args, key) is not None:
                    body[key] = getattr(args, key)
            if args.no_nat:
                body["nat"] = False
            _show(args, _check(c.post("/v1/networks", json=body)), _NETWORK_COLS)
        elif verb == "ls":
            _show(args, _all(c, "/v1/networks"), _NETWORK_COLS)
        elif verb == "inspect":
            _show(args, _check(c.get(f"/v1/networks/{args.name}")))
        elif verb == "rm":
            _report(
                args, _check(c.delete(f"/v1/networks/{args.name}", params={"force": args.force})), args.name
            )
    elif cmd == "endpoint":
        _show(args, _all(c, "/v1/endpoints", {"network": args.network}), _ENDPOINT_COLS)
    elif cmd == "policy":
        _policy(args, c, verb)
    elif cmd == "service":
        if verb == "create":
            body = {
                "name": args.name,
                "network": args.network,
                "endpointSelector": {"matchLabels": _pairs(args.selector, "selector")},
            }
            _show(args, _check(c.post("/v1/services", json=body)), _SERVICE_COLS)
        elif verb == "ls":
            _show(args, _all(c, "/v1/services", {"network": args.network}), _SERVICE_COLS)
        elif verb == "get":
            _show(args, _check(c.get(f"/v1/services/{args.name}", params={"network": args.network})))
        elif verb == "rm":
            _report(
                args,
                _check(c.delete(f"/v1/services/{args.name}", params={"network": args.network})),
                args.name,
            )
    elif cmd == "port":
        if verb == "publish":
            ports, _, proto = args.mapping.partition("/")
            host, sep, container = ports.partition(":")
            if not sep or not host.isdigit() or not container.isdigit():
                raise CliError(f"mapping {args.mapping!r}: expected HOST_PORT:CONTAINER_PORT[/tcp|udp|sctp]")
            body = {
                "container_id": args.container_id,
                "ifname": args.ifname,
                "host_port": int(host),
                "container_port": int(container),
                "protocol": proto or "tcp",
            }
            _show(args, _check(c.post("/v1/ports", json=body)), _PORT_COLS)
        elif verb == "ls":
            _show(args, _all(c, "/v1/ports"), _PORT_COLS)
        elif verb == "rm":
            _report(args, _check(c.delete(f"/v1/ports/{args.id}")), args.id)
    elif cmd == "token":
        if verb == "create":
            issued = _check(
                c.post("/v1/tokens", json={"name": args.name, "role": args.role, "ttl_s": args.ttl})
            )
            if args.output == "json":
                _show(args, issued)
            else:
                print(issued["token"])
                print(
                    f"# id {issued['id']}, role {issued['role']}: shown once, keep it secret", file=sys.stderr
                )
        elif verb == "ls":
            _show(args, _all(c, "/v1/tokens"), _TOKEN_COLS)
        elif verb == "revoke":
            _report(args, _check(c.delete(f"/v1/tokens/{args.id}")), args.id, "revoked")
    elif cmd == "events":
        for event in _follow(c, args.after):
            if args.output == "json":
                print(json.dumps(event), flush=True)
            else:
                print(f"{event['seq']:>8}  {event['subject']}  {json.dumps(event['data'])}", flush=True)


def _policy(args: argparse.Namespace, c: httpx.Client, verb: str | None) -> None:
    params = {"network": args.network} if getattr(args, "network", None) else {}
    if verb == "apply":
        try:
            text = args.file.read_text()
        except OSError as exc:
            raise CliError(f"cannot read {args.file}: {exc.strerror}") from exc
        try:
            doc = json.loads(text)
        except ValueError:
            doc = None
        if isinstance(doc, dict) and doc.get("kind") != "NetworkPolicy":
            r = c.post("/v1/policies", json=doc, params=params)
            if r.status_code == 409:  # exists with another spec: this is an update
                r = c.put(f"/v1/policies/{doc.get('name')}", json=doc)
        else:  # Kubernetes NetworkPolicy, YAML (or its JSON form): import creates or updates
            r = c.post(
                "/v1/policies",
                content=text.encode(),
                params=params,
                headers={"content-type": "application/yaml"},
            )
        applied = _check(r)
        _show(args, applied, _POLICY_COLS)
        if args.wait is not None:
            _wait(args, c, applied["revision"], args.wait)
    elif verb == "ls":
        _show(args, _all(c, "/v1/policies", params), _POLICY_COLS)
    elif verb == "get":
        _show(args, _check(c.get(f"/v1/policies/{args.name}", params=params)))
    elif verb == "rm":
        _report(args, _check(c.delete(f"/v1/policies/{args.name}", params=params)), args.name)
    elif verb == "explain":
        query = {"source": args.source, "destination": args.destination, "protocol": args.protocol}
        if args.port is not None:
            query["port"] = args.port
        verdict = _check(c.post("/v1/policies:explain", json=query))
        if args.output == "json":
            _show(args, verdict)
        else:
            word = "ALLOWED" if verdict["allowed"] else "DENIED"
            by = f" by {verdict['policy']}" if verdict.get("policy") else ""
            print(f"{word}{by}: {verdict['reason']}")
    elif verb == "wait":
        _wait(args, c, args.revision, args.timeout)


def _wait(args: argparse.Namespace, c: httpx.Client, revision: int, timeout: float) -> None:
    # The gateway answers within timeout_s plus its own request timeout; leave room for both.
    r = c.post("/v1/policies:wait", json={"revision": revision, "timeout_s": timeout}, timeout=timeout + 30)
    result = _check(r)
    if args.output == "json":
        _show(args, result)
    elif result["complete"]:
        print(f"revision {revision}: enforced on {', '.join(result['acked'])} ({result['seconds']:.2f} s)")
    if not result["complete"]:
        raise CliError(f"revision {revision}: not enforced on {', '.join(result['pending'])} in time")


def _report(args: argparse.Namespace, removed: dict[str, Any], what: str, done: str = "removed") -> None:
    if args.output == "json":
        _show(args, removed)
    else:
        print(f"{what}: {done}" if removed.get("existed") else f"{what}: not found (nothing to do)")


def _follow(c: httpx.Client, after: int | None) -> Iterator[dict[str, Any]]:
    """Follow the SSE stream; reconnect after a dropped connection, resuming after the last id."""
    last = after
    while True:
        headers = {"Last-Event-ID": str(last)} if last is not None else {}
        try:
            with c.stream("GET", "/v1/events", headers=headers, timeout=httpx.Timeout(30, read=60)) as r:
                if r.status_code >= 400:
                    r.read()
                    _check(r)
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        event = json.loads(line[6:])
                        last = event["seq"]
                        yield event
        except (httpx.ReadTimeout, httpx.RemoteProtocolError):
            continue
