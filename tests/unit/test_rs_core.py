"""The relay server's sans-IO core (ntmobile.core.rs), driven in memory.

The DC side and the nodes' side are built here from the same crypto primitives the real cores use
(Channels with the real key derivations), so every datagram the RS emits is checked by opening it
as its real receiver would.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ntmobile.core.common import Datagram, Event
from ntmobile.core.rs import (
    DcLink,
    DcState,
    ProbeRequest,
    Registered,
    RegistrationFailed,
    RelayAdded,
    RelayEndpointChanged,
    RelayRemoved,
    RsConfig,
    RsCore,
    RssEntry,
)
from ntmobile.crypto import (
    CapsuleOpener,
    CapsuleSealer,
    Channel,
    Ephemeral,
    long_term_keys,
    path_keys,
    relay_leg_keys,
    session_keys,
)
from ntmobile.wire import (
    Capability,
    CapsuleFlags,
    DirectionResponse,
    Endpoint,
    Keepalive,
    KeepaliveAck,
    Message,
    MessageType,
    PathRelease,
    PathReleaseAck,
    PathRole,
    RegistrationRequest,
    RegistrationResponse,
    RelayDirection,
    Role,
    RsType,
    SignalFlags,
    SignalHeader,
    Status,
    StatusMessage,
    TunnelRequest,
    TunnelResponse,
    parse_capsule_header,
    parse_signal_header,
)

from .harness import TEST_NETS, Net

RS_ID = bytes.fromhex("5253000000000001")
DC_ID = bytes.fromhex("4443000000000001")
DC2_ID = bytes.fromhex("4443000000000002")
PSK = bytes(range(32))
PSK2 = bytes(range(1, 33))
DC_EP: Endpoint = ("192.0.2.1", 7410)
DC2_EP: Endpoint = ("192.0.2.2", 7410)
RS_OBSERVED: Endpoint = ("198.51.100.7", 7411)
NODE_A: Endpoint = ("203.0.113.10", 40000)
NODE_A2: Endpoint = ("203.0.113.99", 41000)
NODE_B: Endpoint = ("198.18.0.20", 50000)
ATTACKER: Endpoint = ("192.0.2.66", 6666)

NODE_VIP = "100.64.0.2"
GN_VIP = "100.127.0.5"
GN_ADDR = "198.51.100.80"
SEQ_BASE = 1_700_000_000_000_000


# -- scaffolding: the DC side and the node side, made of real channels --------------------------------


class FakeDc:
    """The DC end of the RS's registration and session, with the real key schedule."""

    def __init__(self, dc_id: bytes = DC_ID, psk: bytes = PSK) -> None:
        self.dc_id = dc_id
        self.psk = psk
        self.lt = Channel(long_term_keys(psk, RS_ID).swapped(), dc_id, seq_start=10)
        self.session: Channel | None = None

    def open(self, data: bytes) -> tuple[SignalHeader, Message]:
        hdr = parse_signal_header(data)
        assert hdr.sender == RS_ID
        ch = self.lt if hdr.flags & SignalFlags.LONG_TERM else self.session
        assert ch is not None
        return hdr, ch.open(hdr, data)

    def accept(self, data: bytes, keepalive: int = 5) -> bytes:
        hdr, msg = self.open(data)
        assert isinstance(msg, RegistrationRequest)
        eph = Ephemeral()
        shared = eph.exchange(msg.ephemeral)
        keys = session_keys(self.psk, shared, RS_ID, msg.ephemeral, eph.public).swapped()
        self.session = Channel(keys, self.dc_id)
        reply = RegistrationResponse(ephemeral=eph.public, version=1, observed=RS_OBSERVED, nat=0,
                                     keepalive=keepalive)
        return self.lt.seal(reply, txid=hdr.txid, flags=SignalFlags.LONG_TERM)

    def seal(self, msg: Message, txid: int, **kw: int) -> bytes:
        assert self.session is not None
        return self.session.seal(msg, txid=txid, **kw)


class NodeN:
    """An NTM node's end of an RS-N path (the node is the initiator)."""

    def __init__(self, pid: bytes, pk: bytes) -> None:
        sig, data = path_keys(pk, pid).for_initiator()
        self.sig = Channel(sig, pid)
        self.sealer = CapsuleSealer(data.send, pid, CapsuleFlags.NONE)
        self.opener = CapsuleOpener(data.recv)

    def open(self, data: bytes) -> tuple[SignalHeader, Message]:
        hdr = parse_signal_header(data)
        return hdr, self.sig.open(hdr, data)


class LegS:
    """One node's end of an RS-S path leg (and its end-to-end data keys)."""

    def __init__(self, pid: bytes, rk: bytes, pk: bytes, *, responder: bool) -> None:
        self.responder = responder
        self.sig = Channel(relay_leg_keys(rk, pid, responder_leg=responder), pid)
        _sig, data = path_keys(pk, pid).for_responder() if responder else path_keys(pk, pid).for_initiator()
        self.sealer = CapsuleSealer(data.send, pid, CapsuleFlags.FROM_RESPONDER if responder else 0)
        self.opener = CapsuleOpener(data.recv)
        self.flags = SignalFlags.FROM_RESPONDER if responder else SignalFlags.NONE

    def request(self, txid: int, msg: Message | None = None) -> bytes:
        return self.sig.seal(msg or TunnelRequest(capabilities=Capability.GSO), txid=txid, flags=self.flags)

    def open(self, data: bytes) -> tuple[SignalHeader, Message]:
        hdr = parse_signal_header(data)
        return hdr, self.sig.open(hdr, data)


def ip4(src: str, dst: str, payload: bytes = b"payload") -> bytes:
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0, 64, 17, 0,
                      ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)
    return hdr + payload


def events(core: RsCore) -> list[Event]:
    out = []
    while (ev := core.next_event()) is not None:
        out.append(ev)
    return out


def run_until(core: RsCore, end: float) -> list[Datagram]:
    """Fire every timer due up to ``end``; return the datagrams sent meanwhile."""
    out: list[Datagram] = []
    while (t := core.get_timer()) is not None and t <= end:
        core.handle_timer(t)
        out += core.datagrams_to_send()
    return out


