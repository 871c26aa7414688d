"""`ntm bench setup`: path set-up latency as the application sees it.

The time from an application's DNS query (sent to the node's DNS stub, 127.0.0.153, inside mn's
namespace) to its answer. The stub holds the answer until the tunnel is ready, so this is the
whole set-up: Direction Request, the DC's DNS discovery, relay or peer-DC coordination, Route
Direction(s) and the Tunnel Request/Response.

Cases (lab `nat`; the lab resolver is warmed with the zones' NS/TXT first, as a running resolver
would be):

- **gn** (RS-N): N different names under gn.example (``s1`` .. ``sN``, added to the DNSgn zone; all
  resolve to the one GN, so after the first name the DC reuses the RS-N path and refreshes it at
  the relay; discovery and the whole signalling exchange still run per name);
- **ntm-direct-local**: mn (behind NAT A, port-restricted) to gl.a.example (global, same DC);
- **ntm-rs-s**: mn to cn.b.example (both behind port-restricted NATs; two DCs, RS-S first; with NAT
  traversal, on by default, the path is then punched to DIRECT: each sample also waits for that and
  records the time to direct, the node's own figure from the path's creation);
- **ntm-direct**: mn to cn.b.example with NAT B one-to-one (two DCs, direct; a second lab);
- **ntm-symmetric**: mn behind a symmetric NAT A to cn.b.example behind port-restricted NAT B (RS-S,
  a punch is offered and fails, the path stays relayed; a third lab).

Per NAT pair the report gives the initial mode, the final mode (10 s after the answer at the most)
and the time to first reply and to direct (median, p90).

A node keeps one path per peer name, so every NTM-peer sample restarts mn's node daemon first
(and waits for its registration and NAT classification); the sample is the first lookup after it.

``python -m ntmobile.bench.setup query NAME...`` is the timing client run inside mn's namespace.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .calibration import calibration_markdown, host_calibration

if TYPE_CHECKING:
    from ntmobile.lab.topology import NatProfile

#: The node's DNS stub: NodeSettings.dns_listen's default (this client imports no ntmobile code, to start fast).
STUB = "127.0.0.153"
NTM = [sys.executable, "-m", "ntmobile"]
CASES = ("gn", "ntm-direct-local", "nebula", "ntm-rs-s", "ntm-direct", "ntm-symmetric")
#: The NTM-peer cases' NAT pairs (mn's NAT A, the peer's side) and expected modes (initial, final).
NAT_PAIRS = {"ntm-direct-local": ("port_restricted", "global", "DIRECT", "DIRECT"),
             "ntm-rs-s": ("port_restricted", "port_restricted", "RS_S", "DIRECT"),
             "ntm-direct": ("port_restricted", "one_to_one", "DIRECT", "DIRECT"),
             "ntm-symmetric": ("symmetric", "port_restricted", "RS_S", "RS_S")}
#: How long a sample waits for its path's final mode (a punch starts 0.25 s after the direction and
#: is tried for 3 s).
FINAL_WAIT = 10.0
#: The issue-4 target for the set-up time (p50, lab).
TARGET_P50_MS = 10.0


# -- the timing client (runs in the lab) ----------------------------------------------------------------


def _echo(ip: str, timeout: float, retry: float = 0.2, sock: Any = None, t0: float | None = None) -> float | None:
    """Time (s, monotonic) of the first ICMP echo reply from ``ip`` (raw socket: the lab runs as root);
    an echo is resent every ``retry`` s until one is answered or ``timeout`` passes. ``sock``: a raw
    ICMP socket opened before the clock started (as an application holds its sockets), else one is
    opened here."""
    import os
    import select
    import socket
    import struct

    ident = os.getpid() & 0xFFFF
    s = sock if sock is not None else socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    try:
        deadline = (t0 if t0 is not None else time.monotonic()) + timeout
        seq, next_send = 0, 0.0
        while (now := time.monotonic()) < deadline:
            if now >= next_send:
                seq += 1
                body = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + b"ntm-bench-setup!"
                csum = _checksum(body)
                s.sendto(body[:2] + struct.pack("!H", csum) + body[4:], (ip, 0))
                next_send = now + retry
            r, _, _ = select.select([s], [], [], max(0.0, min(next_send, deadline) - time.monotonic()))
            if r:
                pkt, addr = s.recvfrom(2048)
                ihl = (pkt[0] & 0x0F) * 4
                if addr[0] == ip and len(pkt) >= ihl + 8 and pkt[ihl] == 0 and \
                        struct.unpack("!H", pkt[ihl + 4:ihl + 6])[0] == ident:
                    return time.monotonic()
    finally:
        if sock is None:
            s.close()
    return None


def _checksum(b: bytes) -> int:
    if len(b) % 2:
        b += b"\0"
    total = sum(int.from_bytes(b[i:i + 2], "big") for i in range(0, len(b), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _skip_name(msg: bytes, i: int) -> int:
    """Offset just past the (possibly compressed) DNS name at ``i``."""
    while True:
        n = msg[i]
        if n == 0:
            return i + 1
        if n & 0xC0 == 0xC0:
            return i + 2
        i += 1 + n


def first_a(msg: bytes) -> tuple[int, str | None]:
    """(rcode, first A record's address or None) of a DNS response, read the way a C stub resolver
    reads it (header, skip the question, walk the answer section); ValueError if it is malformed."""
    import socket
    import struct

    try:
        _id, flags, qd, an, _ns, _ar = struct.unpack_from("!6H", msg)
        i = 12
        for _ in range(qd):
            i = _skip_name(msg, i) + 4
        for _ in range(an):
            i = _skip_name(msg, i)
            rtype, _cls, _ttl, rdlen = struct.unpack_from("!HHIH", msg, i)
            i += 10
            if rtype == 1 and rdlen == 4:
                return flags & 0x0F, socket.inet_ntoa(msg[i:i + 4])
            i += rdlen
        return flags & 0x0F, None
    except (IndexError, struct.error) as exc:
        raise ValueError(f"malformed DNS response: {exc}") from exc


def _query(names: Sequence[str], timeout: float, echo: bool = False) -> list[dict[str, Any]]:
    """Time each name's A query to the stub and (``echo``) the first ICMP echo to its answer. Like a C
    application (glibc's stub resolver, then ping): the query is encoded and both sockets are open
    before the clock starts, and the answer is read with a plain wire walk, so the figure is the
    system's, not this Python client's (dnspython's encode and parse took ~0.5 ms per sample)."""
    import socket

    import dns.message
    import dns.rcode
    import dns.rdatatype

    out = []
    for name in names:
        wire = dns.message.make_query(name, dns.rdatatype.A).to_wire()
        us = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        us.connect((STUB, 53))
        us.settimeout(timeout)
        raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) if echo else None
        t0 = time.monotonic()
        try:
            us.send(wire)
            while True:
                resp = us.recv(4096)
                if resp[:2] == wire[:2]:
                    break
            t1 = time.monotonic()
            rc, addr = first_a(resp)
            res: dict[str, Any] = {"name": name, "ms": (t1 - t0) * 1000,
                                   "rcode": dns.rcode.to_text(dns.rcode.Rcode(rc)),
                                   "answer": [addr] if addr else [], "t0": t0, "t_answer": t1}
            if echo and addr:
                t2 = _echo(addr, timeout, sock=raw)
                res["first_reply_ms"] = (t2 - t0) * 1000 if t2 is not None else None
                res["echo_ms"] = (t2 - t1) * 1000 if t2 is not None else None
            out.append(res)
        except Exception as exc:  # a timeout is a result too
            out.append({"name": name, "ms": (time.monotonic() - t0) * 1000, "rcode": type(exc).__name__,
                        "answer": [], "t0": t0})
        finally:
            us.close()
            if raw is not None:
                raw.close()
    return out


def _first_contact(ip: str, timeout: float) -> dict[str, Any]:
    """First packet (an ICMP echo) to ``ip`` until its first reply (Nebula: no name to look up); the
    raw socket is opened before the clock starts, as for the NTM cases."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as raw:
        t0 = time.monotonic()
        t1 = _echo(ip, timeout, sock=raw, t0=t0)
    return {"ip": ip, "ms": (t1 - t0) * 1000 if t1 is not None else None, "t0": t0}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ntmobile.bench.setup")
    sub = ap.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("query", help="time A queries to the node's DNS stub; JSON lines on stdout")
    q.add_argument("names", nargs="+")
    q.add_argument("--timeout", type=float, default=8.0)
    q.add_argument("--echo", action="store_true", help="then time an ICMP echo to the answer (first reply)")
    e = sub.add_parser("echo", help="time the first ICMP echo reply from an address; JSON on stdout")
    e.add_argument("ip")
    e.add_argument("--timeout", type=float, default=5.0)
    args = ap.parse_args(argv)
    if args.cmd == "echo":
        print(json.dumps(_first_contact(args.ip, args.timeout)))
    else:
        print(json.dumps(_query(args.names, args.timeout, args.echo)))
    return 0


# -- the bench ------------------------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(p / 100 * len(s) + 0.5)) - 1))
    return s[k]


def gn_topology(names: int) -> Any:
    from ntmobile.lab import load_topology

    topo = load_topology("nat")
    data = topo.model_dump()
    for z in data["dns"]["zones"]:
        if z["zone"] == "gn.example":
            z["records"] = list(z["records"]) + [f"s{i} A 192.0.2.40" for i in range(1, names + 1)]
    return type(topo).model_validate(data)


def _status(lab: Any, host: str, *args: str) -> dict[str, Any]:
    cp = lab.exec(host, [*NTM, *args, "--json"], check=False, timeout=15)
    try:
        return json.loads(cp.stdout) if cp.returncode == 0 else {}
    except json.JSONDecodeError:
        return {}


def _wait(pred: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _warm_resolver(lab: Any) -> None:
    resolver = lab.resolvers()[0]
    for zone in ("a.example", "b.example", "gn.example"):
        for rtype in ("NS", "TXT"):
            lab.exec("gn", ["dig", "+tries=3", "+time=3", f"@{resolver}", rtype, zone], check=False, timeout=30)


def _classified(lab: Any, dc: str, name: str) -> bool:
    for s in _status(lab, dc, "dc", "status").get("sessions", []):
        if s.get("name") == name:
            return s.get("nat_class") not in (None, "NAT")
    return False


def _query_in(lab: Any, names: Sequence[str], echo: bool = False) -> list[dict[str, Any]]:
    cp = lab.exec("mn", [sys.executable, "-m", "ntmobile.bench.setup", "query", *names, *(["--echo"] if echo else [])],
                  timeout=30 + 10 * len(names))
    return json.loads(cp.stdout)  # type: ignore[no-any-return]


#: Daemons whose debug timing trace (runtime.trace) goes into a sample's timeline: (host, status command).
TRACED = (("mn", ("status",)), ("dca", ("dc", "status")), ("dcb", ("dc", "status")), ("gl", ("status",)),
          ("cn", ("status",)), ("rs1", ("rs", "status")), ("rs2", ("rs", "status")))


def timeline(lab: Any, t0: float, t1: float) -> list[dict[str, Any]]:
    """The marks of every traced daemon between monotonic times ``t0`` and ``t1``, in time order, with
    their offset from ``t0`` in ms (CLOCK_MONOTONIC is one clock for all the lab's namespaces)."""
    out = []
    hosts = {h.name for h in lab.topology.hosts}
    for host, cmd in TRACED:
        if host not in hosts:
            continue
        for m in _status(lab, host, *cmd).get("trace", []):
            if t0 - 0.0005 <= m["t"] <= t1 + 0.0005:
                out.append({"host": host, "ms": round((m["t"] - t0) * 1000, 3),
                            **{k: v for k, v in m.items() if k != "t"}})
    return sorted(out, key=lambda m: m["ms"])


def _label(m: dict[str, Any]) -> str:
    return f"{m['host']} {m['what']}" + (f" {m['type']}" if "type" in m else "") + (
        f" ({m['ms_']} ms)" if "ms_" in m else "")


def timeline_lines(tl: list[dict[str, Any]], total_ms: float | None = None) -> list[str]:
    lines, prev = [], 0.0
    for m in tl:
        extra = " ".join(f"{k}={v}" for k, v in m.items() if k not in ("host", "ms", "what", "type"))
        lines.append(f"    {m['ms']:8.2f} ms (+{m['ms'] - prev:6.2f})  {m['host']:4} {m['what']:11} "
                     f"{m.get('type', '')} {extra}".rstrip())
        prev = m["ms"]
    if total_ms is not None:
        lines.append(f"    {total_ms:8.2f} ms (+{total_ms - prev:6.2f})  client first reply")
    return lines


def _restart_node(lab: Any, host: str = "mn") -> dict[str, float]:
    """Restart the node daemon (a fresh node has no paths); returns how long each step took."""
    t0 = time.monotonic()
    rec = next(r for r in lab.state.processes if r.host == host and r.name == "node")
    lab.stop(rec)
    t1 = time.monotonic()
    lab.spawn(host, rec.argv, "node")
    _wait(lambda: _status(lab, host, "status").get("registered"), 20, f"{host} registered")
    t2 = time.monotonic()
    _wait(lambda: _classified(lab, "dca", "mn.a.example"), 10, "mn's NAT classified")
    return {"stop_s": t1 - t0, "start_s": t2 - t1, "classified_s": time.monotonic() - t2}


def _path(lab: Any, fqdn: str) -> dict[str, Any] | None:
    paths = [p for p in _status(lab, "mn", "status").get("paths", []) if p.get("peer") == fqdn]
    return paths[0] if paths else None


def _final(lab: Any, fqdn: str, final: str) -> tuple[str | None, float | None]:
    """mn's path to ``fqdn`` once it reached mode ``final`` (or after FINAL_WAIT): its mode and the
    node's time to direct (s from the path's creation; None if never punched)."""
    deadline = time.monotonic() + FINAL_WAIT
    while True:
        p = _path(lab, fqdn) or {}
        ttd = (p.get("traversal") or {}).get("time_to_direct")
        if p.get("mode") == final or time.monotonic() > deadline:
            return p.get("mode"), ttd
        time.sleep(0.1)


def _initial_mode(tl: list[dict[str, Any]]) -> str | None:
    """The mode mn's path had when it became ready (its trace mark), before any punch."""
    return next((m.get("mode") for m in tl if m["host"] == "mn" and m["what"] == "path-ready"), None)


def _peer_samples(lab: Any, fqdn: str, case: str, n: int, log: Callable[[str], None]) -> list[dict[str, Any]]:
    _nat, _peer, mode, final = NAT_PAIRS[case]
    out = []
    for i in range(n):
        steps = _restart_node(lab)
        [r] = _query_in(lab, [fqdn], echo=True)
        r["restart"] = steps
        if "t0" in r:
            end = r["t0"] + (r.get("first_reply_ms") or r["ms"]) / 1000
            r["timeline"] = timeline(lab, r["t0"], end)
        first = _path(lab, fqdn)
        r["initial_mode"] = _initial_mode(r.get("timeline", [])) or (first or {}).get("mode")
        r["mode"], ttd = _final(lab, fqdn, final)
        r["time_to_direct_ms"] = None if ttd is None else ttd * 1000
        r["ok"] = (r["rcode"] == "NOERROR" and bool(r["answer"]) and r["initial_mode"] == mode
                   and r["mode"] == final)
        out.append(r)
        fr = r.get("first_reply_ms")
        log(f"  {fqdn} #{i + 1}: answer {r['ms']:.1f} ms, first reply "
            + (f"{fr:.1f} ms" if fr is not None else "none") + f" {r['rcode']} {r['initial_mode']} -> {r['mode']}"
            + (f" (direct after {ttd * 1000:.0f} ms)" if ttd is not None and mode != "DIRECT" else "")
            + " (node restart: " + ", ".join(f"{k} {v:.1f}" for k, v in steps.items()) + ")")
        if r.get("timeline") and i == 0:
            for line in timeline_lines(r["timeline"], fr):
                log(line)
    return out


def summarize(samples: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [s["ms"] for s in samples if s.get("ok")]
    out = {"n": len(samples), "ok": len(ok), "p50_ms": percentile(ok, 50), "p95_ms": percentile(ok, 95),
           "min_ms": min(ok) if ok else float("nan"), "max_ms": max(ok) if ok else float("nan"),
           "mean_ms": statistics.fmean(ok) if ok else float("nan")}
    first = [s["first_reply_ms"] for s in samples if s.get("ok") and s.get("first_reply_ms") is not None]
    if first:
        out |= {"first_reply_p50_ms": percentile(first, 50), "first_reply_p90_ms": percentile(first, 90),
                "first_reply_p95_ms": percentile(first, 95), "first_reply_max_ms": max(first)}
    ttd = [s["time_to_direct_ms"] for s in samples if s.get("ok") and s.get("time_to_direct_ms") is not None]
    if ttd:
        out |= {"time_to_direct_p50_ms": percentile(ttd, 50), "time_to_direct_p90_ms": percentile(ttd, 90)}
    return out


# -- Nebula's first contact ---------------------------------------------------------------------------

#: Nebula for the first-contact case: rs1 the lighthouse (so that gl is a peer mn never contacted).
NEB_IPS = {"rs1": "10.98.0.1", "mn": "10.98.0.2", "gl": "10.98.0.3"}
NEB_PORT = 4243


def start_nebula(lab: Any, workdir: Path, ips: dict[str, str] | None = None, *, port: int = NEB_PORT,
                 name: str = "nebula-setup", dev: str = "nbs") -> dict[str, Any]:
    """Nebula 1.6 on ``ips``' hosts (default NEB_IPS: rs1 the lighthouse, mn and gl; the first host is
    the lighthouse), certificates by nebula-cert in ``workdir``/``name``; waits until every other host
    reaches the lighthouse through it; returns the process records by host. (``ntm bench handover``
    uses it too, with cn for gl.)"""
    import subprocess

    from .throughput import NEBULA_NEVER, _ifname

    ips = ips or NEB_IPS
    lighthouse = next(iter(ips))
    d = workdir / name
    d.mkdir(parents=True, exist_ok=True)
    ca_crt, ca_key = d / "ca.crt", d / "ca.key"
    subprocess.run(["nebula-cert", "ca", "-name", f"ntm-{name}-{lab.prefix}", "-out-crt", str(ca_crt),
                    "-out-key", str(ca_key)], capture_output=True, check=True)
    lh = lab.addr(lighthouse, 4)
    recs = {}
    for host, ip in ips.items():
        crt, key = d / f"{host}.crt", d / f"{host}.key"
        subprocess.run(["nebula-cert", "sign", "-ca-crt", str(ca_crt), "-ca-key", str(ca_key), "-name", host,
                        "-ip", f"{ip}/24", "-out-crt", str(crt), "-out-key", str(key)], capture_output=True, check=True)
        any_rule = [{"port": "any", "proto": "any", "host": "any"}]
        conf = {
            "pki": {"ca": str(ca_crt), "cert": str(crt), "key": str(key)},
            "static_host_map": {} if host == lighthouse else {ips[lighthouse]: [f"{lh}:{port}"]},
            "lighthouse": {"am_lighthouse": host == lighthouse, "interval": 60,
                           "hosts": [] if host == lighthouse else [ips[lighthouse]],
                           "local_allow_list": {"interfaces": {"ntm.*": False}, **NEBULA_NEVER},
                           "remote_allow_list": dict(NEBULA_NEVER)},
            "listen": {"host": "0.0.0.0", "port": port},
            "punchy": {"punch": True},
            "tun": {"dev": _ifname(lab.prefix, dev, host[0]), "mtu": 1400},
            "firewall": {"outbound": any_rule, "inbound": any_rule},
            "logging": {"level": "info"},
        }
        cfg = d / f"{host}.yml"
        cfg.write_text(json.dumps(conf, indent=1) + "\n")  # JSON is YAML
        recs[host] = lab.spawn(host, ["nebula", "-config", str(cfg)], f"{name}-{host}")

    def reaches(host: str) -> Callable[[], bool]:
        return lambda: _echo_in(lab, host, ips[lighthouse], 1.0).get("ms") is not None

    for host in ips:
        if host != lighthouse:
            _wait(reaches(host), 20, f"Nebula {host} -> lighthouse")
    return recs


def _echo_in(lab: Any, host: str, ip: str, timeout: float) -> dict[str, Any]:
    cp = lab.exec(host, [sys.executable, "-m", "ntmobile.bench.setup", "echo", ip, "--timeout", str(timeout)],
                  check=False, timeout=timeout + 20)
    try:
        return json.loads(cp.stdout) if cp.returncode == 0 else {}
    except json.JSONDecodeError:
        return {}


def _nebula_samples(lab: Any, recs: dict[str, Any], n: int, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Per sample: restart mn's Nebula (no tunnel but to the lighthouse, which it reaches first), then
    time the first packet to gl's Nebula address until its reply (handshake through the lighthouse's
    answer included)."""
    out = []
    rec = recs["mn"]
    for i in range(n):
        lab.stop(rec)
        rec = lab.spawn("mn", rec.argv, rec.name)
        _wait(lambda: _echo_in(lab, "mn", NEB_IPS["rs1"], 1.0).get("ms") is not None, 20, "Nebula mn -> lighthouse")
        r = _echo_in(lab, "mn", NEB_IPS["gl"], 5.0)
        r["ok"] = r.get("ms") is not None
        out.append(r)
        log(f"  nebula mn -> gl #{i + 1}: first reply " + (f"{r['ms']:.1f} ms" if r["ok"] else "none"))
    recs["mn"] = rec
    return out


def run_bench(*, names: int, peers: int, cases: Sequence[str], prefix: str, out_dir: Path,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    from ntmobile.lab import Lab

    report: dict[str, Any] = {"names": names, "peer_samples": peers, "cases": {}, "target_p50_ms": TARGET_P50_MS,
                              "started": time.time()}
    import os

    from ntmobile.runtime.trace import ENV as TRACE_ENV

    os.environ[TRACE_ENV] = "1"  # the lab's daemons keep the debug timing trace (the samples' timelines)
    first = [c for c in cases if c not in ("ntm-direct", "ntm-symmetric")]
    if first:
        topo = gn_topology(names)
        lab = Lab.up(topo, prefix=prefix, bare=False)
        try:
            _wait(lambda: _status(lab, "mn", "status").get("registered"), 20, "mn registered")
            _wait(lambda: _classified(lab, "dca", "mn.a.example"), 10, "mn's NAT classified")
            _warm_resolver(lab)
            if "gn" in cases:
                log(f"gn: {names} names under gn.example")
                res = _query_in(lab, [f"s{i}.gn.example" for i in range(1, names + 1)])
                for r in res:
                    r["ok"] = r["rcode"] == "NOERROR" and bool(r["answer"])
                report["cases"]["gn"] = {"samples": res, **summarize(res)}
            if "ntm-direct-local" in cases:
                log("ntm-direct-local: mn -> gl.a.example")
                res = _peer_samples(lab, "gl.a.example", "ntm-direct-local", peers, log)
                report["cases"]["ntm-direct-local"] = {"samples": res, **summarize(res)}
            if "nebula" in cases:
                log("nebula: mn -> gl (lighthouse on rs1), first packet -> first reply")
                recs = start_nebula(lab, out_dir)
                res = _nebula_samples(lab, recs, peers, log)
                report["cases"]["nebula"] = {"samples": res, **summarize(res)}
                for rec in recs.values():
                    lab.stop(rec)
            if "ntm-rs-s" in cases:
                log("ntm-rs-s: mn -> cn.b.example")
                res = _peer_samples(lab, "cn.b.example", "ntm-rs-s", peers, log)
                report["cases"]["ntm-rs-s"] = {"samples": res, **summarize(res)}
        finally:
            lab.down()
    from ntmobile.lab import load_topology

    labs: tuple[tuple[str, str, NatProfile], ...] = (("ntm-direct", "natb", "one_to_one"),
                                                      ("ntm-symmetric", "nata", "symmetric"))
    for case, nat, profile in labs:
        if case in cases:
            _other_lab(load_topology("nat").with_nat(nat, profile), case, f"{nat} {profile}", peers, prefix,
                       report, log)
    report["ratios"] = ratios(report)
    report["calibration"] = host_calibration()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench-setup.json").write_text(json.dumps(report, indent=2))
    (out_dir / "bench-setup.md").write_text(to_markdown(report) + "\n" + calibration_markdown(report["calibration"]))
    return report


def _other_lab(topo: Any, case: str, what: str, peers: int, prefix: str, report: dict[str, Any],
               log: Callable[[str], None]) -> None:
    """One NTM-peer case mn -> cn.b.example in a lab of its own (another NAT profile)."""
    from ntmobile.lab import Lab

    lab = Lab.up(topo, prefix=prefix, bare=False)
    try:
        _wait(lambda: _status(lab, "mn", "status").get("registered"), 20, "mn registered")
        _warm_resolver(lab)
        log(f"{case}: mn -> cn.b.example ({what})")
        res = _peer_samples(lab, "cn.b.example", case, peers, log)
        report["cases"][case] = {"samples": res, **summarize(res)}
    finally:
        lab.down()


#: The issue-21 target: name -> first reply to a global NTM peer (cached discovery), p50.
TARGET_FIRST_REPLY_MS = 5.0


def ratios(report: dict[str, Any]) -> dict[str, float]:
    """ntmobile's name -> first reply over Nebula's first packet -> first reply (same lab, same run)."""
    cases = report["cases"]
    neb = cases.get("nebula", {}).get("p50_ms")
    out = {}
    for case in ("ntm-direct-local", "ntm-direct", "ntm-rs-s"):
        fr = cases.get(case, {}).get("first_reply_p50_ms")
        if fr is not None and neb:
            out[f"{case}/nebula"] = fr / neb
    return out


def to_markdown(report: dict[str, Any]) -> str:
    lines = ["# Path set-up time from the application's DNS query to its answer (lab `nat`)", "",
             f"Targets: p50 <= {report['target_p50_ms']:.0f} ms to the answer (issue 4); name -> first reply to a "
             f"global NTM peer p50 <= {TARGET_FIRST_REPLY_MS:.0f} ms and below Nebula's first contact (issue 21). "
             f"GN: {report['names']} names; NTM peers and Nebula: {report['peer_samples']} fresh set-ups each "
             "(the daemon restarted before each). First reply: an ICMP echo to the answer, sent when the "
             "answer arrives (Nebula: the first packet to a peer never contacted, whose handshake goes through "
             "the lighthouse on rs1).", "",
             "| case | samples ok / n | answer p50 ms | p95 ms | min ms | max ms | first reply p50 ms | p95 ms |",
             "|---|---|---|---|---|---|---|---|"]
    for case in CASES:
        c = report["cases"].get(case)
        if c is None:
            continue
        fr = (f"{c['first_reply_p50_ms']:.1f} | {c['first_reply_p95_ms']:.1f}" if "first_reply_p50_ms" in c
              else (f"{c['p50_ms']:.1f} | {c['p95_ms']:.1f}" if case == "nebula" else "- | -"))
        if case == "nebula":
            lines.append(f"| nebula (first packet) | {c['ok']} / {c['n']} | - | - | - | - | {fr} |")
            continue
        lines.append(f"| {case} | {c['ok']} / {c['n']} | {c['p50_ms']:.1f} | {c['p95_ms']:.1f} | "
                     f"{c['min_ms']:.1f} | {c['max_ms']:.1f} | {fr} |")
    if report.get("ratios"):
        lines += ["", "| ratio (first reply p50, same run) | value |", "|---|---|"]
        lines += [f"| {k} | {v:.2f} |" for k, v in report["ratios"].items()]
    pairs = [c for c in NAT_PAIRS if c in report["cases"]]
    if pairs:
        lines += ["", "Per NAT pair (mn's NAT, the peer's side): initial and final mode (expected; samples that "
                  "matched), name -> first reply and time to direct (the node's figure from the path's creation), "
                  "ms:", "",
                  "| case | NAT pair | initial -> final | ok / n | first reply p50 | p90 | to direct p50 | p90 |",
                  "|---|---|---|---|---|---|---|---|"]
        for case in pairs:
            c = report["cases"][case]
            nat, peer, mode, final = NAT_PAIRS[case]

            def f(key: str, c: dict[str, Any] = c) -> str:
                return f"{c[key]:.1f}" if key in c else "-"
            lines.append(f"| {case} | {nat} / {peer} | {mode} -> {final} | {c['ok']} / {c['n']} | "
                         f"{f('first_reply_p50_ms')} | {f('first_reply_p90_ms')} | {f('time_to_direct_p50_ms')} | "
                         f"{f('time_to_direct_p90_ms')} |")
    for case in ("ntm-direct-local", "ntm-direct", "ntm-rs-s"):
        c = report["cases"].get(case)
        tl = next((smp["timeline"] for smp in (c or {}).get("samples", []) if smp.get("timeline")), None)
        if tl:
            smp = next(smp for smp in c["samples"] if smp.get("timeline"))
            lines += ["", f"Timeline of the first {case} sample (ms from the query; NTM_TRACE marks):", "", "```",
                      *timeline_lines(tl, smp.get("first_reply_ms")), "```"]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
