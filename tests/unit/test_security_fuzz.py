"""Bounded-time structured fuzz of the cores' ``receive_datagram`` (issue 8): real captured
datagrams, mutated (truncated, extended, oversized, bit-flipped, garbled bodies under valid
headers, resealed under wrong keys, unknown senders and Path IDs, verbatim replays, swapped types)
and random bytes, fed to a registered DC, RS (with an RS-N path) and node. Nothing raises, and
every datagram is accounted for: a counter moved, or the core answered or emitted an event."""

from __future__ import annotations

import itertools

import pytest

from ntmobile.bench.fuzz import DNS_MUTATIONS, SIGNAL_MUTATIONS, Mutator, corpus_world, dns_corpus, fuzz_core

N = 6000  # per core and seed: well under a second each


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("target", ["dc", "rs", "node"])
def test_core_survives_and_accounts_for_mutated_datagrams(target: str, seed: int) -> None:
    corpus, dc, rs, node = corpus_world(seed=seed)
    core = {"dc": dc, "rs": rs, "node": node}[target]
    # registered, with an RS-N path: mutations reach authentication and path lookup
    assert node.registered and len(rs.entries()) == 1 and len(node.paths()) == 1
    everything = corpus["dc"] + corpus["rs"] + corpus["node"]
    gen = Mutator(everything, seed * 7919)
    sources = (("127.0.0.1", 7410), ("127.0.0.2", 7411), ("127.0.0.3", 7412), ("203.0.113.9", 40000))
    rep = fuzz_core(core, iter(gen), N, sources=sources)
    assert rep.raised == 0
    assert rep.unaccounted == 0, rep.stats
    assert set(gen.counts) == set(SIGNAL_MUTATIONS)
    # Most of it is dropped, and counted as such.
    assert sum(v for k, v in rep.stats.items() if k.startswith("drop_")) > N // 2


def test_mutator_is_deterministic_per_seed() -> None:
    corpus = corpus_world()[0]["dc"]
    a = list(itertools.islice(iter(Mutator(corpus, 5)), 200))
    b = list(itertools.islice(iter(Mutator(corpus, 5)), 200))
    c = list(itertools.islice(iter(Mutator(corpus, 6)), 200))
    assert a == b != c


def test_dns_mutations_are_dns_shaped_and_seeded() -> None:
    gen = Mutator(dns_corpus(), 3, dns_mode=True)
    out = [gen.next() for _ in range(500)]
    assert set(gen.counts) == set(DNS_MUTATIONS)
    assert any(len(d) == 12 for d in out) and any(len(d) > 1200 for d in out)
