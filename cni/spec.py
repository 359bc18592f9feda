"""The CNI protocol, as the specification (1.0/1.1, and the 0.3/0.4 result format) defines it.

Pure and nearly import-free: this module is imported on every exec of the plugin, so it must
not pull in pydantic, asyncio, a TLS stack, or even `re` (~5 ms here): names are checked by
hand. It turns the runtime's environment and stdin into a request for the node agent, and the
agent's endpoint record into the CNI result.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs ~3 ms per exec; annotations are strings anyway
if TYPE_CHECKING:
    from typing import Any, Final

SUPPORTED_VERSIONS: Final = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST: Final = "1.1.0"
COMMANDS: Final = ("ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC")

# Well-known error codes (CNI spec §"Error").
INCOMPATIBLE_VERSION: Final = 1
UNSUPPORTED_FIELD: Final = 2
UNKNOWN_CONTAINER: Final = 3
INVALID_ENV: Final = 4
IO_FAILURE: Final = 5
DECODE_FAILURE: Final = 6
INVALID_CONFIG: Final = 7
TRY_AGAIN_LATER: Final = 11
PLUGIN_NOT_AVAILABLE: Final = 50
INTERNAL: Final = 999

_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")


def _is_name(value: str, extra: str, limit: int) -> bool:
    """1..limit characters of alphanumerics and `extra`, alphanumeric at both ends."""
    return (
        0 < len(value) <= limit
        and value[0] in _ALNUM
        and value[-1] in _ALNUM
        and all(c in _ALNUM or c in extra for c in value)
    )


def _is_label_key(key: str) -> bool:
    """A Kubernetes label key: an optional DNS-subdomain prefix and `/`, then a name."""
    prefix, _, name = key.rpartition("/")
    return _is_name(name, "-_.", 63) and (not prefix or _is_name(prefix, "-.", 253))


def _is_label_value(value: str) -> bool:
    return value == "" or _is_name(value, "-_.", 63)


# CNI_ARGS keys that are about the sandbox, not labels of the workload.
_NOT_LABELS: Final = {"IgnoreUnknown", "K8S_POD_INFRA_CONTAINER_ID", "K8S_POD_UID"}


class CniError(Exception):
    """An error the plugin reports to the runtime: code, message and details."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_json(self, version: str) -> dict[str, Any]:
        doc: dict[str, Any] = {"cniVersion": version, "code": self.code, "msg": self.msg}
        if self.details:
            doc["details"] = self.details
        return doc


class Invocation:
    """One exec of the plugin: command, environment and the parsed network configuration.

    A plain class, not a dataclass: importing dataclasses costs ~7 ms per exec.
    """

    __slots__ = ("command", "container_id", "netns", "ifname", "args", "path", "config")

    def __init__(
        self,
        command: str,
        container_id: str,
        netns: str,
        ifname: str,
        args: dict[str, str],
        path: str,
        config: dict[str, Any],
    ) -> None:
        self.command = command
        self.container_id = container_id
        self.netns = netns
        self.ifname = ifname
        self.args = args
        self.path = path
        self.config = config

    @property
    def version(self) -> str:
        return str(self.config.get("cniVersion", LATEST))

    @property
    def network(self) -> str:
        """The qnf network: the config's `network`, else its `name`."""
        return str(self.config.get("network") or self.config["name"])

    @property
    def state_dir(self) -> str:
        return str(self.config.get("stateDir") or "/var/lib/qnf")

    @property
    def runtime_config(self) -> dict[str, Any]:
        value = self.config.get("runtimeConfig") or {}
        if not isinstance(value, dict):
            raise CniError(INVALID_CONFIG, "runtimeConfig must be an object")
        return value


def parse_config(stdin: bytes) -> dict[str, Any]:
    """The network configuration from stdin; CniError(6) if it is not a JSON object."""
    from cni.wire import loads

    try:
        config = loads(stdin)
    except ValueError as exc:
        raise CniError(DECODE_FAILURE, "network configuration is not valid JSON", str(exc)) from exc
    if not isinstance(config, dict):
        raise CniError(DECODE_FAILURE, "network configuration must be a JSON object")
    return config


def check_version(config: dict[str, Any]) -> str:
    version = config.get("cniVersion")
    if not isinstance(version, str) or not version:
        raise CniError(INVALID_CONFIG, "cniVersion is missing")
    if version not in SUPPORTED_VERSIONS:
        raise CniError(
            INCOMPATIBLE_VERSION,
            f"incompatible CNI version {version}",
            f"supported: {', '.join(SUPPORTED_VERSIONS)}",
        )
    return version


def parse_args(raw: str) -> dict[str, str]:
    """CNI_ARGS: `K=V;K=V`; a pair without `=` is an error (code 4)."""
    out: dict[str, str] = {}
    for item in filter(None, raw.split(";")):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CniError(INVALID_ENV, f"CNI_ARGS: {item!r} is not KEY=VALUE")
        out[key] = value
    return out


