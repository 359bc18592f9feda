"""`qnf docker-plugin` / `python -m docker_plugin`: serve Docker's remote driver protocol on a socket.

The socket (`docker_plugin_socket`, default `/run/docker/plugins/qnf.sock`: Docker's discovery
directory, the file name is the driver's name) is created 0600: Docker runs as root, and anyone
else who could reach it would act with the node's `docker` identity. It is removed on exit.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import stat
import sys
from pathlib import Path

import uvicorn
from pydantic import ValidationError

from libs.common.bus import Bus
from libs.common.config import Settings, load_settings
from libs.common.errors import Unavailable
from libs.common.ids import SpiffeId
from libs.common.logs import setup_logging

log = logging.getLogger("qnf.docker")


def bind_socket(path: Path) -> socket.socket:
    """A listening unix socket at `path`, mode 0600; a stale socket file there is replaced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise OSError(f"{path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()  # nobody listens: left by a process that died
        else:
            raise OSError(f"another process serves {path}")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(128)
    return sock


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    from docker_plugin.driver import Driver, make_app
    from docker_plugin.labels import LabelSync

    identity = SpiffeId.node_agent(settings.trust_domain, settings.node, "docker")
    bus = await Bus.connect_as(settings, identity, service="docker")
    path = settings.docker_plugin_socket
    labels = LabelSync(bus, settings.node, settings.docker_host)
    try:
        sock = bind_socket(path)
        try:
            config = uvicorn.Config(
                make_app(Driver(bus, settings.node, labels)),
                log_level="warning",
                lifespan="off",
                access_log=False,
            )
            server = uvicorn.Server(config)
            task = asyncio.create_task(server.serve(sockets=[sock]))
            log.info("serving Docker's remote driver protocol on %s (driver %s)", path, path.stem)
            await asyncio.wait([task, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
            server.should_exit = True
            await task
        finally:
            sock.close()
            path.unlink(missing_ok=True)
    finally:
        await labels.close()
        await bus.close()


def main(settings: Settings | None = None) -> int:
    try:
        settings = settings or load_settings()
    except (ValidationError, ValueError) as exc:
        print(f"qnf-docker-plugin: error: bad configuration: {exc}".replace("\n", " "), file=sys.stderr)
        return 2
    setup_logging(settings.log_level, service="docker", node=settings.node)

    async def amain() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(settings, stop)

    try:
        asyncio.run(amain())
    except Unavailable as exc:
        print(f"qnf-docker-plugin: error: {exc}", file=sys.stderr)
        return 3
    except OSError as exc:
        print(f"qnf-docker-plugin: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
