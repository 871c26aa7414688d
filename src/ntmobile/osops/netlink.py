"""Links, addresses, routes and their change events through rtnetlink (pyroute2 0.9.7).

Every call works in the network namespace of the calling thread: daemons are started inside their
namespace (see `ntmobile.osops.netns`). Each operation exists as a coroutine (`async_link_up`, ...)
that opens a short-lived `AsyncIPRoute` (control-plane rate, not the data path), and as a plain
function (`link_up`, ...) usable from synchronous code and, blocking briefly, from coroutines too.
`AddressMonitor` keeps one `AsyncIPRoute` bound to the link, IPv4/IPv6 address and IPv4/IPv6 route
multicast groups and yields typed events.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import os
import socket
import struct
import threading
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, TypeVar

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import (
    RTMGRP_IPV4_IFADDR,
    RTMGRP_IPV4_ROUTE,
    RTMGRP_IPV6_IFADDR,
    RTMGRP_IPV6_ROUTE,
    RTMGRP_LINK,
)

IFA_F_NODAD = 0x02
RT_TABLE_MAIN = 254
IFF_UP = 0x1

T = TypeVar("T")


class NetlinkOpError(OSError):
    """A netlink request failed; the message names the operation and the kernel's reason."""


def _fail(what: str, e: NetlinkError) -> NetlinkOpError:
    code = e.code if isinstance(e.code, int) else 0
    return NetlinkOpError(code, f"{what}: {os.strerror(code) if code else e}")



async def _index(ipr: AsyncIPRoute, name: str) -> int:
    found = await ipr.link_lookup(ifname=name)
    if not found:
        raise NetlinkOpError(errno.ENODEV, f"no such interface {name!r}")
    return int(found[0])


def _run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a netlink coroutine to completion from synchronous code.

    Without an event loop in this thread, a private one is used (asyncio.run). Called from inside a
    running loop (a daemon's coroutine), the work is finished on a short-lived helper thread so the
    loop's own run is not re-entered; a thread starts in its creator's network namespace, so the
    helper talks to the same namespace. Coroutines should prefer the `async_*` functions.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: list[T] = []
    err: list[BaseException] = []

    def work() -> None:
        try:
            box.append(asyncio.run(coro))
        except BaseException as e:  # handed back below
            err.append(e)

    t = threading.Thread(target=work, name="netlink-sync", daemon=True)
    t.start()
    t.join()
    if err:
        raise err[0]
    return box[0]


async def async_link_index(name: str) -> int:
    async with AsyncIPRoute() as ipr:
        return await _index(ipr, name)


async def async_link_up(name: str, mtu: int | None = None) -> None:
    async with AsyncIPRoute() as ipr:
        idx = await _index(ipr, name)
        kw: dict[str, Any] = {"state": "up"}
        if mtu is not None:
            kw["mtu"] = mtu
        try:
            await ipr.link("set", index=idx, **kw)
        except NetlinkError as e:
            raise _fail(f"link set {name} up mtu={mtu}", e) from e


async def async_link_down(name: str) -> None:
    async with AsyncIPRoute() as ipr:
        idx = await _index(ipr, name)
        try:
            await ipr.link("set", index=idx, state="down")
        except NetlinkError as e:
            raise _fail(f"link set {name} down", e) from e


async def async_add_address(name: str, cidr: str, *, nodad: bool = True, replace: bool = True) -> None:
    iface = ipaddress.ip_interface(cidr)
    async with AsyncIPRoute() as ipr:
        idx = await _index(ipr, name)
        kw: dict[str, Any] = {"index": idx, "address": str(iface.ip), "prefixlen": iface.network.prefixlen}
        if iface.version == 6 and nodad:
            kw["flags"] = IFA_F_NODAD
        try:
            await ipr.addr("replace" if replace else "add", **kw)
        except NetlinkError as e:
            raise _fail(f"addr add {cidr} dev {name}", e) from e


async def async_delete_address(name: str, cidr: str, *, missing_ok: bool = True) -> None:
    iface = ipaddress.ip_interface(cidr)
    async with AsyncIPRoute() as ipr:
        idx = await _index(ipr, name)
        try:
            await ipr.addr("del", index=idx, address=str(iface.ip), prefixlen=iface.network.prefixlen)
        except NetlinkError as e:
            if missing_ok and e.code == errno.EADDRNOTAVAIL:
                return
            raise _fail(f"addr del {cidr} dev {name}", e) from e


async def async_add_route(dst_cidr: str, *, dev: str | None = None, gateway: str | None = None,
                          src: str | None = None, table: int = RT_TABLE_MAIN, metric: int | None = None,
                          replace: bool = True) -> None:
    if dev is None and gateway is None:
        raise ValueError("a route needs dev or gateway")
    kw = _route_key(dst_cidr, gateway)
    kw["table"] = table
    if gateway is not None:
        kw["gateway"] = gateway
    if src is not None:
        kw["prefsrc"] = src
    if metric is not None:
        kw["priority"] = metric
    async with AsyncIPRoute() as ipr:
        if dev is not None:
            kw["oif"] = await _index(ipr, dev)
        try:
            await ipr.route("replace" if replace else "add", **kw)
        except NetlinkError as e:
            raise _fail(f"route add {dst_cidr} dev={dev} via={gateway}", e) from e


async def async_delete_route(dst_cidr: str, *, gateway: str | None = None, table: int = RT_TABLE_MAIN,
                             missing_ok: bool = True) -> None:
    kw = _route_key(dst_cidr, gateway)
    kw["table"] = table
    async with AsyncIPRoute() as ipr:
        try:
            await ipr.route("del", **kw)
        except NetlinkError as e:
            if missing_ok and e.code == errno.ESRCH:
                return
            raise _fail(f"route del {dst_cidr}", e) from e


def _route_key(dst_cidr: str, gateway: str | None) -> dict[str, Any]:
    if dst_cidr == "default":
        version = ipaddress.ip_address(gateway).version if gateway else 4
        net = ipaddress.ip_network("0.0.0.0/0" if version == 4 else "::/0")
    else:
        net = ipaddress.ip_network(dst_cidr, strict=False)
    family = socket.AF_INET if net.version == 4 else socket.AF_INET6
    return {"dst": str(net.network_address), "dst_len": net.prefixlen, "family": family}


async def async_route_source_for(dest_ip: str) -> str | None:
    addr = ipaddress.ip_address(dest_ip)
    family = socket.AF_INET if addr.version == 4 else socket.AF_INET6
    async with AsyncIPRoute() as ipr:
        try:
            routes = await ipr.route("get", dst=str(addr), family=family)
        except NetlinkError as e:
            if e.code in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EINVAL, errno.ENETDOWN):
                return None
            raise _fail(f"route get {dest_ip}", e) from e
        for r in routes:
            src = r.get("RTA_PREFSRC")
            if src:
                return str(src)
    return None


