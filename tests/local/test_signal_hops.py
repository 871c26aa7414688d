"""A node's GRO barrier: its driver sends signalling with a TTL / hop limit that its data never
has (``runtime.driver.SIGNAL_HOPS``), so no receiver's GRO coalesces a keepalive into a train of
data (docs/dataplane.md, "RS-S in the kernel"). Checked on loopback with IP_RECVTTL /
IPV6_RECVHOPLIMIT: what the receiving kernel sees."""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any

import pytest

from ntmobile.runtime.driver import SIGNAL_HOPS, CoreDriver
from ntmobile.wire.constants import MessageType

IP_RECVTTL = 12  # <linux/in.h>; Python does not name it


class QuietCore:
    def receive_datagram(self, data: bytes, addr: tuple[str, int], now: float) -> None: ...
    def datagrams_to_send(self) -> list[Any]:
        return []
    def next_event(self) -> Any:
        return None
    def get_timer(self) -> float | None:
        return None
    def handle_timer(self, now: float) -> None: ...


def receiver(family: int) -> socket.socket:
    r = socket.socket(family, socket.SOCK_DGRAM)
    if family == socket.AF_INET6:
        r.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
        r.bind(("::1", 0))
    else:
        r.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
        r.bind(("127.0.0.1", 0))
    r.settimeout(5)
    return r


def hops_of(r: socket.socket) -> tuple[bytes, int]:
    data, anc, _, _ = r.recvmsg(2048, socket.CMSG_SPACE(4))
    [(_level, _type, raw)] = anc
    return data, struct.unpack("i", raw[:4])[0]


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6], ids=["ipv4", "ipv6"])
def test_signalling_and_data_leave_with_different_hop_limits(family: int) -> None:
    if family == socket.AF_INET6 and not socket.has_ipv6:
        pytest.skip("no IPv6 on this host")
    r = receiver(family)
    dest = r.getsockname()[:2]

    async def main() -> list[tuple[bytes, int]]:
        marked = CoreDriver(QuietCore(), lambda ev: None, mark_signalling=True)
        plain = CoreDriver(QuietCore(), lambda ev: None)
        kw: dict[str, Any] = {"host4": "127.0.0.1", "host6": None} if family == socket.AF_INET else {
            "host4": "127.0.0.1", "host6": "::1"}
        await marked.start(0, **kw)
        await plain.start(0, **kw)
        try:
            keepalive = bytes([1, MessageType.KEEPALIVE]) + bytes(30)
            data = bytes([1, MessageType.DATA]) + bytes(60)
            marked.send(keepalive, dest)
            marked.send(data, dest)
            plain.send(keepalive, dest)
            return [hops_of(r) for _ in range(3)]
        finally:
            marked.close()
            plain.close()

    got = asyncio.run(main())
    r.close()
    by = {d[:2]: h for d, h in got[:2]}
    sig_hops = by[bytes([1, MessageType.KEEPALIVE])]
    data_hops = by[bytes([1, MessageType.DATA])]
    assert sig_hops == SIGNAL_HOPS and data_hops != SIGNAL_HOPS
    assert got[2][1] == data_hops  # a driver that does not mark (DC, relay): the socket's default
