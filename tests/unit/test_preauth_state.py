"""State made before authentication is bounded in count and bytes, expires, and every drop is
counted (issue 14, section 2): Tunnel Requests a node holds for paths it does not know yet,
datagrams a DC holds for a peer DC whose key is being checked, queries the node's DNS stub holds.
(GSO reassembly: test_reassembly_limits.py.)"""

from __future__ import annotations

import asyncio
import socket

from ntmobile.core.dc import PEER_HELD_MAX, PEER_HELD_TOTAL, PEER_UNVERIFIED_MAX
from ntmobile.core.node import EARLY_MAX, NodeConfig, NodeCore
from ntmobile.core.timing import EARLY_HOLD
from ntmobile.crypto import x25519_public
from ntmobile.runtime import stub
from ntmobile.wire import MAX_SIGNAL_SIZE, MessageType, PeerHello, SignalHeader, pack_peer_hello

from .test_dc_peering import World


def sealed_looking(mtype: MessageType, sender: bytes, seq: int, size: int) -> bytes:
    """A signalling header and ``size - 24`` bytes of "sealed body" nobody can open."""
    return SignalHeader(1, mtype, 0, 0, sender, seq, seq).pack() + bytes(size - 24)


def test_held_tunnel_requests_are_bounded_in_count_bytes_and_time() -> None:
    node = NodeCore(NodeConfig("mn.a.example", b"\x01" * 8, b"\x02" * 32, b"\x03" * 8, ("192.0.2.10", 7410)),
                    0.0, seq_base=1)
    src = ("198.51.100.9", 4000)
    for i in range(200):  # oversized: no Tunnel Request is larger than MAX_SIGNAL_SIZE
        node.receive_datagram(sealed_looking(MessageType.TUNNEL_REQUEST, i.to_bytes(8, "big"), i, 60000), src, 1.0)
    assert node._early == [] and node.stats["drop_oversize"] == 200
    for i in range(200):
        node.receive_datagram(sealed_looking(MessageType.TUNNEL_REQUEST, i.to_bytes(8, "big"), i, MAX_SIGNAL_SIZE),
                              src, 1.0 + i * 1e-3)
        assert len(node._early) <= EARLY_MAX
        assert sum(len(e[1]) for e in node._early) <= EARLY_MAX * MAX_SIGNAL_SIZE
    assert node.stats["tunnel_request_held"] == 200
    assert node.stats["tunnel_request_held_dropped"] == 200 - EARLY_MAX
    # Expiry: the held ones are older than EARLY_HOLD when the next one comes; a clock that went
    # back drops them too.
    node.receive_datagram(sealed_looking(MessageType.TUNNEL_REQUEST, b"\xee" * 8, 1, 100), src, 2.0 + EARLY_HOLD)
    assert len(node._early) == 1 and node.stats["tunnel_request_held_dropped"] == 200
    node.receive_datagram(sealed_looking(MessageType.TUNNEL_REQUEST, b"\xef" * 8, 1, 100), src, 0.5)
    assert len(node._early) == 1 and node.stats["tunnel_request_held_dropped"] == 201


def test_datagrams_held_for_unverified_peer_dcs_are_bounded_in_count_and_bytes() -> None:
    """Hellos from PEER_UNVERIFIED_MAX fresh keys (each check pending), then floods of sealed-looking
    Peer Queries under every claimed ID: at most PEER_HELD_MAX per key, PEER_HELD_TOTAL in all, none
    larger than a signalling datagram can be (main: 256 x 16 x 64 KB = 256 MiB)."""
    w = World("cone", "none")
    dcb = w.dcb
    ids = [bytes([0xEE, i >> 8, i & 0xFF]) + bytes(5) for i in range(PEER_UNVERIFIED_MAX)]
    for i, sender in enumerate(ids):
        key = x25519_public(i.to_bytes(2, "big") * 16)
        w.net.now += 0.05  # (within the global hello rate; one source network each: no per-prefix limit)
        dcb.receive_datagram(pack_peer_hello(sender, 1, PeerHello(domain="evil.example", key=key)),
                             (f"10.{i >> 8}.{i & 255}.9", 7410), w.net.now)
    list(iter(dcb.next_event, None))
    for sender in ids:
        for seq in range(PEER_HELD_MAX + 4):
            size = 60000 if seq % 2 else MAX_SIGNAL_SIZE
            dcb.receive_datagram(sealed_looking(MessageType.PEER_QUERY, sender, seq + 1, size), ("192.0.2.99", 7410),
                                 w.net.now)
    held = [d for p in dcb.peering.by_key.values() for _h, d, _a in p.held]
    assert len(held) <= PEER_HELD_TOTAL and all(len(d) <= MAX_SIGNAL_SIZE for d in held)
    assert max(len(p.held) for p in dcb.peering.by_key.values()) <= PEER_HELD_MAX
    sent = len(ids) * (PEER_HELD_MAX + 4)
    assert dcb.stats["peer_held"] == len(held) and dcb.stats["peer_held"] + dcb.stats["drop_peer_held"] == sent


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
