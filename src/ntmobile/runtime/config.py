"""Daemon configuration files (TOML) and credentials, validated with pydantic.

A bad file gives one line naming the field: ``ConfigError("dc.toml: pools.vip4: ...")``.
"""

from __future__ import annotations

import base64
import ipaddress
import tomllib
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ntmobile.osops.cthelpers import DEFAULT_HELPERS
from ntmobile.osops.cthelpers import check_names as check_helper_names
from ntmobile.wire import DC_PORT, DC_PROBE_PORT, NODE_PORT, RS_PORT


class ConfigError(Exception):
    """A configuration or credentials file is missing or invalid (message: one line)."""


class _Model(BaseModel):
    # Schemas are built on first use: a daemon validates only its own settings (the relay keeps its
    # resident memory small, docs/dataplane.md).
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)
    #: Settings holding file paths: a relative one is relative to the configuration file's directory
    #: (never to the daemon's working directory), made absolute by ``load``.
    PATHS: ClassVar[tuple[str, ...]] = ()

    def anchored(self, base: Path) -> _Model:
        def fix(v: str) -> str:
            if v.startswith(("postgresql://", "postgres://")):
                return v  # a database URI (DC replicas), not a file
            return v if Path(v).is_absolute() else str((base / v).resolve())

        update: dict[str, Any] = {}
        for name in self.PATHS:
            v = getattr(self, name)
            if isinstance(v, str):
                update[name] = fix(v)
            elif isinstance(v, list):
                update[name] = [fix(x) for x in v]
        return self.model_copy(update=update) if update else self


def _cidr(v: str | None) -> str | None:
    if v is None:
        return v
    ipaddress.ip_network(v)
    return v


def _addr(v: str) -> str:
    ipaddress.ip_address(v)
    return v


def _opt_addr(v: str | None) -> str | None:
    return None if v is None else _addr(v)


def _prefixes(v: list[str]) -> list[str]:
    for p in v:
        try:
            ipaddress.ip_network(p, strict=True)
        except ValueError as exc:
            raise ValueError(f"{p!r} is not an address prefix like 10.9.0.0/16 ({exc})") from None
    return v


#: ``rsn_allow``: prefixes an RS-N may reach although they are not globally routable (docs/operations.md).
_RSN_ALLOW: Any = Field([], description="non-global prefixes RS-N paths may be directed to (e.g. a private network)")


#: Default listen addresses of the daemons' Prometheus endpoints (``metrics = ""`` turns one off).
DC_METRICS = "127.0.0.1:9410"
RS_METRICS = "127.0.0.1:9411"
NODE_METRICS = "127.0.0.1:9412"


def parse_listen(value: str) -> tuple[str, int] | None:
    """``host:port`` (``[v6]:port`` for IPv6) -> (host, port); "" -> None (no endpoint). Raises
    ValueError with what is wrong."""
    if value == "":
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{value!r}: expected host:port (e.g. 127.0.0.1:9412), or \"\" for no endpoint")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{value!r}: the host must be an IP address") from None
    return host, int(port)


def _metrics(v: str) -> str:
    parse_listen(v)
    return v


def _group(v: str | None) -> str | None:
    """A group name or numeric GID that exists on this host (the control socket's ``control_group``)."""
    if v is not None:
        import grp

        try:
            grp.getgrgid(int(v)) if v.isdigit() else grp.getgrnam(v)
        except KeyError:
            raise ValueError(f"no such group {v!r}") from None
    return v


def group_id(v: str | None) -> int | None:
    """The GID of a validated ``control_group`` (None: root and the daemon's own user only)."""
    if v is None:
        return None
    import grp

    return int(v) if v.isdigit() else grp.getgrnam(v).gr_gid


_CONTROL_GROUP = Field(None, description="group whose members may use the control socket (`ntm ... status`); "
                             "root and the daemon's own user always may")