def source_toward(dest_ip: str) -> str | None:
    """The source address the kernel picks toward ``dest_ip``, from a UDP socket connected there (a
    route lookup in the kernel, no netlink dump and no datagram sent: microseconds, where a netlink
    ``route get`` through pyroute2 costs a millisecond or more on a busy loop). None when there is no
    route."""
    addr = ipaddress.ip_address(dest_ip)
    with socket.socket(socket.AF_INET if addr.version == 4 else socket.AF_INET6, socket.SOCK_DGRAM) as s:
        try:
            s.connect((str(addr), 9))
        except OSError:
            return None
        return str(s.getsockname()[0])


async def async_default_route(version: Literal[4, 6] = 4) -> tuple[str | None, str] | None:
    family = socket.AF_INET if version == 4 else socket.AF_INET6
    best: tuple[int, str | None, int] | None = None
    async with AsyncIPRoute() as ipr:
        async for r in await ipr.route("dump", family=family, table=RT_TABLE_MAIN):
            if r["dst_len"] != 0 or r.get("RTA_DST") is not None:
                continue
            oif = r.get("RTA_OIF")
            if oif is None:
                continue
            metric = r.get("RTA_PRIORITY") or 0
            gw = r.get("RTA_GATEWAY")
            if best is None or metric < best[0]:
                best = (metric, gw, int(oif))
        if best is None:
            return None
        links = await ipr.link("get", index=best[2])
        return best[1], str(links[0].get("IFLA_IFNAME"))


async def async_addresses(name: str | None = None) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    async with AsyncIPRoute() as ipr:
        names = {int(m["index"]): str(m.get("IFLA_IFNAME")) async for m in await ipr.link("dump")}
        async for m in await ipr.addr("dump"):
            ifname = names.get(int(m["index"]), "")
            if name is None or ifname == name:
                out.append((ifname, f"{m.get('IFA_ADDRESS')}/{m['prefixlen']}"))
    return out