def make_rs(dcs: tuple[FakeDc, ...] | None = None, **cfg: object) -> tuple[RsCore, FakeDc]:
    dcs = dcs or (FakeDc(),)
    eps = {DC_ID: DC_EP, DC2_ID: DC2_EP}
    config = RsConfig(name="rs1.example", rs_id=RS_ID,
                      dcs=[DcLink(d.dc_id, eps[d.dc_id], d.psk) for d in dcs],
                      local_endpoints=(RS_OBSERVED,),
                      **{"capabilities": int(Capability.GSO), "rsn_allow": TEST_NETS, **cfg})  # type: ignore[arg-type]
    core = RsCore(config, 0.0, seq_base=SEQ_BASE)
    core.register(0.0)
    sent = core.datagrams_to_send()
    assert len(sent) == len(dcs)
    for d, dg in zip(dcs, sent, strict=True):
        assert dg.addr == eps[d.dc_id]
        core.receive_datagram(d.accept(dg.data), dg.addr, 0.01)
    evs = events(core)
    assert [type(e) for e in evs] == [Registered] * len(dcs)
    return core, dcs[0]


def rs_n_direction(pid: bytes, pk: bytes, **kw: object) -> RelayDirection:
    fields: dict[str, object] = dict(path_id=pid, rs_type=RsType.N, idle_timeout=60, path_key=pk,
                                     node_vip4=NODE_VIP, peer_vip4=GN_VIP, gn_addr4=GN_ADDR, node_endpoint=NODE_A)
    fields.update(kw)
    return RelayDirection(**fields)  # type: ignore[arg-type]


def direct(core: RsCore, dc: FakeDc, msg: Message, txid: int, now: float = 1.0,
           addr: Endpoint = DC_EP) -> tuple[list[Event], SignalHeader, Message]:
    """Send a session message from the DC; return the events and the RS's single reply."""
    core.receive_datagram(dc.seal(msg, txid), addr, now)
    evs = events(core)
    sent = core.datagrams_to_send()
    assert len(sent) == 1 and sent[0].addr == addr
    hdr, reply = dc.open(sent[0].data)
    assert hdr.txid == txid
    return evs, hdr, reply


def setup_rs_n(pid: bytes = b"P" * 8) -> tuple[RsCore, FakeDc, NodeN]:
    core, dc = make_rs()
    pk = os.urandom(32)
    direct(core, dc, rs_n_direction(pid, pk), txid=77)
    node = NodeN(pid, pk)
    core.receive_datagram(node.sig.seal(TunnelRequest(capabilities=Capability.GSO), txid=5), NODE_A, 2.0)
    core.datagrams_to_send()
    events(core)
    return core, dc, node


# -- registration ------------------------------------------------------------------------------------


def test_registration_request_and_session() -> None:
    dc = FakeDc()
    config = RsConfig(name="rs1.example", rs_id=RS_ID, dcs=[DcLink(DC_ID, DC_EP, PSK)],
                      local_endpoints=(RS_OBSERVED,), capabilities=int(Capability.GSO))
    core = RsCore(config, 0.0, seq_base=SEQ_BASE)
    assert core.dc_state(DC_ID) is DcState.IDLE
    core.register(0.0)
    [dg] = core.datagrams_to_send()
    hdr = parse_signal_header(dg.data)
    assert hdr.type is MessageType.REGISTRATION_REQUEST and hdr.flags == SignalFlags.LONG_TERM
    assert hdr.seq == SEQ_BASE  # long-term counters grow across restarts
    _, msg = dc.open(dg.data)
    assert isinstance(msg, RegistrationRequest)
    assert msg.role == Role.RELAY and msg.name == "rs1.example" and msg.versions == (1, 1)
    assert msg.local_endpoints == (RS_OBSERVED,) and msg.load == 0 and msg.capabilities == Capability.GSO
    hdr2 = parse_signal_header(dg.data)
    core.receive_datagram(dc.lt.seal(RegistrationResponse(ephemeral=Ephemeral().public, version=1,
                                                          observed=RS_OBSERVED, nat=0, keepalive=5),
                                     txid=hdr2.txid + 1, flags=SignalFlags.LONG_TERM), DC_EP, 0.1)
    assert core.stats["drop_late_response"] == 1  # wrong txid: ignored
    core2, dc2 = make_rs()
    assert core2.dc_state(DC_ID) is DcState.REGISTERED
    # The session works both ways: a keepalive the DC can open, an ack the RS accepts.
    sent = run_until(core2, 5.01)
    [ka] = [d for d in sent if d.addr == DC_EP]
    khdr, kmsg = dc2.open(ka.data)
    assert isinstance(kmsg, Keepalive) and kmsg.load == 0 and not khdr.flags & SignalFlags.LONG_TERM
    core2.receive_datagram(dc2.seal(KeepaliveAck(observed=RS_OBSERVED), khdr.txid), DC_EP, 5.02)
    assert core2.stats["drop_late_response"] == 0 and core2.get_timer() == pytest.approx(10.01)


def test_three_missed_keepalives_reregister() -> None:
    core, dc = make_rs()
    sent = run_until(core, 25.0)
    kinds = [parse_signal_header(d.data).type for d in sent]
    assert MessageType.REGISTRATION_REQUEST in kinds
    first_rereg = kinds.index(MessageType.REGISTRATION_REQUEST)
    assert kinds[:first_rereg].count(MessageType.KEEPALIVE) >= 3
    assert core.stats["keepalive_missed"] == 3 and core.stats["reregister_keepalive"] == 1
    assert core.dc_state(DC_ID) is DcState.REGISTERING
    # The DC answers the re-registration: a new session.
    rereg = sent[first_rereg]
    core.receive_datagram(dc.accept(rereg.data), DC_EP, 25.1)
    assert [type(e) for e in events(core)] == [Registered]
    assert core.dc_state(DC_ID) is DcState.REGISTERED


def test_reregister_status_from_dc() -> None:
    core, dc = make_rs()
    st_msg = StatusMessage(answers=MessageType.KEEPALIVE, reason="no session; register")
    core.receive_datagram(dc.lt.seal(st_msg, txid=99, status=Status.REREGISTER, flags=SignalFlags.LONG_TERM),
                          DC_EP, 3.0)
    [dg] = core.datagrams_to_send()
    _, msg = dc.open(dg.data)
    assert isinstance(msg, RegistrationRequest)
    assert core.stats["reregister_requested"] == 1
    # A forged REREGISTER (wrong long-term key) does nothing.
    forged = Channel(long_term_keys(PSK2, RS_ID).swapped(), DC_ID)
    core2, _ = make_rs()
    core2.receive_datagram(forged.seal(st_msg, txid=1, status=Status.REREGISTER, flags=SignalFlags.LONG_TERM),
                           DC_EP, 3.0)
    assert core2.datagrams_to_send() == [] and core2.stats["drop_auth"] == 1


