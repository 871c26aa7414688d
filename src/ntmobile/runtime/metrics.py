"""Prometheus metrics: every daemon serves the text format (version 0.0.4) on ``/metrics``
(docs/operations.md, "Metrics").

The series are read from the counters the daemon already keeps (the core's ``stats``, the data
plane's, the driver's, the relay's fast path), at scrape time, by collectors on the daemon's own
registry: nothing on the data path counts twice. A ``drop_*`` counter of a core and a drop counter
of the data plane become one series each of ``ntm_<role>_drops_total{layer, reason}``; the other
core counters are ``ntm_<role>_core_events_total{event}``. What no counter holds yet (directions by
mode and outcome, set-up latency, handover gaps) the daemon counts from its events (``Counter``,
``Histogram`` here), on the same registry.

Labels have bounded cardinality: a mode, a status name, a reason (a fixed key of the code), a relay
name (a DC has tens of relays), a zone; never a Path ID, a node's name or an address.

The text is rendered here, not by prometheus-client: its package imports ``ssl``, ``hashlib`` (via
urllib) and an HTTP server stack, which the relay keeps out of its memory (docs/dataplane.md,
"Relay memory"). The tests read every daemon's output with prometheus-client's own parser.

The endpoint is served from the daemon's asyncio loop (``serve_metrics``): a scrape is one render
between two packets; no thread contends with the data path for the GIL.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from .config import parse_listen

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


# -- the text format -----------------------------------------------------------------------------
def _fmt(v: float) -> str:
    if isinstance(v, int):
        return str(v)
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if math.isnan(v):
        return "NaN"
    return repr(float(v))


def _escape_label(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Family:
    """One metric family: its type, help text, label names and samples. A counter's name is given
    without ``_total`` (its samples carry it)."""

    __slots__ = ("name", "doc", "kind", "labels", "samples")

    def __init__(self, kind: str, name: str, doc: str, labels: Sequence[str] = (), value: float | None = None) -> None:
        self.kind, self.name, self.doc, self.labels = kind, name, doc, tuple(labels)
        self.samples: list[tuple[str, tuple[str, ...], float]] = []
        if value is not None:
            self.add_metric((), value)

    def add_metric(self, values: Sequence[str], value: float, suffix: str | None = None,
                   extra: tuple[str, str] | None = None) -> None:
        if suffix is None:
            suffix = "_total" if self.kind == "counter" else ""
        vals = tuple(values) if extra is None else (*values, extra[1])
        self.samples.append((suffix, vals, value))

    def render(self, out: list[str]) -> None:
        # (In the 0.0.4 text format a counter's HELP and TYPE name its samples: ``..._total``.)
        name = self.name + "_total" if self.kind == "counter" else self.name
        out.append(f"# HELP {name} {self.doc.replace(chr(92), chr(92) * 2).replace(chr(10), chr(92) + 'n')}")
        out.append(f"# TYPE {name} {self.kind}")
        for suffix, vals, value in self.samples:
            names = self.labels if len(vals) == len(self.labels) else (*self.labels, "le")
            labels = ",".join(f'{k}="{_escape_label(v)}"' for k, v in zip(names, vals, strict=True))
            out.append(f"{self.name}{suffix}{{{labels}}} {_fmt(value)}" if labels else
                       f"{self.name}{suffix} {_fmt(value)}")


def counter_family(name: str, doc: str, labels: Sequence[str] = (), value: float | None = None) -> Family:
    return Family("counter", name, doc, labels, value)


def gauge_family(name: str, doc: str, labels: Sequence[str] = (), value: float | None = None) -> Family:
    return Family("gauge", name, doc, labels, value)



class Counter:
    """A counter the daemon increments from its events, by label values."""

    def __init__(self, name: str, doc: str, labels: Sequence[str] = ()) -> None:
        self.name, self.doc, self.labelnames = name, doc, tuple(labels)
        self.values: dict[tuple[str, ...], float] = {}

    def labels(self, *values: str) -> _Child:
        return _Child(self.values, tuple(values))

    def inc(self, n: float = 1) -> None:
        self.values[()] = self.values.get((), 0) + n

    def collect(self) -> Iterator[Family]:
        fam = Family("counter", self.name, self.doc, self.labelnames)
        for vals, v in sorted(self.values.items()):
            fam.add_metric(vals, v)
        yield fam


class _Child:
    __slots__ = ("values", "key")

    def __init__(self, values: dict[tuple[str, ...], float], key: tuple[str, ...]) -> None:
        self.values, self.key = values, key

    def inc(self, n: float = 1) -> None:
        self.values[self.key] = self.values.get(self.key, 0) + n


class Histogram:
    """A histogram of observations (seconds), by label values: cumulative buckets, sum and count."""

    def __init__(self, name: str, doc: str, labels: Sequence[str] = (),
                 buckets: Sequence[float] = ()) -> None:
        self.name, self.doc, self.labelnames = name, doc, tuple(labels)
        self.buckets = tuple(buckets)
        self.data: dict[tuple[str, ...], list[float]] = {}  # per bucket counts, then +Inf, sum

    def labels(self, *values: str) -> _HistChild:
        return _HistChild(self, tuple(values))

    def observe(self, v: float, key: tuple[str, ...] = ()) -> None:
        d = self.data.get(key)
        if d is None:
            d = self.data[key] = [0.0] * (len(self.buckets) + 2)
        for i, b in enumerate(self.buckets):
            if v <= b:
                d[i] += 1
        d[-2] += 1
        d[-1] += v

    def collect(self) -> Iterator[Family]:
        fam = Family("histogram", self.name, self.doc, self.labelnames)
        for vals, d in sorted(self.data.items()):
            for b, n in zip(self.buckets, d, strict=False):
                fam.add_metric(vals, n, "_bucket", ("le", _fmt(float(b))))
            fam.add_metric(vals, d[-2], "_bucket", ("le", "+Inf"))
            fam.add_metric(vals, d[-2], "_count")
            fam.add_metric(vals, d[-1], "_sum")
        yield fam


class _HistChild:
    __slots__ = ("hist", "key")

    def __init__(self, hist: Histogram, key: tuple[str, ...]) -> None:
        self.hist, self.key = hist, key

    def observe(self, v: float) -> None:
        self.hist.observe(v, self.key)


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_families() -> Iterator[Family]:
    """The process's resident memory, CPU time, open files and start time (from /proc/self)."""
    try:
        with open("/proc/self/statm") as f:
            rss = int(f.read().split()[1]) * _PAGE
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / _TICKS
        fds = len(os.listdir("/proc/self/fd"))
    except (OSError, ValueError, IndexError):
        return
    yield gauge_family("ntm_process_resident_memory_bytes", "Resident memory of the daemon", value=rss)
    yield counter_family("ntm_process_cpu_seconds", "CPU time of the daemon (user and system)", value=cpu)
    yield gauge_family("ntm_process_open_fds", "Open file descriptors", value=fds)


