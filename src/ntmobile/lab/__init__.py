"""ntmobile.lab: the network-namespace lab (`ntm lab`). See docs/lab.md.

    from ntmobile.lab import Lab, load_topology
    topo = load_topology("nat").with_nat("nata", "symmetric")
    with Lab.up(topo, prefix="t1") as lab:
        lab.exec("mn", ["dig", "+short", "www.gn.example"])
"""

from .daemons import DaemonContext, DaemonLaunch, daemon_kinds, register_daemon_kind
from .lab import Lab, LabError, running_labs, teardown
from .topology import (
    BUILTIN_TOPOLOGIES,
    NAT_PROFILES,
    NatProfile,
    Topology,
    TopologyError,
    load_topology,
    parse_topology,
)

__all__ = [
    "BUILTIN_TOPOLOGIES",
    "NAT_PROFILES",
    "DaemonContext",
    "DaemonLaunch",
    "Lab",
    "LabError",
    "NatProfile",
    "Topology",
    "TopologyError",
    "daemon_kinds",
    "load_topology",
    "parse_topology",
    "register_daemon_kind",
    "running_labs",
    "teardown",
]
