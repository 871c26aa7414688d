"""`ntm bench throughput`: the paper's Table 2 (iperf TCP from MN, direct tunnel vs through RS-N),
plus RS-S and baselines, on the same lab topology in the same run.

Topology: the built-in `nat` lab with one DC (dca, a.example) directing every path and both relays
(rs1, rs2). mn sits behind NAT A; gl has a global address; cn sits behind NAT B; gn is a general
node. The DC places mn's RS-N path on rs1 (equal distance to the GN, equal load, then the name) and
the RS-S path on the less loaded rs2, so that path's leg endpoints carry nothing else and rs2
forwards it in the kernel (docs/dataplane.md, "RS-S in the kernel"); the report records which relay
carried each path and whether it was in the kernel.

| mode | what iperf3 in mn connects to | path |
|---|---|---|
| `veth` | gl's real address | no tunnel (veth, NAT A, the lab switch) |
| `ntm-direct` | gl.a.example (gl's VIP) | NTM direct tunnel mn -> gl |
| `ntm-rs-n` | iperf.gn.example (the GN's VIP) | NTM tunnel mn -> rs1 (RS-N, kernel NAPT) -> gn |
| `ntm-rs-s` | cn.a.example (cn's VIP) | NTM tunnel mn -> rs1 (RS-S) -> cn (both behind NATs) |
| `wireguard-go` | gl over a wireguard-go tunnel | Debian's wireguard-go, mn -> gl |
| `openvpn` | gl over an OpenVPN tunnel | Debian's OpenVPN, static key, AES-256-CBC + SHA256, UDP |
| `ntm-direct-v4`, `ntm-rs-n-v4` | the same names, `iperf3 -4` | inner IPv4: the paper's condition (100 Mbit/s only) |

The plain modes use what an application gets: iperf3 resolves the name through the node's DNS stub,
which answers both VIPs, and glibc's address order picks the IPv6 one.

Each condition (100 Mbit/s links: the paper's; unlimited links) gets its own lab; runs are
interleaved (run 1 of every mode, then run 2, ...) so slow drifts of a shared machine hit every
mode alike. Results are medians; ratios are taken between medians of the same run.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .calibration import calibration_markdown, host_calibration

MODES = ("veth", "ntm-direct", "ntm-rs-n", "ntm-rs-s", "wireguard-go", "openvpn", "ntm-direct-v4", "ntm-rs-n-v4")
#: Inner IPv4 (``iperf3 -4``): the paper's Table 2 condition, measured on 100 Mbit/s links only.
V4_MODES = ("ntm-direct-v4", "ntm-rs-n-v4")
#: Paper Table 2 (Mbit/s, 100BASE-TX era laptops, IPv4, no encryption).
PAPER = {"ntm-direct": 90.1, "ntm-rs-n": 86.9, "ntm-direct-v4": 90.1, "ntm-rs-n-v4": 86.9}
#: Issue 9 targets: (numerator, denominator, minimum ratio, condition or None for any).
TARGETS: tuple[tuple[str, str, float, str | None], ...] = (
    ("ntm-direct", "veth", 0.25, "unlimited"),
    ("ntm-direct", "wireguard-go", 6.0, "unlimited"),
    ("ntm-rs-n", "ntm-direct", 0.8, "unlimited"),
    ("ntm-rs-s", "ntm-direct", 0.8, "unlimited"),
    # The paper's condition (inner IPv4); the inner IPv6 ratio is reported beside it.
    ("ntm-rs-n-v4", "ntm-direct-v4", 0.98, "100mbit"),
)
WG_NET = ("10.99.0.1", "10.99.0.2")
OVPN_NET = ("10.98.0.1", "10.98.0.2")
IPERF_PORT = 5201

Log = Callable[[str], None]


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": model or platform.processor(), "cores": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version(), "machine": platform.machine(), "calibration": host_calibration()}


def topology(rate_mbit: float | None, *, offload: bool = True) -> Any:
    """The `nat` lab with its daemons on one DC (so mn, cn and gl share a.example) and two relays."""
    from ntmobile.lab import load_topology
    from ntmobile.lab.topology import DaemonSpec

    t = load_topology("nat")
    t = t.with_host("dcb", daemons=[])
    for rs in ("rs1", "rs2"):
        t = t.with_host(rs, daemons=[DaemonSpec(kind="rs", config={"dcs": ["dca"], "offload": offload})])
    for host in ("gl", "mn", "cn"):
        t = t.with_host(host, daemons=[DaemonSpec(kind="node", config={"dc": "dca", "name": f"{host}.a.example",
                                                                       "offload": offload})])
    if rate_mbit is not None:
        t = t.with_links(rate_mbit=rate_mbit)
    return t


def _ifname(prefix: str, kind: str, side: str) -> str:
    """wireguard-go's UAPI socket is host-wide and named after the interface: unique per lab."""
    return f"{kind}{prefix}{side}"[:15]


