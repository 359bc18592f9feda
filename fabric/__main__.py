"""`qnf`: the fabric's command line.

qnf up        start the whole fabric on this node (CA and identities on first run)
qnf init      only prepare: CA, identities, nats-server config, NATS CLI contexts
qnf network|endpoint|policy|service|port|token|events   the REST API (fabric.cli)
qnf docker-plugin   Docker's network driver (what `up` runs when `docker_plugin` is set)
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from pydantic import ValidationError

from libs.common.config import Settings, load_settings
from libs.common.logs import setup_logging


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, object] = {}
    if args.state_dir is not None:
        overrides["state_dir"] = args.state_dir
    if args.node is not None:
        overrides["node"] = args.node
    if args.nats_port is not None:
        overrides["nats_port"] = args.nats_port
    return load_settings(**overrides)


async def _up(settings: Settings) -> int:
    from fabric.supervisor import StartError, Supervisor

    supervisor = Supervisor(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await supervisor.start()
    except StartError as exc:
        print(f"qnf: error: {exc}", file=sys.stderr)
        await supervisor.stop()
        return 2
    print(supervisor.banner(), flush=True)
    await stop.wait()
    await supervisor.stop()
    print("qnf: stopped", flush=True)
    return 0


async def _bootstrap(settings: Settings) -> int:
    from fabric.supervisor import StartError, Supervisor

    try:
        await Supervisor(settings).bootstrap()
    except StartError as exc:
        print(f"qnf: error: {exc}", file=sys.stderr)
        return 2
    print("qnf: stream and buckets ready", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qnf", description="Quantum-Network Fabric")
    parser.add_argument(
        "--state-dir", type=Path, help="state directory (default /var/lib/qnf, env QNF_STATE_DIR)"
    )
    parser.add_argument("--node", help="this node's name (env QNF_NODE)")
    parser.add_argument("--nats-port", type=int, help="port of the embedded nats-server (env QNF_NATS_PORT)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="start the whole fabric on this node")
    sub.add_parser("init", help="create the CA, identities and nats-server config, then exit")
    sub.add_parser("bootstrap", help="create the event stream and KV buckets on a running bus, then exit")
    cni = sub.add_parser("cni-install", help="install the CNI plugin and (optionally) a conflist")
    cni.add_argument("--bin-dir", type=Path, default=Path("/opt/cni/bin"))
    cni.add_argument("--conf-dir", type=Path, default=Path("/etc/cni/net.d"))
    cni.add_argument("--network", help="write a conflist for this qnf network")
    cni.add_argument(
        "--chain", default="", help="reference plugins to chain after qnf: portmap,tuning,bandwidth"
    )
    docker = sub.add_parser("docker-plugin", help="serve Docker's network driver protocol (foreground)")
    docker.add_argument("--socket", type=Path, help="default /run/docker/plugins/qnf.sock: driver `qnf`")
    from fabric import cli

    cli.add_commands(sub)
    args = parser.parse_args(argv)
    try:
        settings = _settings(args)
    except (ValidationError, ValueError) as exc:
        print(f"qnf: error: bad configuration: {exc}".replace("\n", " "), file=sys.stderr)
        return 2
    if args.command in cli.COMMANDS:
        return cli.run(args, settings)
    setup_logging(settings.log_level, service="supervisor", node=settings.node)
    if args.command == "init":
        from fabric.node import prepare

        prepared = prepare(settings)
        print(f"qnf: prepared {settings.state_dir}; nats-server config {prepared.nats_config}")
        return 0
    if args.command == "cni-install":
        from cni.install import conflist, install_plugin, write_conflist

        print(f"qnf: installed {install_plugin(args.bin_dir)}")
        if args.network:
            chain = [c for c in args.chain.split(",") if c]
            doc = conflist(args.network, state_dir=settings.state_dir, chain=chain)
            print(f"qnf: wrote {write_conflist(args.conf_dir, doc)}")
        return 0
    if args.command == "docker-plugin":
        from docker_plugin.__main__ import main as docker_plugin

        if args.socket is not None:
            settings = settings.model_copy(update={"docker_plugin_socket": args.socket})
        return docker_plugin(settings)
    if args.command == "bootstrap":
        return asyncio.run(_bootstrap(settings))
    return asyncio.run(_up(settings))


if __name__ == "__main__":
    sys.exit(main())
