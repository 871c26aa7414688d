"""Lab topologies: TOML files parsed into pydantic models (format documented in docs/lab.md)."""

from __future__ import annotations

import ipaddress
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

NatProfile = Literal["none", "port_restricted", "symmetric", "one_to_one", "udp_blocked", "permissive"]
NAT_PROFILES: tuple[NatProfile, ...] = ("none", "port_restricted", "symmetric", "one_to_one", "udp_blocked",
                                        "permissive")
Service = Literal["iperf3", "http", "ftp", "ssh", "tftp"]

BUILTIN_TOPOLOGIES = ("paper", "nat", "handover", "rsnpair", "replicas")

_NAME = r"^[a-z][a-z0-9]{0,9}$"
_IFNAME = r"^[a-z][a-z0-9]{0,11}$"


class TopologyError(ValueError):
    """A topology file or override is invalid; the message is one line naming the field."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Network(_Model):
    """A segment: one Linux bridge in the lab's switch namespace."""

    name: str = Field(pattern=_IFNAME)
    ipv4: ipaddress.IPv4Network
    ipv6: ipaddress.IPv6Network | None = None
    gateway4: ipaddress.IPv4Address | None = None
    gateway6: ipaddress.IPv6Address | None = None

    @model_validator(mode="after")
    def _gateways_inside(self) -> Network:
        if self.gateway4 is not None and self.gateway4 not in self.ipv4:
            raise ValueError(f"gateway4 {self.gateway4} is not in ipv4 {self.ipv4}")
        if self.gateway6 is not None and (self.ipv6 is None or self.gateway6 not in self.ipv6):
            raise ValueError(f"gateway6 {self.gateway6} is not in ipv6 {self.ipv6}")
        return self


class Link(_Model):
    """One veth leg of a host into a network. `name` is the interface name inside the host."""

    network: str
    name: str | None = Field(default=None, pattern=_IFNAME)
    ipv4: ipaddress.IPv4Address
    ipv6: ipaddress.IPv6Address | None = None
    rate_mbit: float | None = Field(default=None, gt=0)
    loss_percent: float | None = Field(default=None, ge=0, le=100)

    @property
    def ifname(self) -> str:
        return self.name or self.network


class Nat(_Model):
    """Makes the host a router between `inside` and `outside`, with the NAT behaviour of `profile`."""

    profile: NatProfile = "port_restricted"
    inside: str
    outside: str
    udp_timeout: int | None = Field(default=None, ge=1)
    one_to_one_outside: ipaddress.IPv4Address | None = None
    one_to_one_inside: ipaddress.IPv4Address | None = None

    @model_validator(mode="after")
    def _one_to_one_complete(self) -> Nat:
        if self.profile == "one_to_one" and (self.one_to_one_outside is None or self.one_to_one_inside is None):
            raise ValueError("profile one_to_one needs one_to_one_outside and one_to_one_inside")
        return self


class DaemonSpec(_Model):
    """An ntmobile daemon the lab starts on the host (see ntmobile.lab.daemons)."""

    kind: str
    config: dict[str, Any] = Field(default_factory=dict)


class Host(_Model):
    name: str = Field(pattern=_NAME)
    links: list[Link] = Field(min_length=1)
    network: str | None = None
    nat: Nat | None = None
    dns_names: list[str] = Field(default_factory=list)
    resolv: list[str] | None = None
    services: list[Service] = Field(default_factory=list)
    daemons: list[DaemonSpec] = Field(default_factory=list)

    @property
    def is_router(self) -> bool:
        return self.nat is not None

    def link(self, name: str) -> Link:
        """The link called `name` (interface name), or the link into network `name`."""
        for ln in self.links:
            if ln.ifname == name:
                return ln
        for ln in self.links:
            if ln.network == name:
                return ln
        raise KeyError(f"host {self.name} has no link or network called {name!r}")

    @property
    def initial_link(self) -> Link:
        return self.link(self.network) if self.network else self.links[0]


