"""DC replicas (issue 17): a node whose DC replica stops answering re-registers with the next one
(NodeConfig.dc_replicas) within REPLICA_FAILOVER_BOUND with default timers, keeping its VIPs (the
registry is shared; here one MemoryStore under two DC cores)."""

from __future__ import annotations

from pathlib import Path

from ntmobile.core.dc import DcConfig, DcCore
from ntmobile.core.node import NodeConfig, NodeCore, Registered
from ntmobile.core.registry import ClientRecord, MemoryStore, Pools
from ntmobile.core.timing import REPLICA_FAILOVER_BOUND
from ntmobile.runtime.config import Credentials, DcSettings, ReplicaSettings, parse_replica
from ntmobile.runtime.enroll import enroll
from ntmobile.wire import Role

from .harness import seeded_bytes

DC_ID = bytes.fromhex("dc000000000000cc")
DC_A = ("192.0.2.10", 7410)
DC_B = ("192.0.2.11", 7410)
NODE_EP = ("10.0.0.1", 7412)
#: The DC daemon's default keepalive interval (DcSettings.keepalive).
KEEPALIVE = DcSettings.model_fields["keepalive"].default
POOLS = Pools("100.64.1.0/24", "fd00:6e74:1::/64", "100.127.0.0/16", "fd00:6e74:ff::/64")


def test_node_fails_over_to_the_other_replica_within_the_bound_keeping_its_vips() -> None:
    store = MemoryStore(POOLS)
    rec = ClientRecord(b"\x01" * 8, "mn.a.example", Role.NODE, b"\x22" * 32)
    store.add_client(rec)
    secret = b"\x33" * 32
    cfg = DcConfig("a.example", DC_ID, secret=secret, keepalive=KEEPALIVE)
    dcs = {DC_A: DcCore(cfg, store, 0.0, seq_base=10**15, random_bytes=seeded_bytes(1)),
           DC_B: DcCore(cfg, store, 0.0, seq_base=2 * 10**15, random_bytes=seeded_bytes(2))}
    node = NodeCore(NodeConfig(rec.name, rec.client_id, rec.psk, DC_ID, DC_A, dc_replicas=(DC_B,)), 0.0,
                    seq_base=10**12, random_bytes=seeded_bytes(3))
    alive = {DC_A, DC_B}
    registered_at: list[tuple[float, tuple[str, int]]] = []

    def run_until(t_end: float, now: float, stop_after_answer: bool = False) -> float:
        while now < t_end:
            answered = False
            for dg in node.datagrams_to_send():
                if dg.addr in alive:
                    dcs[dg.addr].receive_datagram(dg.data, NODE_EP, now)
            for ep, dc in dcs.items():
                for out in dc.datagrams_to_send():
                    if ep in alive and out.addr == NODE_EP:
                        node.receive_datagram(out.data, ep, now)
                        answered = True
            if stop_after_answer and answered:
                return now
            while (ev := node.next_event()) is not None:
                if isinstance(ev, Registered):
                    registered_at.append((now, node.config.dc_endpoint))
            timers = [t for t in [node.get_timer(), *(d.get_timer() for d in dcs.values())] if t is not None]
            nxt = min([t_end, *timers])
            now = max(nxt, now + 1e-3)
            node.handle_timer(now)
            for d in dcs.values():
                d.handle_timer(now)
        return now

    node.register((("192.168.1.2", 7412),), 0.0)  # behind a NAT: the DC asks for keepalives
    now = run_until(30.0, 0.0)
    assert registered_at and registered_at[0][1] == DC_A
    # the worst moment: just after A answered a keepalive (a full interval before the next one)
    now = run_until(60.0, now, stop_after_answer=True)
    vips = (node.registration.vip4, node.registration.vip6) if node.registration else None
    killed = now
    alive.discard(DC_A)  # replica A is killed (kill -9: silent)
    registered_at.clear()
    run_until(killed + 60.0, now)
    assert registered_at, (dict(node.stats), node.config.dc_endpoint, node._dc.state)
    t, at = registered_at[0]
    print(f"failover took {t - killed:.1f} s")
    assert at == DC_B and t - killed <= REPLICA_FAILOVER_BOUND, t - killed
    assert node.registration is not None and (node.registration.vip4, node.registration.vip6) == vips
    assert node.stats["dc_failovers"] == 1


def test_enrolled_credentials_list_the_replicas(tmp_path: Path) -> None:
    settings = DcSettings(domain="a.example", address="192.0.2.10", database=str(tmp_path / "dc.sqlite"),
                          replicas=[ReplicaSettings(address="192.0.2.11"),
                                    ReplicaSettings(address="2001:db8::11", port=7499)])
    creds = enroll(settings, "mn", Role.NODE)
    assert creds.dc_replicas == ["192.0.2.11:7410", "[2001:db8::11]:7499"]
    assert [parse_replica(r) for r in creds.dc_replicas] == [("192.0.2.11", 7410), ("2001:db8::11", 7499)]
    again = Credentials.model_validate_json(creds.model_dump_json())
    assert again.dc_replicas == creds.dc_replicas


def test_relay_fails_over_to_the_other_replica_within_the_bound() -> None:
    from ntmobile.core.rs import DcLink, RsConfig

    from .harness import World

    store = MemoryStore(POOLS)
    rs_rec = ClientRecord(b"\x02" * 8, "rs1", Role.RELAY, b"\x44" * 32)
    store.add_client(rs_rec)
    w = World()
    cfg = DcConfig("a.example", DC_ID, secret=b"\x33" * 32)
    dca = w.add_dc("dca", cfg, store, DC_A, seed=1)
    dcb = w.add_dc("dcb", cfg, store, DC_B, seed=2)
    rs = w.add_relay("rs", RsConfig("rs1", rs_rec.client_id, [DcLink(DC_ID, DC_A, rs_rec.psk, (DC_B,))]),
                     ("192.0.2.20", 7411), seed=3)
    rs.register(w.net.now)
    w.net.run_until(lambda: bool(dca.relays()))
    assert not dcb.relays()
    killed = w.net.now
    del w.net.hosts["dca"]  # replica A is killed: silent
    w.net.run_until(lambda: bool(dcb.relays()), max_time=60)
    took = w.net.now - killed
    print(f"relay failover took {took:.1f} s")
    assert took <= REPLICA_FAILOVER_BOUND and rs.stats["dc_failovers"] >= 1
    assert rs.snapshot()["dcs"][0]["endpoint"] == f"{DC_B[0]}:{DC_B[1]}"
