"""Tiny UDP/TCP probe tools for lab tests, run inside lab hosts with `python -m ntmobile.lab.probe`.

    reflect PORT            UDP and TCP listener on [::]:PORT (dual stack). Prints one JSON line per
                            event ({"proto","src","port","data"}) and answers each UDP datagram with
                            "seen SRC PORT" (unless its payload starts with "noreply").
    udp --sport P --to IP:PORT ... [--payload X] [--until TEXT] [--expect N] [--timeout S]
        [--tcp-marker IP:PORT] [--reuseport]
                            Sends the payload to every destination from one socket bound to source
                            port P, optionally opens a TCP connection to the marker address, then
                            collects datagrams until one contains TEXT, or N arrived, or the timeout.
                            Prints {"received": [{"src","port","data"}, ...]} as JSON.
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import sys
import time


def _addr(s: str) -> tuple[str, int]:
    host, _, port = s.rpartition(":")
    return host.strip("[]"), int(port)


def _unmap(ip: str) -> str:
    return ip.removeprefix("::ffff:")


def _emit(obj: object) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def reflect(port: int) -> None:
    u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    u.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    u.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    u.bind(("::", port))
    t = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    t.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    t.bind(("::", port))
    t.listen(16)
    _emit({"ready": port})
    while True:
        r, _, _ = select.select([u, t], [], [])
        if u in r:
            data, src = u.recvfrom(65535)
            text = data.decode(errors="replace")
            _emit({"proto": "udp", "src": _unmap(src[0]), "port": src[1], "data": text})
            if not text.startswith("noreply"):
                u.sendto(f"seen {_unmap(src[0])} {src[1]}".encode(), src)
        if t in r:
            c, src = t.accept()
            _emit({"proto": "tcp", "src": _unmap(src[0]), "port": src[1]})
            c.close()


def udp(args: argparse.Namespace) -> None:
    dests = [_addr(d) for d in args.to]
    fam = socket.AF_INET6 if any(":" in h for h, _ in dests) else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM)
    if args.reuseport:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", args.sport))
    for d in dests:
        try:
            s.sendto(args.payload.encode(), d)
        except OSError as e:  # e.g. EPERM when a lab loss rule drops on output
            print(f"send to {d}: {e}", file=sys.stderr)
    if args.tcp_marker:
        with socket.create_connection(_addr(args.tcp_marker), timeout=10):
            pass
    received: list[dict[str, object]] = []
    deadline = time.monotonic() + args.timeout
    while len(received) < args.expect or args.until:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        r, _, _ = select.select([s], [], [], left)
        if not r:
            break
        data, src = s.recvfrom(65535)
        text = data.decode(errors="replace")
        received.append({"src": _unmap(src[0]), "port": src[1], "data": text})
        if args.until and args.until in text:
            break
    _emit({"received": received})


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m ntmobile.lab.probe")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("reflect")
    r.add_argument("port", type=int)
    u = sub.add_parser("udp")
    u.add_argument("--sport", type=int, default=0)
    u.add_argument("--to", action="append", default=[])
    u.add_argument("--payload", default="probe")
    u.add_argument("--until", default="")
    u.add_argument("--expect", type=int, default=0)
    u.add_argument("--timeout", type=float, default=10.0)
    u.add_argument("--tcp-marker", default="")
    u.add_argument("--reuseport", action="store_true")
    a = ap.parse_args(argv)
    if a.cmd == "reflect":
        reflect(a.port)
    else:
        udp(a)


if __name__ == "__main__":
    main()
