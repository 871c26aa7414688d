"""`ntm bench relay-scale`: the relay's resident memory with N RS-N paths in its Relay Table.

A fresh Python process (``python -m ntmobile.bench.relay_scale --paths N``) imports what the relay
daemon imports (``ntmobile.runtime.rs``), builds a real ``RsCore``, registers it with an in-process
DC end (the real key schedule), then feeds it N Relay Directions (RS-N, one (node VIP, GN VIP) pair
each) and the N nodes' Tunnel Requests, exactly as the DC and the nodes would over UDP. It reports
VmRSS (and the peak, VmHWM) after the imports, and with the table full. No network is used.
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .calibration import calibration_markdown, host_calibration

TARGET_MIB = 64.0
Log = Callable[[str], None]


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def measure(paths: int) -> dict[str, Any]:
    """Run inside the fresh process: fill a Relay Table and return the memory figures."""
    from ntmobile.runtime.lean import without_tls

    without_tls()  # as `ntm rs run` does, before asyncio is imported
    import ntmobile.cli.main  # noqa: F401  (what `ntm rs run` loads counts in the relay's RSS)
    import ntmobile.runtime.rs  # noqa: F401
    from ntmobile.core.rs import DcLink, RelayAdded, RsConfig, RsCore
    from ntmobile.core.targets import DOCUMENTATION_NETS
    from ntmobile.crypto import Channel, Ephemeral, long_term_keys, path_keys, session_keys
    from ntmobile.wire import (
        Capability,
        RegistrationRequest,
        RegistrationResponse,
        RelayDirection,
        RsType,
        SignalFlags,
        TunnelRequest,
        parse_signal_header,
    )

    gc.collect()
    base_kib = _status_kib("VmRSS")
    rs_id, dc_id, psk = b"RS-scale", b"DC-scale", os.urandom(32)
    dc_ep, rs_ep = ("192.0.2.10", 7410), ("192.0.2.20", 7411)
    core = RsCore(RsConfig("rs.scale", rs_id, [DcLink(dc_id, dc_ep, psk)], local_endpoints=(rs_ep,),
                           max_paths=paths + 1, capabilities=int(Capability.GSO | Capability.INNER6),
                           rsn_allow=DOCUMENTATION_NETS),
                  0.0, seq_base=1)
    lt = Channel(long_term_keys(psk, rs_id).swapped(), dc_id, seq_start=10)
    core.register(0.0)
    [dg] = core.datagrams_to_send()
    hdr = parse_signal_header(dg.data)
    req = lt.open(hdr, dg.data)
    assert isinstance(req, RegistrationRequest)
    eph = Ephemeral()
    session = Channel(session_keys(psk, eph.exchange(req.ephemeral), rs_id, req.ephemeral, eph.public).swapped(),
                      dc_id)
    core.receive_datagram(lt.seal(RegistrationResponse(ephemeral=eph.public, version=1, observed=rs_ep, nat=0,
                                                       keepalive=15), txid=hdr.txid, flags=SignalFlags.LONG_TERM),
                          dc_ep, 0.01)
    while core.next_event() is not None:
        pass
    node_net = int(ipaddress.IPv4Address("100.64.0.0"))
    gn_net = int(ipaddress.IPv4Address("100.127.0.0"))
    t0 = time.monotonic()
    added = 0
    for i in range(paths):
        pid = i.to_bytes(8, "big")
        pk = os.urandom(32)
        node_vip = str(ipaddress.IPv4Address(node_net + 1 + i // 250))
        gn_vip = str(ipaddress.IPv4Address(gn_net + 1 + i % 250))
        node_ep = (f"198.18.{i // 250 % 256}.{i % 250 + 1}", 7412)
        msg = RelayDirection(path_id=pid, rs_type=RsType.N, idle_timeout=600, path_key=pk, node_vip4=node_vip,
                             peer_vip4=gn_vip, gn_addr4=f"203.0.113.{i % 250 + 1}", node_endpoint=node_ep)
        now = 1.0 + i * 1e-4
        core.receive_datagram(session.seal(msg, txid=i + 1), dc_ep, now)
        # The node's Tunnel Request on the path's own keys (the node is the initiator).
        sig = Channel(path_keys(pk, pid).for_initiator()[0], pid)
        core.receive_datagram(sig.seal(TunnelRequest(capabilities=int(Capability.GSO)), txid=i + 1), node_ep, now)
        core.datagrams_to_send()
        while (ev := core.next_event()) is not None:
            added += isinstance(ev, RelayAdded)
    fill_s = time.monotonic() - t0
    gc.collect()
    entries = core.entries()
    ready = sum(1 for e in entries if e.initiator.endpoint is not None and e.initiator.capabilities is not None)
    full_kib = _status_kib("VmRSS")
    return {"paths": paths, "relay_added": added, "entries": len(entries), "tunnels_answered": ready,
            "rss_imports_mib": round(base_kib / 1024, 1), "rss_full_mib": round(full_kib / 1024, 1),
            "rss_peak_mib": round(_status_kib("VmHWM") / 1024, 1),
            "per_path_bytes": round((full_kib - base_kib) * 1024 / max(paths, 1)), "fill_seconds": round(fill_s, 2)}


def run_bench(*, paths: int = 10000, out_dir: Path = Path("artifacts"), log: Log = print) -> dict[str, Any]:
    log(f"filling a Relay Table with {paths} RS-N paths in a fresh process ...")
    cp = subprocess.run([sys.executable, "-m", "ntmobile.bench.relay_scale", "--paths", str(paths)],
                        capture_output=True, text=True, timeout=1800)
    if cp.returncode != 0:
        raise RuntimeError(f"relay-scale child failed: {cp.stderr.strip()[-500:]}")
    res = json.loads(cp.stdout.strip().splitlines()[-1])
    report = {"bench": "relay-scale", "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "target_mib": TARGET_MIB, "met": res["rss_full_mib"] <= TARGET_MIB
              and res["entries"] == paths, **res, "calibration": host_calibration()}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench-relay-scale.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "bench-relay-scale.md").write_text(to_markdown(report) + calibration_markdown(report["calibration"]))
    return report


def to_markdown(r: dict[str, Any]) -> str:
    return "\n".join([
        f"# ntm bench relay-scale ({r['started']})", "",
        "| paths | entries | tunnels answered | RSS after imports | RSS full | peak | per path | fill time |"
        " target | met |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| {r['paths']} | {r['entries']} | {r['tunnels_answered']} | {r['rss_imports_mib']} MiB | "
        f"{r['rss_full_mib']} MiB | {r['rss_peak_mib']} MiB | {r['per_path_bytes']} B | {r['fill_seconds']} s | "
        f"<= {r['target_mib']:g} MiB | {'yes' if r['met'] else 'NO'} |", ""])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ntmobile.bench.relay_scale")
    ap.add_argument("--paths", type=int, default=10000)
    args = ap.parse_args(argv)
    print(json.dumps(measure(args.paths)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
