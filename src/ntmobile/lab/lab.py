"""The network-namespace lab: brings a Topology up, runs commands in it, moves hosts, tears down.

Nothing is ever created in the root namespace: segments are bridges in the lab's switch namespace
`<prefix>-sw`, every host is a namespace `<prefix>-<host>`, and veth pairs are created directly inside
the namespaces. Everything the lab creates is recorded in /run/ntmlab/<prefix>/state.json.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ntmobile.osops.netns import call_in_netns
from ntmobile.runtime import control

from . import apps, dns, nft
from .daemons import DaemonContext, DaemonLaunch, daemon_builder, daemon_kinds
from .state import (
    ETC_NETNS,
    PREFIX_RE,
    BigFile,
    LabState,
    ProcRecord,
    lab_dir,
    listening_ports,
    load_state,
    proc_alive,
    proc_starttime,
    save_state,
)
from .topology import Host, Link, Topology, load_topology

READY_TIMEOUT = 20.0


class LabError(RuntimeError):
    """A lab operation failed; the message is one line saying what and why."""


def _run(argv: Sequence[str], *, input: str | None = None, timeout: float = 30.0) -> str:
    try:
        cp = subprocess.run(list(argv), input=input, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError as e:
        raise LabError(f"{argv[0]} is not installed (run scripts/setup.sh)") from e
    except subprocess.TimeoutExpired as e:
        raise LabError(f"{' '.join(argv[:4])} timed out") from e
    if cp.returncode != 0:
        what = " ".join(argv[:6])
        err = (cp.stderr.strip() or cp.stdout.strip()).splitlines()
        raise LabError(f"{what}: {err[0].strip() if err else f'exit {cp.returncode}'}")
    return cp.stdout


def _netns_list() -> list[str]:
    try:
        return sorted(os.listdir("/run/netns"))
    except FileNotFoundError:
        return []


def _ns_pids(ns: str) -> list[int]:
    try:
        cp = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [int(x) for x in cp.stdout.split() if x.isdigit()]


def _prefixlen(link: Link, topo: Topology, family: int) -> int:
    net = topo.network(link.network)
    if family == 4:
        return net.ipv4.prefixlen
    assert net.ipv6 is not None
    return net.ipv6.prefixlen


class Lab:
    """A running lab. Create with Lab.up(...) or reattach with Lab.attach(prefix)."""

    def __init__(self, state: LabState) -> None:
        self.state = state
        self._popens: dict[int, subprocess.Popen[Any]] = {}
        self._building = False

    # --- naming ---------------------------------------------------------------------------------

    @property
    def prefix(self) -> str:
        return self.state.prefix

    @property
    def topology(self) -> Topology:
        return self.state.topology

    @property
    def workdir(self) -> Path:
        return Path(self.state.workdir)

    def ns(self, host: str) -> str:
        """Namespace name of a host (`sw` is the switch namespace holding the bridges)."""
        if host != "sw":
            self.topology.host(host)
        return f"{self.prefix}-{host}"

    def host_workdir(self, host: str) -> Path:
        d = self.workdir / host
        d.mkdir(mode=0o755, parents=True, exist_ok=True)
        return d

    @staticmethod
    def _peer(host_index: int, host: str, link_index: int) -> str:
        return f"{host}-{link_index}"

    # --- lifecycle ------------------------------------------------------------------------------

    @classmethod
    def up(cls, topology: Topology | str | Path, *, prefix: str = "ntm", bare: bool = False,
           monitor: bool = False) -> Lab:
        """Create every namespace, link, NAT and service of `topology`; on any failure, tear down.
        With `monitor`, a Prometheus scraping every daemon (lab/monitor.py)."""
        if os.geteuid() != 0:
            raise LabError("the lab needs root (network namespaces, nftables): run it as root")
        if not PREFIX_RE.match(prefix):
            raise LabError(f"lab name {prefix!r}: use 1-8 lowercase letters/digits, starting with a letter")
        topo = topology if isinstance(topology, Topology) else load_topology(topology)
        if load_state(prefix) is not None or any(n.startswith(prefix + "-") for n in _netns_list()
                                                  if re.fullmatch(rf"{prefix}-[a-z0-9]+", n)):
            raise LabError(f"lab {prefix!r} is already up (ntm lab down --name {prefix} first)")
        if not bare:
            for h in topo.hosts:
                for d in h.daemons:
                    try:
                        builder = daemon_builder(d.kind)
                    except RuntimeError as e:
                        raise LabError(str(e)) from e
                    if builder is None:
                        known = ", ".join(daemon_kinds()) or "none yet"
                        raise LabError(f"hosts.{h.name}.daemons: unknown daemon kind {d.kind!r} "
                                       f"(known: {known}; --bare skips daemons)")
        t0 = time.monotonic()
        ldir = lab_dir(prefix)
        ldir.mkdir(parents=True, exist_ok=True)
        ldir.chmod(0o755)
        work = ldir / "work"
        work.mkdir(mode=0o755, exist_ok=True)
        state = LabState(prefix=prefix, topology=topo, bare=bare, workdir=str(work), created=time.time(),
                         current={h.name: h.initial_link.ifname for h in topo.hosts})
        save_state(state)
        lab = cls(state)
        try:
            lab._building = True
            lab._build()
            if monitor:
                from .monitor import MonitorError
                from .monitor import start as start_monitor

                try:
                    lab.state.monitor_url = start_monitor(lab)
                except MonitorError as e:
                    raise LabError(str(e)) from None
            lab._building = False
            lab.state.up_seconds = round(time.monotonic() - t0, 2)
            lab._save()
        except BaseException:
            lab.down()
            raise
        return lab

    @classmethod
    def attach(cls, prefix: str = "ntm") -> Lab:
        """Reattach to a running lab from its state file."""
        st = load_state(prefix)
        if st is None:
            others = ", ".join(running_labs()) or "none"
            raise LabError(f"no lab {prefix!r} is up (no state under {lab_dir(prefix)}; running labs: {others})")
        return cls(st)

    def _save(self) -> None:
        save_state(self.state)

    def _refresh(self) -> None:
        """Re-read the state file: another process (e.g. `ntm lab move`) may have changed it."""
        if not self._building:
            latest = load_state(self.prefix)
            if latest is not None:
                self.state = latest

    def _update(self, change: Callable[[LabState], None]) -> None:
        self._refresh()
        change(self.state)
        self._save()

    def down(self) -> None:
        """Stop every process, delete every namespace and file of the lab. Idempotent."""
        teardown(self.prefix, self.state, self._popens)
        self._popens.clear()

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    # --- building -------------------------------------------------------------------------------

    def _build(self) -> None:
        topo = self.topology
        sw = self.ns("sw")
        for ns in [sw, *(self.ns(h.name) for h in topo.hosts)]:
            _run(["ip", "netns", "add", ns])
            self.state.namespaces.append(ns)
            self._save()
        # switch: one bridge per network
        _run(["ip", "netns", "exec", sw, "sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1",
              "net.ipv6.conf.default.disable_ipv6=1"])
        sw_cmds = ["link set lo up"]
        for net in topo.networks:
            sw_cmds += [f"link add br-{net.name} type bridge stp_state 0 forward_delay 0 mcast_snooping 0",
                        f"link set br-{net.name} up"]
        self._batch(sw, sw_cmds)
        # hosts: sysctls, veth legs (peer into the switch), addresses and routes
        for hi, h in enumerate(topo.hosts):
            ns = self.ns(h.name)
            sysctls = ["net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0",
                       "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"]
            if h.nat is not None:
                sysctls += ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"]
                if h.nat.udp_timeout is not None:
                    t = h.nat.udp_timeout
                    sysctls += [f"net.netfilter.nf_conntrack_udp_timeout={t}",
                                f"net.netfilter.nf_conntrack_udp_timeout_stream={t}"]
            _run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w", *sysctls])
            cmds = ["link set lo up"]
            for li, ln in enumerate(h.links):
                cmds.append(f"link add {ln.ifname} type veth peer name {self._peer(hi, h.name, li)} netns {sw}")
            self._batch(ns, cmds)
        sw_cmds = []
        for hi, h in enumerate(topo.hosts):
            for li, ln in enumerate(h.links):
                peer = self._peer(hi, h.name, li)
                sw_cmds += [f"link set {peer} master br-{ln.network}", f"link set {peer} up"]
        self._batch(sw, sw_cmds)
        for h in topo.hosts:
            active = h.links if h.is_router else [h.link(self.state.current[h.name])]
            cmds = []
            for ln in active:
                cmds += self._leg_up_cmds(h, ln)
            if h.nat is not None and h.nat.profile == "one_to_one":
                wan = next(ln for ln in h.links if ln.network == h.nat.outside)
                plen = topo.network(wan.network).ipv4.prefixlen
                cmds.append(f"addr add {h.nat.one_to_one_outside}/{plen} dev {wan.ifname}")
            self._batch(self.ns(h.name), cmds)
        self._apply_link_shaping()
        self._apply_nft()
        self._write_etc()
        self._start_services()

    def _batch(self, ns: str, cmds: list[str]) -> None:
        if cmds:
            _run(["ip", "-n", ns, "-batch", "-"], input="\n".join(cmds) + "\n")

    def _routes(self, h: Host, ln: Link) -> list[str]:
        """Route commands for host `h` with leg `ln` active: default routes and plain-routing routes."""
        topo = self.topology
        net = topo.network(ln.network)
        cmds = []
        if not h.is_router or (h.nat is not None and ln.network == h.nat.outside):
            if net.gateway4 is not None and ipaddress.IPv4Address(net.gateway4) != ln.ipv4:
                cmds.append(f"route replace default via {net.gateway4} dev {ln.ifname}")
            if net.gateway6 is not None and ln.ipv6 is not None and net.gateway6 != ln.ipv6:
                cmds.append(f"route replace ::/0 via {net.gateway6} dev {ln.ifname}")
        # routers with profile "none" route their inside network: hosts on the outside learn it
        for r in topo.hosts:
            if r.nat is None or r.nat.profile != "none" or r.nat.outside != ln.network or r.name == h.name:
                continue
            via = next(x for x in r.links if x.network == r.nat.outside)
            inside = topo.network(r.nat.inside)
            cmds.append(f"route replace {inside.ipv4} via {via.ipv4} dev {ln.ifname}")
        return cmds

    def _leg_up_cmds(self, h: Host, ln: Link) -> list[str]:
        return [f"link set {ln.ifname} up", *self._leg_addr_cmds(h, ln)]

    def _leg_addr_cmds(self, h: Host, ln: Link) -> list[str]:
        cmds = [f"addr add {ln.ipv4}/{_prefixlen(ln, self.topology, 4)} dev {ln.ifname}"]
        if ln.ipv6 is not None:
            cmds.append(f"addr add {ln.ipv6}/{_prefixlen(ln, self.topology, 6)} dev {ln.ifname} nodad")
        return cmds + self._routes(h, ln)

    def _shaping(self, ln: Link) -> tuple[float | None, float | None]:
        d = self.topology.link_defaults
        rate = ln.rate_mbit if ln.rate_mbit is not None else d.rate_mbit
        loss = ln.loss_percent if ln.loss_percent is not None else d.loss_percent
        return rate, loss

    def _apply_link_shaping(self) -> None:
        sw_tc: list[str] = []
        for hi, h in enumerate(self.topology.hosts):
            host_tc: list[str] = []
            for li, ln in enumerate(h.links):
                rate, _ = self._shaping(ln)
                if rate is None:
                    continue
                burst = max(int(rate * 1e6 / 8 / 250), 16 * 1024)  # >= one tick of data at HZ=250
                spec = f"root tbf rate {rate}mbit burst {burst} latency 50ms"
                host_tc.append(f"qdisc add dev {ln.ifname} {spec}")
                sw_tc.append(f"qdisc add dev {self._peer(hi, h.name, li)} {spec}")
            if host_tc:
                _run(["tc", "-n", self.ns(h.name), "-batch", "-"], input="\n".join(host_tc) + "\n")
        if sw_tc:
            _run(["tc", "-n", self.ns("sw"), "-batch", "-"], input="\n".join(sw_tc) + "\n")

    def _apply_nft(self) -> None:
        for h in self.topology.hosts:
            text = ""
            if h.nat is not None:
                wan = next(ln for ln in h.links if ln.network == h.nat.outside)
                lan = next(ln for ln in h.links if ln.network == h.nat.inside)
                text += nft.nat_ruleset(f"{self.prefix}_nat", h.nat, wan=wan.ifname, lan=lan.ifname)
            legs = [(ln.ifname, loss) for ln in h.links if (loss := self._shaping(ln)[1])]
            text += nft.loss_ruleset(f"{self.prefix}_loss", legs)
            if text:
                _run(["ip", "netns", "exec", self.ns(h.name), "nft", "-f", "-"], input=text)

    def resolvers(self) -> list[str]:
        """Addresses of the lab's recursive resolver (v4 first), or [] without DNS."""
        if self.topology.dns is None:
            return []
        r = self.topology.host(self.topology.dns.resolver).initial_link
        return [str(r.ipv4)] + ([str(r.ipv6)] if r.ipv6 else [])

    def _write_etc(self) -> None:
        key = self.workdir / "id_ed25519"
        self._client_pub = apps.write_keypair(key, f"ntm-lab-{self.prefix}")
        self.state.client_key = str(key)
        ssh_conf = apps.ssh_client_config(key)
        for h in self.topology.hosts:
            d = ETC_NETNS / self.ns(h.name)
            d.mkdir(parents=True, exist_ok=True)
            self.state.etc_dirs.append(str(d))
            self._save()
            servers = h.resolv if h.resolv is not None else self.resolvers()
            lines = [f"# ntm lab {self.prefix}: host {h.name}"] + [f"nameserver {s}" for s in servers]
            (d / "resolv.conf").write_text("\n".join(lines) + "\n")
            (d / "ssh").mkdir(exist_ok=True)
            (d / "ssh" / "ssh_config").write_text(ssh_conf)

    def _addr_of(self, host: str) -> tuple[str, str | None]:
        ln = self.topology.host(host).initial_link
        return str(ln.ipv4), (str(ln.ipv6) if ln.ipv6 else None)

    def _start_services(self) -> None:
        topo = self.topology
        waits: list[tuple[ProcRecord, tuple[int, ...], tuple[int, ...]]] = []
        checks: list[tuple[ProcRecord, DaemonLaunch]] = []

        def start(host: str, name: str, launch: tuple[list[str], dict[Path, str], tuple[int, ...]],
                  udp: tuple[int, ...] = ()) -> ProcRecord:
            argv, files, tcp = launch
            for p, text in files.items():
                p.write_text(text)
            rec = self.spawn(host, argv, name)
            waits.append((rec, tcp, udp))
            return rec

        if topo.dns is not None:
            d = topo.dns
            nsd_hosts: dict[str, dict[str, str]] = {}
            nsd_hosts.setdefault(d.root, {}).update(dns.root_server_zones(d, self._addr_of))
            for z in d.zones:
                nsd_hosts.setdefault(z.server, {}).update(dns.static_zones(d, z.server, self._addr_of))
            for host, zones in nsd_hosts.items():
                w = self.host_workdir(host)
                files = {w / dns.zone_file_name(z): text for z, text in zones.items()}
                for zname, text in zones.items():  # nsd logs bad zones and serves on: check them first
                    zf = w / dns.zone_file_name(zname)
                    zf.write_text(text)
                    cp = subprocess.run(["nsd-checkzone", zname, str(zf)], capture_output=True, text=True,
                                        timeout=30)
                    if cp.returncode != 0:
                        msg = (cp.stderr.strip() or cp.stdout.strip()).splitlines()
                        detail = msg[0].split("error: ", 1)[-1] if msg else f"exit {cp.returncode}"
                        raise LabError(f"dns zone {zname} on {host}: {detail}")
                v4, v6 = self._addr_of(host)
                conf = w / "nsd.conf"
                files[conf] = dns.nsd_conf(w, [a for a in (v4, v6) if a], list(zones))
                start(host, "nsd", (["nsd", "-d", "-c", str(conf)], files, (53,)), (53,))
            w = self.host_workdir(d.resolver)
            v4, v6 = self._addr_of(d.resolver)
            conf = w / "unbound.conf"
            files = {conf: dns.unbound_conf(w, [a for a in (v4, v6) if a]),
                     w / "root.hints": dns.root_hints(d, self._addr_of)}
            start(d.resolver, "unbound", (["unbound", "-d", "-c", str(conf)], files, (53,)), (53,))
        for h in topo.hosts:
            if not h.services:
                continue
            w = self.host_workdir(h.name)
            docroot = w / "www"
            docroot.mkdir(mode=0o755, exist_ok=True)
            if ("http" in h.services or "ftp" in h.services) and self.state.big_file is None:
                path = docroot / apps.BIG_FILE_NAME
                sha = apps.write_big_file(path)
                self.state.big_file = BigFile(path=str(path), url_path=f"/{apps.BIG_FILE_NAME}",
                                              size=apps.BIG_FILE_SIZE, sha256=sha)
            for svc in h.services:
                if svc == "iperf3":
                    start(h.name, "iperf3", apps.iperf3_service(w))
                elif svc == "http":
                    start(h.name, "httpd", apps.http_service(w, docroot))
                elif svc == "ftp":
                    start(h.name, "vsftpd", apps.ftp_service(w, docroot))
                elif svc == "ssh":
                    start(h.name, "sshd", apps.ssh_service(w, self._client_pub))
                elif svc == "tftp":
                    start(h.name, "tftpd", apps.tftp_service(w, docroot), (69,))
        if not self.state.bare:
            for h in topo.hosts:
                for i, spec in enumerate(h.daemons):
                    builder = daemon_builder(spec.kind)
                    assert builder is not None
                    w = self.host_workdir(h.name)
                    launch: DaemonLaunch = builder(DaemonContext(lab=self, host=h.name, workdir=w, spec=spec))
                    rec = start(h.name, f"{spec.kind}{i or ''}",
                                (launch.argv, launch.files, launch.ready_tcp), launch.ready_udp)
                    if launch.ready_control is not None and launch.ready_when is not None:
                        checks.append((rec, launch))
        deadline = time.monotonic() + READY_TIMEOUT
        for rec, tcp, udp in waits:
            self._wait_ready(rec, tcp, udp, deadline)
        for rec, launch in checks:
            self._wait_status(rec, launch, deadline)

    def _wait_ready(self, rec: ProcRecord, tcp: tuple[int, ...], udp: tuple[int, ...],
                    deadline: float) -> None:
        while True:
            if not proc_alive(rec):
                tail = ""
                if rec.log:
                    with contextlib.suppress(OSError):
                        lines = Path(rec.log).read_text(errors="replace").strip().splitlines()
                        tail = f": {lines[-1]}" if lines else ""
                raise LabError(f"{rec.name} on {rec.host} exited during start{tail} (log {rec.log})")
            if (set(tcp) <= listening_ports(rec.pid, "tcp")
                    and set(udp) <= listening_ports(rec.pid, "udp")):
                return
            if time.monotonic() > deadline:
                raise LabError(f"{rec.name} on {rec.host} is not listening after {READY_TIMEOUT:.0f} s "
                               f"(log {rec.log})")
            time.sleep(0.02)

    def _wait_status(self, rec: ProcRecord, launch: DaemonLaunch, deadline: float) -> None:
        """Poll the daemon's control socket until its status says it is ready (e.g. registered)."""
        assert launch.ready_control is not None and launch.ready_when is not None
        last = "no answer on its control socket"
        while True:
            if not proc_alive(rec):
                raise LabError(f"{rec.name} on {rec.host} exited during start (log {rec.log})")
            try:
                st = call_in_netns(self.ns(rec.host), control.query, launch.ready_control, "status", 1.0,
                                   timeout=5.0)
            except (ConnectionError, OSError, TimeoutError, ValueError) as e:
                last = str(e)
            else:
                if launch.ready_when(st):
                    return
                last = "its status does not say ready yet"
            if time.monotonic() > deadline:
                raise LabError(f"{rec.name} on {rec.host} is not ready after {READY_TIMEOUT:.0f} s: {last} "
                               f"(log {rec.log})")
            time.sleep(0.05)

    # --- running things -------------------------------------------------------------------------

    def _nsargv(self, host: str, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns(host), *argv]

    def exec(self, host: str, argv: Sequence[str], *, check: bool = True, timeout: float = 30.0,
             input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run argv in the host's namespace, wait (killed after `timeout`), capture text output."""
        with subprocess.Popen(self._nsargv(host, argv), stdin=subprocess.PIPE if input is not None else
                              subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True) as p:
            try:
                out, err = p.communicate(input, timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.communicate()
                raise
        cp = subprocess.CompletedProcess(p.args, p.returncode, out, err)
        if check and cp.returncode != 0:
            raise LabError(f"{host}: {' '.join(argv)}: exit {cp.returncode}: "
                           f"{(cp.stderr.strip() or cp.stdout.strip())[-300:]}")
        return cp

    def popen(self, host: str, argv: Sequence[str], *, name: str | None = None,
              **kwargs: Any) -> subprocess.Popen[Any]:
        """Start argv in the host's namespace (own process group), tracked by PID until down()."""
        p: subprocess.Popen[Any] = subprocess.Popen(self._nsargv(host, argv), start_new_session=True,
                                                    **kwargs)
        self._popens[p.pid] = p
        self._track(name or os.path.basename(argv[0]), host, p.pid, argv, None)
        return p

    def spawn(self, host: str, argv: Sequence[str], name: str) -> ProcRecord:
        """Start a long-running process in the host's namespace, output to a log file in the lab dir."""
        logdir = self.workdir / "logs"
        logdir.mkdir(exist_ok=True)
        log = logdir / f"{host}-{name}.log"
        with open(log, "ab") as f:
            p = subprocess.Popen(self._nsargv(host, argv), stdin=subprocess.DEVNULL, stdout=f, stderr=f,
                                 start_new_session=True)
        self._popens[p.pid] = p
        return self._track(name, host, p.pid, argv, str(log))

    def _track(self, name: str, host: str, pid: int, argv: Sequence[str], log: str | None) -> ProcRecord:
        start = proc_starttime(pid)
        rec = ProcRecord(name=name, host=host, pid=pid, starttime=start if start is not None else -1,
                         argv=list(argv), log=log)
        self._update(lambda st: st.processes.append(rec))
        return rec

    def stop(self, rec: ProcRecord, timeout: float = 5.0) -> None:
        """Stop one tracked process (its process group) and forget it."""
        _kill_all([rec], self._popens, timeout)

        def forget(st: LabState) -> None:
            st.processes = [r for r in st.processes if r.pid != rec.pid]
        self._update(forget)

    # --- mobility -------------------------------------------------------------------------------

    def move(self, host: str, network: str) -> None:
        """Move `host` to the link called `network` (link name or network name): the old leg goes down
        (addresses flushed) first, then the new leg comes up with its address and default route."""
        self._refresh()
        h = self.topology.host(host)
        if h.is_router:
            raise LabError(f"{host} is a router; only hosts with several links can move")
        try:
            new = h.link(network)
        except KeyError as e:
            choices = ", ".join(ln.ifname for ln in h.links)
            raise LabError(f"{host} cannot join {network!r} (its links: {choices})") from e
        old = h.link(self.state.current[host])
        if old.ifname == new.ifname:
            return
        # The new leg's link comes up first and the move waits until it carries frames; then, in one
        # batch, the old leg goes down and the new one gets its address and default route. Like a real
        # network, where the address (DHCP) comes once the link carries: until the kernel's link watch
        # has run, a veth drops what it sends (noop qdisc) and the switch's port is not forwarding yet,
        # so a node announcing itself at once would lose its first ARP request and wait for the
        # kernel's ARP retransmission, 1 s later (docs/handover.md, "The 1 s outlier").
        ns = self.ns(host)
        self._batch(ns, [f"link set {new.ifname} up"])
        self._wait_leg_ready(host, h.links.index(new), new.ifname)
        self._batch(ns, [f"addr flush dev {old.ifname}", f"link set {old.ifname} down", *self._leg_addr_cmds(h, new)])
        self._update(lambda st: st.current.__setitem__(host, new.ifname))

    def _wait_leg_ready(self, host: str, link_index: int, ifname: str, timeout: float = 3.0) -> None:
        """Wait until the leg ``ifname`` of ``host`` is operationally up and its switch port forwards."""
        peer = self._peer(0, host, link_index)
        deadline = time.monotonic() + timeout
        while True:
            ours = json.loads(_run(["ip", "-n", self.ns(host), "-j", "link", "show", "dev", ifname]) or "[]")
            theirs = json.loads(_run(["ip", "-n", self.ns("sw"), "-j", "-d", "link", "show", "dev", peer]) or "[]")
            up = bool(ours) and ours[0].get("operstate") == "UP" and ours[0].get("qdisc") != "noop"
            slave = (theirs[0].get("linkinfo") or {}).get("info_slave_data") or {} if theirs else {}
            forwarding = slave.get("state", "forwarding") == "forwarding"
            if up and theirs and theirs[0].get("operstate") == "UP" and forwarding:
                return
            if time.monotonic() > deadline:
                raise LabError(f"{host}'s leg {ifname} did not come up within {timeout:.0f} s")
            time.sleep(0.001)

    def network_of(self, host: str) -> str:
        """Name of the active link of a host (for movable hosts, e.g. neta/netb/global)."""
        self._refresh()
        return self.state.current[host]

    def addr(self, host: str, family: int = 4, link: str | None = None) -> str:
        """The host's address (family 4 or 6) on its active link, or on `link`."""
        if link is None:
            self._refresh()
        h = self.topology.host(host)
        ln = h.link(link or self.state.current[host])
        a = ln.ipv4 if family == 4 else ln.ipv6
        if a is None:
            raise LabError(f"{host} has no IPv{family} address on {ln.ifname}")
        return str(a)

    # --- status ---------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        self._refresh()
        topo = self.topology
        hosts: dict[str, Any] = {}
        for h in topo.hosts:
            cur = self.state.current.get(h.name)
            links = []
            for ln in h.links:
                rate, loss = self._shaping(ln)
                links.append({"name": ln.ifname, "network": ln.network, "ipv4": str(ln.ipv4),
                              "ipv6": str(ln.ipv6) if ln.ipv6 else None,
                              "active": h.is_router or ln.ifname == cur,
                              "rate_mbit": rate, "loss_percent": loss})
            hosts[h.name] = {
                "namespace": self.ns(h.name),
                "network": cur,
                "links": links,
                "nat": h.nat.model_dump(mode="json") if h.nat else None,
                "dns_names": h.dns_names,
                "resolv": h.resolv if h.resolv is not None else self.resolvers(),
                "services": h.services,
                "daemons": [d.kind for d in h.daemons] if not self.state.bare else [],
            }
        return {
            "prefix": self.prefix,
            "topology": topo.name,
            "monitor": self.state.monitor_url,
            "bare": self.state.bare,
            "up_seconds": self.state.up_seconds,
            "workdir": self.state.workdir,
            "switch_namespace": self.ns("sw"),
            "networks": {n.name: {"ipv4": str(n.ipv4), "ipv6": str(n.ipv6) if n.ipv6 else None,
                                  "gateway4": str(n.gateway4) if n.gateway4 else None,
                                  "gateway6": str(n.gateway6) if n.gateway6 else None}
                         for n in topo.networks},
            "hosts": hosts,
            "resolver": self.resolvers(),
            "big_file": self.state.big_file.model_dump() if self.state.big_file else None,
            "client_key": self.state.client_key,
            "processes": [{"name": r.name, "host": r.host, "pid": r.pid, "alive": proc_alive(r),
                           "argv": r.argv, "log": r.log} for r in self.state.processes],
        }


def _kill_all(recs: list[ProcRecord], popens: dict[int, subprocess.Popen[Any]], timeout: float) -> None:
    """SIGTERM each live tracked process group, wait, then SIGKILL what is left. Reaps our children."""
    live = [r for r in recs if proc_alive(r)]
    for r in live:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(r.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while True:
        for pid, p in list(popens.items()):
            if p.poll() is not None:
                popens.pop(pid)
        live = [r for r in live if proc_alive(r)]
        if not live or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    for r in live:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(r.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(r.pid, signal.SIGKILL)
    mine = {r.pid for r in recs}
    for pid, p in list(popens.items()):
        if pid not in mine:
            continue  # only the processes stopped here (stopping one must not wait 2 s on every other)
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=2)
            popens.pop(pid)


def teardown(prefix: str, state: LabState | None = None,
             popens: dict[int, subprocess.Popen[Any]] | None = None) -> list[str]:
    """Remove everything of lab `prefix`: tracked processes (by PID), any process left inside its
    namespaces, the namespaces (with their veths, bridges and nft tables), its /etc/netns dirs, its
    state and working dir. Works from the state file and also sweeps by name if the state is partial.
    Returns what it removed (namespaces and directories)."""
    if not PREFIX_RE.match(prefix):
        raise LabError(f"lab name {prefix!r}: use 1-8 lowercase letters/digits, starting with a letter")
    state = state or load_state(prefix)
    popens = popens if popens is not None else {}
    removed: list[str] = []
    if state is not None:
        _kill_all(state.processes, popens, timeout=5.0)
    pat = re.compile(rf"{re.escape(prefix)}-[a-z0-9]+")
    namespaces = {n for n in _netns_list() if pat.fullmatch(n)}
    if state is not None:
        namespaces |= {n for n in state.namespaces if n in _netns_list()}
    # anything still running inside our namespaces was started in them, hence by or for this lab
    killed: list[int] = []
    for ns in sorted(namespaces):
        for pid in _ns_pids(ns):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
    deadline = time.monotonic() + 5.0  # SIGKILL is asynchronous: wait until they are gone (or zombies)
    while killed and time.monotonic() < deadline:
        killed = [pid for pid in killed if _running(pid)]
        if killed:
            time.sleep(0.01)
    for pid, p in list(popens.items()):
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=2)
            popens.pop(pid)
    for ns in sorted(namespaces):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        removed.append(ns)
    etc = {str(p) for p in ETC_NETNS.glob(f"{prefix}-*") if pat.fullmatch(p.name)} if ETC_NETNS.is_dir() else set()
    if state is not None:
        etc |= set(state.etc_dirs)
    for d in sorted(etc):
        if Path(d).exists():
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    ldir = lab_dir(prefix)
    if ldir.exists():
        shutil.rmtree(ldir, ignore_errors=True)
        removed.append(str(ldir))
    return removed


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:][:1] not in ("Z", "X")


def running_labs() -> list[str]:
    """Prefixes of labs with a state file."""
    base = lab_dir("x").parent
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir() if (p / "state.json").exists())
