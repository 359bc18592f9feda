"""Configuration of every qnf process, in one place.

Sources, highest priority first: keyword arguments, environment (`QNF_*`), a TOML file named by
`QNF_CONFIG` (or `<state_dir>/qnf.toml` when it exists), then the defaults below.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from libs.common.ids import check_token, check_trust_domain


def _default_node() -> str:
    name = "".join(c if c.isalnum() or c == "-" else "-" for c in socket.gethostname().lower()).strip("-")
    return name[:63] or "node"


class Settings(BaseSettings):
    """Settings shared by the supervisor, every service and the tools."""

    model_config = SettingsConfigDict(env_prefix="QNF_", extra="forbid", frozen=True)

    state_dir: Path = Field(Path("/var/lib/qnf"), description="CA, identities, NATS data, service state")
    trust_domain: str = "qnf.local"
    dns_domain: str = Field("qnf.local", description="names are <endpoint>.<network>.<dns_domain>")
    dns_upstreams: list[str] = Field(
        default_factory=list, description="resolvers for other names, host[:port]"
    )
    node: str = Field(default_factory=_default_node, description="this node's name, a subject token")
    nats_host: str = "127.0.0.1"
    nats_port: int = Field(4222, ge=0, le=65535)
    nats_url: str | None = Field(None, description="defaults to tls://<nats_host>:<nats_port>")
    signature_suite: Literal["ed25519", "hybrid"] = "ed25519"
    max_clock_skew_s: float = Field(30.0, gt=0, le=600)
    cert_lifetime_h: float = Field(24.0, gt=0, le=24 * 90)
    request_timeout_s: float = Field(5.0, gt=0)
    drift_check_s: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="how often firewall and nat compare the kernel with what they applied",
    )
    metrics_host: str = "127.0.0.1"
    metrics_base_port: int = Field(
        9460, ge=0, le=65535, description="service i listens on base+i; 0: ephemeral"
    )
    gateway_port: int = Field(8480, ge=0, le=65535, description="REST API port; 0: ephemeral")
    gateway_grpc_port: int = Field(8481, ge=0, le=65535, description="gRPC API port; 0: ephemeral")
    gateway_host: str = Field("127.0.0.1", description="REST API listen address (in its certificate)")
    gateway_insecure_http: bool = Field(False, description="plain HTTP, for local development only")
    gateway_rate_per_s: float = Field(50.0, gt=0, description="requests a second per API identity")
    gateway_rate_burst: int = Field(100, ge=1)
    gateway_max_body_bytes: int = Field(2 << 20, ge=1024, description="larger bodies get 413")
    nats_server_bin: Path | None = Field(
        None, description="nats-server to run; default: the venv's, then PATH"
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    docker_plugin: bool = Field(
        False, description="run the Docker network driver with the node agents (`qnf docker-plugin`)"
    )
    docker_plugin_socket: Path = Field(
        Path("/run/docker/plugins/qnf.sock"),
        description="where Docker finds the driver; the file name is the driver's name (`-d qnf`)",
    )
    docker_host: str = Field(
        "unix:///var/run/docker.sock",
        pattern=r"^unix:///",
        description="the engine API the driver reads container labels from (Docker sends it none)",
    )

    @field_validator("trust_domain")
    @classmethod
    def _trust_domain(cls, v: str) -> str:
        return check_trust_domain(v)

    @field_validator("node")
    @classmethod
    def _node(cls, v: str) -> str:
        return check_token(v, "node name")

    @property
    def pki_dir(self) -> Path:
        return self.state_dir / "pki"

    @property
    def nats_dir(self) -> Path:
        return self.state_dir / "nats"

    @property
    def url(self) -> str:
        return self.nats_url or f"tls://{self.nats_host}:{self.nats_port}"

    @property
    def gateway_url(self) -> str:
        host = f"[{self.gateway_host}]" if ":" in self.gateway_host else self.gateway_host
        scheme = "http" if self.gateway_insecure_http else "https"
        return f"{scheme}://{host}:{self.gateway_port}"

    @property
    def gateway_admin_token_path(self) -> Path:
        """The bootstrap admin API token, written 0600 by the gateway on first start."""
        return self.state_dir / "gateway" / "admin.token"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, _config_file()))


def _config_file() -> Path | None:
    explicit = os.environ.get("QNF_CONFIG")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ValueError(f"QNF_CONFIG names {path}, which is not a readable file")
        return path
    default = Path(os.environ.get("QNF_STATE_DIR", "/var/lib/qnf")) / "qnf.toml"
    return default if default.is_file() else None


def load_settings(**overrides: Any) -> Settings:
    """Load settings from all sources; pydantic's ValidationError names every bad field."""
    return Settings(**overrides)
