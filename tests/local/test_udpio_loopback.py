"""UDP GSO/GRO through real loopback sockets (dataplane.udpio): chunk datagrams sent with one
UDP_SEGMENT send come back as GRO batches, split into runs or single capsules."""

from __future__ import annotations

import os
import socket

from ntmobile.dataplane.forwarder import gso_max_size
from ntmobile.dataplane.udpio import UdpIo

from ..unit.test_dataplane_capsules import pair


def test_udpio_loopback_gso_gro_roundtrip() -> None:
    """Chunk datagrams through real loopback sockets: one UDP_SEGMENT send, GRO batches split
    back into datagrams and handed over as runs or single capsules."""
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.setblocking(False)
    got: list[bytes] = []
    s, o = pair()

    def on_capsule(data: memoryview, addr: tuple[str, int], now: float) -> None:
        r = o.open_chunk(data, now, learnt=True)
        if r is not None:
            got.append(r)

    def on_run(data: memoryview, size: int, addr: tuple[str, int], now: float) -> int:
        r, k = o.open_run(data, size, now, learnt=True)
        if r is not None:
            got.append(bytes(r))
        return k

    others: list[bytes] = []
    io_rx = UdpIo([rx], on_capsule, lambda d, a: others.append(d), on_run=on_run)
    io_tx = UdpIo([tx], on_capsule, lambda d, a: None)
    try:
        from ntmobile.dataplane.udp import enable_gro
        for sock in io_rx.socks.values():
            enable_gro(sock)
        payloads = [os.urandom(n) for n in (10, 3000, 40000, gso_max_size())]
        dest = rx.getsockname()
        for p in payloads:
            io_tx.send_chunks(*s.seal_gso(p, 1448), dest)
        io_tx.send(b"\x01\x10not a capsule", dest)
        import time
        deadline = time.monotonic() + 5
        while (len(got) < len(payloads) or not others) and time.monotonic() < deadline:
            for sock in io_rx.socks.values():
                io_rx._readable(sock)
        assert got == payloads and others == [b"\x01\x10not a capsule"]
    finally:
        io_rx.stop()
        io_tx.stop()
        rx.close()
        tx.close()
