"""`ntm bench handover`: how long a move between networks interrupts traffic through the tunnel.

In the `handover` lab a probe sender in mn's namespace sends one UDP datagram every 10 ms through
the tunnel (to the GN's VIP via RS-N; to cn's VIP for an NTM-peer path); a receiver on the far host
timestamps each probe and echoes it. The bench moves mn between `neta` (behind NAT A), `netb`
(behind NAT B) and `global`, N times per path type, and per move reports:

- **gap**: from the new address being configured (`lab.move` returned: flush, new address and
  default route are one `ip -batch`) to the first probe *sent after that moment* that the receiver
  got (receiver-side timestamp; all namespaces share the machine's clock);
- **echo gap**: the same until the first echo of such a probe is back at mn (both directions work);
- **lost**: probes sent between the start of the move and the next move that never arrived;
- **detect**: when the node daemon noticed the change (netlink), relative to the same moment.

Alongside the probes a rate-limited TCP download of the GN's 32 MiB file runs across all moves and
its sha256 is checked (RS-N): every TCP connection must survive.

``python -m ntmobile.bench.handover send|recv ...`` are the probe programs the bench starts inside
the lab's namespaces.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import json
import os
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .calibration import calibration_markdown, host_calibration

PROBE = struct.Struct("!Id")  # sequence number, send time (time.time())
PROBE_PORT = 7399
INTERVAL = 0.01
#: Where mn goes, cycling: NAT A -> NAT B -> global -> NAT A ...
CYCLE = ("netb", "global", "neta")
#: How long traffic must flow again after a move before the next one.
DWELL = 0.6
#: A move whose probes do not come back within this is recorded as a failure.
RECOVERY_DEADLINE = 15.0


# -- the probe programs (run inside lab namespaces) -------------------------------------------------------


def _sender(target: str, port: int, interval: float, out: Path, resolve_timeout: float) -> int:
    deadline = time.monotonic() + resolve_timeout
    dest: str | None = None
    while dest is None:
        try:
            dest = str(socket.getaddrinfo(target, port, socket.AF_INET, socket.SOCK_DGRAM)[0][4][0])
        except OSError:
            if time.monotonic() > deadline:
                print(f"cannot resolve {target}", file=sys.stderr)
                return 2
            time.sleep(0.2)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    stop = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    seq = 0
    nxt = time.monotonic()
    with open(out, "w", buffering=1) as f:
        f.write(json.dumps({"dest": dest}) + "\n")
        while not stop:
            now = time.monotonic()
            if now >= nxt:
                seq += 1
                ts = time.time()
                ok = True
                try:
                    sock.sendto(PROBE.pack(seq, ts) + bytes(32), (dest, port))
                except OSError:
                    ok = False  # e.g. no route for a moment during the move
                f.write(f"S {seq} {ts:.6f} {int(ok)}\n")
                nxt += interval
                if nxt < now:
                    nxt = now + interval
            while True:
                try:
                    data = sock.recv(2048)
                except OSError:
                    break
                if len(data) >= PROBE.size:
                    f.write(f"E {PROBE.unpack_from(data)[0]} {time.time():.6f}\n")
            time.sleep(max(0.0, min(0.002, nxt - time.monotonic())))
    return 0


def _receiver(port: int, out: Path) -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", port))
    signal.signal(signal.SIGTERM, lambda s, f: sys.exit(0))
    with open(out, "w", buffering=1) as f:
        while True:
            data, src = sock.recvfrom(2048)
            t = time.time()
            if len(data) < PROBE.size:
                continue
            seq, sent = PROBE.unpack_from(data)
            f.write(f"R {seq} {sent:.6f} {t:.6f}\n")
            with contextlib.suppress(OSError):
                sock.sendto(data, src)


def _fetch(url: str, rate: int, out: Path, rcvbuf: int = 1 << 17) -> int:
    """HTTP/1.0 GET of ``url`` read at a steady ``rate`` (bytes/s) through a small receive buffer, so
    the TCP connection carries data the whole time (curl's --limit-rate reads in bursts and lets the
    window close for seconds). The body goes to ``out`` as it arrives; prints its sha256 at the end."""
    rest = url.removeprefix("http://")
    hostport, _, path = rest.partition("/")
    host, _, port_s = hostport.partition(":")
    port = int(port_s or 80)
    infos = socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_STREAM)
    fam, kind, proto, _, addr = infos[0]
    sock = socket.socket(fam, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(60)
    sock.connect(addr)
    sock.sendall(f"GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
    digest = hashlib.sha256()
    head: bytes | None = b""
    chunk = max(1024, rate // 100)
    start = time.monotonic()
    got = 0
    with open(out, "wb") as f:
        while True:
            data = sock.recv(chunk)
            if not data:
                break
            if head is not None:
                head += data
                if b"\r\n\r\n" not in head:
                    continue
                status, _, body = head.partition(b"\r\n\r\n")
                first = status.split(b"\r\n", 1)[0]
                if b" 200 " not in first:
                    print("HTTP error: " + first.decode(errors="replace"), file=sys.stderr)
                    return 1
                head, data = None, body
            digest.update(data)
            f.write(data)
            f.flush()
            got += len(data)
            ahead = got / rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
    print(digest.hexdigest())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ntmobile.bench.handover")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("send")
    s.add_argument("--to", required=True)
    s.add_argument("--port", type=int, default=PROBE_PORT)
    s.add_argument("--interval", type=float, default=INTERVAL)
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--resolve-timeout", type=float, default=40.0)
    g = sub.add_parser("fetch")
    g.add_argument("url")
    g.add_argument("--rate", type=int, default=1_000_000)
    g.add_argument("--out", type=Path, required=True)
    r = sub.add_parser("recv")
    r.add_argument("--port", type=int, default=PROBE_PORT)
    r.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    if a.cmd == "send":
        return _sender(a.to, a.port, a.interval, a.out, a.resolve_timeout)
    if a.cmd == "fetch":
        return _fetch(a.url, a.rate, a.out)
    return _receiver(a.port, a.out)


# -- analysis -----------------------------------------------------------------------------------------


@dataclass
class Move:
    to: str
    t_start: float  # time.time() just before lab.move
    t_configured: float  # just after lab.move returned: new address and default route are in place
    gap_ms: float | None = None
    echo_gap_ms: float | None = None
    lost: int = 0
    detect_ms: float | None = None
    mode: str | None = None  # the path's mode at mn once traffic flowed again


@dataclass
class Probes:
    sent: dict[int, tuple[float, bool]] = field(default_factory=dict)
    echoed: dict[int, float] = field(default_factory=dict)
    received: dict[int, float] = field(default_factory=dict)  # seq -> receiver time

    @classmethod
    def load(cls, sender_log: Path, receiver_log: Path) -> Probes:
        p = cls()
        for line in _lines(sender_log):
            parts = line.split()
            if parts[0] == "S" and len(parts) == 4:
                p.sent[int(parts[1])] = (float(parts[2]), parts[3] == "1")
            elif parts[0] == "E" and len(parts) == 3:
                p.echoed.setdefault(int(parts[1]), float(parts[2]))
        for line in _lines(receiver_log):
            parts = line.split()
            if parts[0] == "R" and len(parts) == 4:
                p.received.setdefault(int(parts[1]), float(parts[3]))
        return p

    def first_after(self, t: float) -> tuple[float | None, float | None]:
        """(receiver time, echo time) of the first probe sent at or after ``t`` that arrived / came back."""
        rx = [r for s, r in self.received.items() if self.sent.get(s, (0.0, False))[0] >= t]
        ex = [e for s, e in self.echoed.items() if self.sent.get(s, (0.0, False))[0] >= t]
        return (min(rx) if rx else None), (min(ex) if ex else None)


def _lines(path: Path) -> list[str]:
    try:
        return [ln for ln in path.read_text().splitlines() if ln and not ln.startswith("{")]
    except FileNotFoundError:
        return []


def analyse(moves: list[Move], probes: Probes, until: float) -> None:
    for i, m in enumerate(moves):
        rx, ex = probes.first_after(m.t_configured)
        m.gap_ms = round((rx - m.t_configured) * 1000, 1) if rx is not None else None
        m.echo_gap_ms = round((ex - m.t_configured) * 1000, 1) if ex is not None else None
        end = moves[i + 1].t_start if i + 1 < len(moves) else until
        window = [s for s, (ts, _ok) in probes.sent.items() if m.t_start <= ts < end]
        m.lost = sum(1 for s in window if s not in probes.received)


def summary(moves: list[Move]) -> dict[str, Any]:
    gaps = [m.gap_ms for m in moves if m.gap_ms is not None]
    echo = [m.echo_gap_ms for m in moves if m.echo_gap_ms is not None]
    lost = [m.lost for m in moves]
    detect = [m.detect_ms for m in moves if m.detect_ms is not None]

    def stat(xs: list[float] | list[int]) -> dict[str, float | None]:
        return {"median": round(statistics.median(xs), 1) if xs else None, "max": max(xs) if xs else None}

    return {"moves": len(moves), "recovered": len(gaps), "gap_ms": stat(gaps), "echo_gap_ms": stat(echo),
            "lost_probes": stat(lost), "detect_ms": stat(detect)}


def _log_time(line: str) -> float | None:
    """time.time() of a daemon log line ("2026-12-01 10:00:00,123 ntm.node INFO ..."; local time)."""
    try:
        return datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
    except ValueError:
        return None


def timeline(m: Move, probes: Probes, logs: dict[str, Path], *, before: float = 0.05,
             after: float = 0.2, marks: Sequence[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    """What happened around one move, in ms from the new address being configured: the move itself, the
    daemons' log lines (mn's node: address change, registration, path ready; the peer's and the relays'),
    the daemons' trace marks (``marks``: runtime.trace, every signalling datagram read and sent, with
    ``t`` already on time.time()'s scale and ``host``), and the probes: the last one delivered before, how
    many sent meanwhile were lost or delivered late (late and none lost: a queue held them, e.g. the
    kernel's ARP queue), and the first one through."""
    t0 = m.t_configured
    end = t0 + (m.gap_ms or RECOVERY_DEADLINE * 1000) / 1000 + after
    ev: list[dict[str, Any]] = [{"ms": round((m.t_start - t0) * 1000, 1), "who": "lab", "what": f"move to {m.to}"},
                                {"ms": 0.0, "who": "lab", "what": "new address and default route configured"}]
    for mk in marks:
        tm = float(mk["t"])
        if m.t_start - before <= tm <= end:
            what = " ".join(str(mk[k]) for k in ("what", "type", "peer", "name", "mode") if k in mk)
            if "ms" in mk:  # how long the marked step took (the DC's registry commit)
                what += f" (took {mk['ms']} ms)"
            ev.append({"ms": round((tm - t0) * 1000, 1), "who": f"{mk['host']}*", "what": what})
    for who, path in logs.items():
        for line in _lines(path):
            t = _log_time(line)
            if t is not None and m.t_start - before <= t <= end:
                ev.append({"ms": round((t - t0) * 1000, 1), "who": who, "what": line[24:].strip()})
    window = sorted(s for s, (ts, _ok) in probes.sent.items() if m.t_start <= ts <= end)
    before_move = [s for s in probes.sent if probes.sent[s][0] < m.t_start and s in probes.received]
    if before_move:
        last = max(before_move)
        ev.append({"ms": round((probes.received[last] - t0) * 1000, 1), "who": "probes",
                   "what": f"last probe before the move delivered (#{last})"})
    lost = [s for s in window if s not in probes.received]
    late = [(probes.received[s] - probes.sent[s][0], s) for s in window if s in probes.received]
    failed = [s for s in window if not probes.sent[s][1]]
    if failed:
        ev.append({"ms": round((probes.sent[failed[0]][0] - t0) * 1000, 1), "who": "probes",
                   "what": f"{len(failed)} probes could not be sent (no route), from #{failed[0]}"})
    if lost:
        ev.append({"ms": round((probes.sent[lost[0]][0] - t0) * 1000, 1), "who": "probes",
                   "what": f"{len(lost)} probes sent from here on were lost (#{lost[0]}..#{lost[-1]})"})
    if late:
        worst, seq = max(late)
        if worst > 0.02:
            queued = sum(1 for d, _ in late if d > 0.02)
            ev.append({"ms": round((probes.sent[seq][0] - t0) * 1000, 1), "who": "probes",
                       "what": f"{queued} probes delivered late, up to {worst * 1000:.0f} ms after sending "
                               f"(#{seq} sent here): held in a queue, not lost"})
    rx, _ex = probes.first_after(t0)
    if rx is not None:
        ev.append({"ms": round((rx - t0) * 1000, 1), "who": "probes",
                   "what": "first probe sent after the move delivered"})
    return sorted(ev, key=lambda e: float(e["ms"]))


def format_timeline(events: list[dict[str, Any]]) -> list[str]:
    return [f"  {e['ms']:9.1f} ms  {e['who']:8s} {e['what']}" for e in events]


# -- the bench ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PathType:
    name: str
    receiver: str  # lab host running the receiver
    target: str  # the name mn resolves (through its DNS stub: the tunnel is set up for it)
    tcp_url: str
    #: Serve the GN's big file from the receiver host (a plain HTTP server) for the TCP transfer.
    serve_file: bool = False
    #: cn sits behind NAT B (10.2.0.20) instead of on the internet: mn <-> cn needs an RS-S.
    cn_behind_nat: bool = False
    #: Not ntmobile: Nebula's tunnel mn <-> cn beside it (issue 21), to cn's Nebula address.
    nebula: bool = False


#: Nebula in the handover lab (issue 21): rs1 the lighthouse, mn and cn (global) its peers: a direct
#: tunnel that roams with mn, beside ntmobile's DIRECT path (the same moves).
NEBULA_IPS = {"rs1": "10.96.0.1", "mn": "10.96.0.2", "cn": "10.96.0.3"}
NEBULA_PORT = 4244


PATH_TYPES = {
    "rs-n": PathType("rs-n", "gn", "www.gn.example", "http://www.gn.example/big.bin"),
    "direct": PathType("direct", "cn", "cn.b.example", "http://cn.b.example:8080/big.bin", serve_file=True),
    "rs-s": PathType("rs-s", "cn", "cn.b.example", "http://cn.b.example:8080/big.bin", serve_file=True,
                     cn_behind_nat=True),
    "nebula": PathType("nebula", "cn", NEBULA_IPS["cn"], f"http://{NEBULA_IPS['cn']}:8080/big.bin", serve_file=True,
                       nebula=True),
}
#: cn's link when it sits behind NAT B.
CN_BEHIND_NAT = [{"network": "netb", "ipv4": "10.2.0.20"}]


def topology_for(pt: PathType) -> Any:
    from ntmobile.lab import load_topology
    from ntmobile.lab.topology import DaemonSpec

    topo = load_topology("handover")
    if not pt.cn_behind_nat:
        return topo
    topo = topo.with_host("cn", links=CN_BEHIND_NAT)
    # rs-s measures a relayed path: NAT traversal (on by default) would punch it to DIRECT
    for dc in ("dca", "dcb"):
        spec = topo.host(dc).daemons[0]
        topo = topo.with_host(dc, daemons=[DaemonSpec(kind="dc", config={**spec.config, "traversal": False})])
    return topo


#: Daemons whose trace marks (NTM_TRACE=1, runtime.trace) go into the slowest move's timeline, besides
#: the receiver's node: (host, status command).
TRACED = (("mn", ("status",)), ("dca", ("dc", "status")), ("dcb", ("dc", "status")), ("rs1", ("rs", "status")),
          ("rs2", ("rs", "status")))


def trace_marks(lab: Any, receivers: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Every traced daemon's marks with ``host`` and ``t`` moved from CLOCK_MONOTONIC (one clock for
    the lab's namespaces) to time.time() (the probes' and the moves' clock)."""
    from .setup import _status

    offset = time.time() - time.monotonic()
    hosts = {h.name for h in lab.topology.hosts}
    out = []
    for host, cmd in (*TRACED, *((r, ("status",)) for r in receivers)):
        if host in hosts:
            out += [{**mk, "host": host, "t": mk["t"] + offset} for mk in _status(lab, host, *cmd).get("trace", [])]
    return out


def tcp_retransmits(lab: Any, hosts: Sequence[str]) -> int:
    """TCP segments the hosts have retransmitted (RetransSegs of /proc/net/snmp, per namespace)."""
    total = 0
    for host in hosts:
        lines = [ln.split() for ln in lab.exec(host, ["cat", "/proc/net/snmp"], check=False).stdout.splitlines()
                 if ln.startswith("Tcp:")]
        if len(lines) == 2 and "RetransSegs" in lines[0]:
            total += int(lines[1][lines[0].index("RetransSegs")])
    return total


def _node_status(lab: Any) -> dict[str, Any]:
    r = lab.exec("mn", [sys.executable, "-m", "ntmobile", "status", "--json"], check=False, timeout=10)
    try:
        out: dict[str, Any] = json.loads(r.stdout)
        return out
    except ValueError:
        return {}


def _wait(pred: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return pred()


def _stop(p: subprocess.Popen[Any]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(p.pid, signal.SIGTERM)
    try:
        p.wait(5)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()


def run_path_type(lab: Any, pt: PathType, moves: int, *, dwell: float = DWELL,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    work = Path(lab.workdir) / "bench-handover"
    work.mkdir(exist_ok=True)
    slog, rlog = work / f"{pt.name}-send.log", work / f"{pt.name}-recv.log"
    py = sys.executable
    procs: list[subprocess.Popen[Any]] = []
    result: dict[str, Any] = {"path_type": pt.name, "target": pt.target}
    try:
        procs.append(lab.popen(pt.receiver, [py, "-m", "ntmobile.bench.handover", "recv", "--out", str(rlog)],
                               name="ho-recv", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        if pt.serve_file:
            www = Path(lab.workdir) / "gn" / "www"
            procs.append(lab.popen(pt.receiver, [py, "-m", "http.server", "8080", "--bind", "::", "--directory",
                                                 str(www)], name="ho-http", stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL))
        sender = lab.popen("mn", [py, "-m", "ntmobile.bench.handover", "send", "--to", pt.target, "--out",
                                  str(slog)], name="ho-send", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        procs.append(sender)
        if not _wait(lambda: len(_lines(rlog)) > 10 or sender.poll() is not None, 50):
            result["error"] = f"no probe reached {pt.receiver} through the tunnel"
            return result
        if sender.poll() is not None:
            err = sender.stderr.read().decode().strip() if sender.stderr else ""
            result["error"] = f"the probe sender stopped: {err or 'exit ' + str(sender.returncode)}"
            return result
        path = next((p for p in _node_status(lab).get("paths", []) if p.get("peer") == pt.target), None)
        result["mode"] = "NEBULA" if pt.nebula else path.get("mode") if path else None
        retrans0 = tcp_retransmits(lab, ("mn", pt.receiver))
        # Long enough to span every move (about 1.2 s per move at most), 32 MiB.
        rate = max(200_000, int(33554432 / (moves * (dwell + 0.6) + 5)))
        tcp = lab.popen("mn", [py, "-m", "ntmobile.bench.handover", "fetch", pt.tcp_url, "--rate", str(rate),
                               "--out", str(work / f"{pt.name}-tcp.bin")],
                        name="ho-tcp", stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        procs.append(tcp)
        done: list[Move] = []
        t_start_all = time.time()
        for i in range(moves):
            to = CYCLE[i % len(CYCLE)]
            m = Move(to, time.time(), 0.0)
            lab.move("mn", to)
            m.t_configured = time.time()
            done.append(m)

            def recovered(m: Move = m) -> bool:
                rx, ex = Probes.load(slog, rlog).first_after(m.t_configured)
                return rx is not None and ex is not None

            ok = _wait(recovered, RECOVERY_DEADLINE)
            st = _node_status(lab)
            path = next((p for p in st.get("paths", []) if p.get("peer") == pt.target), None)
            m.mode = "NEBULA" if pt.nebula else path.get("mode") if path else None
            at = st.get("handover_at")  # (the NTM node's: nothing to do with Nebula's path)
            if not pt.nebula and isinstance(at, (int, float)) and at >= m.t_start:
                m.detect_ms = round((at - m.t_configured) * 1000, 1)
            if not ok:
                log(f"  move {i + 1} to {to}: no probe came back within {RECOVERY_DEADLINE} s")
            time.sleep(dwell)  # let traffic flow on the new path before the next move
        t_end = time.time()
        _stop(sender)
        probes = Probes.load(slog, rlog)
        analyse(done, probes, t_end)
        for i, m in enumerate(done):
            log(f"  move {i + 1:2d} -> {m.to:6s}: gap {m.gap_ms} ms, echo {m.echo_gap_ms} ms, lost {m.lost}, "
                f"detected {m.detect_ms} ms, mode {m.mode}")
        try:
            out, _ = tcp.communicate(timeout=max(60.0, 3 * (time.time() - t_start_all)))
            digest = out.split()[0] if out.split() else ""
        except subprocess.TimeoutExpired:
            digest = "timeout"
        slowest = max((m for m in done), key=lambda m: m.gap_ms if m.gap_ms is not None else 1e9, default=None)
        if slowest is not None:
            logs = {h: Path(lab.workdir) / "logs" / f"{h}-{kind}.log"
                    for h, kind in (("mn", "node"), (pt.receiver, "node"), ("rs1", "rs"), ("rs2", "rs"))}
            result["slowest_move"] = {"move": done.index(slowest) + 1, "to": slowest.to, "gap_ms": slowest.gap_ms,
                                      "timeline": timeline(slowest, probes, logs,
                                                           marks=trace_marks(lab, (pt.receiver,)))}
            log(f"  slowest move ({done.index(slowest) + 1}, to {slowest.to}, gap {slowest.gap_ms} ms):")
            for line in format_timeline(result["slowest_move"]["timeline"]):
                log(line)
        result["tcp"] = {"url": pt.tcp_url, "sha256": digest, "ok": digest == lab.state.big_file.sha256,
                         "retransmits": tcp_retransmits(lab, ("mn", pt.receiver)) - retrans0}
        result["modes"] = sorted({m.mode for m in done if m.mode})
        result.update(summary(done))
        result["probes_sent"] = len(probes.sent)
        result["probes_received"] = len(probes.received)
        result["per_move"] = [asdict(m) for m in done]
        return result
    finally:
        for p in procs:
            if p.poll() is None:
                _stop(p)


def to_markdown(report: dict[str, Any]) -> str:
    lines = ["# ntm bench handover", "",
             f"{report['when']} · lab `{report['lab']}` · probe every {INTERVAL * 1000:.0f} ms · "
             f"{report['moves']} moves per path type, cycling {' → '.join(('neta', *CYCLE))}", "",
             "Gap: new address configured → first probe sent afterwards delivered (receiver clock). Echo: its "
             "echo back at mn. Lost: probes of the move's window never delivered. Detect: node noticed the "
             "change (netlink).", "",
             "| path type | mode | moves | recovered | gap median / max ms | echo median / max ms | "
             "lost median / max | detect median ms | TCP transfer |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        if "error" in r:
            lines.append(f"| {r['path_type']} | – | – | – | {r['error']} | | | | |")
            continue
        tcp = r.get("tcp")
        tcp_s = "–" if tcp is None else ("survived, sha256 ok" if tcp["ok"] else f"FAILED ({tcp['sha256']})")
        if tcp is not None and tcp.get("retransmits") is not None:
            tcp_s += f", {tcp['retransmits']} retransmits"
        modes = " → ".join(r.get("modes") or []) or "–"
        g, e, lo, d = r["gap_ms"], r["echo_gap_ms"], r["lost_probes"], r["detect_ms"]
        lines.append(f"| {r['path_type']} | {r.get('mode')} (seen: {modes}) | {r['moves']} | {r['recovered']} | "
                     f"{g['median']} / {g['max']} | {e['median']} / {e['max']} | {lo['median']} / {lo['max']} | "
                     f"{d['median']} | {tcp_s} |")
    for r in report["results"]:
        sm = r.get("slowest_move")
        if sm:
            lines += ["", f"Slowest {r['path_type']} move (move {sm['move']}, to {sm['to']}, gap {sm['gap_ms']} ms), "
                      "ms from the new address being configured:", "", "```", *format_timeline(sm["timeline"]), "```"]
    return "\n".join(lines) + "\n"


def run_bench(*, moves: int = 20, path_types: Sequence[str] = ("rs-n", "direct", "rs-s"), prefix: str = "hob",
              attach: bool = False, out_dir: Path = Path("artifacts"), dwell: float = DWELL,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the bench per path type. The `handover` lab serves rs-n and direct; rs-s needs cn behind
    NAT B, a second lab (``PREFIX`` + "s"). With ``attach`` the running lab ``prefix`` is used (left up)
    for the path types its cn placement allows."""
    from ntmobile.lab import Lab
    from ntmobile.runtime.trace import ENV as TRACE_ENV

    os.environ[TRACE_ENV] = "1"  # the lab's daemons keep the debug timing trace (the slowest move's timeline)
    results: list[dict[str, Any]] = []
    for behind in (False, True):
        group = [PATH_TYPES[n] for n in path_types if PATH_TYPES[n].cn_behind_nat is behind]
        if not group:
            continue
        if attach:
            lab = Lab.attach(prefix)
            if (lab.network_of("cn") == "netb") is not behind:
                results += [{"path_type": pt.name, "error": "the attached lab's cn placement does not allow it"}
                            for pt in group]
                continue
        else:
            lab = Lab.up(topology_for(group[0]), prefix=prefix + ("s" if behind else ""))
        nebula: dict[str, Any] = {}
        try:
            if lab.network_of("mn") != "neta":
                lab.move("mn", "neta")
            for pt in group:
                if pt.nebula and not nebula:
                    from .setup import start_nebula

                    nebula = start_nebula(lab, Path(lab.workdir), NEBULA_IPS, port=NEBULA_PORT,
                                          name="nebula-handover", dev="nbh")
                log(f"{pt.name}: {moves} moves, probes mn -> {pt.target}")
                results.append(run_path_type(lab, pt, moves, dwell=dwell, log=log))
        finally:
            for rec in nebula.values():
                with contextlib.suppress(Exception):
                    lab.stop(rec)
            if not attach:
                lab.down()
    cal = host_calibration()
    report = {"bench": "handover", "when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
              "lab": prefix, "moves": moves, "interval_ms": INTERVAL * 1000, "results": results,
              "calibration": cal}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench-handover.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "bench-handover.md").write_text(to_markdown(report) + calibration_markdown(cal))
    return report


if __name__ == "__main__":
    raise SystemExit(main())
