"""The protocol's time budgets (core.timing) keep the relations the docs state, and the cores and
daemons use those budgets rather than copies of their own."""

from __future__ import annotations

import ast
import pathlib

from ntmobile.core import timing as t

SRC = pathlib.Path(__file__).resolve().parents[2] / "src" / "ntmobile"


def test_the_node_answers_before_the_applications_resolver_gives_up() -> None:
    assert t.DIRECTION_TIMEOUT < t.GLIBC_RESOLVER_TRY


def test_every_dc_budget_of_a_direction_fits_inside_the_nodes_direction_timeout() -> None:
    # The last relay round starts before RELAY_BUDGET and its Relay Direction is over by then + timeout.
    assert t.RELAY_BUDGET + t.RELAY_DIRECTION_TIMEOUT < t.DIRECTION_TIMEOUT
    # An RS-S path: a relay accepts, then the peer node is told with a Route Direction.
    assert t.RELAY_DIRECTION_TIMEOUT + t.ROUTE_DIRECTION_TIMEOUT < t.DIRECTION_TIMEOUT
    assert t.PEER_QUERY_TIMEOUT < t.DIRECTION_TIMEOUT
    assert t.DISCOVERY_DEADLINE < t.DIRECTION_TIMEOUT
    # A distance measurement and at least one Relay Direction fit inside the relay budget.
    assert t.DISTANCE_PROBE_TIMEOUT + t.RELAY_DIRECTION_TIMEOUT <= t.RELAY_BUDGET


def test_the_relay_answers_a_distance_probe_before_the_dc_gives_up_on_it() -> None:
    assert t.ECHO_PROBE_TIMEOUT < t.DISTANCE_PROBE_TIMEOUT


def test_retransmission_happens_within_every_request_timeout() -> None:
    timeouts = [t.DIRECTION_TIMEOUT, t.TUNNEL_TIMEOUT, t.REGISTRATION_TIMEOUT, t.MAPPING_PROBE_TIMEOUT,
                t.RELAY_DIRECTION_TIMEOUT, t.ROUTE_DIRECTION_TIMEOUT, t.DISTANCE_PROBE_TIMEOUT,
                t.PEER_QUERY_TIMEOUT, t.NODE_KEEPALIVE_TIMEOUT_MIN, t.RELAY_KEEPALIVE_TIMEOUT_MIN]
    assert all(t.RTO_INITIAL < x for x in timeouts)
    assert t.RTO_INITIAL <= t.RTO_MAX and t.RTO_BACKOFF > 1


def test_replies_are_cached_longer_than_any_client_retransmits_a_request() -> None:
    longest = max(t.DIRECTION_TIMEOUT, t.TUNNEL_TIMEOUT, t.REGISTRATION_TIMEOUT, t.PEER_QUERY_TIMEOUT,
                  t.ROUTE_DIRECTION_TIMEOUT, t.RELAY_DIRECTION_TIMEOUT)
    assert t.REPLY_CACHE_SECONDS > longest


def test_held_tunnel_requests_are_not_kept_past_the_initiators_wait() -> None:
    assert t.EARLY_HOLD <= t.TUNNEL_TIMEOUT
    assert t.MOVED_GRACE == 2 * t.TUNNEL_TIMEOUT


def test_a_stuck_redirection_is_one_that_outlived_all_of_its_steps() -> None:
    assert t.REDIRECT_STALE > t.RELAY_BUDGET + t.RELAY_DIRECTION_TIMEOUT + t.ROUTE_DIRECTION_TIMEOUT
    assert t.REDIRECT_STALE > t.PEER_QUERY_TIMEOUT + t.ROUTE_DIRECTION_TIMEOUT


def test_peer_hellos_are_resent_within_a_peer_query() -> None:
    assert list(t.PEER_HELLO_RESEND) == sorted(t.PEER_HELLO_RESEND)
    assert t.PEER_HELLO_MIN_GAP < t.PEER_HELLO_RESEND[0]
    assert t.PEER_HELLO_RESEND[-1] < t.PEER_QUERY_TIMEOUT


