"""Denied packets from the kernel: an nfnetlink_log (NFLOG) subscriber for one group.

pyroute2 has no NFLOG socket, and the protocol is small: bind a group, ask for the first bytes
of each packet, then read messages carrying the rule's log prefix and the packet's IP header.
The kernel rate-limits what reaches this socket (the rule's per-endpoint `limit`), so reading
is cheap even under a flood; if the socket's buffer overflows anyway the kernel drops messages
(ENOBUFS), which only costs events, never counts (counters are separate).

Invariants: acts in the calling process's network namespace (the node's); one thread reads.
"""

from __future__ import annotations

import errno
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address

from libs.common.errors import AdapterError

NETLINK_NETFILTER = 12
NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET = 0
NFULNL_MSG_CONFIG = 1
NFULA_CFG_CMD = 1
NFULA_CFG_MODE = 2
NFULNL_CFG_CMD_BIND = 1
NFULNL_CFG_CMD_PF_BIND = 3
NFULNL_COPY_PACKET = 2
NFULA_PAYLOAD = 9
NFULA_PREFIX = 10
NLM_F_REQUEST = 1
NLM_F_ACK = 4
NLMSG_ERROR = 2
COPY_BYTES = 64  # IP header and the first bytes of the transport header: enough for ports


@dataclass(frozen=True)
class Logged:
    """One logged packet: the rule's prefix and what its headers say."""

    prefix: str
    source: IPv4Address | IPv6Address
    destination: IPv4Address | IPv6Address
    proto: int
    port: int | None


def _attr(kind: int, data: bytes) -> bytes:
    raw = struct.pack("HH", 4 + len(data), kind) + data
    return raw + b"\0" * (-len(raw) % 4)


def _config(group: int, attrs: bytes, seq: int, family: int = socket.AF_UNSPEC) -> bytes:
    body = struct.pack("BBH", family, 0, socket.htons(group)) + attrs
    kind = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG
    return struct.pack("IHHII", 16 + len(body), kind, NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body


def parse_packet(
    payload: bytes,
) -> tuple[IPv4Address | IPv6Address, IPv4Address | IPv6Address, int, int | None]:
    """(source, destination, protocol, destination port) of an IP packet's first bytes."""
    version = payload[0] >> 4
    if version == 4:
        offset, proto = (payload[0] & 0x0F) * 4, payload[9]
        src, dst = ip_address(payload[12:16]), ip_address(payload[16:20])
    elif version == 6:
        offset, proto = 40, payload[6]
        src, dst = ip_address(payload[8:24]), ip_address(payload[24:40])
    else:
        raise ValueError(f"not an IP packet (version {version})")
    port = None
    if proto in (6, 17, 132) and len(payload) >= offset + 4:
        port = struct.unpack_from("!H", payload, offset + 2)[0]
    return src, dst, proto, port


def parse_message(data: bytes) -> list[Logged]:
    """Every NFLOG packet message in one netlink datagram."""
    out = []
    pos = 0
    while pos + 16 <= len(data):
        length, kind, _flags, _seq, _pid = struct.unpack_from("IHHII", data, pos)
        if length < 16:
            break
        if kind == (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET:
            prefix, payload = "", b""
            apos, end = pos + 16 + 4, pos + length  # past nlmsghdr and nfgenmsg
            while apos + 4 <= end:
                alen, atype = struct.unpack_from("HH", data, apos)
                if alen < 4:
                    break
                value = data[apos + 4 : apos + alen]
                atype &= 0x3FFF
                if atype == NFULA_PREFIX:
                    prefix = value.rstrip(b"\0").decode(errors="replace")
                elif atype == NFULA_PAYLOAD:
                    payload = value
                apos += (alen + 3) & ~3
            try:
                src, dst, proto, port = parse_packet(payload)
            except (ValueError, IndexError):
                pass
            else:
                out.append(Logged(prefix, src, dst, proto, port))
        pos += (length + 3) & ~3
    return out


class NflogReader:
    """Reads one NFLOG group on a daemon thread and hands each logged packet to `sink`."""

    def __init__(self, group: int) -> None:
        self._group = group
        self._sink: Callable[[Logged], object] = lambda _: None
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self.lost = 0  # messages the kernel could not queue (ENOBUFS)

    def start(self, sink: Callable[[Logged], object]) -> None:
        self._sink = sink
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            sock.bind((0, 0))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            # This kernel hands packets to NFLOG only for families bound to it in this netns.
            for seq, family in enumerate((socket.AF_INET, socket.AF_INET6), start=1):
                pf_bind = _attr(NFULA_CFG_CMD, struct.pack("B", NFULNL_CFG_CMD_PF_BIND))
                sock.send(_config(0, pf_bind, seq, family))
                self._check(sock.recv(4096))
            self._request(sock, _attr(NFULA_CFG_CMD, struct.pack("B", NFULNL_CFG_CMD_BIND)), 3)
            mode = struct.pack("!IBB", COPY_BYTES, NFULNL_COPY_PACKET, 0)
            self._request(sock, _attr(NFULA_CFG_MODE, mode), 4)
        except OSError as exc:
            sock.close()
            raise AdapterError(f"binding NFLOG group {self._group} failed: {exc}") from exc
        self._sock = sock
        self._thread = threading.Thread(target=self._run, name="nflog", daemon=True)
        self._thread.start()

    def _request(self, sock: socket.socket, attrs: bytes, seq: int) -> None:
        sock.send(_config(self._group, attrs, seq))
        self._check(sock.recv(4096))

    @staticmethod
    def _check(reply: bytes) -> None:
        _, kind, _, _, _ = struct.unpack_from("IHHII", reply)
        if kind == NLMSG_ERROR:
            (code,) = struct.unpack_from("i", reply, 16)
            if code != 0:
                raise OSError(-code, errno.errorcode.get(-code, "netlink error"))

    def _run(self) -> None:
        sock = self._sock
        assert sock is not None
        while True:
            try:
                data = sock.recv(1 << 16)
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    self.lost += 1
                    continue
                return  # closed
            if not data:
                return
            for logged in parse_message(data):
                self._sink(logged)

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()
            self._sock = None