def test_registration_timeout_backoff_and_refusal() -> None:
    config = RsConfig(name="rs1.example", rs_id=RS_ID, dcs=[DcLink(DC_ID, DC_EP, PSK)])
    core = RsCore(config, 0.0, seq_base=SEQ_BASE)
    core.register(0.0)
    fails: list[float] = []
    starts: list[float] = []
    t = 0.0
    prev = core.dc_state(DC_ID)
    while t < 200.0:
        nxt = core.get_timer()
        assert nxt is not None
        t = nxt
        core.handle_timer(t)
        core.datagrams_to_send()
        for ev in events(core):
            assert isinstance(ev, RegistrationFailed) and ev.dc_id == DC_ID and ev.status is None
            fails.append(t)
        state = core.dc_state(DC_ID)
        if prev is DcState.BACKOFF and state is DcState.REGISTERING:
            starts.append(t)
        prev = state
    gaps = [s - f for f, s in zip(fails, starts, strict=False)]
    assert gaps[:5] == pytest.approx([1, 2, 4, 8, 16]) and max(gaps) == pytest.approx(30)
    # An explicit refusal from the DC is a RegistrationFailed with the DC's status.
    dc = FakeDc()
    core = RsCore(config, 0.0, seq_base=SEQ_BASE)
    core.register(0.0)
    [dg] = core.datagrams_to_send()
    hdr, _ = dc.open(dg.data)
    refusal = StatusMessage(answers=MessageType.REGISTRATION_REQUEST, reason="name does not match")
    core.receive_datagram(dc.lt.seal(refusal, txid=hdr.txid, status=Status.NOT_AUTHORIZED,
                                     flags=SignalFlags.LONG_TERM), DC_EP, 0.2)
    [ev] = events(core)
    assert ev == RegistrationFailed(DC_ID, Status.NOT_AUTHORIZED, "name does not match")
    assert core.dc_state(DC_ID) is DcState.BACKOFF and core.get_timer() == pytest.approx(1.2)


# -- RS-N ----------------------------------------------------------------------------------------------


def test_rs_n_relay_added_precedes_direction_response() -> None:
    core, dc = make_rs()
    pid, pk = b"P" * 8, os.urandom(32)
    core.receive_datagram(dc.seal(rs_n_direction(pid, pk), 1234), DC_EP, 1.0)
    [ev] = events(core)
    assert isinstance(ev, RelayAdded)
    e = ev.entry
    assert e.path_id == pid and e.rs_type is RsType.N and e.dc_id == DC_ID and e.idle_timeout == 60
    assert e.nat_mappings() == [(NODE_VIP, GN_VIP, GN_ADDR)]
    [dg] = core.datagrams_to_send()
    hdr, msg = dc.open(dg.data)
    assert hdr.txid == 1234 and hdr.status == Status.OK
    assert msg == DirectionResponse(path_id=pid, load=1, capabilities=Capability.GSO)
    assert core.entries() == [e] and core.snapshot()["paths"] == 1
    assert "path_key" not in repr(e) and pk.hex() not in repr(ev)


def test_rs_n_tunnel_request_and_data_both_ways() -> None:
    core, dc = make_rs()
    pid, pk = b"P" * 8, os.urandom(32)
    direct(core, dc, rs_n_direction(pid, pk), txid=1)
    node = NodeN(pid, pk)
    core.receive_datagram(node.sig.seal(TunnelRequest(capabilities=Capability.GSO, vip4=NODE_VIP), txid=42),
                          NODE_A, 2.0)
    assert events(core) == [RelayEndpointChanged(pid, PathRole.INITIATOR, NODE_A)]
    [dg] = core.datagrams_to_send()
    assert dg.addr == NODE_A
    hdr, msg = node.open(dg.data)
    assert hdr.txid == 42 and hdr.flags == SignalFlags.FROM_RESPONDER and hdr.sender == pid
    assert msg == TunnelResponse(capabilities=Capability.GSO, observed=NODE_A)
    entry = core.entry(pid)
    assert entry is not None and entry.node_endpoint == NODE_A
    # Node -> GN: the exact inner packet goes to the TUN.
    inner = ip4(NODE_VIP, GN_VIP, b"GET / HTTP/1.1\r\n")
    core.receive_datagram(node.sealer.seal(inner), NODE_A, 2.1)
    assert core.packets_to_tun() == [(inner, False)]
    assert core.packets_to_tun() == []
    assert core.datagrams_to_send() == [] and events(core) == []
    # GN -> node: the kernel's de-NATed reply comes back sealed for the node.
    reply = ip4(GN_VIP, NODE_VIP, b"HTTP/1.1 200 OK\r\n")
    core.tun_packet(reply, 2.2)
    [dg] = core.datagrams_to_send()
    assert dg.addr == NODE_A
    assert parse_capsule_header(dg.data).flags == CapsuleFlags.FROM_RESPONDER
    assert node.opener.open(dg.data) == reply
    assert (entry.packets_i2r, entry.bytes_i2r, entry.packets_r2i, entry.bytes_r2i) == (1, len(inner), 1, len(reply))
    # A path keepalive is answered and refreshes the entry.
    core.receive_datagram(node.sig.seal(Keepalive(), txid=43), NODE_A, 30.0)
    [dg] = core.datagrams_to_send()
    hdr, msg = node.open(dg.data)
    assert hdr.txid == 43 and msg == KeepaliveAck(observed=NODE_A) and entry.last_active == 30.0
    snap = json.loads(json.dumps(core.snapshot()))  # `ntm status` material: plain JSON
    [info] = snap["entries"]
    assert info["initiator"] == "203.0.113.10:40000" and info["packets_i2r"] == 1
    assert snap["dcs"][0]["state"] == "registered"