log = logging.getLogger(__name__)

#: Buckets of the set-up latency and handover gap histograms (seconds).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: A request's line and headers: at most this many bytes and this many seconds.
REQUEST_MAX = 8192
REQUEST_TIMEOUT = 5.0
#: Scrapes served at once (more connections are closed at once).
MAX_CONNECTIONS = 16


# -- families from existing counters -------------------------------------------------------------
def numbers(stats: Mapping[str, object]) -> dict[str, int | float]:
    """The numeric counters of a stats mapping (a nested breakdown, e.g. the DNS zones' ``by_type``
    keyed by whatever type a query named, is left out: its labels would not be bounded)."""
    return {k: v for k, v in stats.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def split_stats(role: str, stats: Mapping[str, int], *, layer: str = "core",
                drops: Family | None = None) -> tuple[Family, Family]:
    """A core's counters: ``drop_*`` keys into ``ntm_<role>_drops_total{layer, reason}`` (``drops``
    when given, to share the family with the data plane's), the rest into
    ``ntm_<role>_core_events_total{event}``."""
    if drops is None:
        drops = drops_family(role)
    events = counter_family(f"ntm_{role}_core_events", f"Counters of the {role}'s protocol core, by name",
                                 labels=["event"])
    for key, value in sorted(numbers(stats).items()):
        if key.startswith("drop_"):
            drops.add_metric([layer, key[5:]], value)
        else:
            events.add_metric([key], value)
    return drops, events


def drops_family(role: str) -> Family:
    return counter_family(f"ntm_{role}_drops", f"What the {role} counted and dropped, by layer and reason",
                               labels=["layer", "reason"])


def add_drops(drops: Family, layer: str, stats: Mapping[str, int], keys: Iterable[str]) -> None:
    for key in keys:
        if key in stats:
            drops.add_metric([layer, key], stats[key])


def counters_family(name: str, doc: str, label: str, stats: Mapping[str, int],
                    keys: Iterable[str] | None = None) -> Family:
    fam = counter_family(name, doc, labels=[label])
    nums = numbers(stats)
    for key in (sorted(nums) if keys is None else keys):
        if key in nums:
            fam.add_metric([key], nums[key])
    return fam


def gauge(name: str, doc: str, value: float) -> Family:
    return gauge_family(name, doc, value=value)


def counter(name: str, doc: str, value: float) -> Family:
    return counter_family(name, doc, value=value)


#: The data plane's drop counters (dataplane.udpio.UdpIo.stats; dataplane.forwarder.NodeForwarder.stats).
UDPIO_DROPS = ("rx_errors", "tx_dropped", "tx_errors")
FORWARDER_DROPS = ("tun_no_path", "rx_auth", "rx_malformed", "rx_unknown_path", "rx_spoofed", "rx_gso_unsupported",
                   "tun_write_dropped", "tun_write_errors", "tun_bad_vnet", "rx_chunk_unknown_source")


def udpio_families(role: str, stats: Mapping[str, int]) -> Iterator[Family]:
    yield counter(f"ntm_{role}_udp_rx_datagrams", "Datagrams the data plane read from its UDP sockets",
                  stats.get("rx_datagrams", 0))
    yield counter(f"ntm_{role}_udp_tx_datagrams", "Datagrams the data plane sent", stats.get("tx_datagrams", 0))
    yield counter(f"ntm_{role}_udp_gso_sends", "UDP_SEGMENT sends (one per GSO capsule train)",
                  stats.get("tx_gso_sends", 0))


class DriverCollector:
    """What every daemon's driver counts: datagrams, socket errors, handler errors by where."""

    def __init__(self, role: str, status: Callable[[], Mapping[str, object]],
                 errors: Callable[[], Mapping[str, int]]) -> None:
        self.role, self.status, self.errors = role, status, errors

    def collect(self) -> Iterator[Family]:
        st = self.status()
        yield counter(f"ntm_{self.role}_received_datagrams", "Datagrams read from the signalling sockets",
                      float(st.get("received", 0)))  # type: ignore[arg-type]
        yield counter(f"ntm_{self.role}_socket_errors", "Socket errors (ICMP errors and the like)",
                      float(st.get("socket_errors", 0)))  # type: ignore[arg-type]
        fam = counter_family(f"ntm_{self.role}_handler_errors", "Exceptions out of the daemon's handlers "
                                  "(counted, traceback logged once per kind), by where", labels=["where"])
        for where, n in sorted(self.errors().items()):
            fam.add_metric([where], n)
        yield fam


class Metrics:
    """One daemon's registry: its collectors and the series it counts from events."""

    def __init__(self, role: str, *, process: bool = True) -> None:
        self.role = role
        self.collectors: list[Callable[[], Iterable[Family]]] = []
        if process:  # ntm_process_resident_memory_bytes, CPU seconds, open fds (from /proc/self)
            self.collectors.append(process_families)
        self.scrapes = 0
        #: Seconds the latest scrape took (rendering on the daemon's loop).
        self.last_scrape_seconds = 0.0

    def add(self, collector: Any) -> None:
        """A collector: an object with ``collect()`` or a function, each giving families."""
        self.collectors.append(collector.collect if hasattr(collector, "collect") else collector)

    def counter(self, name: str, doc: str, labels: Iterable[str] = ()) -> Counter:
        c = Counter(f"ntm_{self.role}_{name}", doc, list(labels))
        self.add(c)
        return c

    def histogram(self, name: str, doc: str, labels: Iterable[str] = (),
                  buckets: tuple[float, ...] = LATENCY_BUCKETS) -> Histogram:
        h = Histogram(f"ntm_{self.role}_{name}", doc, list(labels), buckets=buckets)
        self.add(h)
        return h

    def render(self) -> bytes:
        t0 = time.perf_counter()
        out: list[str] = []
        for c in self.collectors:
            for fam in c():
                fam.render(out)
        out.append("")
        self.scrapes += 1
        self.last_scrape_seconds = time.perf_counter() - t0
        return "\n".join(out).encode()


class MetricsServer:
    """The ``/metrics`` endpoint on the daemon's loop (HTTP/1.0 semantics: one request, then close)."""

    def __init__(self, metrics: Metrics, on_error: Callable[[str, BaseException], None] | None = None) -> None:
        self.metrics = metrics
        self.on_error = on_error
        self.server: asyncio.Server | None = None
        self.open = 0
        self.refused = 0
        self.bad_requests = 0

    async def start(self, host: str, port: int) -> None:
        self.server = await asyncio.start_server(self._session, host, port, reuse_address=True,
                                                 limit=REQUEST_MAX)

    @property
    def address(self) -> tuple[str, int]:
        assert self.server is not None
        sockname = self.server.sockets[0].getsockname()
        return str(sockname[0]), int(sockname[1])

    def close(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.open >= MAX_CONNECTIONS:
            self.refused += 1
            writer.close()
            return
        self.open += 1
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
            parts = head.split(b"\r\n", 1)[0].split()
            if len(parts) != 3 or parts[0] not in (b"GET", b"HEAD"):
                self.bad_requests += 1
                await self._reply(writer, b"405 Method Not Allowed", b"text/plain", b"GET /metrics\n")
                return
            if parts[1].split(b"?", 1)[0] != b"/metrics":
                await self._reply(writer, b"404 Not Found", b"text/plain", b"see /metrics\n")
                return
            try:
                body = self.metrics.render()
            except Exception as exc:  # a collector bug: counted with the handler errors, never fatal
                if self.on_error is not None:
                    self.on_error("metrics scrape", exc)
                await self._reply(writer, b"500 Internal Server Error", b"text/plain", b"scrape failed\n")
                return
            await self._reply(writer, b"200 OK", CONTENT_TYPE.encode(), b"" if parts[0] == b"HEAD" else body)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
            self.bad_requests += 1
        finally:
            self.open -= 1
            writer.close()

    @staticmethod
    async def _reply(writer: asyncio.StreamWriter, status: bytes, ctype: bytes, body: bytes) -> None:
        writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: " + ctype + b"\r\nContent-Length: "
                     + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
        await writer.drain()


async def serve_metrics(listen: str, metrics: Metrics,
                        on_error: Callable[[str, BaseException], None] | None = None) -> MetricsServer | None:
    """Serve ``metrics`` on ``listen`` (host:port); None when ``listen`` is "" (off)."""
    where = parse_listen(listen)
    if where is None:
        return None
    srv = MetricsServer(metrics, on_error)
    await srv.start(*where)
    log.info("metrics on http://%s/metrics", listen)
    return srv


# -- the node ----------------------------------------------------------------------------------------
class NodeParts:
    """What the node's collector reads (the daemon's objects; the unit harness gives its own)."""

    def __init__(self, core: object, fwd: object, *, udpio: object | None = None, stub: object | None = None,
                 fallback: Mapping[str, int] | None = None, holds: Callable[[], int] | None = None) -> None:
        self.core, self.fwd, self.udpio, self.stub, self.fallback = core, fwd, udpio, stub, fallback
        self.holds = holds


def node_families(parts: NodeParts) -> Iterator[Family]:
    core: Any = parts.core
    fwd: Any = parts.fwd
    yield gauge("ntm_node_registered", "1 while the node is registered with its DC", 1 if core.registered else 0)
    paths = gauge_family("ntm_node_paths", "Paths of the node, by mode and state", labels=["mode", "state"])
    by: dict[tuple[str, str], int] = {}
    for p in core.paths():
        key = (str(p["mode"]), "established" if p["established"] else "establishing")
        by[key] = by.get(key, 0) + 1
    for (mode, state), n in sorted(by.items()):
        paths.add_metric([mode, state], n)
    yield paths
    totals = fwd.totals_by_mode()
    fams = {k: counter_family(f"ntm_node_{k}", doc, labels=["mode"]) for k, doc in (
        ("tx_packets", "Packets the data plane sealed toward peers, by path mode"),
        ("tx_bytes", "Inner bytes the data plane sealed toward peers, by path mode"),
        ("rx_packets", "Packets from peers written to the TUN, by path mode"),
        ("rx_bytes", "Inner bytes from peers written to the TUN, by path mode"))}
    for mode, counts in sorted(totals.items()):
        for fam, value in zip(fams.values(), counts, strict=True):
            fam.add_metric([mode], value)
    yield from fams.values()
    drops, events = split_stats("node", core.stats)
    add_drops(drops, "dataplane", fwd.stats, FORWARDER_DROPS)
    if parts.udpio is not None:
        add_drops(drops, "udp", parts.udpio.stats, UDPIO_DROPS)  # type: ignore[attr-defined]
    yield drops
    yield events
    yield counter("ntm_node_handovers", "Address changes the node announced (handovers)",
                  core.stats.get("handovers", 0))
    if parts.udpio is not None:
        yield from udpio_families("node", parts.udpio.stats)  # type: ignore[attr-defined]
    stub: Any = parts.stub
    if stub is not None:
        yield counter("ntm_node_dns_queries", "DNS queries the stub read", stub.received)
        yield counter("ntm_node_dns_refused", "DNS queries the stub dropped (over its limits)", stub.dropped)
        yield counter("ntm_node_dns_errors", "DNS queries whose handler failed", stub.errors)
        yield gauge("ntm_node_dns_pending", "DNS queries the stub is answering now (held or upstream)",
                    len(stub.tasks))
    if parts.holds is not None:
        yield counter("ntm_node_dns_holds", "DNS queries held until their tunnel was ready (or failed)", parts.holds())
    if parts.fallback is not None:
        yield counters_family("ntm_node_dns_fallbacks", "Lookups answered without the DC (dns_fallback), by outcome",
                              "outcome", parts.fallback)


# -- the relay ---------------------------------------------------------------------------------------
class RelayTotals:
    """Packets and bytes of the Relay Table entries that are gone, by mode, so that the running
    totals (live entries plus these) never go down."""

    def __init__(self) -> None:
        self.gone: dict[str, list[int]] = {}

    def retire(self, entry: Any) -> None:
        t = self.gone.setdefault(f"RS_{entry.rs_type.name}", [0, 0, 0, 0])
        t[0] += entry.packets_i2r
        t[1] += entry.bytes_i2r
        t[2] += entry.packets_r2i
        t[3] += entry.bytes_r2i

    def totals(self, entries: Iterable[Any]) -> dict[str, list[int]]:
        out = {mode: list(t) for mode, t in self.gone.items()}
        for e in entries:
            mode = f"RS_{e.rs_type.name}"  # RsType S / N: the path modes RS_S / RS_N
            t = out.get(mode)
            if t is None:
                t = out[mode] = [0, 0, 0, 0]
            t[0] += e.packets_i2r
            t[1] += e.bytes_i2r
            t[2] += e.packets_r2i
            t[3] += e.bytes_r2i
        return out


def rs_families(core: Any, totals: RelayTotals, *, fast: Any = None, udpio: Any = None,
                extra_drops: Mapping[str, int] | None = None) -> Iterator[Family]:
    table = core.table
    size = gauge_family("ntm_rs_relay_entries", "Relay Table entries, by mode", labels=["mode"])
    size.add_metric(["RS_S"], len(table.rs_s))
    size.add_metric(["RS_N"], len(table.paths) - len(table.rs_s))
    yield size
    yield gauge("ntm_rs_relay_entries_max", "The relay's max_paths", core.config.max_paths)
    fams = [counter_family(f"ntm_rs_relayed_{what}", f"{what.capitalize()} relayed, by mode and direction "
                                "(i2r: initiator or node to responder or general node)", labels=["mode", "direction"])
            for what in ("packets", "bytes")]
    for mode, (p_i2r, b_i2r, p_r2i, b_r2i) in sorted(totals.totals(table.paths.values()).items()):
        fams[0].add_metric([mode, "i2r"], p_i2r)
        fams[0].add_metric([mode, "r2i"], p_r2i)
        fams[1].add_metric([mode, "i2r"], b_i2r)
        fams[1].add_metric([mode, "r2i"], b_r2i)
    yield from fams
    yield counter("ntm_rs_kernel_forwarded_packets", "RS-S packets the kernel fast path forwarded (their share of "
                  "ntm_rs_relayed_packets_total{mode=\"RS_S\"} is the fast-path share)",
                  core.stats.get("kernel_forwarded", 0))
    if fast is not None:
        yield gauge("ntm_rs_fast_path_enabled", "1 while the kernel fast path is on", 1 if fast.enabled else 0)
        yield gauge("ntm_rs_fast_paths", "RS-S paths the kernel forwards now", len(fast.table.paths))
        yield counters_family("ntm_rs_fast_path_events", "Fast-path promotions, demotions, errors", "event",
                              fast.stats)
    drops, events = split_stats("rs", core.stats)
    if udpio is not None:
        add_drops(drops, "udp", udpio.stats, UDPIO_DROPS)
    if extra_drops:
        add_drops(drops, "dataplane", extra_drops, sorted(extra_drops))
    yield drops
    yield events
    if udpio is not None:
        yield from udpio_families("rs", udpio.stats)


# -- the DC --------------------------------------------------------------------------------------------
def dc_families(core: Any, *, zones: Iterable[Any] = (), servers: Iterable[Any] = (), cache: Any = None,
                errors: Mapping[str, int] | None = None) -> Iterator[Family]:
    yield gauge("ntm_dc_sessions", "Registered sessions (nodes and relays)", core.session_count())
    yield gauge("ntm_dc_relays", "Live relays", len(core.relays()))
    yield gauge("ntm_dc_paths", "Paths in the DC's path table", len(core.paths))
    drops, events = split_stats("dc", core.stats)
    yield drops
    yield events
    dns = counter_family("ntm_dc_dns_responses", "The authoritative zones' answers, by zone and kind",
                              labels=["zone", "kind"])
    for z in zones:
        for kind, n in sorted(numbers(vars(z.stats)).items()):
            dns.add_metric([z.origin.to_text(), kind], n)
    yield dns
    srv = counter_family("ntm_dc_dns_server", "The DNS servers' counters, by listener and kind",
                              labels=["listener", "kind"])
    for s in servers:
        for kind, n in sorted(numbers(vars(s.stats)).items()):
            srv.add_metric([f"{s.host}:{s.port}", kind], n)
    yield srv
    if cache is not None:
        yield gauge("ntm_dc_discovery_cache_entries", "Entries in the discovery cache", len(cache))
        yield counter("ntm_dc_discovery_cache_hits", "Discovery cache hits", cache.stats.hits)
        yield counter("ntm_dc_discovery_cache_misses", "Discovery cache misses", cache.stats.misses)
    if errors:
        yield counters_family("ntm_dc_store_errors", "Registry commit and checkpoint failures", "kind", errors)


async def open_metrics(listen: str, metrics: Metrics, errors: Any) -> tuple[MetricsServer | None, str | None]:
    """A daemon's endpoint with its driver's collector (``errors``: its HandlerErrors). What cannot
    listen is a warning in the log and the status (the error text), never a daemon that stops."""
    try:
        return await serve_metrics(listen, metrics, errors.record), None
    except OSError as exc:
        error = f"no metrics endpoint on {listen}: {exc.strerror or exc}"
        log.warning("%s (set metrics = \"host:port\", or \"\" for none)", error)
        return None, error


def metrics_status(listen: str, metrics: Metrics, server: MetricsServer | None, error: str | None) -> dict[str, Any]:
    """The ``metrics`` part of a daemon's status."""
    return {"listen": listen or None, "serving": server is not None, "error": error, "scrapes": metrics.scrapes}
