"""The daemons' Prometheus series (runtime/metrics.py), read from the counters the cores and the node's
forwarder keep, parsed with prometheus-client's own parser: the named series move when traffic
flows, counters never go down when paths go, labels stay bounded."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ntmobile.runtime.config import NodeSettings, parse_listen
from ntmobile.runtime.driver import WHERE_MAX, HandlerErrors
from ntmobile.runtime.metrics import (
    DriverCollector,
    Family,
    Metrics,
    NodeParts,
    RelayTotals,
    dc_families,
    node_families,
    rs_families,
)
from ntmobile.wire import PathMode

from .harness import World, ipv4_udp

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(*collectors: Callable[[], Iterable[Family]]) -> tuple[Samples, set[str]]:
    """Render a registry of ``collectors`` and parse it back with prometheus-client's parser: every
    sample by (name, labels), and the family names."""
    m = Metrics("test", process=False)
    for c in collectors:
        m.add(c)
    text = m.render().decode()
    samples: Samples = {}
    names = set()
    for fam in text_string_to_metric_families(text):
        names.add(fam.name)
        for s in fam.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples, names


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def rs_s_world() -> tuple[World, PathMode, str, str]:
    w = World(dc_id=b"\x01" * 8)
    w.node("mn", (("10.1.0.10", 7412), ("192.0.2.100", 7412)))
    w.node("cn", (("10.2.0.10", 7412), ("192.0.2.101", 7412)))
    ready = w.path("mn", "cn.a.example")
    w.net.run_until(lambda: bool(w.net.hosts["cn"].fwd.by_id))  # type: ignore[union-attr]
    vip_mn = next(e.path.peer_vip4 for e in w.net.events_of("cn", type(ready)))
    assert ready.path.peer_vip4 and vip_mn
    return w, ready.path.mode, vip_mn, ready.path.peer_vip4


def test_node_relay_and_dc_series_move_when_traffic_flows() -> None:
    w, mode, vip_mn, vip_cn = rs_s_world()
    assert mode is PathMode.RS_S
    mn = NodeParts(w.mn, w.net.hosts["mn"].fwd)
    totals = RelayTotals()
    before, names = scrape(lambda: node_families(mn), lambda: rs_families(w.rs, totals), lambda: dc_families(w.dc))
    # Counters carry _total, every family the ntm_ prefix.
    assert {"ntm_node_tx_packets", "ntm_node_drops", "ntm_rs_relayed_packets", "ntm_rs_relay_entries",
            "ntm_dc_sessions", "ntm_dc_paths", "ntm_dc_drops", "ntm_rs_kernel_forwarded_packets"} <= names
    assert all(n.startswith("ntm_") for n in names)
    assert value(before, "ntm_rs_relay_entries", mode="RS_S") == 1
    assert value(before, "ntm_dc_paths") >= 1 and value(before, "ntm_dc_sessions") == 3  # two nodes, one relay
    assert value(before, "ntm_node_paths", mode="RS_S", state="established") == 1
    for i in range(5):
        w.send_ip("mn", ipv4_udp(vip_mn, vip_cn, b"x" * (100 + i)))
    w.net.run_until(lambda: len(w.received("cn")) == 5)
    after, _ = scrape(lambda: node_families(mn), lambda: rs_families(w.rs, totals), lambda: dc_families(w.dc))
    assert value(after, "ntm_node_tx_packets_total", mode="RS_S") - value(
        before, "ntm_node_tx_packets_total", mode="RS_S") == 5
    assert value(after, "ntm_node_tx_bytes_total", mode="RS_S") - value(
        before, "ntm_node_tx_bytes_total", mode="RS_S") == sum(28 + 100 + i for i in range(5))
    relayed = sum(value(after, "ntm_rs_relayed_packets_total", mode="RS_S", direction=d) for d in ("i2r", "r2i"))
    relayed0 = sum(value(before, "ntm_rs_relayed_packets_total", mode="RS_S", direction=d) for d in ("i2r", "r2i"))
    assert relayed - relayed0 == 5
    # A drop counter of the core, by reason (the counter the core keeps, not a copy).
    w.rs.receive_datagram(b"\x01\x02junk", ("192.0.2.99", 1), w.net.now)
    dropped, _ = scrape(lambda: rs_families(w.rs, totals))
    reasons = {dict(k[1])["reason"]: v for k, v in dropped.items() if k[0] == "ntm_rs_drops_total"}
    assert sum(reasons.values()) == sum(v for k, v in w.rs.stats.items() if k.startswith("drop_")) >= 1


def test_counters_never_go_down_when_paths_and_relay_entries_go() -> None:
    w, _mode, vip_mn, vip_cn = rs_s_world()
    fwd = w.net.hosts["mn"].fwd
    assert fwd is not None
    for _ in range(3):
        w.send_ip("mn", ipv4_udp(vip_mn, vip_cn, b"y" * 50))
    w.net.run_until(lambda: len(w.received("cn")) == 3)
    mn, totals = NodeParts(w.mn, fwd), RelayTotals()
    live, _ = scrape(lambda: node_families(mn), lambda: rs_families(w.rs, totals))
    # The node's path goes (the forwarder forgets it) and the relay's entry with it.
    for pid in list(fwd.by_id):
        fwd.remove(pid)
    for e in w.rs.entries():
        totals.retire(e)
        w.rs.table.remove(e)
    gone, _ = scrape(lambda: node_families(mn), lambda: rs_families(w.rs, totals))
    for key in ("ntm_node_tx_packets_total", "ntm_node_tx_bytes_total"):
        assert value(gone, key, mode="RS_S") == value(live, key, mode="RS_S") == (3 if "packets" in key else 3 * 78)
    for d in ("i2r", "r2i"):
        assert value(gone, "ntm_rs_relayed_packets_total", mode="RS_S", direction=d) == value(
            live, "ntm_rs_relayed_packets_total", mode="RS_S", direction=d)
    assert value(gone, "ntm_rs_relay_entries", mode="RS_S") == 0


def test_a_path_that_changes_mode_moves_its_counts_without_any_total_going_down() -> None:
    w, _mode, vip_mn, vip_cn = rs_s_world()
    fwd = w.net.hosts["mn"].fwd
    assert fwd is not None
    w.send_ip("mn", ipv4_udp(vip_mn, vip_cn, b"z" * 10))
    w.net.run_until(lambda: len(w.received("cn")) == 1)
    [fp] = fwd.by_id.values()
    fwd.add(fp.path_id, fp.sealer, fp.opener, [vip_cn], fp.endpoint, True, mode="DIRECT")  # upgraded to DIRECT
    w.send_ip("mn", ipv4_udp(vip_mn, vip_cn, b"z" * 10))
    t = fwd.totals_by_mode()
    assert t["RS_S"][0] == 1 and t["DIRECT"][0] == 1
    assert fwd.by_id[fp.path_id].tx_packets == 2  # the path's own counter (ntm status) carries on


def test_handler_errors_by_where_are_bounded() -> None:
    errors = HandlerErrors()
    for i in range(WHERE_MAX + 10):
        errors.record(f"place {i}", ValueError("x"))
    errors.record("place 0", ValueError("again"))
    assert len(errors.by_where) == WHERE_MAX + 1 and errors.by_where["other"] == 10
    assert errors.by_where["place 0"] == 2
    got, _ = scrape(DriverCollector("node", lambda: {"received": 7}, lambda: errors.by_where).collect)
    assert value(got, "ntm_node_handler_errors_total", where="other") == 10
    assert value(got, "ntm_node_received_datagrams_total") == 7


def test_metrics_listen_setting() -> None:
    assert parse_listen("127.0.0.1:9412") == ("127.0.0.1", 9412)
    assert parse_listen("[::1]:9410") == ("::1", 9410)
    assert parse_listen("") is None
    assert NodeSettings(credentials="x").metrics == "127.0.0.1:9412"
    for bad in ("localhost:9412", "127.0.0.1", "127.0.0.1:0", "1.2.3.4:http"):
        with pytest.raises(ValueError):
            parse_listen(bad)


def test_the_text_format_escapes_what_a_label_or_help_may_hold_and_histograms_parse() -> None:
    from ntmobile.runtime.metrics import counter_family

    odd = 'a "quoted" back\\slash\nnew line'
    m = Metrics("t", process=False)
    m.add(lambda: [counter_family("ntm_t_odd", "help with \\ and\nnewline", ["where"]),
                   counter_family("ntm_t_plain", "x", value=3)])
    m.add(lambda: [f for f in [counter_family("ntm_t_lab", "x", ["where"])] if not f.add_metric([odd], 2)])
    h = m.histogram("lat_seconds", "latency", ["mode"], buckets=(0.1, 1.0))
    for v in (0.05, 0.5, 5.0):
        h.labels("DIRECT").observe(v)
    fams = {f.name: f for f in text_string_to_metric_families(m.render().decode())}
    assert fams["ntm_t_lab"].samples[0].labels == {"where": odd} and fams["ntm_t_lab"].type == "counter"
    assert fams["ntm_t_plain"].samples[0].value == 3
    hist = {(s.name, s.labels.get("le")): s.value for s in fams["ntm_t_lat_seconds"].samples}
    assert fams["ntm_t_lat_seconds"].type == "histogram"
    assert hist[("ntm_t_lat_seconds_bucket", "0.1")] == 1 and hist[("ntm_t_lat_seconds_bucket", "1.0")] == 2
    assert hist[("ntm_t_lat_seconds_bucket", "+Inf")] == 3 and hist[("ntm_t_lat_seconds_count", None)] == 3
    assert hist[("ntm_t_lat_seconds_sum", None)] == 5.55


def test_a_nested_breakdown_in_the_stats_is_left_out() -> None:
    """The DNS zones' ``by_type`` is keyed by whatever type a query named (up to 65,536 values): not a
    label. Only numbers become samples (a dict among them once made every DC scrape fail)."""
    from types import SimpleNamespace

    zone = SimpleNamespace(origin=SimpleNamespace(to_text=lambda: "a.example."),
                           stats=SimpleNamespace(queries=5, by_type={"A": 3, "TYPE65000": 2}))
    w = World(dc_id=b"\x01" * 8)
    got, _ = scrape(lambda: dc_families(w.dc, zones=[zone]))
    assert value(got, "ntm_dc_dns_responses_total", zone="a.example.", kind="queries") == 5
    assert not [k for k in got if "by_type" in str(k)]
