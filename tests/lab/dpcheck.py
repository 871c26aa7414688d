"""Checked transfers for the data-plane lab tests, run inside lab namespaces as
``python dpcheck.py tcp-server PORT`` / ``udp-server PORT`` / ``tcp-client HOST PORT BYTES FAMILY`` /
``udp-client HOST PORT COUNT FAMILY``. Servers echo; clients compare what comes back with what they
sent (SHA-256 for TCP, byte for byte per datagram for UDP) and print one JSON line."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import threading
import time


def _listen(kind: int, port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET6, kind)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind(("::", port))
    return s


def tcp_server(port: int) -> None:
    s = _listen(socket.SOCK_STREAM, port)
    s.listen(16)

    def echo(c: socket.socket) -> None:
        with c:
            while data := c.recv(1 << 16):
                c.sendall(data)

    while True:
        c, _ = s.accept()
        threading.Thread(target=echo, args=(c,), daemon=True).start()


def udp_server(port: int) -> None:
    s = _listen(socket.SOCK_DGRAM, port)
    while True:
        data, addr = s.recvfrom(65535)
        s.sendto(data, addr)


def _family(name: str) -> int:
    return socket.AF_INET6 if name == "6" else socket.AF_INET


def _resolve(host: str, port: int, fam: int, kind: int, deadline: float) -> tuple[object, ...]:
    while True:
        try:
            return socket.getaddrinfo(host, port, fam, kind)[0][4]
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def tcp_client(host: str, port: int, nbytes: int, fam_name: str) -> dict[str, object]:
    fam = _family(fam_name)
    deadline = time.monotonic() + 30
    addr = _resolve(host, port, fam, socket.SOCK_STREAM, deadline)
    data = os.urandom(nbytes)
    while True:
        try:
            s = socket.create_connection(addr[:2], timeout=10)  # type: ignore[arg-type]
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)
    s.settimeout(60)
    t0 = time.monotonic()

    def send() -> None:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)

    th = threading.Thread(target=send, daemon=True)
    th.start()
    h = hashlib.sha256()
    got = 0
    while chunk := s.recv(1 << 16):
        h.update(chunk)
        got += len(chunk)
    th.join()
    s.close()
    return {"ok": got == nbytes and h.hexdigest() == hashlib.sha256(data).hexdigest(), "bytes": got,
            "peer": str(addr[0]), "seconds": round(time.monotonic() - t0, 2)}


def udp_client(host: str, port: int, count: int, fam_name: str) -> dict[str, object]:
    fam = _family(fam_name)
    addr = _resolve(host, port, fam, socket.SOCK_DGRAM, time.monotonic() + 30)
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.setblocking(False)
    sent: dict[int, bytes] = {}
    back = bad = 0
    rnd = os.urandom(count * 4)

    def drain() -> None:
        nonlocal back, bad
        while True:
            try:
                data = s.recv(65535)
            except BlockingIOError:
                return
            seq = int.from_bytes(data[:4], "big")
            if sent.get(seq) == data:
                back += 1
                del sent[seq]
            else:
                bad += 1

    originals = {}
    for i in range(count):
        size = 16 + int.from_bytes(rnd[4 * i:4 * i + 2], "big") % 1300
        payload = i.to_bytes(4, "big") + os.urandom(size)
        sent[i] = originals[i] = payload
        s.sendto(payload, addr[:2])  # type: ignore[arg-type]
        if i % 10 == 9:
            time.sleep(0.005)
            drain()
    deadline = time.monotonic() + 3
    while sent and time.monotonic() < deadline:
        time.sleep(0.02)
        drain()
    return {"ok": bad == 0, "sent": count, "echoed": back, "corrupt": bad, "peer": str(addr[0])}


def main() -> None:
    mode, *args = sys.argv[1:]
    if mode == "tcp-server":
        tcp_server(int(args[0]))
    elif mode == "udp-server":
        udp_server(int(args[0]))
    elif mode == "tcp-client":
        print(json.dumps(tcp_client(args[0], int(args[1]), int(args[2]), args[3])))
    elif mode == "udp-client":
        print(json.dumps(udp_client(args[0], int(args[1]), int(args[2]), args[3])))
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
