"""Unit tests of compose.yaml and the Dockerfile, the development deployment of DESIGN §8.

No Docker engine runs on the test machines, so compose.yaml is checked statically: against the
Compose Specification's JSON schema, plus the rules `docker compose config` enforces that the
schema misses, plus its consistency with the code it starts (service names, settings, paths).
Files only; no network, no processes.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
import yaml  # type: ignore[import-untyped]

from fabric.node import NODE_AGENTS
from libs.common.config import Settings
from libs.common.ids import SERVICES, SpiffeId
from libs.common.pki import PkiDirectory

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
# The repository's own copy first (tests/data/README.md), else the shared one beside the checkout.
SCHEMAS = (
    ROOT / "tests" / "data" / "compose-spec.json",
    ROOT.parent / "shared" / "data" / "compose-spec.json",
)

EXPECTED_AGENTS = {"vnet", "firewall", "dns", "nat"}
# Rules outside the schema: with `network_mode`, Compose refuses `networks`, and Docker discards
# published ports and cannot resolve links.
EXCLUSIVE_WITH_NETWORK_MODE = ("networks", "ports", "links")


def _load_compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(doc, dict), "compose.yaml is not a mapping"
    return doc


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _load_compose()


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    svcs = compose.get("services")
    assert isinstance(svcs, dict) and svcs, "compose.yaml defines no services"
    return svcs


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    for path in SCHEMAS:
        if path.is_file():
            loaded: dict[str, Any] = json.loads(path.read_text())
            return loaded
    pytest.fail(f"the Compose schema is missing: looked for {', '.join(map(str, SCHEMAS))}")


def _interpolate(value: str) -> str:
    """Compose's `${VAR:-default}` / `${VAR-default}` / `${VAR}`, with every variable unset."""

    def repl(m: re.Match[str]) -> str:
        if m.group(2) is None:
            raise AssertionError(f"{m.group(0)} has no default: the file must work with no .env")
        return m.group(2)

    return re.sub(r"\$\{(\w+)(?::?-([^}]*))?\}", repl, value)


def _command(svc: dict[str, Any]) -> list[str]:
    cmd = svc.get("command")
    return shlex.split(cmd) if isinstance(cmd, str) else list(cmd or [])


def _env(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: _interpolate(str(v)) for k, v in env.items()}


def _depends_on(svc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    deps = svc.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: {"condition": "service_started"} for name in deps}
    return dict(deps)


def _bus_clients(services: dict[str, dict[str, Any]]) -> list[str]:
    return [name for name in services if name in SERVICES]


# -- schema -------------------------------------------------------------------------------------


def _validator(schema: dict[str, Any]) -> jsonschema.Draft7Validator:
    # The schema names draft 07 by an https URL that jsonschema does not map; pick the draft here.
    assert "draft-07" in schema["$schema"]
    return jsonschema.Draft7Validator(schema)


def test_compose_file_matches_the_compose_schema(compose: dict[str, Any], schema: dict[str, Any]) -> None:
    jsonschema.Draft7Validator.check_schema(schema)
    errors = sorted(_validator(schema).iter_errors(compose), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d["services"]["nats"].update(netwrok_mode="host"),
        lambda d: d["services"]["vnet"].update(cap_add="NET_ADMIN"),
        lambda d: d["services"]["nats"]["depends_on"]["init"].update(condition="service_finished"),
        lambda d: d.update(servics={}),
    ],
    ids=["misspelt-key", "cap-add-not-a-list", "bad-condition", "unknown-top-level-key"],
)
def test_the_schema_check_rejects_a_broken_file(
    compose: dict[str, Any], schema: dict[str, Any], mutate: Any
) -> None:
    broken = copy.deepcopy(compose)
    mutate(broken)
    assert list(_validator(schema).iter_errors(broken)), "the schema accepted a broken compose file"


# -- rules the schema misses ----------------------------------------------------------------------


