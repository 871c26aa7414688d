"""The protocol's time budgets (seconds), in one place and derived from one another where related.

Every budget says what it bounds and how it relates to the others; the relations the docs state are
asserted by tests/unit/test_timing.py. The cores and daemons import them from here. (The GSO
reassembly timeout, ``crypto.channel.REASSEMBLY_TIMEOUT``, lives in ``crypto``, which cannot import
``core``.)
"""

from __future__ import annotations

# --- outside bounds we must fit in -------------------------------------------------------------

#: glibc's stub resolver waits this long per try for an answer (resolv.conf ``timeout``, default 5 s):
#: the node must answer an application's DNS query before that, or the application retries or fails.
GLIBC_RESOLVER_TRY = 5.0

# --- retransmission (core.common) --------------------------------------------------------------

#: First retransmission of a signalling request comes after this; the interval then grows by
#: RTO_BACKOFF up to RTO_MAX, until the request's overall timeout passes.
RTO_INITIAL = 0.25
RTO_BACKOFF = 2.0
RTO_MAX = 2.0

# --- the node's budgets ------------------------------------------------------------------------

#: The DC must answer the node's Direction Request within this (the application's DNS query is held
#: meanwhile): below GLIBC_RESOLVER_TRY, so the node answers SERVFAIL before the resolver gives up.
#: Every DC-side budget of a direction below must fit inside it.
DIRECTION_TIMEOUT = 4.0
#: A Tunnel Request/Response exchange must complete within this, per endpoint of the peer tried.
TUNNEL_TIMEOUT = 3.0
#: After a move, a lost path keepalive within this is not a relay failure (its answer went to the
#: node's old address): a Tunnel Request's whole exchange, twice.
MOVED_GRACE = 2 * TUNNEL_TIMEOUT
#: Tunnel Requests for a path the node does not know yet (its Route Direction is still on the way)
#: are held this long: at most TUNNEL_TIMEOUT, past which the initiator has given up on them.
EARLY_HOLD = 2.0
#: A silent DC never breaks DNS (docs/operations.md, "When the DC is silent"). A Direction Request goes
#: with a session Keepalive (unless one is in flight already: a burst of lookups shares it); no answer
#: within DC_LIVENESS_TIMEOUT (one retransmission at RTO_INITIAL) marks the DC silent for
#: DC_SILENT_BACKOFF, and lookups meanwhile fall back to the upstream resolvers at once (untunnelled).
DC_LIVENESS_TIMEOUT = 0.6
#: Once the liveness Keepalive is answered (the DC is alive, and the Direction Requests sent before it
#: have most likely arrived), those are next retransmitted DIRECTION_RTO later, not at RTO_INITIAL's
#: pace: the DC's answer includes its DNS discovery (and, under a burst of new names, a queue).
DIRECTION_RTO = 1.0
DC_SILENT_BACKOFF = 10.0
#: A lookup while the node is (re-)registering waits this long for the registration, then falls back.
REGISTRATION_HOLD = DC_LIVENESS_TIMEOUT
#: TTL of an untunnelled fallback answer: short, so that tunnels take over again soon after the DC is back.
FALLBACK_TTL = 5
#: The node's NAT mapping probe (a Keepalive to the DC's probe endpoint) is given up after this.
MAPPING_PROBE_TIMEOUT = 2.0
#: `ntm ping`: how long one path probe waits for its answer (sent once, never retransmitted).
PATH_PROBE_TIMEOUT = 2.0
#: A path keepalive (node to peer or relay) is given up after interval / 2, kept within these bounds;
#: so the node notices a dead relay one keepalive interval plus at most NODE_KEEPALIVE_TIMEOUT_MAX on.
NODE_KEEPALIVE_TIMEOUT_MIN = 1.0
NODE_KEEPALIVE_TIMEOUT_MAX = 3.0