def test_rs_n_replays_and_forgeries_rejected() -> None:
    core, dc, node = setup_rs_n()
    pid = b"P" * 8
    inner = ip4(NODE_VIP, GN_VIP)
    capsule = node.sealer.seal(inner)
    core.receive_datagram(capsule, NODE_A, 3.0)
    assert core.packets_to_tun() == [(inner, False)]
    core.receive_datagram(capsule, NODE_A, 3.1)
    assert core.packets_to_tun() == [] and core.stats["drop_data_replay"] == 1
    # A replayed capsule from another address moves nothing.
    core.receive_datagram(capsule, ATTACKER, 3.2)
    assert core.stats["drop_data_replay"] == 2 and events(core) == []
    # Replayed Tunnel Request: no answer, no address change.
    treq = node.sig.seal(TunnelRequest(), txid=6)
    core.receive_datagram(treq, NODE_A, 3.3)
    assert len(core.datagrams_to_send()) == 1
    core.receive_datagram(treq, ATTACKER, 3.4)
    assert core.datagrams_to_send() == [] and core.stats["drop_replay"] == 1
    # Forged Tunnel Request (a key that is not the path key).
    forger = NodeN(pid, os.urandom(32))
    forger.sig.next_seq = forger.sealer.counter = 1000  # fresh counters, so it is the key that fails
    core.receive_datagram(forger.sig.seal(TunnelRequest(), txid=7), ATTACKER, 3.5)
    core.receive_datagram(forger.sealer.seal(inner), ATTACKER, 3.6)
    assert core.datagrams_to_send() == [] and core.packets_to_tun() == [] and events(core) == []
    assert core.stats["drop_auth"] == 1 and core.stats["drop_data_auth"] == 1
    entry = core.entry(pid)
    assert entry is not None and entry.node_endpoint == NODE_A and entry.drops == 5
    # Tunnel signalling claiming to come from the responder is not for an RS-N.
    core.receive_datagram(node.sig.seal(TunnelRequest(), txid=8, flags=SignalFlags.FROM_RESPONDER), ATTACKER, 3.7)
    assert core.stats["drop_bad_flags"] == 1 and core.datagrams_to_send() == []


def test_rs_n_handover_and_inner_address_check() -> None:
    core, dc, node = setup_rs_n()
    pid = b"P" * 8
    inner = ip4(NODE_VIP, GN_VIP)
    core.receive_datagram(node.sealer.seal(inner), NODE_A2, 5.0)  # the node moved
    assert core.packets_to_tun() == [(inner, False)]
    assert events(core) == [RelayEndpointChanged(pid, PathRole.INITIATOR, NODE_A2)]
    core.tun_packet(ip4(GN_VIP, NODE_VIP), 5.1)
    [dg] = core.datagrams_to_send()
    assert dg.addr == NODE_A2
    # Authenticated, but the inner source is not the node's VIP: never reaches the NAT.
    core.receive_datagram(node.sealer.seal(ip4("100.64.0.99", GN_VIP)), NODE_A2, 5.2)
    core.receive_datagram(node.sealer.seal(ip4(NODE_VIP, "8.8.8.8")), NODE_A2, 5.3)
    assert core.packets_to_tun() == [] and core.stats["drop_inner_address"] == 2
    # Replies for pairs the RS does not relay.
    core.tun_packet(ip4("100.127.0.6", NODE_VIP), 5.4)
    core.tun_packet(b"\x45" + bytes(10), 5.5)
    assert core.datagrams_to_send() == []
    assert core.stats["tun_no_path"] == 1 and core.stats["tun_malformed"] == 1


def test_rs_n_gso_flag_passes_through() -> None:
    core, dc, node = setup_rs_n()
    vnet = bytes([1, 3]) + struct.pack("<HHHH", 40, 1448, 20, 16)
    payload = vnet + ip4(NODE_VIP, GN_VIP, b"x" * 3000)
    blob, size = node.sealer.seal_gso(payload, 1000)
    chunks = [blob[i:i + size] for i in range(0, len(blob), size)]
    assert len(chunks) == 4
    for c in reversed(chunks):  # reordered chunks
        core.receive_datagram(c, NODE_A, 4.0)
    assert core.packets_to_tun() == [(payload, True)]
    reply = vnet + ip4(GN_VIP, NODE_VIP, b"y" * 3000)
    assert core.tun_packet(reply, 4.1, gso=True)
    assert core.datagrams_to_send() == []
    [(blob, size, ep)] = core.gso_to_send()
    assert ep == NODE_A and size == 1500 - 28
    out = None
    for i in range(0, len(blob), size):
        assert parse_capsule_header(blob[i:i + 36]).flags == CapsuleFlags.FROM_RESPONDER | CapsuleFlags.GSO
        out = node.opener.open_chunk(blob[i:i + size], 4.2, learnt=True) or out
    assert out == reply


def test_rs_n_segments_for_a_per_packet_node() -> None:
    core, dc = make_rs()
    pid, pk = b"Q" * 8, os.urandom(32)
    direct(core, dc, rs_n_direction(pid, pk), txid=1)
    node = NodeN(pid, pk)
    core.receive_datagram(node.sig.seal(TunnelRequest(capabilities=0), txid=2), NODE_A, 1.1)
    core.datagrams_to_send()
    vnet = bytes([1, 1]) + struct.pack("<HHHH", 40, 1448, 20, 16)
    # The node did not announce GSO: the runtime must segment (nothing sent, False).
    assert not core.tun_packet(vnet + ip4(GN_VIP, NODE_VIP, b"y" * 3000), 1.2, gso=True)
    assert core.datagrams_to_send() == [] and core.gso_to_send() == []
    core.tun_packet(ip4(GN_VIP, NODE_VIP, b"z" * 100), 1.3)
    [dg] = core.datagrams_to_send()
    assert node.opener.open(dg.data) == ip4(GN_VIP, NODE_VIP, b"z" * 100)


def test_rs_n_refuses_gso_it_did_not_offer() -> None:
    core, dc = make_rs(capabilities=0)
    pid, pk = b"P" * 8, os.urandom(32)
    direct(core, dc, rs_n_direction(pid, pk), txid=1)
    node = NodeN(pid, pk)
    core.receive_datagram(node.sig.seal(TunnelRequest(capabilities=Capability.GSO), txid=2), NODE_A, 1.1)
    [dg] = core.datagrams_to_send()
    assert node.open(dg.data)[1] == TunnelResponse(capabilities=0, observed=NODE_A)
    core.receive_datagram(node.sealer.seal(bytes(10) + ip4(NODE_VIP, GN_VIP), CapsuleFlags.GSO), NODE_A, 1.2)
    assert core.packets_to_tun() == [] and core.stats["drop_gso_unsupported"] == 1