class Delegation(_Model):
    """The root/TLD server delegates `zone` to the host `server`, NS name `ns` (glue from the host)."""

    zone: str
    server: str
    ns: str


class Zone(Delegation):
    """A static zone served by an unmodified nsd on `server`; `records` are zone-file lines."""

    records: list[str] = Field(default_factory=list)


class Dns(_Model):
    root: str
    root_ns: str = "ns.example"
    resolver: str
    delegations: list[Delegation] = Field(default_factory=list)
    zones: list[Zone] = Field(default_factory=list)


class LinkDefaults(_Model):
    rate_mbit: float | None = Field(default=None, gt=0)
    loss_percent: float | None = Field(default=None, ge=0, le=100)


class Topology(_Model):
    name: str
    description: str = ""
    networks: list[Network] = Field(min_length=1)
    hosts: list[Host] = Field(min_length=1)
    dns: Dns | None = None
    link_defaults: LinkDefaults = LinkDefaults()

    @model_validator(mode="after")
    def _consistent(self) -> Topology:
        nets = {n.name: n for n in self.networks}
        if len(nets) != len(self.networks):
            raise ValueError("networks: duplicate network name")
        names = [h.name for h in self.hosts]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"hosts: duplicate host name {sorted(dup)[0]}")
        if "sw" in names:
            raise ValueError("hosts: the name 'sw' is reserved for the lab's switch namespace")
        seen_addr: dict[str, str] = {}
        for h in self.hosts:
            ifnames = [ln.ifname for ln in h.links]
            if len(set(ifnames)) != len(ifnames):
                raise ValueError(f"hosts.{h.name}.links: duplicate link name")
            for ln in h.links:
                where = f"hosts.{h.name}.links.{ln.ifname}"
                net = nets.get(ln.network)
                if net is None:
                    raise ValueError(f"{where}.network: unknown network {ln.network!r}")
                if ln.ipv4 not in net.ipv4:
                    raise ValueError(f"{where}.ipv4: {ln.ipv4} is not in {net.name} ({net.ipv4})")
                if ln.ipv6 is not None and (net.ipv6 is None or ln.ipv6 not in net.ipv6):
                    raise ValueError(f"{where}.ipv6: {ln.ipv6} is not in {net.name} ({net.ipv6})")
                for a in (ln.ipv4, ln.ipv6):
                    if a is not None:
                        if str(a) in seen_addr:
                            raise ValueError(f"{where}: address {a} is used twice")
                        seen_addr[str(a)] = h.name
            if h.network is not None:
                try:
                    h.link(h.network)
                except KeyError as e:
                    raise ValueError(f"hosts.{h.name}.network: no link {h.network!r}") from e
            if h.nat is not None:
                nets_of_host = {ln.network for ln in h.links}
                for side in ("inside", "outside"):
                    if getattr(h.nat, side) not in nets_of_host:
                        raise ValueError(f"hosts.{h.name}.nat.{side}: host has no link into "
                                         f"{getattr(h.nat, side)!r}")
                o2o = h.nat.one_to_one_outside
                if o2o is not None and o2o not in nets[h.nat.outside].ipv4:
                    raise ValueError(f"hosts.{h.name}.nat.one_to_one_outside: {o2o} is not in "
                                     f"{h.nat.outside}")
        if self.dns is not None:
            hosts = set(names)
            for field in ("root", "resolver"):
                if getattr(self.dns, field) not in hosts:
                    raise ValueError(f"dns.{field}: unknown host {getattr(self.dns, field)!r}")
            for d in [*self.dns.delegations, *self.dns.zones]:
                if d.server not in hosts:
                    raise ValueError(f"dns zone {d.zone}: unknown server host {d.server!r}")
                if len(d.zone.strip(".").split(".")) < 2:
                    raise ValueError(f"dns zone {d.zone}: must be below a top-level domain")
        return self

    # --- lookups -------------------------------------------------------------------------------

    def host(self, name: str) -> Host:
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(f"no host {name!r} in topology {self.name}")

    def network(self, name: str) -> Network:
        for n in self.networks:
            if n.name == name:
                return n
        raise KeyError(f"no network {name!r} in topology {self.name}")

    # --- overrides from code (return a new, validated Topology) --------------------------------

    def with_nat(self, router: str, profile: NatProfile | None = None, *,
                 udp_timeout: int | None = None) -> Topology:
        """Set the NAT profile (and optionally the conntrack UDP timeout) of a router host."""
        h = self.host(router)
        if h.nat is None:
            raise TopologyError(f"hosts.{router}.nat: host is not a router")
        upd: dict[str, Any] = {}
        if profile is not None:
            upd["profile"] = profile
        if udp_timeout is not None:
            upd["udp_timeout"] = udp_timeout
        nat = h.nat.model_dump() | upd
        return self._replace_host(h.model_dump() | {"nat": nat})

    def with_links(self, *, rate_mbit: float | None = None, loss_percent: float | None = None,
                   host: str | None = None) -> Topology:
        """Rate limit / loss on every link (host=None: as the topology's link defaults) or one host's."""
        upd = {k: v for k, v in (("rate_mbit", rate_mbit), ("loss_percent", loss_percent)) if v is not None}
        if host is None:
            data = self.model_dump()
            data["link_defaults"] = data["link_defaults"] | upd
            return _validate(data, self.name)
        h = self.host(host)
        hd = h.model_dump()
        hd["links"] = [ln | upd for ln in hd["links"]]
        return self._replace_host(hd)

    def with_host(self, name: str, **fields: Any) -> Topology:
        """Replace top-level fields of one host (e.g. resolv=[...], daemons=[...])."""
        return self._replace_host(self.host(name).model_dump() | fields)

    def _replace_host(self, hd: dict[str, Any]) -> Topology:
        data = self.model_dump()
        data["hosts"] = [hd if h["name"] == hd["name"] else h for h in data["hosts"]]
        return _validate(data, self.name)