#: Busy-path liveness (core.node.liveness): every LIVENESS_SAMPLE seconds the node compares each
#: relayed path's data counters; data sent but nothing received for LIVENESS_SILENCE sends a path
#: Keepalive at once; LIVENESS_PROBE_LOSS without its answer (and without data) means the relay is
#: gone. Silence is node run time: a timer late by more than LIVENESS_MAX_CREDIT (a stalled event
#: loop) counts only that much. Worst case from the relay's death: SILENCE + 2 SAMPLE + PROBE_LOSS.
LIVENESS_SAMPLE = 0.2
LIVENESS_SILENCE = 0.4
LIVENESS_PROBE_LOSS = 1.0
LIVENESS_MAX_CREDIT = 2 * LIVENESS_SAMPLE

# --- registration with a DC (node and relay; core.registration) ----------------------------------

#: One registration attempt (retransmitted meanwhile) is given up after this, then retried.
REGISTRATION_TIMEOUT = 6.0
#: First retry delay after a failed registration, and its cap (the delay doubles on every failure).
REGISTRATION_BACKOFF_INITIAL = 1.0
REGISTRATION_BACKOFF_MAX = 30.0
#: Keepalive exchanges in a row without an answer before the client registers again.
KEEPALIVE_MISSES = 3
#: RS-S: capsules from a leg's unknown source (the node moved and has not announced itself yet) are
#: held this long for the leg's announcement (core/rs/hold.py): the node announces itself on noticing
#: the move; below RTO_INITIAL, since an announcement that is lost is retransmitted only then, and
#: capsules older than that are better left to the applications' own retransmission.
MOVE_HOLD = 0.2
#: After noticing a move the node's data plane keeps what it sends this long, to send it again if a
#: re-direction moves a path meanwhile (dataplane/forwarder.py): a re-direction's whole exchange
#: (re-registration, Direction Request, Peer Query, Route Directions, Tunnel Requests) takes 15-150 ms
#: in the lab; past this the applications' own retransmissions are the better cure.
MOVE_KEEP = 0.5
#: The relay's keepalive interval towards a DC whose Registration Response says 0.
RELAY_KEEPALIVE_DEFAULT = 10.0
#: The relay gives up one keepalive exchange after min(interval, max), at least min: always before
#: the next keepalive leaves.
RELAY_KEEPALIVE_TIMEOUT_MIN = 0.5
RELAY_KEEPALIVE_TIMEOUT_MAX = 5.0

# --- the DC's budgets within one direction -------------------------------------------------------

#: The DC waits this long for a relay's answer to a Relay Direction (and a Path Release), then marks
#: the relay dead and tries the next one.
RELAY_DIRECTION_TIMEOUT = 0.8
#: Relays are retried (another round) while the direction is younger than this: the last Relay
#: Direction then still fits inside the node's DIRECTION_TIMEOUT.
RELAY_BUDGET = 2.5
#: The DC waits this long for a Route Direction Ack (the peer node told of a path).
ROUTE_DIRECTION_TIMEOUT = 2.0
#: The DC waits this long for relays to measure their distance to a general node: a measurement and
#: at least one Relay Direction fit inside RELAY_BUDGET.
DISTANCE_PROBE_TIMEOUT = 0.5
#: The relay's one ICMP echo of a distance probe is given up after this: the relay answers the DC
#: before DISTANCE_PROBE_TIMEOUT passes.
ECHO_PROBE_TIMEOUT = 0.35
#: DC to DC: a Peer Query is retransmitted until this, inside the node's DIRECTION_TIMEOUT.
PEER_QUERY_TIMEOUT = 3.0
#: The DC daemon's discovery of another domain's DC (NS -> TXT -> A/AAAA) gets this much of the
#: node's DIRECTION_TIMEOUT. (Discovery and a Peer Query of the same direction together may exceed
#: it: the node then answers SERVFAIL; a second try finds the marker cached.)
DISCOVERY_DEADLINE = 2.0

# --- the DC's bookkeeping ----------------------------------------------------------------------

