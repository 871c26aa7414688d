"""The discovery state machine, one `Discovery` per name: is the owner of an FQDN an NTM node
(behind a DC) or a general node?

The DC runs one `Discovery` per Direction Request for a name it does not serve itself:

1. zone cut: ask the recursive resolver for NS of the name, walking up one label at a time; a SOA in
   the authority section of a NODATA answer names the zone directly, NXDOMAIN ends the search;
2. NS host addresses: glue from the NS answer, else A and AAAA of the NS hosts via the resolver;
3. TXT at the zone apex, asked of the zone's own name servers directly (RD=0, answer must be AA);
4. a DC marker in that TXT -> NTM peer; none -> general node, whose A and AAAA come from the resolver.

The machine is driven like aioquic/dnspython's `_Resolution`: `next_queries(now)` gives datagrams to
send (or TCP exchanges when `tcp` is set), `receive(query_id, wire, now)` feeds responses,
`handle_timer(now)` fires at `get_timer()`. Every step is written to `result.evidence`.
No clock, sockets or asyncio here.

The machine's state is explicit (``DiscoveryState``; ``TRANSITIONS`` lists every legal move): ZONE_CUT
-> NS_ADDRESSES -> TXT -> ADDRESSES (general node), each able to end in DONE.
"""

import enum
import secrets
from collections.abc import Callable, Sequence

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from ntmobile.core.dnsauth import DcMarker, parse_marker, txt_strings

from .queries import Purpose, Query, Sent, fmt_server, negative_ttl, rcode_text
from .results import QUERY_PAYLOAD, Address, DiscoveryResult, DiscoveryStats, Evidence, Outcome, OutgoingQuery


class DiscoveryState(enum.Enum):
    ZONE_CUT = "finding the zone cut"
    NS_ADDRESSES = "looking up the name servers"
    TXT = "asking the name servers for TXT"
    ADDRESSES = "looking up A/AAAA"
    DONE = "done"


_D = DiscoveryState
#: Every legal move of a discovery (state -> the states it may go to). TXT -> TXT: the next name
#: server's addresses, after the first gave no authoritative answer.
TRANSITIONS: dict[DiscoveryState, frozenset[DiscoveryState]] = {
    _D.ZONE_CUT: frozenset({_D.NS_ADDRESSES, _D.DONE}),
    _D.NS_ADDRESSES: frozenset({_D.TXT, _D.DONE}),
    _D.TXT: frozenset({_D.TXT, _D.ADDRESSES, _D.DONE}),
    _D.ADDRESSES: frozenset({_D.DONE}),
    _D.DONE: frozenset(),
}


class DiscoveryStateError(RuntimeError):
    """An illegal move of a discovery's state (a bug in the machine, never caused by input)."""