def test_rs_n_ipv6_mapping() -> None:
    core, dc = make_rs()
    pid, pk = b"Q" * 8, os.urandom(32)
    msg = rs_n_direction(pid, pk, node_vip4=None, peer_vip4=None, gn_addr4=None, node_vip6="fd00::2",
                         peer_vip6="fd00:ffff::5", gn_addr6="2001:db8::80")
    evs, hdr, _ = direct(core, dc, msg, txid=3)
    assert hdr.status == Status.OK
    node = NodeN(pid, pk)
    core.receive_datagram(node.sig.seal(TunnelRequest(), txid=1), NODE_A, 2.0)
    core.datagrams_to_send()
    v6 = struct.pack("!IHBB16s16s", 6 << 28, 4, 17, 64, ipaddress.IPv6Address("fd00:ffff::5").packed,
                     ipaddress.IPv6Address("fd00::2").packed) + b"abcd"
    core.tun_packet(v6, 2.1)
    [dg] = core.datagrams_to_send()
    assert node.opener.open(dg.data) == v6


def test_tun_packet_before_tunnel_request_is_dropped() -> None:
    core, dc = make_rs()
    direct(core, dc, rs_n_direction(b"P" * 8, os.urandom(32)), txid=1)
    core.tun_packet(ip4(GN_VIP, NODE_VIP), 1.5)
    assert core.datagrams_to_send() == [] and core.stats["tun_no_endpoint"] == 1


# -- the Relay Direction exchange ---------------------------------------------------------------------


def test_duplicate_relay_direction_is_idempotent() -> None:
    core, dc = make_rs()
    msg = rs_n_direction(b"P" * 8, os.urandom(32))
    evs, hdr, _ = direct(core, dc, msg, txid=1)
    [added] = evs
    assert isinstance(added, RelayAdded)
    evs, hdr, reply = direct(core, dc, msg, txid=1, now=1.3)  # retransmission (re-sealed, same txid)
    assert evs == [] and hdr.status == Status.OK and isinstance(reply, DirectionResponse)
    assert core.entries() == [added.entry] and core.stats["relay_direction_duplicate"] == 1
    # Same path, keys and addresses with a shorter idle timeout: a refresh, effective at once.
    evs, hdr, _ = direct(core, dc, dataclasses.replace(msg, idle_timeout=5), txid=2, now=1.5)
    assert evs == [] and hdr.status == Status.OK and added.entry.idle_timeout == 5
    assert 6.0 in core.table.idle_deadlines()
    core.handle_timer(5.99)
    assert core.entries() == [added.entry]
    core.handle_timer(6.0)
    assert [type(e) for e in events(core)] == [RelayRemoved]


def test_path_id_in_use_busy_and_bad_request() -> None:
    dc1, dc2 = FakeDc(), FakeDc(DC2_ID, PSK2)
    core, _ = make_rs((dc1, dc2), max_paths=2)
    pid = b"P" * 8
    first = os.urandom(32)
    direct(core, dc1, rs_n_direction(pid, first), txid=1)
    # Same path id, different keys (a Path ID names one key for its whole life).
    evs, hdr, _ = direct(core, dc1, rs_n_direction(pid, os.urandom(32)), txid=2)
    assert evs == [] and hdr.status == Status.PATH_ID_IN_USE
    # A new Path ID with a key the relay has sealed under before: never again.
    evs, hdr, _ = direct(core, dc1, rs_n_direction(b"Q" * 8, first, peer_vip4="100.127.0.8"), txid=4)
    assert evs == [] and hdr.status == Status.PATH_ID_IN_USE and core.stats["relay_direction_retired_key"] == 1
    # Same path id and content, but from another DC.
    entry = core.entry(pid)
    assert entry is not None
    evs, hdr, _ = direct(core, dc2, entry.direction, txid=3, addr=DC2_EP)
    assert evs == [] and hdr.status == Status.PATH_ID_IN_USE
    # Bad requests: RS-N without GN address, RS-S without relay key, RS-S with the path key.
    for i, bad in enumerate([
        rs_n_direction(b"B1" * 4, os.urandom(32), gn_addr4=None),
        RelayDirection(path_id=b"B2" * 4, rs_type=RsType.S, idle_timeout=60),
        RelayDirection(path_id=b"B3" * 4, rs_type=RsType.S, idle_timeout=60, relay_key=os.urandom(32),
                       path_key=os.urandom(32)),
        RelayDirection(path_id=b"B4" * 4, rs_type=9, idle_timeout=60, relay_key=os.urandom(32)),
        rs_n_direction(DC_ID, os.urandom(32)),
    ]):
        evs, hdr, _ = direct(core, dc1, bad, txid=10 + i)
        assert evs == [] and hdr.status == Status.BAD_REQUEST
    direct(core, dc2, RelayDirection(path_id=b"S" * 8, rs_type=RsType.S, idle_timeout=60,
                                     relay_key=os.urandom(32)), txid=20, addr=DC2_EP)
    evs, hdr, _ = direct(core, dc1, rs_n_direction(b"T" * 8, os.urandom(32), peer_vip4="100.127.0.9"), txid=21)
    assert evs == [] and hdr.status == Status.BUSY and len(core.entries()) == 2


def test_new_path_for_same_vip_pair_supersedes_old_one() -> None:
    dc1, dc2 = FakeDc(), FakeDc(DC2_ID, PSK2)
    core, _ = make_rs((dc1, dc2))
    direct(core, dc1, rs_n_direction(b"P" * 8, os.urandom(32)), txid=1)
    pk2 = os.urandom(32)
    evs, hdr, _ = direct(core, dc1, rs_n_direction(b"R" * 8, pk2), txid=2, now=2.0)
    assert hdr.status == Status.OK
    assert [(type(e), getattr(e, "reason", None)) for e in evs] == [(RelayRemoved, "superseded"), (RelayAdded, None)]
    assert [e.path_id for e in core.entries()] == [b"R" * 8]
    node = NodeN(b"R" * 8, pk2)
    core.receive_datagram(node.sig.seal(TunnelRequest(), txid=1), NODE_A2, 2.1)
    core.datagrams_to_send()
    events(core)
    core.tun_packet(ip4(GN_VIP, NODE_VIP), 2.2)
    [dg] = core.datagrams_to_send()
    assert dg.addr == NODE_A2 and node.opener.open(dg.data) == ip4(GN_VIP, NODE_VIP)
    # The same pair from another DC (overlapping VIP spaces) cannot be told apart by the NAT.
    evs, hdr, _ = direct(core, dc2, rs_n_direction(b"U" * 8, os.urandom(32)), txid=3, addr=DC2_EP)
    assert evs == [] and hdr.status == Status.BUSY and core.stats["relay_direction_vip_conflict"] == 1