def test_no_service_combines_network_mode_with_networks(services: dict[str, dict[str, Any]]) -> None:
    bad = {
        name: key
        for name, svc in services.items()
        if "network_mode" in svc
        for key in EXCLUSIVE_WITH_NETWORK_MODE
        if key in svc
    }
    assert bad == {}


def test_depends_on_names_existing_services_without_cycles(services: dict[str, dict[str, Any]]) -> None:
    conditions = {"service_started", "service_healthy", "service_completed_successfully"}
    for name, svc in services.items():
        for dep, spec in _depends_on(svc).items():
            assert dep in services, f"{name} depends on {dep}, which compose.yaml does not define"
            assert dep != name
            assert spec.get("condition", "service_started") in conditions
            if spec.get("condition") == "service_healthy":
                assert "healthcheck" in services[dep], (
                    f"{name} waits for {dep} to be healthy; it has no check"
                )
    done: set[str] = set()
    pending = dict(services)
    while pending:
        ready = [n for n, s in pending.items() if set(_depends_on(s)) <= done]
        assert ready, f"depends_on has a cycle among {sorted(pending)}"
        done.update(ready)
        for n in ready:
            del pending[n]


# -- what runs --------------------------------------------------------------------------------------


def test_every_service_of_the_fabric_runs_in_its_own_container(services: dict[str, dict[str, Any]]) -> None:
    assert SERVICES == ("vnet", "firewall", "dns", "nat", "gateway")
    for name in SERVICES:
        assert name in services, f"compose.yaml has no service {name!r}"
        assert _command(services[name]) == ["python", "-m", f"services.{name}"]
        assert services[name].get("restart") == "unless-stopped"


def test_init_prepares_the_state_once_and_nats_runs_its_config(services: dict[str, dict[str, Any]]) -> None:
    init, nats = services["init"], services["nats"]
    state_dir = Path(_env(init)["QNF_STATE_DIR"])
    assert _command(init) == ["qnf", "--state-dir", str(state_dir), "init"]
    assert init.get("restart", "no") == "no"
    config = Settings.model_validate({"state_dir": state_dir}).nats_dir / "nats-server.conf"
    assert _command(nats) == ["nats-server", "-c", str(config)]
    assert _depends_on(nats) == {"init": {"condition": "service_completed_successfully"}}
    assert _command(services["bootstrap"]) == ["qnf", "--state-dir", str(state_dir), "bootstrap"]
    assert _depends_on(services["bootstrap"]) == {"nats": {"condition": "service_healthy"}}
    for name in SERVICES:
        # bootstrap waits for nats and creates the stream and buckets the services need
        assert _depends_on(services[name]) == {
            "bootstrap": {"condition": "service_completed_successfully"}
        }, name


def test_node_agents_get_the_host_network_and_net_admin(services: dict[str, dict[str, Any]]) -> None:
    agents = set(SERVICES) & set(NODE_AGENTS)
    assert agents == EXPECTED_AGENTS
    for name in sorted(agents):
        svc = services[name]
        assert svc.get("network_mode") == "host", f"{name} must act on the node's own network namespace"
        assert "NET_ADMIN" in svc.get("cap_add", []), f"{name} needs NET_ADMIN"
        assert not svc.get("privileged", False), f"{name}: NET_ADMIN is enough, not privileged"
    for name in set(SERVICES) - agents:
        assert "NET_ADMIN" not in services[name].get("cap_add", []), f"{name} has no business with the kernel"


def test_every_bus_client_reaches_nats_where_nats_listens(services: dict[str, dict[str, Any]]) -> None:
    # Agents use the host's namespace and dial QNF_NATS_HOST; nats must listen in that namespace.
    nats_mode = services["nats"].get("network_mode")
    assert nats_mode == "host"
    for name in ["init", "nats", *_bus_clients(services)]:
        env = _env(services[name])
        assert services[name].get("network_mode") == nats_mode, f"{name} is not in nats' network namespace"
        assert env["QNF_NATS_HOST"] in ("127.0.0.1", "::1", "localhost")
        assert "QNF_NATS_URL" not in env or env["QNF_NATS_URL"].startswith("tls://")


