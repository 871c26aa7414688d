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
- **ntm-rs-s**: mn to cn.b.example (both behind port-restricted NATs; two DCs, RS-S);
- **ntm-direct**: mn to cn.b.example with NAT B one-to-one (two DCs, direct; a second lab).

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
from typing import Any

from .calibration import calibration_markdown, host_calibration

#: The node's DNS stub: NodeSettings.dns_listen's default (this client imports no ntmobile code, to start fast).
STUB = "127.0.0.153"
NTM = [sys.executable, "-m", "ntmobile"]
CASES = ("gn", "ntm-direct-local", "ntm-rs-s", "ntm-direct")
#: The issue-4 target for the set-up time (p50, lab).
TARGET_P50_MS = 10.0


# -- the timing client (runs in the lab) ----------------------------------------------------------------


def _query(names: Sequence[str], timeout: float) -> list[dict[str, Any]]:
    import dns.message
    import dns.query
    import dns.rcode
    import dns.rdatatype

    out = []
    for name in names:
        q = dns.message.make_query(name, dns.rdatatype.A)
        t0 = time.perf_counter()
        try:
            r = dns.query.udp(q, STUB, timeout=timeout)
            ms = (time.perf_counter() - t0) * 1000
            answer = [rd.to_text() for rrset in r.answer for rd in rrset]
            out.append({"name": name, "ms": ms, "rcode": dns.rcode.to_text(r.rcode()), "answer": answer})
        except Exception as exc:  # a timeout is a result too
            out.append({"name": name, "ms": (time.perf_counter() - t0) * 1000, "rcode": type(exc).__name__,
                        "answer": []})
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ntmobile.bench.setup")
    sub = ap.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("query", help="time A queries to the node's DNS stub; JSON lines on stdout")
    q.add_argument("names", nargs="+")
    q.add_argument("--timeout", type=float, default=8.0)
    args = ap.parse_args(argv)
    print(json.dumps(_query(args.names, args.timeout)))
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


def _query_in(lab: Any, names: Sequence[str]) -> list[dict[str, Any]]:
    cp = lab.exec("mn", [sys.executable, "-m", "ntmobile.bench.setup", "query", *names], timeout=30 + 10 * len(names))
    return json.loads(cp.stdout)  # type: ignore[no-any-return]


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


def _peer_samples(lab: Any, fqdn: str, mode: str, n: int, log: Callable[[str], None]) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        steps = _restart_node(lab)
        [r] = _query_in(lab, [fqdn])
        r["restart"] = steps
        paths = [p for p in _status(lab, "mn", "status").get("paths", []) if p.get("peer") == fqdn]
        r["mode"] = paths[0]["mode"] if paths else None
        r["ok"] = r["rcode"] == "NOERROR" and bool(r["answer"]) and r["mode"] == mode
        out.append(r)
        log(f"  {fqdn} #{i + 1}: {r['ms']:.1f} ms {r['rcode']} {r['mode']} (node restart: "
            + ", ".join(f"{k} {v:.1f}" for k, v in steps.items()) + ")")
    return out


def summarize(samples: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [s["ms"] for s in samples if s.get("ok")]
    return {"n": len(samples), "ok": len(ok), "p50_ms": percentile(ok, 50), "p95_ms": percentile(ok, 95),
            "min_ms": min(ok) if ok else float("nan"), "max_ms": max(ok) if ok else float("nan"),
            "mean_ms": statistics.fmean(ok) if ok else float("nan")}


def run_bench(*, names: int, peers: int, cases: Sequence[str], prefix: str, out_dir: Path,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    from ntmobile.lab import Lab

    report: dict[str, Any] = {"names": names, "peer_samples": peers, "cases": {}, "target_p50_ms": TARGET_P50_MS,
                              "started": time.time()}
    first = [c for c in cases if c != "ntm-direct"]
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
                res = _peer_samples(lab, "gl.a.example", "DIRECT", peers, log)
                report["cases"]["ntm-direct-local"] = {"samples": res, **summarize(res)}
            if "ntm-rs-s" in cases:
                log("ntm-rs-s: mn -> cn.b.example")
                res = _peer_samples(lab, "cn.b.example", "RS_S", peers, log)
                report["cases"]["ntm-rs-s"] = {"samples": res, **summarize(res)}
        finally:
            lab.down()
    if "ntm-direct" in cases:
        from ntmobile.lab import load_topology

        lab = Lab.up(load_topology("nat").with_nat("natb", "one_to_one"), prefix=prefix, bare=False)
        try:
            _wait(lambda: _status(lab, "mn", "status").get("registered"), 20, "mn registered")
            _warm_resolver(lab)
            log("ntm-direct: mn -> cn.b.example (NAT B one-to-one)")
            res = _peer_samples(lab, "cn.b.example", "DIRECT", peers, log)
            report["cases"]["ntm-direct"] = {"samples": res, **summarize(res)}
        finally:
            lab.down()
    report["calibration"] = host_calibration()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench-setup.json").write_text(json.dumps(report, indent=2))
    (out_dir / "bench-setup.md").write_text(to_markdown(report) + "\n" + calibration_markdown(report["calibration"]))
    return report


def to_markdown(report: dict[str, Any]) -> str:
    lines = ["# Path set-up time from the application's DNS query to its answer (lab `nat`)", "",
             f"Target (issue 4): p50 <= {report['target_p50_ms']:.0f} ms. GN: {report['names']} names; "
             f"NTM peers: {report['peer_samples']} fresh set-ups each (node restarted before each).", "",
             "| case | samples ok / n | p50 ms | p95 ms | min ms | max ms |", "|---|---|---|---|---|---|"]
    for case in CASES:
        c = report["cases"].get(case)
        if c is None:
            continue
        lines.append(f"| {case} | {c['ok']} / {c['n']} | {c['p50_ms']:.1f} | {c['p95_ms']:.1f} | "
                     f"{c['min_ms']:.1f} | {c['max_ms']:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