_NLMSG = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, seq, pid
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
_RTA = struct.Struct("=HH")  # rtattr: length, type
_RTM_NEWADDR, _RTM_GETADDR, _NLMSG_ERROR, _NLMSG_DONE, _IFA_ADDRESS = 20, 22, 2, 3, 1
_NLM_F_DUMP_REQUEST = 0x301  # NLM_F_REQUEST | NLM_F_DUMP


def addresses_now() -> list[tuple[str, str]]:
    """The same as ``async_addresses()`` (every interface's (name, "address/prefixlen")), from one
    rtnetlink dump on a plain socket: a few syscalls, no pyroute2 objects. The node's handover watch
    reads this on every burst of address events; through AsyncIPRoute (two sockets, a link dump and
    an address dump as Python objects) that look took 2 ms idle and 10-20 ms on a loaded 2-core
    machine, in the way of noticing a move (issue 21)."""
    out: list[tuple[str, str]] = []
    names: dict[int, str] = {}
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as s:
        s.bind((0, 0))
        s.send(_NLMSG.pack(_NLMSG.size + _IFADDRMSG.size, _RTM_GETADDR, _NLM_F_DUMP_REQUEST, 1, 0)
               + _IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0))
        while True:
            data = s.recv(1 << 16)
            off = 0
            while off + _NLMSG.size <= len(data):
                length, mtype, _flags, _seq, _pid = _NLMSG.unpack_from(data, off)
                if length < _NLMSG.size:
                    raise OSError("netlink: truncated message")
                if mtype == _NLMSG_DONE:
                    return out
                if mtype == _NLMSG_ERROR:
                    code = -struct.unpack_from("=i", data, off + _NLMSG.size)[0]
                    raise OSError(code, f"netlink address dump: {os.strerror(code)}")
                if mtype == _RTM_NEWADDR:
                    family, plen, _f, _scope, index = _IFADDRMSG.unpack_from(data, off + _NLMSG.size)
                    a = off + _NLMSG.size + _IFADDRMSG.size
                    while a + _RTA.size <= off + length:
                        alen, atype = _RTA.unpack_from(data, a)
                        if alen < _RTA.size:
                            break
                        if atype == _IFA_ADDRESS:
                            ip = socket.inet_ntop(family, data[a + _RTA.size:a + alen])
                            if index not in names:
                                try:
                                    names[index] = socket.if_indextoname(index)
                                except OSError:
                                    names[index] = ""
                            out.append((names[index], f"{ip}/{plen}"))
                        a += (alen + 3) & ~3
                off += (length + 3) & ~3


# ---- synchronous wrappers ----------------------------------------------------------------------


def link_index(name: str) -> int:
    return _run_sync(async_link_index(name))


def link_up(name: str, mtu: int | None = None) -> None:
    """Set `name` up (and its MTU when given)."""
    _run_sync(async_link_up(name, mtu))


def link_down(name: str) -> None:
    _run_sync(async_link_down(name))


def add_address(name: str, cidr: str, *, nodad: bool = True, replace: bool = True) -> None:
    """Add `cidr` (e.g. "10.0.0.1/24", "fd00::1/64") to `name`. IPv6 addresses skip duplicate address
    detection by default (usable at once; VIPs are unique by construction). With replace=True an
    existing identical address is not an error."""
    _run_sync(async_add_address(name, cidr, nodad=nodad, replace=replace))


def delete_address(name: str, cidr: str, *, missing_ok: bool = True) -> None:
    _run_sync(async_delete_address(name, cidr, missing_ok=missing_ok))


def add_route(dst_cidr: str, *, dev: str | None = None, gateway: str | None = None,
              src: str | None = None, table: int = RT_TABLE_MAIN, metric: int | None = None,
              replace: bool = True) -> None:
    """Add (replace by default: idempotent) a route to `dst_cidr` ("default" allowed: the family is
    the gateway's, else IPv4) via `dev` and/or `gateway`, optionally with a preferred source."""
    _run_sync(async_add_route(dst_cidr, dev=dev, gateway=gateway, src=src, table=table, metric=metric,
                              replace=replace))


def delete_route(dst_cidr: str, *, gateway: str | None = None, table: int = RT_TABLE_MAIN,
                 missing_ok: bool = True) -> None:
    _run_sync(async_delete_route(dst_cidr, gateway=gateway, table=table, missing_ok=missing_ok))


