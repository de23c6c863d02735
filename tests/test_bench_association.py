"""The association benchmark's load: its node-local clutter is what it says,
and the association it measures turns none of it into shots."""

from __future__ import annotations

import numpy as np

from benchmarks.bench_association import arrivals_for, lattice, run, run_engine


def test_clutter_adds_node_local_sounds_at_the_given_rate_over_the_sources_time():
    nodes = lattice(9, 400.0)
    quiet = arrivals_for(nodes, 20, 0.5, 1500.0, 340.0, np.random.default_rng(3))
    busy = arrivals_for(nodes, 20, 0.5, 1500.0, 340.0, np.random.default_rng(3), clutter=2.0)
    # the sources are drawn first, so the same seed gives the same sources' arrivals
    assert set(quiet) <= set(busy)
    extra = [a for a in busy if a not in set(quiet)]
    # over the sources' emission times: the arrivals' span less up to a travel time at each end
    span_s = (max(t for t, _ in quiet) - min(t for t, _ in quiet)) * 1e-9
    lo, hi = 2.0 * 9 * (span_s - 2 * 1500.0 / 340.0), 2.0 * 9 * span_s
    assert lo - 5 * np.sqrt(lo) < len(extra) < hi + 5 * np.sqrt(hi)
    assert {i for _, i in extra} == set(range(9))
    assert busy == sorted(busy)
    # with no clutter the load is unchanged (the benchmark's older tables stay comparable)
    assert arrivals_for(nodes, 20, 0.5, 1500.0, 340.0, np.random.default_rng(3), clutter=0.0) == quiet


def test_clutter_is_not_made_into_shots():
    r = run(8, 4, 1.0, 1000.0, None, seed=2, clutter=1.0, spacing_m=300.0)
    assert r["arrivals"] > 8 * 4                   # clutter came with the sources
    assert r["shots"] == r["sources"] == 4
    assert r["realtime"] > 0 and r["ms_per_event"] > 0


def test_the_whole_engine_locates_every_source_among_the_clutter_and_no_clutter():
    # the same load as above, through Engine: events, heartbeats, watermark, review, final solve
    r = run_engine(8, 4, 1.0, 1000.0, None, seed=2, clutter=1.0, spacing_m=300.0)
    assert r["arrivals"] > 8 * 4
    assert r["shots"] == r["sources"] == 4
    assert r["live_shots"] == 4                    # decided as the watermark moved, none left to finish()
    assert r["realtime"] > 0 and r["ms_per_event"] > 0