class PoolSettings(_Model):
    vip4: str | None = "100.64.1.0/24"
    vip6: str | None = "fd00:6e74:1::/64"
    gn_vip4: str | None = "100.127.0.0/16"
    gn_vip6: str | None = "fd00:6e74:ffff::/64"

    _check = field_validator("vip4", "vip6", "gn_vip4", "gn_vip6")(_cidr)


class ReplicaSettings(_Model):
    """Another replica of this domain's DC (same PostgreSQL registry, issue 17)."""

    address: str = Field(description="the replica's signalling address (also its NS glue)")
    port: int = Field(DC_PORT, ge=1, le=65535)


class PeerDcSettings(_Model):
    domain: str
    key: str = Field(description="the peer DC's static X25519 public key, base64url as in its marker TXT")

    @field_validator("key")
    @classmethod
    def _key(cls, v: str) -> str:
        try:
            raw = base64.urlsafe_b64decode(v + "=" * (-len(v) % 4))
        except ValueError as exc:
            raise ValueError("must be base64url") from exc
        if len(raw) != 32:
            raise ValueError("must be a 32-byte key")
        return v

    @property
    def key_bytes(self) -> bytes:
        return base64.urlsafe_b64decode(self.key + "=" * (-len(self.key) % 4))


class DcSettings(_Model):
    domain: str
    extra_domains: list[str] = Field([], description="further domains this DC serves (zones and nodes)")
    address: str = Field(description="the DC's public signalling address (marker TXT, credentials)")
    database: str = "/var/lib/ntmobile/dc.sqlite"
    PATHS: ClassVar[tuple[str, ...]] = ("database",)
    port: int = Field(DC_PORT, ge=1, le=65535)
    listen4: str = "0.0.0.0"
    listen6: str | None = "::"
    ns_name: str | None = None
    ns_addresses: list[str] = []
    dns_port: int = Field(53, ge=1, le=65535)
    resolvers: list[str] = []
    resolver_port: int = Field(53, ge=1, le=65535)
    keepalive: int = Field(15, ge=1, le=3600)
    relay_keepalive: int = Field(5, ge=1, le=3600)
    idle_timeout: int = Field(120, ge=5, le=65535)
    control: str = "ntm-dc"
    metrics: str = Field(DC_METRICS, description="host:port of the Prometheus /metrics endpoint (\"\": off)")
    _m = field_validator("metrics")(_metrics)
    control_group: str | None = _CONTROL_GROUP
    _g = field_validator("control_group")(_group)
    pools: PoolSettings = PoolSettings()
    probe_port: int | None = Field(DC_PROBE_PORT, ge=1, le=65535,
                                   description="second UDP port for NAT classification probes (none: no probes)")
    peers: list[PeerDcSettings] = Field([], description="trusted peer DCs (take precedence over DNS markers)")
    replicas: list[ReplicaSettings] = Field([], description="the other replicas of this domain's DC (shared "
                                            "PostgreSQL database); enrolled credentials list them")
    rsn_allow: list[str] = _RSN_ALLOW
    rsn_pairs: list[list[str]] = Field([], description="RS-N pairs (docs/operations.md \"RS-N pair\"): each two relay "
                                       "names; an RS-N path at one gets a standby leg at the other")
    traversal: bool = Field(True, description="NAT traversal: RS-S paths between nodes whose NATs allow it also get "
                            "punch candidates and become DIRECT once probes succeed (false: every such path stays "
                            "relayed)")

    _a = field_validator("address")(_addr)
    _allow = field_validator("rsn_allow")(_prefixes)

    @field_validator("rsn_pairs")
    @classmethod
    def _pairs(cls, v: list[list[str]]) -> list[list[str]]:
        seen: set[str] = set()
        for pair in v:
            if len(pair) != 2 or pair[0] == pair[1] or not all(pair):
                raise ValueError(f"{pair!r}: an RS-N pair is two different relay names, like [\"rs1\", \"rs2\"]")
            if seen & set(pair):
                raise ValueError(f"{pair!r}: a relay is in at most one RS-N pair")
            seen.update(pair)
        return v

    @field_validator("ns_addresses", "resolvers")
    @classmethod
    def _addrs(cls, v: list[str]) -> list[str]:
        for a in v:
            ipaddress.ip_address(a)
        return v

    @field_validator("domain")
    @classmethod
    def _domain(cls, v: str) -> str:
        v = v.rstrip(".").lower()
        if not v or " " in v:
            raise ValueError("must be a DNS domain like a.example")
        return v

    @field_validator("extra_domains")
    @classmethod
    def _domains(cls, v: list[str]) -> list[str]:
        return [cls._domain(d) for d in v]

    @property
    def domains(self) -> list[str]:
        return [self.domain, *self.extra_domains]

    def name_server(self, domain: str) -> tuple[str, tuple[str, ...]]:
        """The name server of a served domain as its zone and its parent's delegation name it:
        (host name without the trailing dot, addresses)."""
        from ntmobile.core.dc.zones import ns_host

        return ns_host(domain, self.domains, self.ns_name or ""), tuple(self.ns_addresses or [self.address])