def test_all_containers_share_one_environment_that_the_settings_accept(
    services: dict[str, dict[str, Any]],
) -> None:
    envs = {name: _env(svc) for name, svc in services.items()}
    first = envs["init"]
    assert all(env == first for env in envs.values()), "containers disagree on QNF_* (node name, ports...)"
    assert first["QNF_NODE"] == "node1"
    fields = {f"QNF_{name.upper()}": name for name in Settings.model_fields}
    unknown = sorted(set(first) - set(fields))
    assert unknown == [], f"no such setting: {unknown}"
    # model_validate checks the values only; it reads neither the environment nor a config file.
    settings = Settings.model_validate({fields[k]: v for k, v in first.items()})
    assert settings.url == "tls://127.0.0.1:4222"
    assert settings.state_dir == Path("/var/lib/qnf")


def test_every_container_uses_the_one_image_and_the_state_volume(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    assert "qnf-state" in (compose.get("volumes") or {})
    for name, svc in services.items():
        assert svc.get("build") == ".", f"{name} does not build from ./Dockerfile"
        assert svc.get("image") == "qnf:dev"
        state_dir = _env(svc)["QNF_STATE_DIR"]
        assert f"qnf-state:{state_dir}" in svc.get("volumes", []), f"{name} does not mount the state volume"


def test_the_nats_healthcheck_presents_an_identity_that_init_issues(
    services: dict[str, dict[str, Any]],
) -> None:
    test = services["nats"]["healthcheck"]["test"]
    script = test[-1]
    assert test[:3] == ["CMD", "python", "-c"]
    compile(script, "<healthcheck>", "exec")
    settings = Settings.model_validate({"state_dir": Path(_env(services["nats"])["QNF_STATE_DIR"])})
    pki = PkiDirectory(settings.pki_dir)
    viewer = pki.identity_dir(SpiffeId.user(settings.trust_domain, "viewer"))
    assert f'"{settings.pki_dir}/"' in script
    for path in (pki.ca_cert_path, viewer / "tls.crt", viewer / "tls.key"):
        assert f'"{path.relative_to(settings.pki_dir)}"' in script, f"{path} is not where the check looks"


# -- the image ----------------------------------------------------------------------------------------


def _dockerfile_instructions() -> list[tuple[str, str]]:
    assert DOCKERFILE.is_file(), "Dockerfile is missing"
    logical = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in logical.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instr, _, arg = line.partition(" ")
            out.append((instr.upper(), arg.strip()))
    return out


def test_the_image_installs_nftables_and_makes_its_binding_importable() -> None:
    instructions = _dockerfile_instructions()
    assert instructions[0][0] == "FROM"
    assert instructions[0][1] in ("debian:12-slim", "python:3.11-slim-bookworm")
    runs = [arg for instr, arg in instructions if instr == "RUN"]
    apt = next(shlex.split(r) for r in runs if "apt-get install" in r)
    for pkg in ("nftables", "python3-nftables", "iproute2"):
        assert pkg in apt, f"the image does not install {pkg}"
    binding = " ".join(runs)
    assert "/usr/lib/python3/dist-packages/nftables" in binding and ".pth" in binding
    assert "import nftables" in binding, "the build does not prove the binding importable"
    assert instructions[-1] == ("CMD", '["qnf", "up"]')


def test_the_image_installs_every_package_of_the_project() -> None:
    instructions = _dockerfile_instructions()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    copied = {arg.split()[0] for instr, arg in instructions if instr == "COPY"}
    assert packages == {"libs", "services", "cni", "fabric", "docker_plugin"}
    assert packages | {"pyproject.toml"} <= copied, f"not copied into the image: {packages - copied}"
    assert any(instr == "RUN" and re.search(r"pip install\b.* \.(\s|$)", arg) for instr, arg in instructions)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert not packages & set(ignored), ".dockerignore hides a package from the build"
