"""Replies to unauthenticated input (issue 14 §4): none is larger than AMPLIFICATION_MAX times the
datagram it answers (REREGISTER, Version Not Supported, Peer Hello replies; DNS over UDP:
tests/local/test_dns_servers.py), and Peer Hellos from unknown sources are rate-limited per source
prefix and globally."""

from __future__ import annotations

from ntmobile.core.common import AMPLIFICATION_MAX, RateLimiter, source_prefix
from ntmobile.core.dc import PEER_HELLO_GLOBAL_RATE, PEER_HELLO_RATE, DcConfig, DcCore
from ntmobile.core.node import PathReady
from ntmobile.core.registry import ClientRecord, MemoryStore, Pools
from ntmobile.crypto import x25519_public
from ntmobile.wire import (
    VERSION,
    MessageType,
    PeerHello,
    Role,
    SignalFlags,
    SignalHeader,
    Status,
    pack_peer_hello,
    parse_signal_header,
)

from .harness import seeded_bytes

# -- the DC core's unauthenticated replies ---------------------------------------------------------

T0 = 1000.0
DC_ID = bytes.fromhex("dc00000000000001")
NODE = ClientRecord(b"\x01" * 8, "mn.a.example", Role.NODE, b"\x11" * 32)
POOLS = Pools("100.64.1.0/24", "fd00:6e74:1::/64", "100.127.0.0/16", "fd00:6e74:ff::/64")
SPOOFED = ("198.51.100.7", 7412)  # the victim whose address the requests carry


def _dc(domain: str = "a.example") -> DcCore:
    store = MemoryStore(POOLS)
    store.add_client(NODE)
    return DcCore(DcConfig(domain, DC_ID, secret=b"\x0d" * 32), store, T0, seq_base=1_800_000_000_000_000,
                  random_bytes=seeded_bytes(1))


def _hello(i: int, domain: str = "b.example", *, key: bytes | None = None) -> bytes:
    key = key if key is not None else x25519_public(i.to_bytes(4, "big") * 8)
    return pack_peer_hello(bytes([0xEE]) + i.to_bytes(7, "big"), 1, PeerHello(domain=domain, key=key))


def _replies(dc: DcCore) -> list[bytes]:
    return [d.data for d in dc.datagrams_to_send()]


def test_reregister_and_version_not_supported_stay_within_the_factor() -> None:
    dc = _dc()
    # the smallest datagram that names an enrolled client without a session: header + tag size
    request = SignalHeader(VERSION, MessageType.KEEPALIVE, 0, 0, NODE.client_id, 7, 1).pack() + bytes(16)
    dc.receive_datagram(request, SPOOFED, T0)
    (reply,) = _replies(dc)
    assert parse_signal_header(reply).status == Status.REREGISTER
    assert len(reply) <= 2 * len(request)  # docs/security.md: less than 2x
    old_version = bytes([VERSION + 1]) + request[1:24]  # a bare header of another version
    dc.receive_datagram(old_version, SPOOFED, T0)
    (vns,) = _replies(dc)
    assert vns[1] == MessageType.VERSION_NOT_SUPPORTED and len(vns) <= AMPLIFICATION_MAX * len(old_version)
    assert dc.stats["drop_reply_amplification"] == 0


def test_a_peer_hello_reply_larger_than_the_factor_is_not_sent() -> None:
    """A DC with a long domain answers a small hello (spoofed source) with a hello over the factor:
    dropped and counted. With a short domain the reply goes out, within the factor."""
    long_domain = ".".join(["x" * 60] * 4)  # 243 characters
    dc = _dc(long_domain)
    small = _hello(1, "b.io")
    dc.receive_datagram(small, SPOOFED, T0)
    assert _replies(dc) == [] and dc.stats["drop_reply_amplification"] == 1
    dc = _dc()
    dc.receive_datagram(small, SPOOFED, T0)
    (reply,) = _replies(dc)
    assert reply[1] == MessageType.PEER_HELLO and len(reply) <= AMPLIFICATION_MAX * len(small)


def test_peer_hellos_from_unknown_sources_are_rate_limited_per_prefix_and_globally() -> None:
    dc = _dc()
    per, burst = PEER_HELLO_RATE
    g_rate, g_burst = PEER_HELLO_GLOBAL_RATE
    # one source network, all at once: the burst gets through, the rest is dropped and counted
    for i in range(20):
        dc.receive_datagram(_hello(i), (f"192.0.2.{i + 1}", 7410), T0)
    assert dc.stats["peer_hellos"] == burst and dc.stats["drop_peer_hello_rate"] == 20 - burst
    dc.receive_datagram(_hello(100), ("192.0.2.200", 7410), T0 + 1 / per)  # refilled one token
    assert dc.stats["peer_hellos"] == burst + 1
    # many source networks at once: the global bucket caps them together
    dc = _dc()
    for i in range(200):
        dc.receive_datagram(_hello(i), (f"10.{i >> 8}.{i & 255}.1", 7410), T0)
    assert dc.stats["peer_hellos"] == g_burst and dc.stats["drop_peer_hello_rate"] == 200 - g_burst
    # a clock stepped back refills nothing
    dc.receive_datagram(_hello(500), ("203.0.113.1", 7410), T0 - 3600)
    assert dc.stats["peer_hellos"] == g_burst
    assert g_rate > per


def test_hellos_of_a_verified_peer_from_its_endpoint_are_not_limited_and_spoofed_ones_move_nothing() -> None:
    from .test_dc_peering import DCA_EP, DCA_KEY, World

    w = World("cone", "none", configured=True)
    ready = w.connect(w.mn, "mn", "cn.b.example")
    assert isinstance(ready, PathReady)
    dcb = w.dcb
    peer = dcb.peering.by_key[DCA_KEY]
    assert peer.endpoint == DCA_EP and peer.domains
    before = dcb.stats["peer_hellos"]
    hello = pack_peer_hello(w.dca.config.dc_id, 9, PeerHello(domain="a.example", key=DCA_KEY),
                            flags=SignalFlags.FROM_RESPONDER)
    for _ in range(30):
        dcb.receive_datagram(hello, DCA_EP, w.net.now)
    assert dcb.stats["peer_hellos"] == before + 30 and dcb.stats["drop_peer_hello_rate"] == 0
    for _ in range(30):  # the same (public) key from elsewhere: limited, and the endpoint stays
        dcb.receive_datagram(hello, SPOOFED, w.net.now)
    assert dcb.stats["drop_peer_hello_rate"] == 30 - PEER_HELLO_RATE[1]
    assert peer.endpoint == DCA_EP
    again = w.connect(w.mn, "mn", "cn.b.example")
    assert isinstance(again, PathReady)


def test_rate_limiter_keeps_a_bounded_number_of_buckets() -> None:
    limiter = RateLimiter(1.0, 2.0, 1e9, 1e9, max_keys=64)
    assert all(limiter.allow(f"10.0.{i}", 0.0) for i in range(5000))
    assert len(limiter) == 64
    assert limiter.allow("k", 0.0) and limiter.allow("k", 0.0) and not limiter.allow("k", 0.0)
    assert not limiter.allow("k", -10.0) and limiter.allow("k", 1.0)
    assert source_prefix(("192.0.2.7", 1)) == source_prefix(("192.0.2.200", 1)) != source_prefix(("192.0.3.7", 1))
    assert source_prefix(("2001:db8:1:2::1", 1)) == source_prefix(("2001:db8:1:ffff::9", 1)) == "2001:db8:1"