class RsSettings(_Model):
    PATHS: ClassVar[tuple[str, ...]] = ("credentials", "state_dir")
    name: str
    credentials: list[str] = Field(description="credential files from `ntm dc enroll-rs`, one per DC served")
    address: str
    address6: str | None = None
    port: int = Field(RS_PORT, ge=1, le=65535)
    tun: str = "ntmrs0"
    mtu: int = Field(1400, ge=1280, le=65000)
    vip4_ranges: list[str] = ["100.64.0.0/10"]
    vip6_ranges: list[str] = ["fd00:6e74::/32"]
    max_paths: int = Field(100_000, ge=1)
    nft_table: str = "ntm_rs"
    control: str = "ntm-rs"
    metrics: str = Field(RS_METRICS, description="host:port of the Prometheus /metrics endpoint (\"\": off)")
    _m = field_validator("metrics")(_metrics)
    control_group: str | None = _CONTROL_GROUP
    _g = field_validator("control_group")(_group)
    offload: bool = True
    #: RS-S paths with traffic are forwarded by the kernel (nft table ``<nft_table>_fast``).
    fast_path: bool = True
    rsn_allow: list[str] = _RSN_ALLOW
    helpers: list[str] = Field(list(DEFAULT_HELPERS), description="kernel conntrack helpers (ALGs) RS-N attaches, "
                                                                   "each on its standard port (docs/operations.md)")
    state_dir: str | None = Field(None, description="where the long-term send counter is kept "
                                                    "(default: the first credentials file's directory)")
    snat4: str | None = Field(None, description="RS-N pair: SNAT to this shared IPv4 address (the VRRP "
                                                "address) instead of masquerading (docs/operations.md)")
    snat6: str | None = Field(None, description="RS-N pair: SNAT to this shared IPv6 address")

    _a = field_validator("address")(_addr)
    _snat = field_validator("snat4", "snat6")(_opt_addr)
    _allow = field_validator("rsn_allow")(_prefixes)
    _h = field_validator("helpers")(check_helper_names)


class NodeSettings(_Model):
    PATHS: ClassVar[tuple[str, ...]] = ("credentials", "state_dir", "resolv_conf")
    credentials: str
    port: int = Field(NODE_PORT, ge=1, le=65535)
    tun: str = "ntm0"
    mtu: int = Field(1400, ge=1280, le=65000)
    routes4: list[str] = ["100.64.0.0/10"]
    routes6: list[str] = ["fd00:6e74::/32"]
    #: Not 127.0.0.53 / 127.0.0.54: systemd-resolved owns those on most Linux hosts.
    dns_listen: str = "127.0.0.153"
    dns_port: int = Field(53, ge=1, le=65535)
    upstream: list[str] = Field([], description="resolvers for names that are not tunnelled")
    upstream_port: int = Field(53, ge=1, le=65535)
    tunnel_domains: list[str] = Field(["."], description="suffixes whose A/AAAA lookups set up tunnels")
    control: str = "ntm-node"
    metrics: str = Field(NODE_METRICS, description="host:port of the Prometheus /metrics endpoint (\"\": off)")
    _m = field_validator("metrics")(_metrics)
    control_group: str | None = _CONTROL_GROUP
    _g = field_validator("control_group")(_group)
    offload: bool = True
    state_dir: str | None = Field(None, description="where the long-term send counter is kept "
                                                    "(default: the credentials file's directory)")
    dns_integration: Literal["auto", "resolved", "resolv.conf", "none"] = Field(
        "auto", description="how the host's resolver is pointed at the stub: systemd-resolved's per-link DNS, "
                            "rewriting resolv.conf (restored on exit), auto (resolved when it runs), none")
    resolv_conf: str = Field("/etc/resolv.conf", description="the resolv.conf the resolv.conf mode rewrites")
    dns_fallback: Literal["upstream", "off"] = Field(
        "upstream", description="when the DC is silent or the node unregistered: resolve general nodes' names "
                                "upstream (untunnelled) and fail NTM peers' at once; off: wait, then SERVFAIL")