def test_keepalive_timeouts_stay_inside_their_bounds_and_before_the_next_keepalive() -> None:
    for interval in (0.1, 1, 2, 3, 5, 6, 10, 15, 40, 120):
        n = t.node_keepalive_timeout(interval)
        assert t.NODE_KEEPALIVE_TIMEOUT_MIN <= n <= t.NODE_KEEPALIVE_TIMEOUT_MAX
        r = t.relay_keepalive_timeout(interval)
        assert t.RELAY_KEEPALIVE_TIMEOUT_MIN <= r <= t.RELAY_KEEPALIVE_TIMEOUT_MAX
        assert r <= max(interval, t.RELAY_KEEPALIVE_TIMEOUT_MIN)
    assert t.node_keepalive_timeout(15) == 3.0 and t.node_keepalive_timeout(3) == 1.5
    assert t.relay_keepalive_timeout(t.RELAY_KEEPALIVE_DEFAULT) == 5.0
    assert t.REGISTRATION_BACKOFF_INITIAL < t.REGISTRATION_BACKOFF_MAX


def test_a_silent_dc_is_noticed_and_a_direction_request_retransmitted_in_time() -> None:
    # The first liveness Keepalive is retransmitted once before the DC is called silent, and the
    # fallback (plus an upstream discovery of a few ms) answers within the 1 s an application waits.
    assert t.RTO_INITIAL < t.DC_LIVENESS_TIMEOUT < 1.0
    assert t.REGISTRATION_HOLD <= t.DC_LIVENESS_TIMEOUT
    # A Direction Request is retransmitted twice (after DIRECTION_RTO, then RTO_BACKOFF times more,
    # capped at RTO_MAX) inside DIRECTION_TIMEOUT.
    assert t.DIRECTION_RTO + min(t.DIRECTION_RTO * t.RTO_BACKOFF, t.RTO_MAX) < t.DIRECTION_TIMEOUT
    assert t.FALLBACK_TTL < t.DC_SILENT_BACKOFF


def test_the_values_are_todays() -> None:
    """Moving the budgets here changed none of them (the figures and the wire behaviour stay)."""
    assert (t.DIRECTION_TIMEOUT, t.TUNNEL_TIMEOUT, t.EARLY_HOLD, t.REGISTRATION_TIMEOUT) == (4.0, 3.0, 2.0, 6.0)
    assert (t.RELAY_DIRECTION_TIMEOUT, t.RELAY_BUDGET, t.ROUTE_DIRECTION_TIMEOUT) == (0.8, 2.5, 2.0)
    assert (t.DISTANCE_PROBE_TIMEOUT, t.ECHO_PROBE_TIMEOUT, t.PEER_QUERY_TIMEOUT, t.DISCOVERY_DEADLINE) == (
        0.5, 0.35, 3.0, 2.0)
    assert (t.REPLY_CACHE_SECONDS, t.REDIRECT_STALE, t.METRIC_TTL, t.UNREACHABLE_METRIC_TTL) == (30.0, 10.0, 300.0,
                                                                                                  10.0)


def test_no_module_defines_a_budget_of_its_own() -> None:
    """The budgets are defined only in core.timing: a module-level assignment of one of its names
    anywhere else (a copy that could drift) fails this test."""
    names = {n for n in vars(t) if n.isupper()}
    offenders = []
    for path in SRC.rglob("*.py"):
        if path == SRC / "core" / "timing.py":
            continue
        for node in ast.parse(path.read_text()).body:
            targets = node.targets if isinstance(node, ast.Assign) else (
                [node.target] if isinstance(node, ast.AnnAssign) else [])
            for target in targets:
                if isinstance(target, ast.Name) and target.id in names:
                    offenders.append(f"{path.relative_to(SRC)}: {target.id}")
    assert offenders == []


def test_relay_release_budgets() -> None:
    """A punched path's relay release (issue 16): the DC's too-early window is shorter than the grace
    after which a node releases, and the node's release timeout fits before the relay's idle timeout
    would drop the entry anyway (120 s by default)."""
    assert 0 < t.RELAY_RELEASE_MIN_AGE < t.RELAY_GRACE
    assert t.RELAY_GRACE + t.RELAY_RELEASE_TIMEOUT < 120
