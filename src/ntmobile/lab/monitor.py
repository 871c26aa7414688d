"""`ntm lab up ... --monitor`: Debian's Prometheus on a lab host, scraping every daemon's /metrics over
the lab network (docs/lab.md, "Monitoring").

The monitor host is a host without daemons or NAT on the first DC's network (else the DC's host).
A daemon on that network is scraped at its address; a node inside a NAT router's network through a
TCP port forward on the router (its outside address, port 19412, 19413, ... in order), added to the
router's NAT table for that port only, so the NAT's UDP behaviour is what the profile says. The lab's
daemons listen on 0.0.0.0 (their namespace's addresses only). Prometheus keeps its data in the lab's
work directory and is a tracked process of the lab: `ntm lab down` stops it by PID.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ntmobile.runtime.config import DC_METRICS, NODE_METRICS, RS_METRICS

if TYPE_CHECKING:
    from .lab import Lab

PROMETHEUS = "/usr/bin/prometheus"
PROMETHEUS_PORT = 9090
#: The lab scrapes often: a test sees a change within seconds.
SCRAPE_INTERVAL = "2s"
#: First outside port of the forwards to nodes behind a NAT.
FORWARD_BASE = 19412
PORTS = {kind: int(listen.rsplit(":", 1)[1]) for kind, listen in
         (("dc", DC_METRICS), ("rs", RS_METRICS), ("node", NODE_METRICS))}


class MonitorError(RuntimeError):
    pass


@dataclass(frozen=True)
class Target:
    host: str
    kind: str
    address: str  # host:port as the monitor host reaches it


def monitor_host(lab: Lab) -> str:
    topo = lab.topology
    dc = next((h for h in topo.hosts if any(d.kind == "dc" for d in h.daemons)), None)
    if dc is None:
        raise MonitorError("--monitor: the topology has no DC to watch")
    net = dc.initial_link.network
    for h in topo.hosts:
        if not h.daemons and h.nat is None and any(ln.network == net for ln in h.links):
            return h.name
    return dc.name


def plan(lab: Lab, mon: str) -> tuple[list[Target], list[tuple[str, str, int, str, int]]]:
    """The scrape targets, and the port forwards (router, outside address, outside port, node address,
    node port) that reach nodes behind NAT routers."""
    topo = lab.topology
    net = topo.host(mon).initial_link.network
    routers = {h.nat.inside: h for h in topo.hosts if h.nat is not None and h.nat.outside == net}
    targets: list[Target] = []
    forwards: list[tuple[str, str, int, str, int]] = []
    next_port = FORWARD_BASE
    for h in topo.hosts:
        for d in h.daemons:
            port = PORTS.get(d.kind)
            if port is None:
                continue
            here = next((ln for ln in h.links if ln.network == net), None)
            if here is not None:
                targets.append(Target(h.name, d.kind, f"{here.ipv4}:{port}"))
                continue
            ln = h.initial_link
            router = routers.get(ln.network)
            if router is None:
                continue  # not reachable from the monitor's network (docs/lab.md says which)
            wan = next(x for x in router.links if x.network == net)
            forwards.append((router.name, str(wan.ipv4), next_port, str(ln.ipv4), port))
            targets.append(Target(h.name, d.kind, f"{wan.ipv4}:{next_port}"))
            next_port += 1
    return targets, forwards


def config(targets: list[Target]) -> str:
    """prometheus.yml (JSON is YAML): one job per daemon kind, each target labelled with its lab host."""
    jobs = []
    for kind in ("dc", "rs", "node"):
        mine = [t for t in targets if t.kind == kind]
        if mine:
            jobs.append({"job_name": kind, "static_configs": [{"targets": [t.address], "labels": {"host": t.host}}
                                                              for t in mine]})
    return json.dumps({"global": {"scrape_interval": SCRAPE_INTERVAL, "scrape_timeout": SCRAPE_INTERVAL},
                       "scrape_configs": jobs}, indent=2) + "\n"


def forward_rules(lab: Lab, router: str, rules: list[tuple[str, str, int, str, int]]) -> str:
    """The router's port forwards: DNAT in a table of their own, and an accept for exactly those
    connections in the NAT table's forwarding chain (its policy drops what it does not accept)."""
    h = lab.topology.host(router)
    assert h.nat is not None
    wan = next(ln for ln in h.links if ln.network == h.nat.outside).ifname
    lan = next(ln for ln in h.links if ln.network == h.nat.inside).ifname
    table = f"{lab.prefix}_mon"
    lines = [f"table ip {table} {{", "  chain pre {", "    type nat hook prerouting priority dstnat; policy accept;"]
    lines += [f'    iifname "{wan}" ip daddr {out} tcp dport {oport} dnat to {inner}:{iport}'
              for _, out, oport, inner, iport in rules]
    lines += ["  }", "}"]
    lines += [f'add rule ip {lab.prefix}_nat forwarding iifname "{wan}" oifname "{lan}" ip daddr {inner} '
              f"tcp dport {iport} ct status dnat accept" for _, _, _, inner, iport in rules]
    return "\n".join(lines) + "\n"


def start(lab: Lab) -> str:
    """Start Prometheus for ``lab``; returns its URL (on the monitor host's address)."""
    if shutil.which(PROMETHEUS) is None:
        raise MonitorError(f"--monitor needs {PROMETHEUS}: apt-get install prometheus")
    mon = monitor_host(lab)
    targets, forwards = plan(lab, mon)
    for router in sorted({f[0] for f in forwards}):
        lab.exec(router, ["nft", "-f", "-"], input=forward_rules(lab, router, [f for f in forwards if f[0] == router]))
    d = lab.host_workdir(mon) / "prometheus"
    (d / "data").mkdir(parents=True, exist_ok=True)
    (d / "prometheus.yml").write_text(config(targets))
    addr = lab.addr(mon, 4)
    lab.spawn(mon, [PROMETHEUS, f"--config.file={d / 'prometheus.yml'}", f"--storage.tsdb.path={d / 'data'}",
                    f"--web.listen-address={addr}:{PROMETHEUS_PORT}", "--storage.tsdb.retention.time=1d"],
              "prometheus")
    url = f"http://{addr}:{PROMETHEUS_PORT}"
    deadline = time.monotonic() + 30
    while True:
        cp = lab.exec(mon, ["curl", "-sf", "-m", "2", f"{url}/-/ready"], check=False, timeout=5)
        if cp.returncode == 0:
            return url
        if time.monotonic() > deadline:
            raise MonitorError(f"Prometheus on {mon} not ready after 30 s "
                               f"(log: {lab.workdir}/logs/{mon}-prometheus.log)")
        time.sleep(0.2)
