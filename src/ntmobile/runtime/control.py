"""Control sockets: each daemon answers JSON requests on an abstract Unix socket.

Abstract sockets belong to the network namespace, so `ntm status` run inside a lab host's namespace
reaches the daemon of that host. Protocol: one JSON line in (``{"cmd": "status"}``), one JSON
line out.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable
from typing import Any

Handler = Callable[[dict[str, Any]], dict[str, Any]]


def _path(name: str) -> str:
    return "\0" + name


async def serve_control(name: str, handler: Handler) -> asyncio.AbstractServer:
    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5.0)
            try:
                req = json.loads(line or b"{}")
                reply = handler(req if isinstance(req, dict) else {})
            except Exception as exc:  # never die on a bad request
                reply = {"error": f"{type(exc).__name__}: {exc}"}
            writer.write(json.dumps(reply, default=str).encode() + b"\n")
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_unix_server(session, path=_path(name))


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
        return result
    finally:
        s.close()
