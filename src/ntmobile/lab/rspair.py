"""Lab daemon kinds for the RS-N pair (issue 20): Debian's keepalived (VRRP) and conntrackd (FTFW).

`[[hosts.daemons]] kind = "keepalived"` with config ``peer`` (the other relay's host), ``shared4``
("192.0.2.25/24"), ``priority`` and optionally ``shared6`` ("2001:db8:1::25/128", moved with the
IPv4 address, without DAD), ``link`` (the GN-facing link, default the host's first) and ``vrid``;
kind ``conntrackd`` with ``peer`` and optionally ``link``. Both must come after the host's ``rs``
daemon: keepalived's track_script checks the relay's PID, which the builder writes to a PID file
from the lab's process records. The lab starts them like any daemon and tears them down by
PID with the lab (also on a failed start).
"""

from __future__ import annotations

from ntmobile.osops.rspair import PairMember, conntrackd_conf, keepalived_conf

from .daemons import DaemonContext, DaemonLaunch, daemon_builder, register_daemon_kind


def _member(ctx: DaemonContext) -> PairMember:
    c = ctx.spec.config
    lab = ctx.lab
    link = str(c.get("link", lab.topology.host(ctx.host).links[0].ifname))
    peer = str(c["peer"])
    relays = [r for r in lab.state.processes if r.host == ctx.host and r.name.startswith("rs")]
    if not relays:
        raise RuntimeError(f"hosts.{ctx.host}.daemons: {ctx.spec.kind} needs the host's rs daemon before it")
    pidfile = ctx.workdir / "rs.pid"
    pidfile.write_text(f"{relays[-1].pid}\n")

    def addr6(host: str) -> str | None:
        try:
            return lab.addr(host, 6, link)
        except Exception:
            return None
    return PairMember(interface=link, address=lab.addr(ctx.host, 4, link), peer=lab.addr(peer, 4, link),
                      priority=int(c.get("priority", 100)), shared4=str(c["shared4"]) if "shared4" in c
                      else "192.0.2.25/24", relay_pidfile=str(pidfile), workdir=str(ctx.workdir),
                      vrid=int(c.get("vrid", 51)), shared6=str(c["shared6"]) if "shared6" in c else None,
                      address6=addr6(ctx.host), peer6=addr6(peer))


def build_keepalived(ctx: DaemonContext) -> DaemonLaunch:
    m = _member(ctx)
    w = ctx.workdir
    conf = w / "keepalived.conf"
    # Own PID files per instance (the defaults under /run would clash between the two relays).
    argv = ["keepalived", "-n", "-l", "-D", "-f", str(conf), "-p", str(w / "keepalived.pid"),
            "-r", str(w / "keepalived-vrrp.pid"), "-c", str(w / "keepalived-checkers.pid")]
    return DaemonLaunch(argv=argv, files={conf: keepalived_conf(m)})


def build_conntrackd(ctx: DaemonContext) -> DaemonLaunch:
    m = _member(ctx)
    conf = ctx.workdir / "conntrackd.conf"
    (ctx.workdir / "conntrackd.lock").unlink(missing_ok=True)
    return DaemonLaunch(argv=["conntrackd", "-C", str(conf)], files={conf: conntrackd_conf(m)})


def register_all() -> None:
    for kind, builder in (("keepalived", build_keepalived), ("conntrackd", build_conntrackd)):
        if daemon_builder(kind) is None:
            register_daemon_kind(kind, builder)


register_all()

__all__ = ["build_conntrackd", "build_keepalived", "register_all"]