def test_relay_direction_from_non_dc_or_wrong_key_rejected() -> None:
    core, dc = make_rs()
    msg = rs_n_direction(b"P" * 8, os.urandom(32))
    stranger = Channel(session_keys(PSK, os.urandom(32), RS_ID, bytes(32), bytes(32)).swapped(), b"X" * 8)
    core.receive_datagram(stranger.seal(msg, txid=1), ATTACKER, 1.0)
    assert core.stats["drop_unknown_sender"] == 1
    wrong_key = Channel(session_keys(PSK, os.urandom(32), RS_ID, bytes(32), bytes(32)).swapped(), DC_ID)
    core.receive_datagram(wrong_key.seal(msg, txid=2), DC_EP, 1.0)
    assert core.stats["drop_auth"] == 1
    # Long-term keys are not good for a Relay Direction either.
    core.receive_datagram(dc.lt.seal(msg, txid=3, flags=SignalFlags.LONG_TERM), DC_EP, 1.0)
    assert core.stats["drop_unexpected"] == 1
    # A replayed genuine one is dropped too.
    genuine = dc.seal(msg, 4)
    core.receive_datagram(genuine, DC_EP, 1.0)
    assert len(events(core)) == 1 and len(core.datagrams_to_send()) == 1
    core.receive_datagram(genuine, DC_EP, 1.1)
    assert core.stats["drop_replay"] == 1
    assert events(core) == [] and core.datagrams_to_send() == [] and len(core.entries()) == 1


def test_path_release() -> None:
    core, dc, node = setup_rs_n()
    pid = b"P" * 8
    evs, hdr, reply = direct(core, dc, PathRelease(path_id=pid), txid=9, now=6.0)
    assert len(evs) == 1 and isinstance(evs[0], RelayRemoved) and evs[0].reason == "released"
    assert evs[0].entry.path_id == pid and reply == PathReleaseAck(path_id=pid, load=0) and hdr.status == Status.OK
    assert core.entries() == []
    core.tun_packet(ip4(GN_VIP, NODE_VIP), 6.1)
    assert core.stats["tun_no_path"] == 1
    evs, hdr, reply = direct(core, dc, PathRelease(path_id=pid), txid=9, now=6.2)  # retransmission
    assert evs == [] and reply == PathReleaseAck(path_id=pid, load=0)


def test_path_release_by_another_dc_refused() -> None:
    dc1, dc2 = FakeDc(), FakeDc(DC2_ID, PSK2)
    core, _ = make_rs((dc1, dc2))
    direct(core, dc1, rs_n_direction(b"P" * 8, os.urandom(32)), txid=1)
    evs, hdr, _ = direct(core, dc2, PathRelease(path_id=b"P" * 8), txid=2, addr=DC2_EP)
    assert evs == [] and hdr.status == Status.NOT_AUTHORIZED and len(core.entries()) == 1


def test_idle_expiry() -> None:
    core, dc = make_rs()
    pid, pk = b"P" * 8, os.urandom(32)
    direct(core, dc, rs_n_direction(pid, pk, idle_timeout=30), txid=1, now=1.0)
    node = NodeN(pid, pk)
    core.receive_datagram(node.sealer.seal(ip4(NODE_VIP, GN_VIP)), NODE_A, 10.0)
    core.packets_to_tun()
    events(core)
    core.handle_timer(31.0)  # first scheduled check: refreshed since, so rescheduled
    assert core.entries() != [] and events(core) == []
    assert core.get_timer() is not None and core.get_timer() <= 40.0  # type: ignore[operator]
    # Answer keepalives meanwhile so only the idle timer matters.
    t = 31.0
    removed: list[Event] = []
    while not removed and t < 100:
        nxt = core.get_timer()
        assert nxt is not None
        t = nxt
        core.handle_timer(t)
        for dg in core.datagrams_to_send():
            hdr, _ = dc.open(dg.data)
            core.receive_datagram(dc.seal(KeepaliveAck(), hdr.txid), DC_EP, t)
        removed = [e for e in events(core) if isinstance(e, RelayRemoved)]
    assert t == pytest.approx(40.0)
    assert removed[0].reason == "idle" and removed[0].entry.path_id == pid  # type: ignore[attr-defined]
    assert core.entries() == [] and core.stats["relays_idle"] == 1


# -- RS-S ----------------------------------------------------------------------------------------------


def setup_rs_s(pid: bytes = b"S" * 8) -> tuple[RsCore, FakeDc, LegS, LegS]:
    core, dc = make_rs()
    rk, pk = os.urandom(32), os.urandom(32)
    msg = RelayDirection(path_id=pid, rs_type=RsType.S, idle_timeout=60, relay_key=rk, node_vip4=NODE_VIP,
                         peer_vip4="100.64.0.3", node_endpoint=NODE_A, responder_endpoint=NODE_B)
    evs, hdr, _ = direct(core, dc, msg, txid=1)
    assert hdr.status == Status.OK and isinstance(evs[0], RelayAdded)
    return core, dc, LegS(pid, rk, pk, responder=False), LegS(pid, rk, pk, responder=True)


