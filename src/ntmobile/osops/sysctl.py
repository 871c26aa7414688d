"""Kernel parameters through /proc/sys (in the caller's network namespace for net.* keys)."""

from __future__ import annotations

from pathlib import Path

PROC_SYS = Path("/proc/sys")


class SysctlError(OSError):
    """Reading or writing a sysctl failed; the message names the key, the file and the reason."""


def sysctl_path(key: str) -> Path:
    """'net.ipv4.ip_forward' or 'net/ipv4/ip_forward' -> /proc/sys/net/ipv4/ip_forward.

    Use the slash form when a component contains a dot (e.g. an interface named 'eth0.100').
    """
    rel = key if "/" in key else key.replace(".", "/")
    parts = [p for p in rel.split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise ValueError(f"bad sysctl key {key!r}")
    return PROC_SYS.joinpath(*parts)


def read_sysctl(key: str) -> str:
    path = sysctl_path(key)
    try:
        return path.read_text().strip()
    except OSError as e:
        raise SysctlError(e.errno, f"sysctl {key}: cannot read {path}: {e.strerror}") from e


def write_sysctl(key: str, value: str | int) -> None:
    path = sysctl_path(key)
    try:
        with open(path, "w") as f:
            f.write(f"{value}\n")
    except OSError as e:
        raise SysctlError(e.errno, f"sysctl {key}={value}: cannot write {path}: {e.strerror}") from e


def enable_forwarding(ipv4: bool = True, ipv6: bool = True) -> None:
    """Turn on IP forwarding (what an RS needs for kernel NAPT)."""
    if ipv4:
        write_sysctl("net.ipv4.ip_forward", 1)
    if ipv6:
        write_sysctl("net.ipv6.conf.all.forwarding", 1)
