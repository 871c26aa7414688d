"""The daemon kinds the lab starts: ntmobile's ``dc``, ``rs`` and ``node``, and ``postgres``.

Topology syntax (docs/lab.md)::

    [[hosts.daemons]]                     # on host dca
    kind = "dc"
    config = { domain = "a.example", vip4 = "100.64.1.0/24", vip6 = "fd00:6e74:1::/64" }
    # dc and rs: rsn_allow = [...] (default: the documentation ranges, the lab's "internet")

    [[hosts.daemons]]                     # on host rs1
    kind = "rs"
    config = { dcs = ["dca", "dcb"] }     # hosts whose DC it serves (enrolled at each, one ID)

    [[hosts.daemons]]                     # on host mn
    kind = "node"
    config = { dc = "dca", name = "mn" }  # enrolled at that DC as mn.<domain>

    [[hosts.daemons]]                     # on host db: a real PostgreSQL server (lab/postgres.py)
    kind = "postgres"                     # data in the host's working dir, stopped with the lab by PID

    [[hosts.daemons]]                     # on hosts dca and dca2: DC replicas (issue 17)
    kind = "dc"
    config = { domain = "a.example", postgres = "db", replicas = ["dca2"] }   # on dca2: ["dca"]

Hosts are started in topology order, so DC hosts must come before the relays and nodes that
enrol with them (and a ``postgres`` host before its DCs). Builders enrol directly in the DC's registry
(what `ntm dc enroll` does): its SQLite file, or the replicas' PostgreSQL database over its Unix
socket (the DCs themselves reach it over the lab network, at the db host's address).
`Lab.up` returns once every relay is registered with each of its DCs and every node with its DC.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from ntmobile.core.targets import DOCUMENTATION_NETS
from ntmobile.runtime.config import (
    DcSettings,
    NodeSettings,
    PoolSettings,
    ReplicaSettings,
    RsSettings,
    dump,
    load,
)
from ntmobile.runtime.enroll import enroll
from ntmobile.service import setpriv_argv
from ntmobile.wire import DC_PORT, NODE_PORT, RS_PORT, Role

from .daemons import DaemonContext, DaemonLaunch, daemon_builder, register_daemon_kind
from .postgres import PostgresServer
from .resolved import resolved_argv

NTM = [sys.executable, "-m", "ntmobile"]
ETC_NETNS = Path("/etc/netns")


def _dc_settings(ctx: DaemonContext, dc_host: str) -> DcSettings:
    path = ctx.lab.host_workdir(dc_host) / "dc.toml"
    if not path.exists():
        raise RuntimeError(f"hosts.{ctx.host}.daemons: DC host {dc_host!r} has no dc daemon started before it")
    settings = load(path, DcSettings)
    local = ctx.lab.host_workdir(dc_host) / ENROLL_DSN
    if local.exists():  # replicas: the lab (outside the namespaces) enrols over the database's Unix socket
        settings = settings.model_copy(update={"database": local.read_text().strip()})
    return settings


ENROLL_DSN = "dc.enroll-dsn"


def _postgres(ctx: DaemonContext, db_host: str) -> PostgresServer:
    """The lab's PostgreSQL server on ``db_host`` (its data in that host's working dir)."""
    return PostgresServer(ctx.lab.host_workdir(db_host) / "postgres", listen=ctx.lab.addr(db_host, 4),
                          netns=ctx.lab.ns(db_host))


def build_postgres(ctx: DaemonContext) -> DaemonLaunch:
    """A real PostgreSQL server in the host's namespace, run as the postgres user: the cluster is
    created here (initdb), the postmaster is the process the lab tracks (and kills by PID)."""
    srv = _postgres(ctx, ctx.host)
    srv.init()
    argv = ["setpriv", f"--reuid={srv.uid}", f"--regid={srv.gid}", "--clear-groups", *srv.argv()]
    return DaemonLaunch(argv=argv, ready_tcp=(srv.port,))


def _rsn_allow(c: dict[str, Any]) -> list[str]:
    """The lab's "internet" is documentation space, which RS-N paths refuse by default: the lab's DCs
    and relays allow-list it (a topology may say otherwise with config.rsn_allow)."""
    return [str(x) for x in c.get("rsn_allow", DOCUMENTATION_NETS)]


def _metrics(kind: str) -> str:
    """The lab's daemons serve /metrics on every address of their namespace (the monitor host's
    Prometheus scrapes them over the lab network: lab/monitor.py), on the default port."""
    from .monitor import PORTS

    return f"0.0.0.0:{PORTS[kind]}"


def _as_service(kind: str, c: dict[str, Any], argv: list[str]) -> list[str]:
    """With ``service_caps = true`` in its config, a daemon runs with only the capabilities its systemd
    unit gives it (ntmobile.service), as it would as a service."""
    return [*setpriv_argv(kind), *argv] if c.get("service_caps") else argv


def _wait_earlier_replicas(ctx: DaemonContext, replicas: list[str]) -> None:
    """Start replicas one after the other, in topology order: the replicas already started are up
    before this one starts, so the first one creates the domain's identity in the database and each
    later one takes a higher send-counter block. The order is deterministic, so a lab test knows
    whether a failover goes to a lower block (topology ``replicas``: dca2 starts first, mn's move from
    dca to dca2 goes to a lower one, which the node's RECV_FLOOR handles)."""
    from .lab import READY_TIMEOUT

    deadline = time.monotonic() + READY_TIMEOUT
    for rec in [p for p in ctx.lab.state.processes if p.host in replicas and p.name.startswith("dc")]:
        ctx.lab._wait_ready(rec, (53,), (DC_PORT, 53), deadline)


def build_dc(ctx: DaemonContext) -> DaemonLaunch:
    c = ctx.spec.config
    lab = ctx.lab
    v4 = lab.addr(ctx.host, 4)
    try:
        v6: str | None = lab.addr(ctx.host, 6)
    except Exception:
        v6 = None
    domain = str(c["domain"])
    database = str(ctx.workdir / "dc.sqlite")
    replicas = [ReplicaSettings(address=lab.addr(str(h), 4)) for h in c.get("replicas", [])]
    if c.get("postgres"):  # a replica: its registry is the database on that host, reached over the lab network
        srv = _postgres(ctx, str(c["postgres"]))
        srv.wait_ready(60.0)  # started just before (topology order); creates the database
        database = srv.dsn(lab.addr(str(c["postgres"]), 4))
        (ctx.workdir / ENROLL_DSN).write_text(srv.dsn() + "\n")
        _wait_earlier_replicas(ctx, [str(h) for h in c.get("replicas", [])])
    settings = DcSettings(
        domain=domain, extra_domains=[str(x) for x in c.get("extra_domains", [])], address=v4,
        database=database, replicas=replicas, ns_name=f"dc.{domain}",
        ns_addresses=[v4] + ([v6] if v6 else []), resolvers=lab.resolvers()[:1], control="ntm-dc",
        keepalive=int(c.get("keepalive", 15)), idle_timeout=int(c.get("idle_timeout", 120)),
        pools=PoolSettings(vip4=c.get("vip4", "100.64.1.0/24"), vip6=c.get("vip6", "fd00:6e74:1::/64")),
        rsn_allow=_rsn_allow(c), metrics=_metrics("dc"), traversal=bool(c.get("traversal", True)),
        rsn_pairs=[[str(a), str(b)] for a, b in c.get("rsn_pairs", [])],
    )
    path = ctx.workdir / "dc.toml"
    dump(settings, path)
    return DaemonLaunch(argv=_as_service("dc", c, [*NTM, "dc", "run", "-c", str(path)]), ready_udp=(DC_PORT, 53),
                        ready_tcp=(53,))


def build_rs(ctx: DaemonContext) -> DaemonLaunch:
    c = ctx.spec.config
    lab = ctx.lab
    name = str(c.get("name", ctx.host))
    creds: list[str] = []
    rs_id: bytes | None = None
    for dc_host in c.get("dcs", []):
        cred = enroll(_dc_settings(ctx, dc_host), name, Role.RELAY, client_id=rs_id)
        rs_id = cred.id_bytes
        p = ctx.workdir / f"rs-{dc_host}.cred.toml"
        dump(cred, p)
        creds.append(str(p))
    if not creds:
        raise RuntimeError(f"hosts.{ctx.host}.daemons: an rs daemon needs config.dcs (DC hosts to serve)")
    try:
        v6: str | None = lab.addr(ctx.host, 6)
    except Exception:
        v6 = None
    settings = RsSettings(name=name, credentials=creds, address=lab.addr(ctx.host, 4), address6=v6,
                          control="ntm-rs", offload=bool(c.get("offload", True)),
                          fast_path=bool(c.get("fast_path", True)), rsn_allow=_rsn_allow(c), metrics=_metrics("rs"),
                          snat4=c.get("snat4"), snat6=c.get("snat6"))
    path = ctx.workdir / "rs.toml"
    dump(settings, path)
    return DaemonLaunch(argv=_as_service("rs", c, [*NTM, "rs", "run", "-c", str(path)]), ready_udp=(RS_PORT,),
                        ready_control=settings.control, ready_when=_rs_registered)


def build_node(ctx: DaemonContext) -> DaemonLaunch:
    c = ctx.spec.config
    lab = ctx.lab
    cred = enroll(_dc_settings(ctx, str(c["dc"])), str(c.get("name", ctx.host)), Role.NODE)
    cred_path = ctx.workdir / "node.cred.toml"
    dump(cred, cred_path)
    # The lab writes each host's resolv.conf itself (below), so the node leaves the host's resolver alone.
    settings = NodeSettings(credentials=str(cred_path), upstream=lab.resolvers(), control="ntm-node",
                            offload=bool(c.get("offload", True)),
                            dns_integration=str(c.get("dns_integration", "none")), metrics=_metrics("node"))
    path = ctx.workdir / "node.toml"
    dump(settings, path)
    resolv = ETC_NETNS / lab.ns(ctx.host) / "resolv.conf"
    if settings.dns_integration == "none":
        text = f"# ntm lab: {ctx.host} resolves through its NTM node's DNS stub\nnameserver {settings.dns_listen}\n"
    else:  # the host's own resolvers, which the node replaces by its stub (and puts back when it stops)
        text = f"# ntm lab: {ctx.host}'s resolvers\n" + "".join(f"nameserver {a}\n" for a in lab.resolvers())
    argv = _as_service("node", c, [*NTM, "node", "run", "-c", str(path)])
    if c.get("host_resolved"):  # a real systemd-resolved beside the node (lab/resolved.py)
        argv = resolved_argv(ctx.workdir, argv)
    return DaemonLaunch(argv=argv, files={resolv: text},
                        ready_udp=(NODE_PORT, settings.dns_port), ready_tcp=(settings.dns_port,),
                        ready_control=settings.control, ready_when=_node_registered)


def _rs_registered(status: dict[str, Any]) -> bool:
    """A relay is ready once every DC it serves has registered it."""
    dcs = status.get("dcs") or []
    return bool(dcs) and all(d.get("state") == "registered" for d in dcs)


def _node_registered(status: dict[str, Any]) -> bool:
    """A node is ready once it is registered with its DC (its DNS stub answers lookups then)."""
    return bool(status.get("registered"))


def register_all() -> None:
    for kind, builder in (("dc", build_dc), ("rs", build_rs), ("node", build_node), ("postgres", build_postgres)):
        if daemon_builder(kind) is None:
            register_daemon_kind(kind, builder)


register_all()

__all__ = ["build_dc", "build_node", "build_postgres", "build_rs", "register_all"]
