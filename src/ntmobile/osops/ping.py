"""ICMP echo from Python (raw sockets, root): round-trip time and hop count to an address.

Used by the relay server to tell its DC how far a general node is. Hops are inferred from the
reply's TTL / hop limit: hosts start at 64, 128 or 255, so hops = (next of those ≥ ttl) − ttl.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import struct
import time

_ICMP_ECHO = 8
_ICMP_ECHO_REPLY = 0
_ICMP6_ECHO = 128
_ICMP6_ECHO_REPLY = 129
_INITIAL_TTLS = (32, 64, 128, 255)


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return int(~s & 0xFFFF)


def hops_from_ttl(ttl: int) -> int:
    start = next(t for t in _INITIAL_TTLS if t >= ttl)
    return start - ttl


async def icmp_echo(address: str, *, timeout: float = 0.3, ident: int | None = None) -> tuple[int, int] | None:
    """Send one echo request; return (hops, rtt in µs), or None when no reply came in time."""
    ip = ipaddress.ip_address(address)
    v6 = ip.version == 6
    loop = asyncio.get_running_loop()
    ident = (os.getpid() if ident is None else ident) & 0xFFFF
    seq = int.from_bytes(os.urandom(2), "big")
    payload = os.urandom(16)
    if v6:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
        packet = struct.pack("!BBHHH", _ICMP6_ECHO, 0, 0, ident, seq) + payload  # kernel fills the checksum
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        hdr = struct.pack("!BBHHH", _ICMP_ECHO, 0, 0, ident, seq)
        packet = struct.pack("!BBHHH", _ICMP_ECHO, 0, _checksum(hdr + payload), ident, seq) + payload
    sock.setblocking(False)
    try:
        start = time.monotonic()
        await loop.sock_sendto(sock, packet, (str(ip), 0))
        deadline = start + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            fut = loop.create_future()

            def readable(f: asyncio.Future[None] = fut) -> None:
                if not f.done():
                    f.set_result(None)

            loop.add_reader(sock.fileno(), readable)
            try:
                await asyncio.wait_for(fut, remaining)
            except TimeoutError:
                return None
            finally:
                loop.remove_reader(sock.fileno())
            try:
                data, anc, _flags, src = sock.recvmsg(2048, socket.CMSG_SPACE(4))
            except BlockingIOError:
                continue
            if ipaddress.ip_address(src[0].split("%")[0]) != ip:
                continue
            if v6:
                if len(data) < 8 or data[0] != _ICMP6_ECHO_REPLY:
                    continue
                rid, rseq = struct.unpack_from("!HH", data, 4)
                ttl = next((int.from_bytes(d[:4], "little") for lvl, typ, d in anc
                            if lvl == socket.IPPROTO_IPV6 and typ == socket.IPV6_HOPLIMIT), 64)
            else:
                ihl = (data[0] & 0x0F) * 4
                if len(data) < ihl + 8 or data[ihl] != _ICMP_ECHO_REPLY:
                    continue
                rid, rseq = struct.unpack_from("!HH", data, ihl + 4)
                ttl = data[8]
            if (rid, rseq) != (ident, seq):
                continue
            rtt_us = int((time.monotonic() - start) * 1e6)
            return hops_from_ttl(ttl), rtt_us
    except OSError:
        return None
    finally:
        sock.close()