def test_rs_s_answers_only_when_both_legs_known() -> None:
    core, dc, ini, resp = setup_rs_s()
    pid = b"S" * 8
    core.receive_datagram(ini.request(100), NODE_A, 2.0)
    assert core.datagrams_to_send() == []  # silent until the other leg is there
    core.receive_datagram(ini.request(100), NODE_A, 2.5)  # the node retransmits
    assert core.datagrams_to_send() == [] and core.stats["tunnel_wait_other_leg"] == 2
    assert events(core) == [RelayEndpointChanged(pid, PathRole.INITIATOR, NODE_A)]
    core.receive_datagram(resp.request(200, TunnelRequest(capabilities=0)), NODE_B, 3.0)
    assert events(core) == [RelayEndpointChanged(pid, PathRole.RESPONDER, NODE_B)]
    sent = {dg.addr: dg.data for dg in core.datagrams_to_send()}
    assert set(sent) == {NODE_A, NODE_B}
    hdr, msg = ini.open(sent[NODE_A])
    assert hdr.txid == 100 and hdr.flags == SignalFlags.FROM_RESPONDER
    assert msg == TunnelResponse(capabilities=0, observed=NODE_A)  # the peer's capabilities
    hdr, msg = resp.open(sent[NODE_B])
    assert hdr.txid == 200 and hdr.flags == SignalFlags.NONE
    assert msg == TunnelResponse(capabilities=Capability.GSO, observed=NODE_B)
    # Each leg's keys are its own: the initiator cannot open what went to the responder.
    with pytest.raises(Exception):  # noqa: B017
        ini.open(sent[NODE_B])
    # Once both are known, a retransmitted request is answered at once.
    core.receive_datagram(ini.request(100), NODE_A, 3.5)
    [dg] = core.datagrams_to_send()
    assert dg.addr == NODE_A and ini.open(dg.data)[0].txid == 100


def test_rs_s_forwards_data_unchanged_and_cannot_open_it() -> None:
    core, dc, ini, resp = setup_rs_s()
    pid = b"S" * 8
    core.receive_datagram(ini.request(1), NODE_A, 2.0)
    core.receive_datagram(resp.request(2), NODE_B, 2.0)
    core.datagrams_to_send()
    events(core)
    entry = core.entry(pid)
    assert isinstance(entry, RssEntry) and not hasattr(entry, "opener") and not hasattr(entry, "sealer")
    assert entry.direction.path_key is None  # the RS-S never holds the end-to-end key
    inner = ip4(NODE_VIP, "100.64.0.3", b"secret")
    c1 = ini.sealer.seal(inner)
    assert b"secret" not in c1
    core.receive_datagram(c1, NODE_A, 3.0)
    [dg] = core.datagrams_to_send()
    assert dg == Datagram(c1, NODE_B) and resp.opener.open(dg.data) == inner
    c2 = resp.sealer.seal(b"back" * 10, CapsuleFlags.GSO)
    core.receive_datagram(c2, NODE_B, 3.1)
    [dg] = core.datagrams_to_send()
    assert dg == Datagram(c2, NODE_A) and parse_capsule_header(dg.data).flags & CapsuleFlags.GSO
    assert ini.opener.open(dg.data) == b"back" * 10
    assert core.packets_to_tun() == []
    assert (entry.packets_i2r, entry.bytes_i2r, entry.packets_r2i, entry.bytes_r2i) == (1, len(c1), 1, len(c2))


def test_rs_s_data_never_moves_a_leg() -> None:
    core, dc, ini, resp = setup_rs_s()
    pid = b"S" * 8
    core.receive_datagram(ini.request(1), NODE_A, 2.0)
    # The other leg is unknown: nothing to forward to yet; held (hold.py) until it announces itself.
    early = ini.sealer.seal(b"early")
    core.receive_datagram(early, NODE_A, 2.1)
    assert core.datagrams_to_send() == [] and core.stats["data_held"] == 1
    core.receive_datagram(resp.request(2), NODE_B, 2.2)
    assert Datagram(early, NODE_B) in core.datagrams_to_send()
    events(core)
    # Data from an unknown address (handover, or an attacker who saw the path id): not forwarded
    # (held for a moment: hold.py), and neither leg moves.
    moved = ini.sealer.seal(b"moved")
    core.receive_datagram(moved, NODE_A2, 3.0)
    assert core.datagrams_to_send() == [] and events(core) == []
    assert core.stats["data_held"] == 2  # ("early" above, then this one)
    entry = core.entry(pid)
    assert entry is not None and entry.initiator.endpoint == NODE_A and entry.responder_endpoint == NODE_B
    # An authenticated path keepalive from the new address does move the leg; what was held from
    # there goes on to the other leg.
    core.receive_datagram(ini.sig.seal(Keepalive(), txid=5, flags=ini.flags), NODE_A2, 3.1)
    assert events(core) == [RelayEndpointChanged(pid, PathRole.INITIATOR, NODE_A2)]
    released, dg = core.datagrams_to_send()
    assert released == Datagram(moved, NODE_B) and core.stats["data_held_released"] == 2
    hdr, msg = ini.open(dg.data)
    assert dg.addr == NODE_A2 and msg == KeepaliveAck(observed=NODE_A2) and hdr.txid == 5
    capsule = ini.sealer.seal(b"after")
    core.receive_datagram(capsule, NODE_A2, 3.2)
    assert core.datagrams_to_send() == [Datagram(capsule, NODE_B)]
    # A forged leg request (wrong relay key) is rejected.
    forger = LegS(pid, os.urandom(32), os.urandom(32), responder=True)
    forger.sig.next_seq = 1000
    core.receive_datagram(forger.request(9), ATTACKER, 3.3)
    assert core.stats["drop_auth"] == 1 and entry.responder_endpoint == NODE_B


# -- garbage never raises ------------------------------------------------------------------------------


def test_garbage_counted() -> None:
    core, dc, node = setup_rs_n()
    before = sum(core.stats.values())
    for junk in [b"", b"\x01", b"\x02\x01" + bytes(60), b"\x01\x40" + bytes(10), b"\x01\x01" + bytes(20),
                 b"\x01\xee" + bytes(60), b"\x01\x3f" + bytes(24), b"\x01\x08" + os.urandom(98)]:
        core.receive_datagram(junk, ATTACKER, 1.0)
    assert core.stats["drop_malformed"] >= 4 and core.stats["drop_unknown_version"] == 1
    assert sum(core.stats.values()) - before == 8
    assert core.datagrams_to_send() == [] and events(core) == []


_SENDERS = [RS_ID, DC_ID, b"P" * 8, b"Z" * 8]


