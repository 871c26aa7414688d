"""The relay server's sans-IO core: registration with its DCs, the Relay Table, RS-S and RS-N relaying.

One box, two modes (paper §3). Per path the DC says which mode to use (RS type in the Relay
Direction):

- **RS-S** relays between two NTM nodes behind different NATs. It holds a *relay key* (never the
  path key): each leg's tunnel signalling is sealed with that leg's keys from ``relay_leg_keys``,
  which authenticates the leg and tells the RS its address. Data capsules are forwarded
  byte-identical to the other leg; the RS-S cannot open or forge them.
- **RS-N** relays between an NTM node and a general node. It is the *responder* end of the path and
  holds the path key: it opens the node's capsules and hands the inner IP packet to the runtime,
  which writes it to the TUN device where the kernel NATs it (nft DNAT peer VIP -> GN address,
  masquerade); replies the kernel de-NATs come back through ``tun_packet`` and are sealed to the node.

The package: ``config`` (DcLink, RsConfig, limits), ``events``, ``table`` (the Relay Table: RssEntry
and RsnEntry with their states; install, re-key, release, idle expiry), ``dclinks`` (registration,
Relay Direction, Path Release, probes), ``forward`` (the per-datagram hot path), ``core`` (RsCore:
inputs, outputs, dispatch, the nodes' tunnel signalling), ``fastpolicy`` (which RS-S paths the
kernel should forward: pure decisions the runtime applies to nft).

Driving (see ``core.common``): ``register(now)``, ``receive_datagram(data, addr, now)``,
``tun_packet(packet, now)``, ``handle_timer(now)`` at ``get_timer()``; outputs
``datagrams_to_send()``, ``next_event()`` (drain before sending: ``RelayAdded`` precedes the
Direction Response that lets the DC route the node here) and ``packets_to_tun()``.

Address learning. An endpoint is only ever learnt from authenticated input: tunnel signalling and
path keepalives (both modes), and end-to-end authenticated data (RS-N only). An RS-S cannot
authenticate data, so data never moves a leg; it is forwarded only when it comes from the sending
leg's learnt endpoint (otherwise anybody who saw a path ID could use the RS-S as a reflector). A
node whose address changed re-announces itself with a Tunnel Request or a path Keepalive.

RS-N paths are unique per (node VIP, peer VIP) pair, because the kernel NAT cannot tell two apart:
a new path of the same DC for a pair supersedes the old one (RelayRemoved "superseded", then
RelayAdded); the same pair from another DC is refused (BUSY). An RS-N drops GSO capsules unless
its configuration offers Capability.GSO, and drops decrypted packets that are not between the
path's node VIP and peer VIP, so nothing else reaches the NAT.

Flags on what the RS sends: a reply travelling towards the initiator carries
``SignalFlags.FROM_RESPONDER`` (RS-N replies; RS-S replies on the initiator leg); a reply on an
RS-S responder leg carries no flag. Incoming tunnel signalling names its leg with the same flag
(set = responder leg).
"""

from ..registration import DcState
from .config import MAX_PROBES, RETIRED_KEYS_MAX, USED_KEYS_MAX, VNET_HDR_SIZE, DcLink, RsConfig
from .core import RsCore
from .dclinks import ProbeKey
from .events import (
    ProbeRequest,
    Registered,
    RegistrationFailed,
    RelayAdded,
    RelayEndpointChanged,
    RelayRemoved,
)
from .forward import GsoSend, TunPacket
from .table import AnyEntry, EntryState, Leg, RelayEntry, RelayStateError, RelayTable, RsnEntry, RssEntry

__all__ = [
    "MAX_PROBES", "RETIRED_KEYS_MAX", "USED_KEYS_MAX", "VNET_HDR_SIZE",
    "AnyEntry", "DcLink", "DcState", "EntryState", "GsoSend", "Leg", "ProbeKey", "ProbeRequest", "Registered",
    "RegistrationFailed", "RelayAdded", "RelayEndpointChanged", "RelayEntry", "RelayRemoved", "RelayStateError",
    "RelayTable", "RsConfig", "RsCore", "RsnEntry", "RssEntry", "TunPacket",
]