#: Replies to requests are kept this long, to answer retransmissions identically: longer than any
#: client retransmits one request.
REPLY_CACHE_SECONDS = 30.0
#: The DC's X25519 ephemeral of the registration handshake is used for at most this long, then
#: forgotten (docs/security.md, "Registration").
EPHEMERAL_LIFETIME = 1.0
#: How long a relay's measured distance to a GN address is reused ...
METRIC_TTL = 300.0
#: ... and how long a relay that did not answer a distance probe counts as unreachable.
UNREACHABLE_METRIC_TTL = 10.0
#: One re-direction of a path runs at a time; one older than this is taken as stuck and overtaken:
#: longer than a re-direction whose every step ran into its timeout.
REDIRECT_STALE = 10.0
#: DC replicas (shared registry): a re-direction whose path another replica is re-directing (its
#: lease, REDIRECT_STALE long, is taken) asks for the lease again this often, until it gets it.
REDIRECT_CLAIM_RETRY = 0.25
#: ... and gives up (PEER_UNREACHABLE) after this long: a lease has run out by then.
REDIRECT_CLAIM_WAIT = 2 * REDIRECT_STALE
#: A path row of the shared registry not (re-)directed for this long is deleted (docs/operations.md,
#: "DC replicas on PostgreSQL"): what bounds the table besides the rows deleted with their paths.
PATH_ROW_TTL = 24 * 3600.0
#: A relay not heard from for this many of its keepalive intervals is considered down.
RELAY_DEAD_AFTER = 3
#: NAT traversal (issue 16): a punched path keeps its relay leg as a standby this long after the
#: switch to DIRECT; then the node releases the relay entry (a relay-only Path Release to its DC).
RELAY_GRACE = 10.0
#: The DC ignores a relay-only Path Release of a path (re-)directed less than this ago: a release
#: comes at least RELAY_GRACE after the Route Direction, so a younger one is a late duplicate of a
#: release meant for the path's previous relay leg (below RELAY_GRACE, asserted by test_timing).
RELAY_RELEASE_MIN_AGE = RELAY_GRACE / 2
#: The node gives a relay-only Path Release up after this (retransmitted meanwhile); the relay's
#: idle timeout then drops the entry as before.
RELAY_RELEASE_TIMEOUT = 4.0
#: Peer Query timestamps further than this from our clock are refused with STALE; the nonces seen are
#: kept twice as long (anything older is refused by its timestamp).
PEER_CLOCK_SKEW = 30.0
#: Peer Hellos are re-sent at these delays while the peer DC has not introduced itself (inside a
#: Peer Query's PEER_QUERY_TIMEOUT) ...
PEER_HELLO_RESEND = (0.5, 1.5)
#: ... and a hello is answered with ours at most once per this (hellos crossing each other).
PEER_HELLO_MIN_GAP = 0.2


def node_keepalive_timeout(interval: float) -> float:
    """How long the node waits for the answer to a keepalive sent every ``interval`` seconds."""
    return min(NODE_KEEPALIVE_TIMEOUT_MAX, max(NODE_KEEPALIVE_TIMEOUT_MIN, interval / 2))


def relay_keepalive_timeout(interval: float) -> float:
    """How long the relay waits for its DC's answer to a keepalive sent every ``interval`` seconds."""
    return max(RELAY_KEEPALIVE_TIMEOUT_MIN, min(interval, RELAY_KEEPALIVE_TIMEOUT_MAX))

# --- DC replicas (issue 17) ----------------------------------------------------------------------

#: A node whose DC replica stops answering is registered with another replica this long after the
#: last answer at most, with the default keepalive (15 s): its keepalives go unanswered
#: (KEEPALIVE_MISSES exchanges, given up within the interval), then a registration at the next
#: replica. tests/unit/test_replica_failover.py measures it.
REPLICA_FAILOVER_BOUND = 20.0
#: Keepalive interval of a node with DC replicas whose DC asks for none (no NAT): the DC daemon's
#: default interval, so such a node fails over within REPLICA_FAILOVER_BOUND too.
REPLICA_LIVENESS_KEEPALIVE = 15.0