class Baselines:
    """wireguard-go and OpenVPN tunnels between mn and gl, started in the lab's namespaces."""

    def __init__(self, lab: Any, log: Log) -> None:
        self.lab = lab
        self.log = log
        self.dir = Path(tempfile.mkdtemp(prefix="ntm-bench-", dir=str(lab.workdir)))

    def start_wireguard(self) -> None:
        lab, d = self.lab, self.dir
        gl4 = lab.addr("gl", 4)
        keys = {}
        for side in ("m", "g"):
            priv = subprocess.run(["wg", "genkey"], capture_output=True, text=True, check=True).stdout.strip()
            pub = subprocess.run(["wg", "pubkey"], input=priv, capture_output=True, text=True,
                                 check=True).stdout.strip()
            (d / f"wg-{side}.key").write_text(priv + "\n")
            keys[side] = pub
        for host, side, other, addr, peer_addr in (("gl", "g", "m", WG_NET[1], WG_NET[0]),
                                                   ("mn", "m", "g", WG_NET[0], WG_NET[1])):
            ifn = _ifname(lab.prefix, "wg", side)
            lab.spawn(host, ["wireguard-go", "-f", ifn], f"wireguard-go-{side}")
            _wait(self._link_exists(host, ifn), 10, f"wireguard-go {ifn} on {host}")
            peer = ["peer", keys[other], "allowed-ips", f"{peer_addr}/32"]
            if host == "mn":
                peer += ["endpoint", f"{gl4}:51820", "persistent-keepalive", "5"]
            lab.exec(host, ["wg", "set", ifn, "private-key", str(d / f"wg-{side}.key"), "listen-port", "51820", *peer])
            lab.exec(host, ["ip", "addr", "add", f"{addr}/24", "dev", ifn])
            lab.exec(host, ["ip", "link", "set", ifn, "mtu", "1420", "up"])
        _wait(lambda: lab.exec("mn", ["ping", "-c1", "-W1", WG_NET[1]], check=False).returncode == 0, 15,
              "wireguard-go tunnel")

    def _link_exists(self, host: str, ifname: str) -> Callable[[], bool]:
        def check() -> bool:
            return bool(self.lab.exec(host, ["ip", "link", "show", ifname], check=False).returncode == 0)
        return check

    def start_openvpn(self) -> None:
        lab, d = self.lab, self.dir
        key = d / "ovpn.key"
        subprocess.run(["openvpn", "--genkey", "secret", str(key)], capture_output=True, check=True)
        gl4 = lab.addr("gl", 4)
        for host, side, direction, local, remote in (("gl", "g", "1", OVPN_NET[1], OVPN_NET[0]),
                                                     ("mn", "m", "0", OVPN_NET[0], OVPN_NET[1])):
            argv = ["openvpn", "--dev", _ifname(lab.prefix, "ovpn", side), "--dev-type", "tun", "--proto", "udp",
                    "--secret", str(key), direction, "--cipher", "AES-256-CBC", "--auth", "SHA256",
                    "--ifconfig", local, remote, "--ping", "2", "--verb", "1"]
            argv += ["--port", "1194", "--float"] if host == "gl" else ["--remote", gl4, "1194", "--nobind"]
            lab.spawn(host, argv, f"openvpn-{side}")
        _wait(lambda: lab.exec("mn", ["ping", "-c1", "-W1", OVPN_NET[1]], check=False).returncode == 0, 20,
              "OpenVPN tunnel")


