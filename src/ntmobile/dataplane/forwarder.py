"""The node's per-packet data plane: TUN ↔ encrypted capsules over UDP.

Control logic stays in the core: the forwarder only knows, per path, the peer's VIPs, the current
endpoint, and the path's capsule sealer/opener (shared with the core, so one counter per
direction). It enforces that a path only injects packets whose inner source is that path's peer
VIP, so no peer can spoof another's address.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass

from ntmobile.crypto import AuthError, CapsuleOpener, CapsuleSealer
from ntmobile.wire import CodecError

from .tun import Tun

Endpoint = tuple[str, int]
BATCH = 64


@dataclass(slots=True)
class FwdPath:
    path_id: bytes
    sealer: CapsuleSealer
    opener: CapsuleOpener
    peer_vips: frozenset[bytes]  # packed addresses the peer may use as inner source
    endpoint: Endpoint | None
    learn: bool  # address learning from authenticated data (not through an RS-S)
    tx_packets: int = 0
    tx_bytes: int = 0
    rx_packets: int = 0
    rx_bytes: int = 0


class NodeForwarder:
    def __init__(self, tun: Tun, send: Callable[[bytes, Endpoint], None], *,
                 on_miss: Callable[[bytes], None] | None = None,
                 on_learn: Callable[[FwdPath, Endpoint], None] | None = None) -> None:
        self.tun = tun
        self.send = send
        self.on_miss = on_miss
        self.on_learn = on_learn
        self.by_dst: dict[bytes, FwdPath] = {}
        self.by_id: dict[bytes, FwdPath] = {}
        self.buf = bytearray(65536)
        self.stats = {"tun_no_path": 0, "rx_auth": 0, "rx_malformed": 0, "rx_unknown_path": 0, "rx_spoofed": 0,
                      "tun_write_dropped": 0, "send_errors": 0}

    def add(self, path_id: bytes, sealer: CapsuleSealer, opener: CapsuleOpener, peer_vips: list[str],
            endpoint: Endpoint | None, learn: bool) -> FwdPath:
        packed = frozenset(ipaddress.ip_address(v).packed for v in peer_vips)
        fp = FwdPath(path_id, sealer, opener, packed, endpoint, learn)
        old = self.by_id.get(path_id)
        if old is not None:
            fp.tx_packets, fp.tx_bytes, fp.rx_packets, fp.rx_bytes = (old.tx_packets, old.tx_bytes, old.rx_packets,
                                                                      old.rx_bytes)
        self.by_id[path_id] = fp
        for v in packed:
            self.by_dst[v] = fp
        return fp

    def remove(self, path_id: bytes) -> None:
        fp = self.by_id.pop(path_id, None)
        if fp is not None:
            for v in fp.peer_vips:
                if self.by_dst.get(v) is fp:
                    del self.by_dst[v]

    def set_endpoint(self, path_id: bytes, endpoint: Endpoint) -> None:
        fp = self.by_id.get(path_id)
        if fp is not None:
            fp.endpoint = endpoint

    # -- TUN → UDP -------------------------------------------------------------------------------
    def on_tun_readable(self) -> None:
        buf = self.buf
        mv = memoryview(buf)
        for _ in range(BATCH):
            n = self.tun.read_into(buf)
            if n <= 0:
                return
            version = buf[0] >> 4
            if version == 4 and n >= 20:
                dst = bytes(buf[16:20])
            elif version == 6 and n >= 40:
                dst = bytes(buf[24:40])
            else:
                continue
            fp = self.by_dst.get(dst)
            if fp is None or fp.endpoint is None:
                self.stats["tun_no_path"] += 1
                if self.on_miss is not None:
                    self.on_miss(dst)
                continue
            capsule = fp.sealer.seal(bytes(mv[:n]))
            try:
                self.send(capsule, fp.endpoint)
            except OSError:
                self.stats["send_errors"] += 1
                continue
            fp.tx_packets += 1
            fp.tx_bytes += n

    # -- UDP → TUN -------------------------------------------------------------------------------
    def on_capsule(self, data: bytes, addr: Endpoint) -> None:
        fp = self.by_id.get(data[4:12])
        if fp is None:
            self.stats["rx_unknown_path"] += 1
            return
        try:
            inner = fp.opener.open(data)
        except AuthError:
            self.stats["rx_auth"] += 1
            return
        except CodecError:
            self.stats["rx_malformed"] += 1
            return
        if not inner:
            return
        version = inner[0] >> 4
        src = inner[12:16] if version == 4 else inner[8:24] if version == 6 else b""
        if src not in fp.peer_vips:
            self.stats["rx_spoofed"] += 1
            return
        if self.tun.write(inner) == 0:
            self.stats["tun_write_dropped"] += 1
            return
        fp.rx_packets += 1
        fp.rx_bytes += len(inner)
        if fp.learn and addr != fp.endpoint:
            fp.endpoint = addr
            if self.on_learn is not None:
                self.on_learn(fp, addr)


def family_of(addr: Endpoint) -> int:
    return socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
