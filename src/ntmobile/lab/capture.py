"""Capture of data capsules as an observer on a lab host's links sees them (`python -m
ntmobile.lab.capture OUT PORT`, run in the host's namespace): for every capsule sent or received on
UDP port PORT it writes one line, ``<path id> <from responder 0/1> <counter> <chunk> <digest>``, to OUT.

It reads every interface of the namespace through one AF_PACKET socket with PACKET_VNET_HDR, so a
UDP GSO super-packet (a node's or relay's UDP_SEGMENT send, or a GRO batch) comes with its segment
size and is cut back into the datagrams that cross the wire. The test that reads the file checks the
invariant of docs/security.md §3 from outside: no (Path ID, direction, counter, chunk) with two
different contents. Stops on SIGTERM or SIGINT, after writing what it has.
"""

from __future__ import annotations

import hashlib
import signal
import socket
import struct
import sys

from ntmobile.wire.frame import capsule_nonce_id

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_VNET_HDR = 15
_VNET = struct.Struct("<BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
_PORTS = struct.Struct("!HH")


def datagrams(frame: bytes, port: int) -> list[bytes]:
    """The UDP payloads to or from ``port`` in one captured frame (virtio_net_hdr + Ethernet + IP),
    one per datagram on the wire."""
    if len(frame) < _VNET.size + 14:
        return []
    _flags, gso_type, _hl, gso_size, _cs, _co = _VNET.unpack_from(frame, 0)
    eth = frame[_VNET.size:]
    ethertype = int.from_bytes(eth[12:14], "big")
    ip = eth[14:]
    if ethertype == 0x0800 and len(ip) >= 20 and ip[9] == 17:
        udp = ip[(ip[0] & 0x0F) * 4:]
    elif ethertype == 0x86DD and len(ip) >= 40 and ip[6] == 17:
        udp = ip[40:]
    else:
        return []
    if len(udp) < 8:
        return []
    sport, dport = _PORTS.unpack_from(udp, 0)
    if port not in (sport, dport):
        return []
    payload = udp[8:]
    if gso_type and gso_size:
        return [payload[o:o + gso_size] for o in range(0, len(payload), gso_size)]
    return [payload]


def main(argv: list[str]) -> int:
    out_path, port = argv[0], int(argv[1])
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)  # SO_RCVBUFFORCE: keep up with a download
    running = [True]

    def stop(signum: int, frame: object) -> None:
        running[0] = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    sock.settimeout(0.2)
    with open(out_path, "w", buffering=1) as out:  # line by line: a reader sees it at once
        print("ready", file=out, flush=True)
        while running[0]:
            try:
                frame = sock.recv(1 << 17)
            except TimeoutError:
                continue
            except InterruptedError:
                continue
            for d in datagrams(frame, port):
                ident = capsule_nonce_id(d)
                if ident is not None:
                    pid, from_responder, counter, chunk = ident
                    digest = hashlib.blake2b(d, digest_size=8).hexdigest()
                    out.write(f"{pid.hex()} {int(from_responder)} {counter} {chunk} {digest}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
