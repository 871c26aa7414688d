"""The DNS server and the node's DNS stub over loopback sockets: a UDP reply is never larger than
AMPLIFICATION_MAX times its query (issue 14 §4), and the stub holds a bounded number and volume of
queries (issue 14 §2). The cores' side of both: tests/unit/test_unauth_replies.py and
test_preauth_state.py."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from ntmobile.core.common import AMPLIFICATION_MAX
from ntmobile.runtime import stub
from ntmobile.runtime.dns import serve_dns


def test_the_dns_server_never_sends_a_udp_reply_over_the_factor() -> None:
    """The last line behind core.dnsauth's truncation: serve_dns drops (and counts) any UDP reply
    larger than max_reply_factor times its query; TCP is not limited."""

    def handler(query: bytes, tcp: bool) -> bytes:
        times = AMPLIFICATION_MAX + (1 if query.startswith(b"big") else 0)
        return query[:2] + b"r" * (times * len(query) - 2)

    async def main() -> tuple[bytes, int, int]:
        server = await serve_dns(handler, "127.0.0.1", 0, max_reply_factor=AMPLIFICATION_MAX)
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, ("127.0.0.1", server.port))
            await loop.sock_sendall(sock, b"big query 1234")
            await loop.sock_sendall(sock, b"ok query 12345")
            first = await asyncio.wait_for(loop.sock_recv(sock, 65535), 10)  # loopback keeps the order
        finally:
            sock.close()
            await server.close()
        return first, server.stats.amplification_dropped, server.stats.udp_queries

    first, dropped, queries = asyncio.run(main())
    assert first.startswith(b"ok") and len(first) == AMPLIFICATION_MAX * len(b"ok query 12345")
    assert dropped == 1 and queries == 2


def test_the_dns_stub_holds_a_bounded_number_and_volume_of_queries() -> None:
    """A local process floods the stub with queries its handler holds (as it holds tunnelled
    lookups until the path is ready): at most MAX_PENDING queries and PENDING_BYTES of them, none
    over MAX_QUERY; at most MAX_TCP connections; every query over the limits counted in dropped."""
    async def main() -> tuple[int, int, int, int, int]:
        release = asyncio.Event()

        async def handler(wire: bytes, tcp: bool) -> bytes | None:
            await release.wait()
            return None

        srv = stub.StubServer(handler)
        await srv.start("127.0.0.1", 0)
        assert srv.udp is not None and srv.tcp is not None
        port = srv.udp.get_extra_info("sockname")[1]
        tport = srv.tcp.sockets[0].getsockname()[1]
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sent = 0
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 20
            for size in [stub.MAX_QUERY + 1] * 50 + [stub.MAX_QUERY] * 600:
                tx.sendto(bytes(size), ("127.0.0.1", port))
                sent += 1
                while srv.received < sent - 8 and loop.time() < deadline:  # never overrun the socket buffer
                    await asyncio.sleep(0.001)
            while srv.received < sent and loop.time() < deadline:
                await asyncio.sleep(0.01)
            peak_bytes, peak_tasks = srv.pending_bytes, len(srv.tasks)
            conns = [await asyncio.open_connection("127.0.0.1", tport) for _ in range(stub.MAX_TCP + 20)]
            for _r, wr in conns:
                wr.write((100).to_bytes(2, "big") + bytes(100))
            over = 50 + (600 - stub.PENDING_BYTES // stub.MAX_QUERY) + 20  # UDP: too big, over budget; TCP: over cap
            deadline = loop.time() + 10
            while (srv.tcp_open < stub.MAX_TCP or srv.dropped < over) and loop.time() < deadline:
                await asyncio.sleep(0.01)
            tcp_open = srv.tcp_open
            release.set()
            for _r, wr in conns:
                wr.close()
            dropped = srv.dropped
            await srv.close()
            return peak_bytes, peak_tasks, tcp_open, dropped, srv.received
        finally:
            tx.close()

    peak_bytes, peak_tasks, tcp_open, dropped, received = asyncio.run(main())
    assert received == 650
    assert peak_bytes <= stub.PENDING_BYTES and peak_tasks == stub.PENDING_BYTES // stub.MAX_QUERY
    assert tcp_open == stub.MAX_TCP
    assert dropped == 50 + (600 - peak_tasks) + 20


def test_the_stubs_held_handler_answers_later_within_the_same_limits() -> None:
    """The synchronous held handler (the node's tunnelled lookups): what it takes is answered when it
    calls back, counts in the same MAX_PENDING / PENDING_BYTES books until then, and what it declines
    (or fails on) goes to the async handler."""
    async def main() -> None:
        callbacks: list[Callable[[bytes | None], None]] = []

        def held(wire: bytes, send: Callable[[bytes | None], None]) -> bool:
            if wire.startswith(b"boom"):
                raise RuntimeError("handler bug")
            if not wire.startswith(b"hold"):
                return False
            callbacks.append(send)
            return True

        async def handler(wire: bytes, tcp: bool) -> bytes | None:
            return b"async:" + wire

        srv = stub.StubServer(handler, held)
        await srv.start("127.0.0.1", 0)
        assert srv.udp is not None
        port = srv.udp.get_extra_info("sockname")[1]
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rx.bind(("127.0.0.1", 0))
        rx.setblocking(False)
        loop = asyncio.get_running_loop()
        try:
            for q in (b"hold 1......", b"plain 2.....", b"boom 3......"):
                rx.sendto(q, ("127.0.0.1", port))
            got = {await asyncio.wait_for(loop.sock_recv(rx, 512), 5) for _ in range(2)}
            assert got == {b"async:plain 2.....", b"async:boom 3......"}
            assert srv.held == 1 and srv.pending_bytes == 12 and srv.errors == 1
            callbacks[0](b"answer 1")
            callbacks[0](b"again")  # a second call is ignored
            assert await asyncio.wait_for(loop.sock_recv(rx, 512), 5) == b"answer 1"
            assert srv.held == 0 and srv.pending_bytes == 0
        finally:
            rx.close()
            await srv.close()

    asyncio.run(main())
