"""Link and route settings made with iproute2's ``ip`` command: the TUN's gso_max_size (which
pyroute2 cannot set) and the relay's link-up and routes (the relay need not load pyroute2, about
20 MiB of resident memory, for two operations at start-up)."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence


class IpCommandError(OSError):
    """``ip`` refused (its message is the exception's)."""


def set_gso_max_size(name: str, size: int) -> bool:
    """Cap the super-packets the kernel hands a TUN (``ip link set gso_max_size``): the data plane
    keeps every GSO capsule within one UDP_SEGMENT send. False if ``ip`` refused."""
    try:
        subprocess.run(["ip", "link", "set", "dev", name, "gso_max_size", str(size)], check=True,
                       capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return True


def ip_link_up(name: str, mtu: int) -> None:
    """``ip link set NAME mtu MTU up``."""
    _ip(["link", "set", "dev", name, "mtu", str(mtu), "up"])


def ip_route_replace(dst: str, dev: str) -> None:
    """``ip route replace DST dev DEV`` (IPv4 or IPv6 prefix)."""
    _ip(["-6" if ":" in dst else "-4", "route", "replace", dst, "dev", dev])


def _ip(args: Sequence[str]) -> None:
    cp = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if cp.returncode != 0:
        raise IpCommandError(0, f"ip {' '.join(args)}: {cp.stderr.strip()}")