def route_source_for(dest_ip: str) -> str | None:
    """The source address the kernel would pick to reach `dest_ip`; None when unreachable or the
    chosen route gives no preferred source."""
    return _run_sync(async_route_source_for(dest_ip))


def default_route(version: Literal[4, 6] = 4) -> tuple[str | None, str] | None:
    """(gateway or None, device name) of the main table's default route with the lowest metric."""
    return _run_sync(async_default_route(version))


def addresses(name: str | None = None) -> list[tuple[str, str]]:
    """(ifname, "addr/prefixlen") of all addresses, or of those on `name`."""
    return _run_sync(async_addresses(name))


# ---- change events ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AddressEvent:
    kind: Literal["added", "removed"]
    ifname: str
    ifindex: int
    address: str
    prefixlen: int


@dataclass(frozen=True, slots=True)
class RouteEvent:
    kind: Literal["added", "removed"]
    dst: str
    """Destination prefix, e.g. "0.0.0.0/0" for a default route."""
    gateway: str | None
    ifname: str | None
    table: int


@dataclass(frozen=True, slots=True)
class LinkEvent:
    kind: Literal["changed", "removed"]
    ifname: str
    ifindex: int
    up: bool


MonitorEvent = AddressEvent | RouteEvent | LinkEvent


class AddressMonitor:
    """Async iterator of address, route and link changes in the current namespace.

        async with AddressMonitor() as mon:
            async for ev in mon:
                ...

    The socket is bound (and the interface name cache filled) in `__aenter__`, so a change made
    after entering is never missed. IPv6 addresses carry no label; their interface name comes from
    the cache kept up to date from link events.
    """

    def __init__(self, *, addresses: bool = True, routes: bool = True, links: bool = True) -> None:
        groups = RTMGRP_LINK  # needed for the name cache even when links are not reported
        if addresses:
            groups |= RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR
        if routes:
            groups |= RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE
        self._groups = groups
        self._report_links = links
        self._ipr: AsyncIPRoute | None = None
        self._names: dict[int, str] = {}

    async def __aenter__(self) -> AddressMonitor:
        ipr = AsyncIPRoute()
        try:
            await ipr.bind(groups=self._groups)
            async for m in await ipr.link("dump"):
                self._names[int(m["index"])] = str(m.get("IFLA_IFNAME"))
        except BaseException:
            ipr.close()
            raise
        self._ipr = ipr
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    def __aiter__(self) -> AsyncIterator[MonitorEvent]:
        return self.events()

    async def events(self) -> AsyncIterator[MonitorEvent]:
        if self._ipr is None:
            raise RuntimeError("AddressMonitor used outside 'async with'")
        ipr = self._ipr
        while self._ipr is not None:
            async for msg in ipr.get():
                ev = self._convert(msg)
                if ev is not None:
                    yield ev

    def _convert(self, msg: Any) -> MonitorEvent | None:
        event = msg.get("event")
        if event in ("RTM_NEWLINK", "RTM_DELLINK"):
            idx = int(msg["index"])
            name = str(msg.get("IFLA_IFNAME") or self._names.get(idx, ""))
            if event == "RTM_NEWLINK":
                self._names[idx] = name
            else:
                self._names.pop(idx, None)
            if not self._report_links:
                return None
            return LinkEvent("changed" if event == "RTM_NEWLINK" else "removed", name, idx,
                             bool(msg["flags"] & IFF_UP))
        if event in ("RTM_NEWADDR", "RTM_DELADDR"):
            idx = int(msg["index"])
            addr = msg.get("IFA_ADDRESS") or msg.get("IFA_LOCAL")
            if addr is None:
                return None
            name = self._names.get(idx) or str(msg.get("IFA_LABEL") or "")
            return AddressEvent("added" if event == "RTM_NEWADDR" else "removed", name, idx, str(addr),
                                int(msg["prefixlen"]))
        if event in ("RTM_NEWROUTE", "RTM_DELROUTE"):
            table = msg.get("RTA_TABLE") or msg["table"]
            dst = msg.get("RTA_DST") or ("0.0.0.0" if msg["family"] == socket.AF_INET else "::")
            oif = msg.get("RTA_OIF")
            return RouteEvent("added" if event == "RTM_NEWROUTE" else "removed", f"{dst}/{msg['dst_len']}",
                              msg.get("RTA_GATEWAY"), self._names.get(int(oif)) if oif is not None else None,
                              int(table))
        return None