class Credentials(_Model):
    """What `ntm dc enroll` issues: a node's or relay's identity and the DC to use."""

    name: str
    role: str = Field(pattern="^(node|relay)$")
    client_id: str = Field(pattern="^[0-9a-f]{16}$")
    secret: str
    dc_id: str = Field(pattern="^[0-9a-f]{16}$")
    dc_address: str
    dc_port: int = Field(DC_PORT, ge=1, le=65535)
    domain: str
    #: The domain's other DC replicas ("address:port" or "[v6]:port"): where the client registers
    #: when its DC stops answering (issue 17).
    dc_replicas: list[str] = []

    @field_validator("secret")
    @classmethod
    def _secret(cls, v: str) -> str:
        if len(base64.b64decode(v, validate=True)) != 32:
            raise ValueError("must be 32 bytes, base64")
        return v

    @property
    def psk(self) -> bytes:
        return base64.b64decode(self.secret)

    @property
    def id_bytes(self) -> bytes:
        return bytes.fromhex(self.client_id)

    @property
    def dc_id_bytes(self) -> bytes:
        return bytes.fromhex(self.dc_id)


M = TypeVar("M", bound=BaseModel)


def load(path: str | Path, model: type[M]) -> M:
    p = Path(path)
    try:
        raw: dict[str, Any] = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such file") from None
    except PermissionError:
        raise ConfigError(f"{p}: permission denied") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    try:
        got = model.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "(top level)"
        raise ConfigError(f"{p}: {where}: {err['msg']}") from None
    if isinstance(got, _Model):
        got = got.anchored(p.absolute().parent)  # type: ignore[assignment]
    return got


def dump(model: BaseModel, path: str | Path) -> None:
    """Write ``model`` as TOML to ``path``: mode 0600 from the first byte, never through a symlink, in
    a directory nobody else can write (credentials hold secrets). ConfigError (one line) if unsafe."""
    from .private import PrivateFileError, write_private

    try:
        write_private(Path(path), tomli_w.dumps(model.model_dump(exclude_none=True)).encode())
    except PrivateFileError as exc:
        raise ConfigError(str(exc)) from None


def reload_settings(path: str | Path, current: M, live: set[str]) -> tuple[M, set[str], set[str]] | None:
    """SIGHUP: read ``path`` again. Returns (the settings to run with now, the changed settings that take
    effect now, the changed ones that need a restart and keep their running value), or None, logged, if
    the file is not valid (the running configuration stays)."""
    import logging

    try:
        new = load(path, type(current))
    except ConfigError as exc:
        logging.getLogger("ntmobile").error("reload: %s (the running configuration stays)", exc)
        return None
    changed = {k for k in type(current).model_fields if getattr(new, k) != getattr(current, k)}
    later = changed - live
    keep = {k: getattr(current, k) for k in later}
    return new.model_copy(update=keep), changed & live, later


def replica_endpoint(address: str, port: int) -> str:
    """An endpoint as credentials' dc_replicas write it."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def parse_replica(text: str) -> tuple[str, int]:
    """ "address:port" / "[v6]:port" (credentials' dc_replicas) -> endpoint."""
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)
