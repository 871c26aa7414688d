"""NAT classification of registered nodes (docs/protocol.md, "NAT classification"): the filter probe
the DC sends after a registration, the node's mapping probe to the probe socket, and the verdict."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ntmobile.crypto import Channel
from ntmobile.wire import (
    CodecError,
    Endpoint,
    Keepalive,
    KeepaliveAck,
    MessageType,
    NatKind,
    SignalFlags,
    SignalHeader,
    parse_signal_header,
)

from ..common import new_txid
from ..registry import ClientRecord
from .events import NatClassified, ProbeDatagram
from .sessions import _Session

if TYPE_CHECKING:
    from .core import DcCore


class NatProbe:
    """Measures each NATed node's mapping and filtering behaviour (the result is ``_Session.measured``)."""

    def __init__(self, core: DcCore) -> None:
        self._core = core

    def send_filter_probe(self, session: _Session, lt: Channel, addr: Endpoint) -> None:
        """Filtering test: a long-term Keepalive from the filter socket to the mapping the Registration
        Request just created. The node never sends to that port, so only a NAT that filters nothing
        lets it through. (Not from the probe port: the conntrack entry it leaves on the NAT would
        collide with the node's mapping probe and make a cone NAT pick another port.)"""
        core = self._core
        session.filter_txid = new_txid(core._rand)
        data = lt.seal(Keepalive(), txid=session.filter_txid, flags=SignalFlags.LONG_TERM)
        core._emit(ProbeDatagram(data, addr, filter=True))
        core.stats["nat_filter_probes"] += 1

    def on_filter_ack(self, record: ClientRecord, header: SignalHeader, data: bytes, now: float) -> None:
        core = self._core
        msg = core._open(core.clients.long_term(record), header, data)
        session = core.clients.get(record.client_id)
        if not isinstance(msg, KeepaliveAck) or session is None or not session.filter_txid \
                or header.txid != session.filter_txid:
            core.stats["drop_unexpected"] += 1
            return
        session.filter_txid = 0
        session.filter_open = True
        self._classify(session)

    def receive_probe(self, data: bytes, addr: Endpoint, now: float) -> None:
        core = self._core
        try:
            header = parse_signal_header(data)
        except CodecError:
            core.stats["drop_malformed"] += 1
            return
        session = core.clients.get(header.sender)
        if session is None or header.type is not MessageType.KEEPALIVE or header.flags & SignalFlags.LONG_TERM:
            core.stats["drop_probe_unexpected"] += 1
            return
        msg = core._open(session.channel, header, data)
        if not isinstance(msg, Keepalive):
            return
        session.mapping_same = addr == session.endpoint
        core._emit(ProbeDatagram(session.channel.seal(KeepaliveAck(observed=addr), txid=header.txid), addr))
        core.stats["nat_mapping_probes"] += 1
        self._classify(session, addr)

    def _classify(self, s: _Session, probe_src: Endpoint | None = None) -> None:
        if s.nat is NatKind.NONE or s.mapping_same is None:
            return
        if not s.mapping_same:
            kind = NatKind.SYMMETRIC
        else:
            kind = NatKind.OPEN if s.filter_open else NatKind.CONE
        if kind is s.measured:
            return
        s.measured = kind
        preserved = any(s.endpoint[1] == e[1] for e in s.local_endpoints)
        mapping = ("same mapped endpoint toward the probe port" if s.mapping_same else
                   f"mapped to {probe_src} toward the probe port, {s.endpoint} toward the signalling port")
        evidence = (f"{mapping}; unsolicited probe from the filter port "
                    f"{'passed' if s.filter_open else 'filtered (or not answered yet)'}; "
                    f"port {'preserved' if preserved else 'translated'}")
        self._core._emit(NatClassified(s.record.name, kind, evidence))
