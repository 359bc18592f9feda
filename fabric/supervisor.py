"""The node supervisor: nats-server and every service as child processes, restarted if they die.

Start order: prepare (PKI, config) → nats-server → wait until it accepts the admin identity →
create streams and buckets → start the services → wait until each answers `$SRV.PING`.
Stop order is the reverse. Children get PR_SET_PDEATHSIG, so even a SIGKILLed supervisor leaves
no process behind; a clean stop terminates them by PID, then kills what does not exit in time.
"""

from __future__ import annotations

import asyncio
import ctypes
import datetime as dt
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nats
import nats.errors
from nats.aio.client import Client

from fabric.node import (
    admin_identity,
    find_nats_server,
    prepare,
    renew,
    renew_gateway_server,
    renew_server,
)
from libs.common.bus import tls_context
from libs.common.config import Settings
from libs.common.ids import SERVICES, inbox_prefix
from libs.common.pki import PkiDirectory
from libs.common.state import ensure_state

log = logging.getLogger("qnf.supervisor")

STOP_GRACE_S = 10.0
RESTART_MIN_S = 0.5
RESTART_MAX_S = 30.0
HEALTHY_AFTER_S = 60.0
RENEW_CHECK_S = 60.0


class StartError(Exception):
    """The fabric could not start; the message is the one line to print."""


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: ask the kernel for SIGTERM when the parent dies.
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _env_for(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    for name, value in settings.model_dump(mode="json").items():
        if value is not None:
            env[f"QNF_{name.upper()}"] = value if isinstance(value, str) else json.dumps(value)
    env.pop("QNF_CONFIG", None)  # the effective settings are in the environment now
    return env


@dataclass
class Child:
    """One supervised process."""

    name: str
    argv: list[str]
    proc: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    restarts: int = 0
    backoff: float = RESTART_MIN_S


@dataclass
class Supervisor:
    settings: Settings
    out: Callable[[str], None] = print
    children: list[Child] = field(default_factory=list)
    nats: Child | None = None
    _stopping: bool = False
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self) -> None:
        """Bring the node up; raise StartError with one line if something is unusable."""
        try:
            binary = find_nats_server(self.settings.nats_server_bin)
        except FileNotFoundError as exc:
            raise StartError(str(exc)) from exc
        try:
            prepared = prepare(self.settings)
        except (OSError, ValueError) as exc:
            raise StartError(f"cannot prepare the PKI under {self.settings.state_dir}: {exc}") from exc
        self._check_port_free()
        log_file = self.settings.nats_dir / "nats-server.log"
        self.nats = Child("nats-server", [str(binary), "-c", str(prepared.nats_config), "-l", str(log_file)])
        await self._spawn(self.nats)
        await self._wait_for_nats(log_file)
        env = _env_for(self.settings)
        for name in SERVICES:
            child = Child(name, [sys.executable, "-m", f"services.{name}"])
            self.children.append(child)
            await self._spawn(child, env)
        if self.settings.docker_plugin:
            # Docker's network driver: a translator onto vnet's node commands, supervised alike.
            child = Child("docker-plugin", [sys.executable, "-m", "docker_plugin"])
            self.children.append(child)
            await self._spawn(child, env)
        for child in self.children:
            self._tasks.append(asyncio.create_task(self._watch(child, env)))
        self._tasks.append(asyncio.create_task(self._watch_nats()))
        self._tasks.append(asyncio.create_task(self._renew_loop()))
        await self._wait_for_services()
        if self.settings.docker_plugin:
            await self._wait_for_socket(self.settings.docker_plugin_socket)

    async def _wait_for_socket(self, path: Path, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not path.is_socket():
            if time.monotonic() > deadline:
                raise StartError(f"the Docker plugin did not create {path} in {timeout:.0f}s")
            await asyncio.sleep(0.1)

    def _check_port_free(self) -> None:
        family = socket.AF_INET6 if ":" in self.settings.nats_host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((self.settings.nats_host, self.settings.nats_port))
            except OSError as exc:
                raise StartError(
                    f"cannot listen on {self.settings.nats_host}:{self.settings.nats_port}: {exc.strerror}"
                ) from exc

    async def _spawn(self, child: Child, env: dict[str, str] | None = None) -> None:
        child.proc = await asyncio.create_subprocess_exec(
            *child.argv,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            # Own session: a terminal's Ctrl-C reaches only the supervisor, which stops the
            # services before the bus they need to drain through.
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        child.started_at = time.monotonic()
        log.info("started %s pid %d", child.name, child.proc.pid)

    async def _admin_connect(self, timeout: float = 2.0) -> Client:
        pki = PkiDirectory(self.settings.pki_dir)
        admin = admin_identity(self.settings)
        return await nats.connect(
            self.settings.url,
            tls=tls_context(pki, admin),
            tls_handshake_first=True,
            inbox_prefix=inbox_prefix(admin),
            allow_reconnect=False,
            connect_timeout=timeout,
            name="qnf-supervisor",
            reconnect_time_wait=0.1,
            error_cb=_quiet,
        )

    async def _wait_for_nats(self, log_file: Path, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        assert self.nats is not None and self.nats.proc is not None
        while True:
            if self.nats.proc.returncode is not None:
                raise StartError(
                    f"nats-server exited with {self.nats.proc.returncode}: {_last_error(log_file)}"
                )
            try:
                nc = await self._admin_connect()
                break
            except (TimeoutError, OSError, nats.errors.Error) as exc:
                if time.monotonic() > deadline:
                    raise StartError(
                        f"nats-server did not accept connections in {timeout:.0f}s: {exc}"
                    ) from exc
                await asyncio.sleep(0.1)
        try:
            await ensure_state(nc.jetstream())
        finally:
            await nc.close()

    async def bootstrap(self) -> None:
        """Create the event stream and buckets on an already running server (compose's one-shot)."""
        try:
            nc = await self._admin_connect(timeout=5)
        except (TimeoutError, OSError, ValueError, nats.errors.Error) as exc:
            raise StartError(f"cannot reach the bus at {self.settings.url} as admin: {exc}") from exc
        try:
            await ensure_state(nc.jetstream())
        finally:
            await nc.close()

    async def _wait_for_services(self, timeout: float = 30.0) -> None:
        """Wait until every service answers the micro-service PING."""
        nc = await self._admin_connect()
        try:
            deadline = time.monotonic() + timeout
            missing = set(SERVICES)
            while missing:
                for name in sorted(missing):
                    try:
                        await nc.request(f"$SRV.PING.qnf-{name}", b"", timeout=0.5)
                        missing.discard(name)
                    except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                        pass
                if missing and time.monotonic() > deadline:
                    raise StartError(
                        f"services did not come up in {timeout:.0f}s: {', '.join(sorted(missing))}"
                    )
                if missing:
                    await asyncio.sleep(0.2)
        finally:
            await nc.close()

    async def _watch(self, child: Child, env: dict[str, str]) -> None:
        while True:
            assert child.proc is not None
            rc = await child.proc.wait()
            if self._stopping:
                return
            ran = time.monotonic() - child.started_at
            if ran > HEALTHY_AFTER_S:
                child.backoff = RESTART_MIN_S
            log.warning(
                "%s exited with %s after %.1fs; restarting in %.1fs", child.name, rc, ran, child.backoff
            )
            await asyncio.sleep(child.backoff)
            child.backoff = min(child.backoff * 2, RESTART_MAX_S)
            if self._stopping:
                return
            child.restarts += 1
            await self._spawn(child, env)

    async def _watch_nats(self) -> None:
        assert self.nats is not None and self.nats.proc is not None
        rc = await self.nats.proc.wait()
        if not self._stopping:
            # Without the bus nothing works; restart it and let the services reconnect.
            log.error("nats-server exited with %s; restarting", rc)
            await asyncio.sleep(RESTART_MIN_S)
            if not self._stopping:
                self.nats.restarts += 1
                await self._spawn(self.nats)
                self._tasks.append(asyncio.create_task(self._watch_nats()))

    async def _renew_loop(self) -> None:
        pki = PkiDirectory(self.settings.pki_dir)
        while True:
            await asyncio.sleep(RENEW_CHECK_S)
            now = dt.datetime.now(dt.UTC)
            ca = pki.load_ca(self.settings.trust_domain)
            renewed = renew(self.settings, ca, now=now)
            if renewed:
                log.info("renewed %s", ", ".join(i.uri for i in renewed))
            if renew_gateway_server(self.settings, ca, now=now):
                log.info("renewed the gateway's HTTPS certificate")  # the gateway reloads it itself
            if (
                renew_server(self.settings, ca, now=now)
                and self.nats is not None
                and self.nats.proc is not None
            ):
                self.nats.proc.send_signal(signal.SIGHUP)  # nats-server reloads its TLS files on SIGHUP
                log.info("renewed the nats-server certificate")

    async def stop(self) -> None:
        """Terminate the services, then nats-server; kill what does not exit in time."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        await _terminate([c for c in self.children if c.proc is not None])
        if self.nats is not None and self.nats.proc is not None:
            await _terminate([self.nats])

    def banner(self) -> str:
        pki = PkiDirectory(self.settings.pki_dir)
        admin = admin_identity(self.settings)
        d = pki.identity_dir(admin)
        ctx = self.settings.state_dir / "nats-context" / "qnf-admin.json"
        sub = "nats --context qnf-admin sub 'qnf.v1.evt.>'"
        plugin = self.settings.docker_plugin_socket
        docker = [f"  docker:   driver {plugin.stem} on {plugin}"] if self.settings.docker_plugin else []
        return "\n".join(
            [
                f"qnf: fabric up on node {self.settings.node} (trust domain {self.settings.trust_domain})",
                f"  bus:      {self.settings.url} (mutual TLS 1.3, TLS first, signed messages)",
                f"  gateway:  {self.settings.gateway_url} (REST; CA {pki.ca_cert_path})",
                f"  grpc:     {self.settings.gateway_host}:{self.settings.gateway_grpc_port} (qnf.v1.Fabric)",
                f"  token:    {self.settings.gateway_admin_token_path} (admin API token, first start)",
                f"  admin:    cert {d / 'tls.crt'} key {d / 'tls.key'} ca {pki.ca_cert_path}",
                f"  nats CLI: cp {ctx} ~/.config/nats/context/ && {sub}",
                f"  services: {', '.join(SERVICES)} (nats --context qnf-admin micro ls)",
                *docker,
                "  stop:     Ctrl-C or SIGTERM",
            ]
        )


async def _terminate(children: list[Child]) -> None:
    for child in children:
        assert child.proc is not None
        if child.proc.returncode is None:
            child.proc.send_signal(signal.SIGTERM)
    for child in children:
        assert child.proc is not None
        try:
            await asyncio.wait_for(child.proc.wait(), STOP_GRACE_S)
        except TimeoutError:
            log.warning("%s did not stop in %.0fs; killing", child.name, STOP_GRACE_S)
            child.proc.kill()
            await child.proc.wait()


async def _quiet(exc: Exception) -> None:
    log.debug("bus: %s", exc)


def _last_error(log_file: Path) -> str:
    try:
        lines = [ln for ln in log_file.read_text().splitlines() if "[FTL]" in ln or "[ERR]" in ln]
    except OSError:
        return "no log"
    return lines[-1].split("] ", 2)[-1] if lines else "see " + str(log_file)
