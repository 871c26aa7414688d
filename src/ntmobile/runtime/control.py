"""Control sockets: each daemon answers JSON requests on an abstract Unix socket.

Abstract sockets belong to the network namespace, so `ntm status` run inside a lab host's namespace
reaches the daemon of that host. Protocol: one JSON line in (``{"cmd": "status"}``), one JSON
line out.

An abstract socket has no file permissions: anyone in the namespace can connect. So the daemon asks
the kernel who is connecting (SO_PEERCRED, the credentials of the connecting process) and serves only
root, its own user, and members of the configured ``control_group`` (primary group of the process, or
a member of the group in the group database). Anyone else gets one line saying so and nothing else.
"""

from __future__ import annotations

import asyncio
import grp
import inspect
import json
import logging
import os
import pwd
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

#: A request's handler: its reply, or an awaitable of it (a request that waits, e.g. `ntm ping`).
Handler = Callable[[dict[str, Any]], dict[str, Any] | Awaitable[dict[str, Any]]]

log = logging.getLogger(__name__)

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a connected Unix socket."""
    pid, uid, gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    return pid, uid, gid


def allowed(uid: int, gid: int, group: int | None) -> bool:
    """May a process with this uid and gid use the control socket? Root, the daemon's own user, and
    (``group`` set) members of that group."""
    if uid in (0, os.geteuid()):
        return True
    if group is None:
        return False
    if gid == group:
        return True
    try:
        return pwd.getpwuid(uid).pw_name in grp.getgrgid(group).gr_mem
    except KeyError:
        return False


@dataclass
class ControlServer:
    """A daemon's control socket and what it refused."""

    server: asyncio.AbstractServer
    group: int | None = None
    served: int = 0
    refused: int = 0
    last_refused: tuple[int, int] | None = field(default=None)  # (uid, pid)

    def close(self) -> None:
        self.server.close()


def _path(name: str) -> str:
    return "\0" + name


async def serve_control(name: str, handler: Handler, *, group: int | None = None) -> ControlServer:
    """Serve ``handler`` on the abstract socket ``@name`` to root, this user and members of ``group``."""
    ctl: ControlServer

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            # The request line first (also from a refused client: its send must not fail on a closed
            # socket, so it reads the refusal), then who sent it.
            line = await asyncio.wait_for(reader.readline(), 5.0)
            try:
                pid, uid, gid = peer_credentials(writer.get_extra_info("socket"))
            except (OSError, TypeError):
                pid, uid, gid = 0, -1, -1
            if not allowed(uid, gid, ctl.group):
                ctl.refused += 1
                if ctl.last_refused != (uid, pid):
                    log.warning("control socket @%s: refused uid %d (pid %d): not root, not this user, not in "
                                "control_group", name, uid, pid)
                ctl.last_refused = (uid, pid)
                writer.write(json.dumps({"error": "permission denied", "refused": True, "uid": uid}).encode()
                             + b"\n")
                await writer.drain()
                return
            ctl.served += 1
            try:
                req = json.loads(line or b"{}")
                got = handler(req if isinstance(req, dict) else {})
                reply = await got if inspect.isawaitable(got) else got
            except Exception as exc:  # never die on a bad request
                reply = {"error": f"{type(exc).__name__}: {exc}"}
            writer.write(json.dumps(reply, default=str).encode() + b"\n")
            await writer.drain()
        except (TimeoutError, ConnectionError, ValueError):  # ValueError: a line over the reader's limit
            pass
        finally:
            writer.close()

    ctl = ControlServer(await asyncio.start_unix_server(session, path=_path(name)), group)
    return ctl


def query(name: str, cmd: str = "status", timeout: float = 5.0, **args: Any) -> dict[str, Any]:
    """Synchronous client used by the CLI. Raises ConnectionError with a clear message."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            s.connect(_path(name))
        except OSError:
            raise ConnectionError(f"no daemon answers on control socket @{name} in this network namespace "
                                  "(is it running here?)") from None
        s.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
        result: dict[str, Any] = json.loads(buf)
        if result.get("refused"):
            raise ConnectionError(f"the daemon on control socket @{name} refused this user (uid {os.geteuid()}): "
                                  "use root, or a member of the daemon's control_group")
        return result
    finally:
        s.close()