class Discovery:
    """One discovery of one FQDN. Raises ValueError for a name that is not a valid DNS name."""

    def __init__(
        self,
        fqdn: str,
        resolvers: Sequence[Address],
        now: float,
        *,
        timeout: float = 0.4,
        retries: int = 2,
        backoff: float = 2.0,
        max_timeout: float = 2.0,
        deadline: float = 4.0,
        ns_port: int = 53,
        max_ns: int = 4,
        servfail_ttl: int = 1,
        id_source: Callable[[], int] | None = None,
    ) -> None:
        if not resolvers:
            raise ValueError("at least one resolver is needed")
        try:
            self.name = dns.name.from_text(fqdn)
        except Exception as exc:
            raise ValueError(f"invalid domain name {fqdn!r}: {exc}") from exc
        self.fqdn = self.name.to_text()
        self.resolvers = [(h, p) for h, p in resolvers]
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_timeout = max_timeout
        self.deadline = now + deadline
        self.deadline_s = deadline
        self.ns_port = ns_port
        self.max_ns = max_ns
        self.servfail_ttl = servfail_ttl
        self._id_source = id_source or (lambda: secrets.randbelow(65536))
        self.stats = DiscoveryStats()

        self._result: DiscoveryResult | None = None
        self._outbox: list[OutgoingQuery] = []
        self._handles: dict[int, Sent] = {}
        self._next_handle = 1
        self._active: list[Query] = []
        self.state = DiscoveryState.ZONE_CUT

        # evidence being collected
        self._lines: list[str] = []
        self._ttl: int | None = None
        self._zone: dns.name.Name | None = None
        self._zone_asked: set[dns.name.Name] = set()
        self._cnames: list[str] = []
        self._cname_targets: list[dns.name.Name] = []
        self._ns_names: list[dns.name.Name] = []
        self._ns_addrs: dict[dns.name.Name, list[str]] = {}
        self._ns_looked_up: set[dns.name.Name] = set()
        self._txt_tried: set[str] = set()
        self._txt_server: str | None = None
        self._txt: list[str] = []
        self._a: list[str] = []
        self._aaaa: list[str] = []

        self._ask_zone(self.name, now)

    # ---------------------------------------------------------------------------------------- API

    @property
    def done(self) -> bool:
        return self.state is DiscoveryState.DONE

    def _move(self, to: DiscoveryState) -> None:
        if to not in TRANSITIONS[self.state]:
            raise DiscoveryStateError(f"discovery of {self.fqdn}: {self.state.name} -> {to.name} is not allowed")
        self.state = to

    @property
    def _phase(self) -> str:
        """What the machine is doing, for the evidence (a deadline that passes names it)."""
        s = self.state
        if s is DiscoveryState.NS_ADDRESSES:
            return f"looking up the name servers of {self._zone}"
        if s is DiscoveryState.TXT:
            return f"asking the name servers of {self._zone} for TXT"
        if s is DiscoveryState.ADDRESSES:
            return f"looking up A/AAAA of {self.fqdn}"
        return str(s.value)

    @property
    def result(self) -> DiscoveryResult:
        if self._result is None:
            raise RuntimeError("discovery is not finished")
        return self._result

    def next_queries(self, now: float) -> list[OutgoingQuery]:
        out, self._outbox = self._outbox, []
        return out

    def get_timer(self) -> float | None:
        if self.done:
            return None
        expiries = [q.expires for q in self._active if not q.finished]
        return min([self.deadline, *expiries])

    def handle_timer(self, now: float) -> None:
        if self.done:
            return
        if now >= self.deadline:
            self._finish_fail(f"deadline of {self.deadline_s:g} s exceeded while {self._phase}")
            return
        for q in list(self._active):
            if q.finished or q.expires > now or self.done:
                continue
            server = q.servers[q.server_index]
            if not q.tcp and q.attempt <= self.retries:
                self._log(
                    f"no answer from {fmt_server(server)} for {q.label} within {q.timeout:g} s: "
                    "retransmitting"
                )
                q.timeout = min(q.timeout * self.backoff, self.max_timeout)
                self.stats.retransmits += 1
                self._emit(q, now)
            else:
                self._next_server(q, now, f"no answer from {fmt_server(server)} for {q.label}")

    def fail(self, query_id: int, reason: str, now: float) -> None:
        """The runtime could not send or got a hard error (ICMP unreachable, TCP reset)."""
        sent = self._handles.get(query_id)
        if self.done or sent is None or sent.query.finished:
            return
        q = sent.query
        if sent.server != q.servers[q.server_index] or sent.tcp != q.tcp:
            return  # about an earlier attempt
        self._next_server(q, now, f"{fmt_server(sent.server)} failed for {q.label}: {reason}")

    def receive(self, query_id: int, response_wire: bytes, now: float) -> None:
        sent = self._handles.get(query_id)
        if self.done or sent is None or sent.query.finished:
            self.stats.ignored += 1
            return
        q = sent.query
        if len(response_wire) < 12 or int.from_bytes(response_wire[:2], "big") != sent.msg_id:
            self.stats.ignored += 1
            return
        flags = int.from_bytes(response_wire[2:4], "big")
        if not flags & dns.flags.QR:
            self.stats.ignored += 1
            return
        if flags & dns.flags.TC and not sent.tcp:
            if q.tcp:
                return  # already switched to TCP for this query
            self._log(f"{fmt_server(sent.server)} truncated the answer to {q.label}: retrying over TCP")
            self.stats.tcp_fallbacks += 1
            q.tcp = True
            q.timeout = min(max(q.timeout, self.timeout) * self.backoff, self.max_timeout)
            self._emit(q, now, new_id=True)
            return
        try:
            msg = dns.message.from_wire(response_wire)
        except Exception:
            self.stats.ignored += 1
            return
        if (
            len(msg.question) != 1
            or msg.question[0].name != q.qname
            or msg.question[0].rdtype != q.rdtype
            or msg.question[0].rdclass != dns.rdataclass.IN
        ):
            self.stats.ignored += 1
            return
        self.stats.responses += 1
        server = sent.server
        if q.purpose is Purpose.ZONE:
            self._on_zone(q, server, msg, now)
        elif q.purpose is Purpose.NSADDR:
            self._on_nsaddr(q, server, msg, now)
        elif q.purpose is Purpose.TXT:
            self._on_txt(q, server, msg, now)
        else:
            self._on_addr(q, server, msg, now)

    # ------------------------------------------------------------------------------- query plumbing

    def _new_query(
        self,
        purpose: Purpose,
        qname: dns.name.Name,
        rdtype: dns.rdatatype.RdataType,
        servers: list[Address],
        recursive: bool,
        now: float,
    ) -> Query:
        label = f"{dns.rdatatype.to_text(rdtype)}? {qname}"
        q = Query(purpose, qname, rdtype, servers, recursive, self.timeout, label=label)
        self._active.append(q)
        self._emit(q, now, new_id=True)
        return q

    def _emit(self, q: Query, now: float, *, new_id: bool = False) -> None:
        if new_id or not q.wire:
            q.msg_id = self._id_source() & 0xFFFF
            msg = dns.message.make_query(
                q.qname,
                q.rdtype,
                use_edns=0,
                payload=QUERY_PAYLOAD,
                id=q.msg_id,
                flags=dns.flags.RD if q.recursive else 0,
            )
            q.wire = msg.to_wire()
            q.attempt = 0
        q.attempt += 1
        q.expires = now + q.timeout
        server = q.servers[q.server_index]
        handle = self._next_handle
        self._next_handle += 1
        self._handles[handle] = Sent(q, server, q.msg_id, q.tcp)
        self._outbox.append(OutgoingQuery(handle, server, q.wire, q.tcp))
        self.stats.sent += 1

    def _next_server(self, q: Query, now: float, why: str) -> None:
        failed = q.servers[q.server_index]
        if q.recursive and failed in self.resolvers and len(self.resolvers) > 1:
            # Later queries of this discovery start with the resolvers that still work.
            self.resolvers.remove(failed)
            self.resolvers.append(failed)
        q.server_index += 1
        if q.server_index < len(q.servers):
            self._log(f"{why}: trying {fmt_server(q.servers[q.server_index])}")
            q.tcp = False
            q.timeout = self.timeout
            self._emit(q, now, new_id=True)
            return
        self._log(f"{why}: no server left for {q.label}")
        q.finished = True
        q.failed = True
        self._on_failed(q, now)

    def _reject(self, q: Query, server: Address, now: float, why: str) -> None:
        """A useless answer: move on, unless it is a late one from a server already given up on."""
        if server != q.servers[q.server_index]:
            self._log(f"{why} (late answer, ignored)")
            return
        self._next_server(q, now, why)

    def _done_with(self, q: Query) -> None:
        q.finished = True

    def _log(self, line: str) -> None:
        self._lines.append(line)

    def _see_ttl(self, ttl: int) -> None:
        self._ttl = ttl if self._ttl is None else min(self._ttl, ttl)

    def _on_failed(self, q: Query, now: float) -> None:
        if q.purpose is Purpose.ZONE:
            self._finish_fail(f"no resolver answered {q.label}")
        elif q.purpose is Purpose.NSADDR:
            self._nsaddr_progress(now)
        elif q.purpose is Purpose.TXT:
            self._txt_tried.update(h for h, _ in q.servers)
            self._txt_or_lookup(now)
        else:
            self._addr_progress()

    # ---------------------------------------------------------------------------------- step (a)

    def _ask_zone(self, qname: dns.name.Name, now: float) -> None:
        self._zone_asked.add(qname)
        self._new_query(Purpose.ZONE, qname, dns.rdatatype.NS, list(self.resolvers), True, now)

    def _on_zone(self, q: Query, server: Address, msg: dns.message.Message, now: float) -> None:
        rcode = msg.rcode()
        where = f"{q.label} via resolver {fmt_server(server)}"
        self._note_cnames(msg)
        if rcode == dns.rcode.NXDOMAIN:
            self._done_with(q)
            ttl = negative_ttl(msg)
            soa_name = next((r.name.to_text() for r in msg.authority if r.rdtype == dns.rdatatype.SOA), None)
            self._log(f"{where} -> NXDOMAIN (SOA {soa_name or 'absent'})")
            self._finish(Outcome.NXDOMAIN, f"{self.fqdn} does not exist", ttl=ttl or 0)
            return
        if rcode != dns.rcode.NOERROR:
            self._reject(q, server, now, f"{where} -> {rcode_text(rcode)}")
            return
        self._done_with(q)
        targets = [self.name, *self._cname_targets]

        def relevant(owner: dns.name.Name) -> bool:
            return any(t.is_subdomain(owner) for t in targets)

        ns_rrset = next(
            (r for r in msg.answer if r.rdtype == dns.rdatatype.NS and relevant(r.name)), None
        )
        kind = "answer"
        if ns_rrset is None and not any(r.rdtype == dns.rdatatype.SOA for r in msg.authority):
            # A referral from an authoritative-only server: the NS set of the child zone
            # (an "upward" referral to the root is no zone cut).
            ns_rrset = next(
                (
                    r
                    for r in msg.authority
                    if r.rdtype == dns.rdatatype.NS and r.name != dns.name.root and relevant(r.name)
                ),
                None,
            )
            kind = "referral"
        if ns_rrset is not None:
            self._zone = ns_rrset.name
            self._see_ttl(ns_rrset.ttl)
            names = sorted({rd.target for rd in ns_rrset}, key=lambda n: n.to_text())
            self._ns_names = names[: self.max_ns]
            self._log(
                f"{where} -> {kind} NS {', '.join(n.to_text() for n in names)}: zone cut at {self._zone}"
            )
            for rrset in msg.additional:
                if rrset.name in self._ns_names and rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                    addrs = [rd.to_text() for rd in rrset]
                    self._ns_addrs.setdefault(rrset.name, []).extend(addrs)
                    self._log(f"glue for {rrset.name}: {', '.join(addrs)}")
            self._move(DiscoveryState.NS_ADDRESSES)
            self._txt_or_lookup(now)
            return
        soa = next((r for r in msg.authority if r.rdtype == dns.rdatatype.SOA and relevant(r.name)), None)
        if soa is not None and soa.name not in self._zone_asked:
            self._log(f"{where} -> no NS, SOA {soa.name} in authority: asking NS of {soa.name}")
            self._ask_zone(soa.name, now)
            return
        if q.qname == dns.name.root:
            self._finish_fail("no zone cut found up to the root")
            return
        parent = q.qname.parent()
        self._log(f"{where} -> no NS: walking up to {parent}")
        self._ask_zone(parent, now)

    def _note_cnames(self, msg: dns.message.Message) -> None:
        for rrset in msg.answer:
            if rrset.rdtype == dns.rdatatype.CNAME:
                for rd in rrset:
                    entry = f"{rrset.name} -> {rd.target}"
                    if entry not in self._cnames:
                        self._cnames.append(entry)
                        self._cname_targets.append(rd.target)
                        self._log(f"alias {entry}")

    # ---------------------------------------------------------------------------------- step (b)

    def _txt_or_lookup(self, now: float) -> None:
        """Ask TXT of an untried NS address, or look up NS addresses, or give up."""
        if self.done:
            return
        v4: list[str] = []
        v6: list[str] = []
        for name in self._ns_names:
            for addr in self._ns_addrs.get(name, []):
                if addr in self._txt_tried or addr in v4 or addr in v6:
                    continue
                (v6 if ":" in addr else v4).append(addr)
        candidates = v4 + v6
        if candidates:
            assert self._zone is not None
            self._move(DiscoveryState.TXT)
            servers = [(a, self.ns_port) for a in candidates]
            self._new_query(Purpose.TXT, self._zone, dns.rdatatype.TXT, servers, False, now)
            return
        todo = [n for n in self._ns_names if n not in self._ns_looked_up]
        if todo:
            for name in todo:
                self._ns_looked_up.add(name)
                for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                    self._new_query(Purpose.NSADDR, name, rdtype, list(self.resolvers), True, now)
            return
        if not any(self._ns_addrs.values()):
            self._finish_fail(f"no address found for any name server of {self._zone}")
        else:
            self._finish_fail(f"no name server of {self._zone} answered TXT? {self._zone}")

    def _on_nsaddr(self, q: Query, server: Address, msg: dns.message.Message, now: float) -> None:
        rcode = msg.rcode()
        where = f"{q.label} via resolver {fmt_server(server)}"
        if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            self._reject(q, server, now, f"{where} -> {rcode_text(rcode)}")
            return
        self._done_with(q)
        addrs = self._addresses(msg, q.rdtype)
        if addrs:
            self._ns_addrs.setdefault(q.qname, []).extend(addrs)
            self._log(f"{where} -> {', '.join(addrs)}")
        else:
            self._log(f"{where} -> {'NXDOMAIN' if rcode == dns.rcode.NXDOMAIN else 'no address'}")
        self._nsaddr_progress(now)

    def _nsaddr_progress(self, now: float) -> None:
        if any(q.purpose is Purpose.NSADDR and not q.finished for q in self._active):
            return
        self._txt_or_lookup(now)

    def _addresses(self, msg: dns.message.Message, rdtype: dns.rdatatype.RdataType) -> list[str]:
        out: list[str] = []
        for rrset in msg.answer:
            if rrset.rdtype == rdtype:
                self._see_ttl(rrset.ttl)
                out.extend(rd.to_text() for rd in rrset if rd.to_text() not in out)
        return out

    # ------------------------------------------------------------------------------ steps (c)+(d)

    def _on_txt(self, q: Query, server: Address, msg: dns.message.Message, now: float) -> None:
        rcode = msg.rcode()
        where = f"{q.label} @{fmt_server(server)} (direct, RD=0)"
        authoritative = bool(msg.flags & dns.flags.AA)
        if rcode != dns.rcode.NOERROR or not authoritative:
            what = rcode_text(rcode) + ("" if authoritative else ", not authoritative")
            self._reject(q, server, now, f"{where} -> {what}")
            return
        self._done_with(q)
        self._txt_server = fmt_server(server)
        texts: list[str] = []
        for rrset in msg.answer:
            if rrset.rdtype == dns.rdatatype.TXT and rrset.name == q.qname:
                self._see_ttl(rrset.ttl)
                texts.extend(txt_strings(rd) for rd in rrset)
        self._txt = texts
        if not texts:
            ttl = negative_ttl(msg)
            if ttl is not None:
                self._see_ttl(ttl)
            self._log(f"{where} -> AA NOERROR, no TXT at the apex")
        else:
            self._log(f"{where} -> AA TXT " + " | ".join(repr(t) for t in texts))
        marker = next((m for m in (parse_marker(t) for t in texts) if m is not None), None)
        if marker is not None:
            self._log(
                f"decision: NTM peer; DC marker of {q.qname} names DC {fmt_server(marker.address)}"
            )
            self._finish(Outcome.NTM_PEER, f"DC marker at {q.qname}", marker=marker)
            return
        self._log(f"decision: general node; no DC marker at {q.qname}: asking A and AAAA of {self.fqdn}")
        self._move(DiscoveryState.ADDRESSES)
        for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            self._new_query(Purpose.ADDR, self.name, rdtype, list(self.resolvers), True, now)

    def _on_addr(self, q: Query, server: Address, msg: dns.message.Message, now: float) -> None:
        rcode = msg.rcode()
        where = f"{q.label} via resolver {fmt_server(server)}"
        self._note_cnames(msg)
        if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            self._reject(q, server, now, f"{where} -> {rcode_text(rcode)}")
            return
        self._done_with(q)
        addrs = self._addresses(msg, q.rdtype)
        (self._a if q.rdtype == dns.rdatatype.A else self._aaaa).extend(addrs)
        if rcode == dns.rcode.NXDOMAIN:
            q.nxdomain = True
            self._log(f"{where} -> NXDOMAIN")
        elif addrs:
            self._log(f"{where} -> {', '.join(addrs)}")
        else:
            ttl = negative_ttl(msg)
            if ttl is not None:
                self._see_ttl(ttl)
            self._log(f"{where} -> no address (NODATA)")
        self._addr_progress()

    def _addr_progress(self) -> None:
        queries = [q for q in self._active if q.purpose is Purpose.ADDR]
        if any(not q.finished for q in queries) or self.done:
            return
        if self._a or self._aaaa:
            self._finish(Outcome.GENERAL_NODE, "general node with addresses")
        elif any(q.failed for q in queries):
            self._finish_fail(f"A/AAAA lookup of {self.fqdn} failed")
        elif all(q.nxdomain for q in queries):
            self._finish(Outcome.NXDOMAIN, f"{self.fqdn} does not exist")
        else:
            self._finish(Outcome.NODATA, f"{self.fqdn} has no DC marker and no A/AAAA")

    # ----------------------------------------------------------------------------------- results

    def _finish_fail(self, reason: str) -> None:
        self._finish(Outcome.SERVFAIL, reason, ttl=self.servfail_ttl)

    def _finish(
        self, outcome: Outcome, reason: str, *, ttl: int | None = None, marker: DcMarker | None = None
    ) -> None:
        if self.done:
            return
        if ttl is None:
            ttl = self._ttl if self._ttl is not None else 0
        self._log(f"result: {outcome.value} ({reason}), cacheable for {ttl} s")
        evidence = Evidence(
            lines=tuple(self._lines),
            zone=self._zone.to_text() if self._zone is not None else None,
            ns_names=tuple(n.to_text() for n in self._ns_names),
            ns_addresses=tuple(a for n in self._ns_names for a in self._ns_addrs.get(n, [])),
            txt_server=self._txt_server,
            txt=tuple(self._txt),
            a=tuple(self._a),
            aaaa=tuple(self._aaaa),
            cnames=tuple(self._cnames),
        )
        self._result = DiscoveryResult(
            fqdn=self.fqdn,
            outcome=outcome,
            ttl=max(0, ttl),
            reason=reason,
            evidence=evidence,
            marker=marker,
            a=tuple(self._a),
            aaaa=tuple(self._aaaa),
        )
        self._move(DiscoveryState.DONE)
        self._outbox.clear()
        for q in self._active:
            q.finished = True
