"""nftables rulesets of the lab: NAT profiles on router namespaces and random loss on host legs.

Pure text generation (applied with `nft -f -` inside the namespace, atomically).
"""

from __future__ import annotations

from .topology import Nat

# Passive-mode FTP data ports of the GN's vsftpd (kept here so the docs and tests have one source).
FTP_PASV_PORTS = (30000, 30099)


def nat_ruleset(table: str, nat: Nat, *, wan: str, lan: str) -> str:
    """The router's table for `nat.profile`: forwarding policy, NAT and the FTP conntrack helper.

    - none: plain routing both ways (other hosts get a route to the inside network).
    - port_restricted: masquerade; Linux keeps the source port when it is free, so the mapping is
      endpoint independent; inbound passes only as a reply of an existing conntrack entry (full
      5-tuple), which is port-restricted filtering.
    - symmetric: masquerade fully-random, a fresh random mapped port for every new conntrack entry
      (so per destination).
    - one_to_one: static 1:1 SNAT/DNAT between nat.one_to_one_inside and nat.one_to_one_outside
      (inbound to the outside address reaches the inside host); other inside hosts are masqueraded.
    - udp_blocked: masquerade, and no UDP is forwarded in either direction.
    - permissive: port_restricted without the WAN input filter below (the lab's NATs before issue 16).

    Every NAT profile (not ``none``, not ``permissive``) drops new TCP and UDP arriving on the WAN for
    the router itself, as home routers do (OpenWrt's wan zone: input REJECT). Without it an unsolicited
    datagram, e.g. the peer's first punch probe, is delivered to the router's own stack and leaves an
    unreplied conntrack entry (peer -> router:port) that makes the router's later mapping of the inside
    host toward that peer take a new port (the clash Nebula 1.6 hits in the lab: docs/lab.md).
    """
    p = nat.profile
    fwd = ["ct state established,related accept"]
    if p == "udp_blocked":
        fwd.insert(0, "meta l4proto udp drop")
    if p == "none":
        fwd.append(f'iifname "{wan}" oifname "{lan}" accept')
    if p == "one_to_one":
        fwd.append(f'iifname "{wan}" oifname "{lan}" ip daddr {nat.one_to_one_inside} ct status dnat accept')
    fwd.append(f'iifname "{lan}" oifname "{wan}" accept')

    pre: list[str] = []
    post: list[str] = []
    if p == "one_to_one":
        pre.append(f'iifname "{wan}" ip daddr {nat.one_to_one_outside} dnat to {nat.one_to_one_inside}')
        post.append(f'oifname "{wan}" ip saddr {nat.one_to_one_inside} snat to {nat.one_to_one_outside}')
    if p in ("port_restricted", "one_to_one", "udp_blocked", "permissive"):
        post.append(f'oifname "{wan}" masquerade')
    elif p == "symmetric":
        post.append(f'oifname "{wan}" masquerade fully-random')

    lines = [
        f"table ip {table} {{",
        "  ct helper ftp-standard {",
        '    type "ftp" protocol tcp',
        "    l3proto ip",
        "  }",
        "  chain helpers {",
        "    type filter hook prerouting priority filter; policy accept;",
        '    tcp dport 21 ct helper set "ftp-standard"',
        "  }",
        "  chain forwarding {",
        "    type filter hook forward priority filter; policy drop;",
        *[f"    {r}" for r in fwd],
        "  }",
    ]
    if p not in ("none", "permissive"):
        lines += ["  chain wan_input {", "    type filter hook input priority filter; policy accept;",
                  f'    iifname "{wan}" ct state new meta l4proto {{ tcp, udp }} drop', "  }"]
    if pre:
        lines += ["  chain nat_pre {", "    type nat hook prerouting priority dstnat; policy accept;",
                  *[f"    {r}" for r in pre], "  }"]
    if post:
        lines += ["  chain nat_post {", "    type nat hook postrouting priority srcnat; policy accept;",
                  *[f"    {r}" for r in post], "  }"]
    lines.append("}")
    return "\n".join(lines) + "\n"


def loss_ruleset(table: str, legs: list[tuple[str, float]]) -> str:
    """Drop `percent`% of the packets entering and, separately, leaving each interface (nft numgen)."""
    ing = []
    egr = []
    for ifname, percent in legs:
        n = round(percent * 100)
        if n <= 0:
            continue
        cond = "" if n >= 10000 else f" numgen random mod 10000 < {n}"
        ing.append(f'    iifname "{ifname}"{cond} drop')
        egr.append(f'    oifname "{ifname}"{cond} drop')
    if not ing:
        return ""
    return "\n".join([
        f"table inet {table} {{",
        "  chain ingress_loss {",
        "    type filter hook prerouting priority raw; policy accept;",
        *ing,
        "  }",
        "  chain egress_loss {",
        "    type filter hook postrouting priority raw; policy accept;",
        *egr,
        "  }",
        "}",
    ]) + "\n"