@st.composite
def _datagrams(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return draw(st.binary(max_size=300))
    if kind == 1:  # a plausible signalling header from a known sender, random body
        hdr = struct.pack("!BBBB8sIQ", 1, draw(st.integers(0, 0x41)), draw(st.integers(0, 7)),
                          draw(st.integers(0, 20)), draw(st.sampled_from(_SENDERS)), draw(st.integers(0, 2**32 - 1)),
                          draw(st.integers(0, 2**64 - 1)))
        return hdr + draw(st.binary(max_size=200))
    if kind == 2:  # a capsule header for a known path, random body
        hdr = struct.pack("!BBBB8sQ", 1, 0x40, draw(st.integers(0, 255)), 0, draw(st.sampled_from(_SENDERS)),
                          draw(st.integers(0, 2**64 - 1)))
        return hdr + draw(st.binary(max_size=200))
    return bytes([draw(st.integers(0, 255)), draw(st.integers(0, 255))]) + draw(st.binary(max_size=50))


_FUZZ = setup_rs_n()
_FUZZ_S = setup_rs_s(b"Z" * 8)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=_datagrams(), port=st.integers(0, 65535), gso=st.booleans())
def test_random_input_never_raises(data: bytes, port: int, gso: bool) -> None:
    for core in (_FUZZ[0], _FUZZ_S[0]):
        core.receive_datagram(data, ("192.0.2.200", port), 1.0)
        core.tun_packet(data, 1.0, gso=gso)
        core.handle_timer(1.0)
        core.datagrams_to_send()
        core.packets_to_tun()
        events(core)


# -- end to end with the real DC and node cores ---------------------------------------------------------


def _e2e_setup() -> tuple[Any, dict[Endpoint, Any], RsCore, Net]:
    """The real DC, relay and two node cores on the harness's network (each node with its data path)."""
    from ntmobile.core.dc import DcConfig, DcCore
    from ntmobile.core.node import NodeConfig, NodeCore
    from ntmobile.core.registry import ClientRecord, MemoryStore, Pools

    store = MemoryStore(Pools(vip4="100.64.0.0/24", vip6=None, gn_vip4="100.127.0.0/24", gn_vip6=None))
    store.add_client(ClientRecord(RS_ID, "rs1.ntm.example", Role.RELAY, PSK))
    store.add_client(ClientRecord(b"NODE-A\x00\x01", "a.ntm.example", Role.NODE, PSK2))
    store.add_client(ClientRecord(b"NODE-B\x00\x01", "b.ntm.example", Role.NODE, PSK2))
    dc = DcCore(DcConfig(domain="ntm.example", dc_id=DC_ID, rsn_allow=TEST_NETS), store, 0.0, seq_base=1)
    rs = RsCore(RsConfig(name="rs1.ntm.example", rs_id=RS_ID, dcs=[DcLink(DC_ID, DC_EP, PSK)],
                         local_endpoints=(RS_OBSERVED,), rsn_allow=TEST_NETS), 0.0, seq_base=SEQ_BASE)
    nodes = {
        NODE_A: NodeCore(NodeConfig("a.ntm.example", b"NODE-A\x00\x01", PSK2, DC_ID, DC_EP), 0.0, seq_base=1),
        NODE_B: NodeCore(NodeConfig("b.ntm.example", b"NODE-B\x00\x01", PSK2, DC_ID, DC_EP), 0.0, seq_base=1),
    }
    net = Net(now=0.0)
    net.add("dc", dc, DC_EP)
    net.add("rs", rs, RS_OBSERVED)
    for name, (ep, node) in zip(("a", "b"), nodes.items(), strict=True):
        net.add(name, node, ep)
        net.attach_dataplane(name, node)
    rs.register(0.0)
    for node in nodes.values():  # both behind (different) NATs: they report private addresses
        node.register((("10.0.0.2", 7412),), 0.0)
    _pump(net, 0.1)
    return dc, nodes, rs, net


def _pump(net: Net, now: float) -> None:
    """Deliver until quiet at ``now`` (no timers fire)."""
    net.now = now
    for _ in range(50):
        if not net.step():
            return


def test_end_to_end_rs_n_with_real_dc_and_node() -> None:
    from ntmobile.core.dc import ResolveRequest
    from ntmobile.core.discovery import DiscoveryResult, Outcome
    from ntmobile.core.node import PathReady

    dc, nodes, rs, net = _e2e_setup()
    assert net.events_of("rs", Registered)
    node = nodes[NODE_A]
    node.request_path("www.gn.example", 1.0)
    _pump(net, 1.0)
    [resolve] = net.events_of("dc", ResolveRequest)
    dc.resolution_result(resolve.token, DiscoveryResult(resolve.fqdn, Outcome.GENERAL_NODE, a=(GN_ADDR,)), 1.1)
    _pump(net, 1.1)
    # The DC asks the relay how far the GN is; the relay's runtime measures and answers.
    [probe] = net.events_of("rs", ProbeRequest)
    assert probe.target == GN_ADDR
    rs.probe_result(probe.token, 2, 800, 1.15)
    _pump(net, 1.15)
    [added] = net.events_of("rs", RelayAdded)
    entry = added.entry
    [(node_vip, gn_vip, gn_addr)] = entry.nat_mappings()
    assert gn_addr == GN_ADDR and entry.node_endpoint == NODE_A
    [ready] = net.events_of("a", PathReady)
    assert ready.path.path_id == entry.path_id
    inner = ip4(node_vip, gn_vip, b"to the general node")
    net.send_ip("a", inner)
    _pump(net, 1.2)
    assert rs.packets_to_tun() == [(inner, False)]
    reply = ip4(gn_vip, node_vip, b"from the general node")
    rs.tun_packet(reply, 1.3)
    _pump(net, 1.3)
    assert net.received("a") == [reply]


def test_end_to_end_rs_s_with_real_dc_and_nodes() -> None:
    from ntmobile.core.node import PathReady

    dc, nodes, rs, net = _e2e_setup()
    nodes[NODE_A].request_path("b.ntm.example", 1.0)
    _pump(net, 1.0)
    [added] = net.events_of("rs", RelayAdded)
    entry = added.entry
    assert entry.rs_type is RsType.S
    assert entry.initiator.endpoint == NODE_A and entry.responder_endpoint == NODE_B
    [ready_a] = net.events_of("a", PathReady)
    [ready_b] = net.events_of("b", PathReady)
    vip_a, vip_b = ready_b.path.peer_vip4, ready_a.path.peer_vip4
    assert vip_a and vip_b
    to_b, to_a = ip4(vip_a, vip_b, b"hello b"), ip4(vip_b, vip_a, b"hello a")
    net.send_ip("a", to_b)
    net.send_ip("b", to_a)
    _pump(net, 1.2)
    assert net.received("b") == [to_b] and net.received("a") == [to_a]
    assert (entry.packets_i2r, entry.packets_r2i) == (1, 1)