def _wait(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    raise RuntimeError(f"{what} not up within {timeout:.0f} s")


def target_of(mode: str, lab: Any) -> str:
    targets: dict[str, str] = {
        "veth": lab.addr("gl", 4), "ntm-direct": "gl.a.example", "ntm-rs-n": "iperf.gn.example",
        "ntm-rs-s": "cn.a.example", "wireguard-go": WG_NET[1], "openvpn": OVPN_NET[1],
    }
    return targets[mode.removesuffix("-v4")]


def family_of(mode: str) -> int | None:
    return 4 if mode.endswith("-v4") else None


def iperf(lab: Any, target: str, seconds: float, family: int | None = None) -> tuple[float, int]:
    """One iperf3 TCP run from mn: (receiver Mbit/s, retransmits); ``family`` forces -4 / -6."""
    fam = [f"-{family}"] if family else []
    for attempt in range(3):
        cp = lab.exec("mn", ["iperf3", "-J", *fam, "-c", target, "-p", str(IPERF_PORT), "-t", str(seconds)],
                      check=False, timeout=seconds + 30)
        try:
            data = json.loads(cp.stdout)
        except json.JSONDecodeError:
            data = {}
        end = data.get("end") or {}
        if "sum_received" in end:
            return (float(end["sum_received"]["bits_per_second"]) / 1e6,
                    int(end.get("sum_sent", {}).get("retransmits", 0)))
        if attempt < 2:
            time.sleep(1.0 + attempt)  # "the server is busy": the previous test is still closing
    raise RuntimeError(f"iperf3 to {target}: {(data.get('error') or cp.stderr.strip() or cp.stdout.strip())[-300:]}")


def run_condition(name: str, rate_mbit: float | None, *, runs: int, seconds: float, modes: Sequence[str],
                  prefix: str, log: Log) -> dict[str, Any]:
    from ntmobile.lab import Lab

    links = f"{rate_mbit:g} Mbit/s" if rate_mbit else "unlimited"
    log(f"[{name}] lab up ({prefix}, links {links})")
    lab = Lab.up(topology(rate_mbit), prefix=prefix)
    try:
        for host in ("gl", "cn"):
            lab.spawn(host, ["iperf3", "-s", "-p", str(IPERF_PORT)], f"iperf3-{host}")
        base = Baselines(lab, log)
        if "wireguard-go" in modes:
            base.start_wireguard()
        if "openvpn" in modes:
            base.start_openvpn()
        for mode in modes:  # warm-up: path set-up (DNS through the node's stub) and TCP slow start
            iperf(lab, target_of(mode, lab), 1, family_of(mode))
        samples: dict[str, list[float]] = {m: [] for m in modes}
        retrans: dict[str, list[int]] = {m: [] for m in modes}
        # The machine's 1-minute load average after each run: the bench shares 2 vCPUs with
        # whatever else runs, so every figure carries the load it was measured under.
        load: dict[str, list[float]] = {m: [] for m in modes}
        for r in range(runs):
            for mode in modes:
                mbit, rtx = iperf(lab, target_of(mode, lab), seconds, family_of(mode))
                samples[mode].append(round(mbit, 1))
                retrans[mode].append(rtx)
                load[mode].append(round(os.getloadavg()[0], 2))
                log(f"[{name}] run {r + 1}/{runs} {mode}: {mbit:.1f} Mbit/s ({rtx} retransmits, "
                    f"load {load[mode][-1]:.2f})")
        status = lab.status()
        every = [x for v in load.values() for x in v]
        return {"rate_mbit": rate_mbit, "samples": samples, "retransmits": retrans, "load": load,
                "load_summary": {"min": min(every), "median": statistics.median(every), "max": max(every)},
                "median": {m: statistics.median(v) for m, v in samples.items()},
                "paths": paths_report(lab),
                "lab": {"prefix": prefix, "hosts": len(status.get("hosts", []) or [])}}
    finally:
        lab.down()


def paths_report(lab: Any) -> list[dict[str, Any]]:
    """mn's paths after the runs: peer, mode, relay, and whether that relay had it in the kernel."""
    def js(host: str, *cmd: str) -> dict[str, Any]:
        cp = lab.exec(host, [sys.executable, "-m", "ntmobile", *cmd, "--json"], check=False, timeout=20)
        try:
            out: dict[str, Any] = json.loads(cp.stdout)
        except json.JSONDecodeError:
            out = {}
        return out

    relays = {rs: js(rs, "rs", "status") for rs in ("rs1", "rs2")}
    out = []
    for p in js("mn", "status").get("paths", []):
        rs = p.get("rs")
        fast = (relays.get(rs) or {}).get("fast_path") or {}
        out.append({"peer": p.get("peer"), "mode": p.get("mode"), "rs": rs,
                    "in_kernel": p.get("path_id") in (fast.get("paths") or [])})
    return out


def ratios(med: dict[str, float]) -> dict[str, float]:
    out: dict[str, float] = {}
    pairs = [("ntm-rs-n", "ntm-direct"), ("ntm-rs-n-v4", "ntm-direct-v4"), ("ntm-rs-s", "ntm-direct")]
    pairs += [(ours, base) for ours in ("ntm-direct", "ntm-rs-n", "ntm-rs-s")
              for base in ("veth", "wireguard-go", "openvpn")]
    for a, b in pairs:
        if med.get(a) and med.get(b):
            out[f"{a} / {b}"] = round(med[a] / med[b], 3)
    return out


def run_bench(*, runs: int = 10, seconds: float = 10, conditions: Sequence[str] = ("100mbit", "unlimited"),
              modes: Sequence[str] = MODES, prefix: str = "tput", out_dir: Path = Path("artifacts"),
              log: Log = print) -> dict[str, Any]:
    rates = {"100mbit": 100.0, "unlimited": None}
    report: dict[str, Any] = {"bench": "throughput", "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                              "runs": runs, "seconds": seconds, "machine": machine(), "paper_mbit": PAPER,
                              "modes": list(modes), "conditions": {}}
    for i, cond in enumerate(conditions):
        cmodes = [m for m in modes if cond == "100mbit" or m not in V4_MODES]
        res = run_condition(cond, rates[cond], runs=runs, seconds=seconds, modes=cmodes, prefix=f"{prefix}{i}",
                            log=log)
        res["ratios"] = ratios(res["median"])
        report["conditions"][cond] = res
    report["targets"] = check_targets(report)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench-throughput.json").write_text(json.dumps(report, indent=2) + "\n")
    cal = report["machine"].get("calibration")
    (out_dir / "bench-throughput.md").write_text(to_markdown(report) + calibration_markdown(cal))
    try:
        plot(report, out_dir / "bench-throughput.png")
    except ImportError as exc:  # matplotlib is the optional extra "bench": keep the numbers without it
        log(f"no chart: {exc}")
    return report


def check_targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for a, b, want, cond in TARGETS:
        res = report["conditions"].get(cond) if cond else None
        if res is None or not res["median"].get(a) or not res["median"].get(b):
            continue
        ratio = res["median"][a] / res["median"][b]
        out.append({"ratio": f"{a} / {b}", "condition": cond, "target": want, "measured": round(ratio, 3),
                    "met": ratio >= want})
    return out


def to_markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [f"# ntm bench throughput ({report['started']})", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, Linux {m['kernel']}, Python {m['python']}. "
             f"iperf3 TCP, one stream, mn -> peer; {report['runs']} runs x {report['seconds']} s per mode, "
             "medians (Mbit/s).", ""]
    conds = list(report["conditions"])
    loads = [report["conditions"][c].get("load_summary") for c in conds]
    if all(loads):
        lines += ["Load average (1 min) after the runs: " + "; ".join(
            f"{c} {ld['min']:.2f}-{ld['max']:.2f} (median {ld['median']:.2f})"
            for c, ld in zip(conds, loads, strict=True)) + ".", ""]
    lines.append("| mode | paper (100 Mbit/s) | " + " | ".join(f"{c} median" for c in conds) + " |")
    lines.append("|---|---|" + "---|" * len(conds))
    for mode in report["modes"]:
        paper = PAPER.get(mode)
        row = [mode, f"{paper}" if paper else ""]
        for c in conds:
            v = report["conditions"][c]["median"].get(mode)
            row.append(f"{v:.1f}" if v is not None else "")
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Ratios (ours / baseline, medians of the same run):", ""]
    lines.append("| ratio | paper | " + " | ".join(conds) + " |")
    lines.append("|---|---|" + "---|" * len(conds))
    keys: list[str] = []
    for c in conds:
        keys += [k for k in report["conditions"][c]["ratios"] if k not in keys]
    for k in keys:
        pr = (f"{PAPER['ntm-rs-n'] / PAPER['ntm-direct']:.3f}"
              if k in ("ntm-rs-n / ntm-direct", "ntm-rs-n-v4 / ntm-direct-v4") else "")
        lines.append(f"| {k} | {pr} | " + " | ".join(
            str(report["conditions"][c]["ratios"].get(k, "")) for c in conds) + " |")
    for c in conds:
        shown = [f"{p['peer']} {p['mode']}" + (f" via {p['rs']}" + (" (kernel)" if p["in_kernel"] else " (daemon)")
                                               if p.get("rs") else "")
                 for p in report["conditions"][c].get("paths", [])]
        if shown:
            lines += ["", f"mn's paths after the {c} runs: " + "; ".join(shown) + "."]
    if report.get("targets"):
        lines += ["", "Issue 9 targets:", "", "| ratio | links | target | measured | met |", "|---|---|---|---|---|"]
        for t in report["targets"]:
            lines.append(f"| {t['ratio']} | {t['condition']} | >= {t['target']} | {t['measured']} | "
                         f"{'yes' if t['met'] else 'NO'} |")
        six = report["conditions"].get("100mbit", {}).get("ratios", {}).get("ntm-rs-n / ntm-direct")
        if six is not None:
            lines += ["", f"At 100 Mbit/s the RS-N target is judged with inner IPv4, the paper's condition. With "
                      f"inner IPv6 (what glibc picks for a dual-stack name) ntm-rs-n / ntm-direct is {six}: the "
                      "relay's single link carries the GN leg's plain IPv6 TCP (MSS 1328) and the GN's ACKs sealed "
                      "back to mn, a ceiling of about 0.965 on this topology (docs/dataplane.md)."]
    lines.append("")
    return "\n".join(lines)


#: What to do when the chart's library is missing (it is the optional extra ``bench``).
NO_MATPLOTLIB = "matplotlib is not installed: pip install 'ntmobile[bench]'"


def plot(report: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib
    except ImportError:
        raise ImportError(NO_MATPLOTLIB) from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conds = list(report["conditions"])
    fig, axes = plt.subplots(1, len(conds), figsize=(6 * len(conds), 4.5), squeeze=False)
    for ax, c in zip(axes[0], conds, strict=True):
        res = report["conditions"][c]
        modes = [m for m in report["modes"] if m in res["median"]]
        meds = [res["median"][m] for m in modes]
        bars = ax.bar(range(len(modes)), meds, color=["#888888" if not m.startswith("ntm") else "#1f77b4"
                                                      for m in modes])
        for i, m in enumerate(modes):
            pts = res["samples"].get(m, [])
            ax.scatter([i] * len(pts), pts, s=8, color="black", zorder=3)
        if c == "100mbit":
            for i, m in enumerate(modes):
                if m in PAPER:
                    ax.scatter([i], [PAPER[m]], marker="_", s=400, color="red", zorder=4,
                               label="paper" if m == "ntm-direct" else None)
            ax.legend(loc="lower right")
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
        ax.set_xticks(range(len(modes)), modes, rotation=30, ha="right")
        ax.set_ylabel("Mbit/s (median)")
        ax.set_title(f"{c} links")
    m = report["machine"]
    fig.suptitle(f"ntm bench throughput: {m['cpu']}, {m['cores']} cores, Linux {m['kernel']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
