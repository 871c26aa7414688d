"""State made before authentication is bounded in count and bytes, expires, and every drop is
counted (issue 14, section 2): Tunnel Requests a node holds for paths it does not know yet,
datagrams a DC holds for a peer DC whose key is being checked. (Queries the node's DNS stub holds:
tests/local/test_dns_servers.py; GSO reassembly: test_reassembly_limits.py.)"""

from __future__ import annotations

from ntmobile.core.dc import PEER_HELD_MAX, PEER_HELD_TOTAL, PEER_UNVERIFIED_MAX
from ntmobile.core.node import EARLY_MAX, NodeConfig, NodeCore
from ntmobile.core.timing import EARLY_HOLD
from ntmobile.crypto import x25519_public
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
