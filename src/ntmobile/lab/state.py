"""The lab's state file (/run/ntmlab/<prefix>/state.json) and process bookkeeping by PID."""

from __future__ import annotations

import os
import re
from pathlib import Path

from pydantic import BaseModel, Field

from .topology import Topology

RUN_DIR = Path("/run/ntmlab")
ETC_NETNS = Path("/etc/netns")
PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{0,7}$")


class ProcRecord(BaseModel):
    name: str
    host: str
    pid: int
    starttime: int  # /proc/PID/stat field 22, guards against PID reuse
    argv: list[str]
    log: str | None = None


class BigFile(BaseModel):
    path: str
    url_path: str
    size: int
    sha256: str


class LabState(BaseModel):
    prefix: str
    topology: Topology
    bare: bool = False
    workdir: str
    namespaces: list[str] = Field(default_factory=list)
    etc_dirs: list[str] = Field(default_factory=list)
    current: dict[str, str] = Field(default_factory=dict)  # host -> active link (ifname)
    processes: list[ProcRecord] = Field(default_factory=list)
    big_file: BigFile | None = None
    client_key: str | None = None
    created: float = 0.0
    up_seconds: float | None = None
    #: `--monitor`: the URL of the lab's Prometheus (lab/monitor.py).
    monitor_url: str | None = None


def lab_dir(prefix: str) -> Path:
    return RUN_DIR / prefix


def state_path(prefix: str) -> Path:
    return lab_dir(prefix) / "state.json"


def load_state(prefix: str) -> LabState | None:
    p = state_path(prefix)
    try:
        return LabState.model_validate_json(p.read_text())
    except (OSError, ValueError):
        return None


def save_state(state: LabState) -> None:
    p = state_path(state.prefix)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".state.{os.getpid()}.tmp")
    tmp.write_text(state.model_dump_json(indent=1))
    tmp.replace(p)


def proc_starttime(pid: int) -> int | None:
    """Start time of PID (clock ticks since boot), or None if it does not exist or is a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def proc_alive(rec: ProcRecord) -> bool:
    return proc_starttime(rec.pid) == rec.starttime


def listening_ports(pid: int, proto: str) -> set[int]:
    """Ports with a listening TCP socket (proto "tcp") or a bound UDP socket (proto "udp") in the
    network namespace of PID, read from /proc/PID/net (no fork, no setns)."""
    ports: set[int] = set()
    for suffix in ("", "6"):
        try:
            lines = Path(f"/proc/{pid}/net/{proto}{suffix}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if proto == "tcp" and f[3] != "0A":
                continue
            ports.add(int(f[1].rsplit(":", 1)[1], 16))
    return ports