def parse(environ: dict[str, str], stdin: bytes) -> Invocation:
    """Validate the environment and configuration the way the spec requires for each command."""
    command = environ.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        raise CniError(INVALID_ENV, f"CNI_COMMAND {command!r} is not one of {', '.join(COMMANDS)}")
    if command == "VERSION":
        return Invocation(command, "", "", "", {}, "", {})
    config = parse_config(stdin)
    check_version(config)
    name = config.get("name")
    if not isinstance(name, str) or not name:
        raise CniError(INVALID_CONFIG, "network configuration has no name")
    if config.get("type") not in (None, "qnf"):
        raise CniError(INVALID_CONFIG, f"this is the qnf plugin, not {config.get('type')!r}")
    required = {
        "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
        "DEL": ("CNI_CONTAINERID", "CNI_IFNAME"),
        "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    }.get(command, ())
    missing = [var for var in required if not environ.get(var)]
    if missing:
        raise CniError(INVALID_ENV, f"missing environment: {', '.join(missing)}")
    ifname = environ.get("CNI_IFNAME", "")
    if ifname and (
        len(ifname.encode()) > 15 or ifname in (".", "..") or any(c in "/:" or c.isspace() for c in ifname)
    ):
        raise CniError(INVALID_ENV, f"CNI_IFNAME {ifname!r} is not a valid interface name")
    return Invocation(
        command,
        environ.get("CNI_CONTAINERID", ""),
        environ.get("CNI_NETNS", ""),
        ifname,
        parse_args(environ.get("CNI_ARGS", "")),
        environ.get("CNI_PATH", ""),
        config,
    )


def dns_label(value: str) -> str:
    """`value` as a DNS label: lower case, anything but [a-z0-9-] becomes `-`."""
    return "".join(c if c in _ALNUM or c == "-" else "-" for c in value.lower())[:63].strip("-")


def labels_and_name(inv: Invocation) -> tuple[dict[str, str], str | None]:
    """Endpoint labels and DNS name from CNI_ARGS, `args.cni.labels` and Kubernetes pod args."""
    labels: dict[str, str] = {}
    ignore_unknown = inv.args.get("IgnoreUnknown", "").lower() in ("1", "true")
    for key, value in inv.args.items():
        if key in _NOT_LABELS:
            continue
        if key == "K8S_POD_NAME":
            labels["k8s.pod/name"] = value
        elif key == "K8S_POD_NAMESPACE":
            labels["k8s.pod/namespace"] = value
        elif _is_label_key(key) and _is_label_value(value):
            labels[key] = value
        elif not ignore_unknown:
            raise CniError(
                INVALID_ENV, f"CNI_ARGS: {key}={value} is not a valid label (set IgnoreUnknown=1 to skip)"
            )
    conf_args = inv.config.get("args") or {}
    for item in ((conf_args.get("cni") or {}) if isinstance(conf_args, dict) else {}).get("labels") or []:
        if not isinstance(item, dict) or not _is_label_key(str(item.get("key", ""))):
            raise CniError(INVALID_CONFIG, f"args.cni.labels: bad label {item!r}")
        labels[str(item["key"])] = str(item.get("value", ""))
    pod = inv.args.get("K8S_POD_NAME")
    name = dns_label(pod) if pod else None
    return labels, name or None


def requested_ips(inv: Invocation) -> list[str]:
    """Static addresses from runtimeConfig `ips` or `args.cni.ips` (CIDR or plain)."""
    raw = inv.runtime_config.get("ips") or ((inv.config.get("args") or {}).get("cni") or {}).get("ips") or []
    if not isinstance(raw, list):
        raise CniError(INVALID_CONFIG, "ips must be a list")
    return [str(ip).split("/")[0] for ip in raw]


def port_mappings(inv: Invocation) -> list[dict[str, Any]]:
    out = []
    for pm in inv.runtime_config.get("portMappings") or []:
        if not isinstance(pm, dict):
            raise CniError(INVALID_CONFIG, f"bad portMappings entry {pm!r}")
        entry: dict[str, Any] = {
            "host_port": pm.get("hostPort"),
            "container_port": pm.get("containerPort"),
            "protocol": str(pm.get("protocol") or "tcp").lower(),
        }
        if pm.get("hostIP"):
            entry["host_ip"] = pm["hostIP"]
        out.append(entry)
    return out


def result(version: str, att: dict[str, Any]) -> dict[str, Any]:
    """The CNI result for `version` from the agent's view of the endpoint.

    0.3.x/0.4.0 carry `version` per IP; only 1.1.0 has `mtu` on interfaces.
    """
    legacy = version.startswith("0.")
    ips = []
    routes = []
    gateways: list[str] = att["gateways"]
    for address in att["addresses"]:
        family = "6" if ":" in address else "4"
        gateway = next((g for g in gateways if (":" in g) == (family == "6")), None)
        ip: dict[str, Any] = {"address": address, "interface": 2}
        if gateway:
            ip["gateway"] = gateway
            routes.append({"dst": "::/0" if family == "6" else "0.0.0.0/0", "gw": gateway})
        if legacy:
            ip["version"] = family
        ips.append(ip)
    container: dict[str, Any] = {"name": att["ifname"], "mac": att["mac"], "sandbox": att["netns"]}
    if version >= "1.1":
        container["mtu"] = att["mtu"]
    search = f"{att['network']}.{att['dns_domain']}"
    return {
        "cniVersion": version,
        "interfaces": [{"name": att["bridge"]}, {"name": att["host_ifname"]}, container],
        "ips": ips,
        "routes": routes,
        "dns": {"nameservers": gateways[:1], "domain": search, "search": [search, att["dns_domain"]]},
    }
