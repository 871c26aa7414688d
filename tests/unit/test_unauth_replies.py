"""Replies to unauthenticated input (issue 14 §4): none is larger than AMPLIFICATION_MAX times the
datagram it answers (DNS over UDP, REREGISTER, Version Not Supported, Peer Hello replies), and Peer
Hellos from unknown sources are rate-limited per source prefix and globally."""

from __future__ import annotations

import asyncio
import socket

from ntmobile.core.common import AMPLIFICATION_MAX
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
