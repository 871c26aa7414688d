"""The relay's bulk data entry point (``RsCore.relay_run``, fed GRO batches): RS-S forwards runs
of chunk datagrams unchanged and only from the learnt leg; RS-N reassembles and opens them."""

from __future__ import annotations

import os

from ntmobile.core.rs.forward import _same_prefix_run
from ntmobile.wire import Capability, TunnelRequest

from .test_rs_core import NODE_A, NODE_B, events, ip4, setup_rs_n, setup_rs_s

NODE_VIP, PEER_VIP = "100.64.0.2", "100.64.0.3"


def batch(blob: bytes) -> memoryview:
    return memoryview(bytearray(blob))


def test_same_prefix_run() -> None:
    size = 100
    a = b"A" * 12 + b"x" * 88
    b = b"B" * 12 + b"y" * 88
    assert _same_prefix_run(batch(a * 5 + a[:40]), size, 12) == 6
    assert _same_prefix_run(batch(a * 3 + b + a), size, 12) == 3
    assert _same_prefix_run(batch(a + b * 4), size, 12) == 1
    assert _same_prefix_run(batch(a * 2 + a[:10]), size, 12) == 2  # too short to carry the prefix
    assert _same_prefix_run(batch(a * 4 + b[:50]), size, 12) == 4  # a stranger's short tail
    assert _same_prefix_run(batch(a[:60]), size, 12) == 1
    # One differing byte anywhere in the prefix (flags, last Path ID byte) ends the run there.
    for pos in (0, 2, 11):
        c = bytearray(a)
        c[pos] ^= 1
        assert _same_prefix_run(batch(a * 2 + bytes(c) + a * 3), size, 12) == 2
        assert _same_prefix_run(batch(a * 5 + bytes(c)[:30]), size, 12) == 5
    # A difference past the prefix (the chunk body) does not.
    d = bytearray(a)
    d[12] ^= 1
    assert _same_prefix_run(batch(a + bytes(d) * 3), size, 12) == 4


def test_rs_s_forwards_a_run_once_and_only_from_the_learnt_leg() -> None:
    core, _dc, ini, resp = setup_rs_s()
    core.receive_datagram(ini.request(100), NODE_A, 2.0)
    core.receive_datagram(resp.request(200, TunnelRequest(capabilities=int(Capability.GSO))), NODE_B, 2.1)
    core.datagrams_to_send()
    events(core)
    blob, size = ini.sealer.seal_gso(os.urandom(30000), 1000)
    dest, k = core.relay_run(batch(blob), size, NODE_A, 3.0)
    assert dest == NODE_B and k == -(-len(blob) // size)
    e = core.entries()[0]
    assert e.packets_i2r == k and e.bytes_i2r == len(blob)
    # The peer opens exactly what was forwarded.
    out = [r for o in range(0, len(blob), size) if (r := resp.opener.open_chunk(blob[o:o + size], 3.0, learnt=True))]
    assert len(out) == 1
    # From anywhere else: nothing is forwarded (held a moment for a leg move that never comes).
    blob2, _ = ini.sealer.seal_gso(os.urandom(5000), 1000)
    dest, k = core.relay_run(batch(blob2), size, ("192.0.2.66", 6666), 3.1)
    assert dest is None and k == 1 and core.stats["data_held"] == 1
    core.handle_timer(3.5)
    assert core.datagrams_to_send() == [] and core.stats["data_held_dropped"] == 1


def test_rs_n_opens_runs_and_checks_inner_addresses() -> None:
    core, _dc, node = setup_rs_n()
    vnet = bytes(10)
    payload = vnet + ip4(NODE_VIP, "100.127.0.5", b"z" * 20000)
    blob, size = node.sealer.seal_gso(payload, 1200)
    dest, k = core.relay_run(batch(blob), size, NODE_A, 4.0)
    assert dest is None and k == -(-len(blob) // size)
    [(got, gso)] = core.packets_to_tun()
    assert gso and bytes(got) == payload
    # Authenticated but between the wrong addresses: never reaches the NAT.
    bad = vnet + ip4(NODE_VIP, "8.8.8.8", b"q" * 5000)
    blob, size = node.sealer.seal_gso(bad, 1200)
    core.relay_run(batch(blob), size, NODE_A, 4.1)
    assert core.packets_to_tun() == [] and core.stats["drop_inner_address"] == 1