def _loc_label(data: Any, loc: tuple[int | str, ...]) -> str:
    """Turn a pydantic error location into a readable path, using names instead of list indices."""
    parts: list[str] = []
    cur: Any = data
    for item in loc:
        if isinstance(item, int) and isinstance(cur, list) and 0 <= item < len(cur):
            cur = cur[item]
            label = cur.get("name") or cur.get("zone") or cur.get("network") if isinstance(cur, dict) else None
            parts.append(str(label) if label else str(item))
        else:
            cur = cur.get(item) if isinstance(cur, dict) else None
            parts.append(str(item))
    return ".".join(parts)


def _validate(data: dict[str, Any], source: str) -> Topology:
    try:
        return Topology.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = _loc_label(data, tuple(err["loc"]))
        msg = str(err["msg"]).removeprefix("Value error, ")
        extra = f" ({len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
        raise TopologyError(f"{source}: {where + ': ' if where else ''}{msg}{extra}") from None


def parse_topology(text: str, source: str = "<topology>") -> Topology:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise TopologyError(f"{source}: not valid TOML: {e}") from None
    return _validate(data, source)


def load_topology(name_or_path: str | Path) -> Topology:
    """A built-in topology by name (paper, nat, handover, rsnpair, replicas) or a TOML file by path."""
    s = str(name_or_path)
    if s in BUILTIN_TOPOLOGIES:
        text = resources.files("ntmobile.lab").joinpath("topologies", f"{s}.toml").read_text()
        return parse_topology(text, f"{s}.toml")
    p = Path(s)
    if not p.is_file():
        raise TopologyError(f"{s}: no such topology (built-ins: {', '.join(BUILTIN_TOPOLOGIES)}; "
                            "or give the path of a TOML file)")
    return parse_topology(p.read_text(), str(p))
