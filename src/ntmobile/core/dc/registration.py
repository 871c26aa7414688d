"""Registration of nodes and relays with the DC: the long-term handshake that makes a session, its
retransmitted responses, rejections, and the group commit of the registry writes of a batch."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ntmobile.crypto import Channel, Ephemeral, session_keys
from ntmobile.wire import (
    VERSION,
    Endpoint,
    MessageType,
    NatKind,
    RegistrationRequest,
    RegistrationResponse,
    Role,
    SignalFlags,
    SignalHeader,
    Status,
    StatusMessage,
)

from ..registry import ClientRecord, StoreError
from ..timing import EPHEMERAL_LIFETIME
from .events import ClientRegistered, RegistrationRejected
from .sessions import _Session

if TYPE_CHECKING:
    from .core import DcCore


#: How far above the wall clock (µs) a client's RECV_FLOOR may be for the DC to move its counter
#: there: about 2.2 years, room for a clock stepped back and for reserved blocks, and never more than
#: a 2^-18 share of the 64-bit space however often a client asks.
RECV_FLOOR_SLACK = 1 << 46


class Registration:
    """Answers Registration Requests on clients' long-term channels."""

    def __init__(self, core: DcCore) -> None:
        self._core = core
        self._eph: Ephemeral | None = None
        self._eph_at = -1e9
        #: Between begin_batch and end_batch: the registrations answered (whose registry writes the
        #: runtime commits at end_batch): session, response datagram, long-term channel, txid, address,
        #: and the client's session it replaced (put back if the registration is undone).
        self._batch: list[tuple[_Session, bytes, Channel, int, Endpoint, _Session | None]] | None = None
        #: Relays registered in the batch, and when: their standby legs are installed once it is
        #: committed (an undone registration brings no relay up).
        self._relays_up: list[tuple[_Session, float]] = []

    # -- group commit (the runtime brackets each batch of datagrams) -------------------------------
    def begin_batch(self) -> None:
        self._batch = []

    def batch_pending(self) -> bool:
        return bool(self._batch)

    def end_batch(self, error: str | None, lost: set[bytes] | frozenset[bytes] = frozenset()) -> None:
        """The batch's registry writes were committed (``error`` None) or failed. A failed commit
        undoes every registration of the batch and answers it STORAGE_ERROR. ``lost``: clients whose
        replay-floor write lost to another replica (it accepted the same registration, or a later
        one, after this batch read the floor: a captured request replayed to two replicas at once)
        or that were removed meanwhile: their registrations are undone without an answer (counted
        ``registration_lost_race``), the session they replaced, if any, kept."""
        batch, self._batch = self._batch, None
        relays, self._relays_up = self._relays_up, []
        core = self._core
        if not batch:
            undo = []
        elif error is not None:
            undo = batch
        else:
            undo = [b for b in batch if b[0].record.client_id in lost]
        for session, at in relays:
            if error is None and session.record.client_id not in lost:
                core.standbys.relay_up(session.record.name, at)  # (an RS-N pair's standby legs: standby.py)
        if not undo:
            return
        failed = {id(data) for _s, data, _lt, _t, _a, _p in undo}
        core._out = [dg for dg in core._out if id(dg.data) not in failed]
        for session, _data, lt, txid, addr, previous in reversed(undo):
            if core.clients.get(session.record.client_id) is session:
                core.clients.remove(session)
                if previous is not None:
                    core.clients.add(previous)
            core.stats["registrations"] -= 1
            if error is not None:
                self._reject(lt, session.record, txid, addr, Status.STORAGE_ERROR,
                             f"registry cannot be written: {error}")
            else:
                core.stats["registration_lost_race"] += 1
                core._emit(RegistrationRejected(session.record.name, Status.AUTH_FAILED,
                                                "replayed: another replica accepted this registration first"))

    def _advance_counter(self, floor: int, now: float) -> None:
        """The client has accepted counters up to ``floor`` under our long-term key, from another
        replica's block (replicas share the key): answer above it. A floor beyond the wall clock plus
        RECV_FLOOR_SLACK was never sealed by a replica of ours (counters start at the wall clock in
        µs), so it is refused: an enrolled client cannot push the shared counter towards its end."""
        core = self._core
        if floor > core.wall_us(now) + RECV_FLOOR_SLACK:
            core.stats["recv_floor_refused"] += 1
            return
        ok = core.counter.advance_past(floor)
        core.stats["counter_advanced" if ok else "recv_floor_refused"] += 1

    def _ephemeral(self, now: float) -> Ephemeral:
        eph = self._eph
        if eph is None or now - self._eph_at >= EPHEMERAL_LIFETIME or now < self._eph_at:
            eph = self._eph = Ephemeral(self._core._rand)
            self._eph_at = now
        return eph

    # -- the handshake ------------------------------------------------------------------------------
    def on_request(self, record: ClientRecord, header: SignalHeader, data: bytes, addr: Endpoint,
                   now: float) -> None:
        core = self._core
        lt = core.clients.long_term(record)
        msg = core._open(lt, header, data)
        if not isinstance(msg, RegistrationRequest):
            return
        if msg.recv_floor is not None and msg.recv_floor >= core.counter.next:
            self._advance_counter(msg.recv_floor, now)
        reg_tag = (header.txid << 64) | int.from_bytes(msg.ephemeral[:8], "big")
        old = core.clients.get(record.client_id)
        if old is not None and old.reg_tag == reg_tag:
            # Our response was lost: send it again (same session, same keys; resealed).
            core.stats["registration_retransmits"] += 1
            core._reply(lt, self._response(old, addr), header.txid, addr, flags=SignalFlags.LONG_TERM)
            return
        try:
            core.store.set_last_seq(record.client_id, header.seq)
        except StoreError as exc:
            self._reject(lt, record, header.txid, addr, Status.STORAGE_ERROR, f"registry cannot be written: {exc}")
            return
        if not msg.versions[0] <= VERSION <= msg.versions[1]:
            self._reject(lt, record, header.txid, addr, Status.UNSUPPORTED_VERSION,
                         f"DC speaks version {VERSION}, node offers {msg.versions[0]}..{msg.versions[1]}")
            return
        if msg.role != record.role or msg.name.rstrip(".").lower() != record.name:
            self._reject(lt, record, header.txid, addr, Status.NOT_AUTHORIZED,
                         "name or role does not match the enrolment")
            return
        if record.role is Role.NODE:
            try:
                record.vip4, record.vip6 = core.store.assign_vips(record.client_id, record)
            except StoreError as exc:
                self._reject(lt, record, header.txid, addr, Status.STORAGE_ERROR, f"cannot assign a VIP: {exc}")
                return
        else:
            record.vip4 = record.vip6 = None
        nat = NatKind.NONE if addr in msg.local_endpoints else NatKind.NAT
        eph = self._ephemeral(now)
        try:
            shared = eph.exchange(msg.ephemeral)
        except ValueError:
            core.stats["drop_auth"] += 1
            return
        keys = session_keys(record.psk, shared, record.client_id, msg.ephemeral, eph.public).swapped()
        probe = None
        if record.role is Role.NODE and nat is NatKind.NAT:
            probe = next((p for p in core.config.probe if (":" in p[0]) == (":" in addr[0])), None)
        session = _Session(record, Channel(keys, core.config.dc_id), addr, msg.local_endpoints, nat, now,
                           msg.capabilities, reg_tag=reg_tag, dc_eph=eph.public,
                           instance=msg.instance or reg_tag.to_bytes(24, "big"),
                           probe=probe, load=msg.load or 0)
        core.clients.add(session)
        if probe is not None:
            core.natprobe.send_filter_probe(session, lt, addr)
        data_out = core._reply(lt, self._response(session, addr), header.txid, addr, flags=SignalFlags.LONG_TERM)
        if self._batch is not None:
            self._batch.append((session, data_out, lt, header.txid, addr, old))
        core.stats["registrations"] += 1
        core._emit(ClientRegistered(record.name, record.role, record.vip4, record.vip6, addr, nat))
        if record.role is Role.RELAY:
            if self._batch is not None:
                self._relays_up.append((session, now))  # once the batch is committed (end_batch)
            else:
                core.standbys.relay_up(record.name, now)  # (an RS-N pair's standby legs: core/dc/standby.py)

    def _response(self, s: _Session, addr: Endpoint) -> RegistrationResponse:
        rec, config = s.record, self._core.config
        if rec.role is Role.RELAY:
            keepalive = config.relay_keepalive
        else:
            keepalive = config.keepalive if s.nat is NatKind.NAT else 0
        return RegistrationResponse(ephemeral=s.dc_eph, version=VERSION, observed=addr, nat=s.nat,
                                    keepalive=keepalive, vip4=rec.vip4, vip6=rec.vip6, name=rec.name, probe=s.probe)

    def _reject(self, lt: Channel, record: ClientRecord, txid: int, addr: Endpoint, status: Status,
                reason: str) -> None:
        core = self._core
        core.stats["registrations_rejected"] += 1
        # the wire's strings hold 255 bytes: a long store error is cut (the event keeps it whole)
        short = reason.encode()[:255].decode(errors="ignore")
        core._reply(lt, StatusMessage(answers=MessageType.REGISTRATION_REQUEST, reason=short), txid, addr,
                    status=status, flags=SignalFlags.LONG_TERM)
        core._emit(RegistrationRejected(record.name, status, reason))
