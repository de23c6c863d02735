"""server/engine.py: what a node says and sends of itself (its position error, events
without a snippet) weighs its arrivals, and never breaks a shot."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from common.config import ServerConfig
from server.engine import Engine
from tests.test_store import T0, heartbeat, node_grid, shot_events


def _located(status: dict | None) -> float:
    """error_m of one shot heard by nine nodes whose heartbeats carry ``status``."""
    eng = Engine(ServerConfig(database="x", temperature_c=20.0, allow_plaintext=True), None)
    nodes = node_grid(9)
    if status is not None:
        for i, (n, p) in enumerate(nodes.items()):
            eng.ingest_heartbeat(dataclasses.replace(heartbeat(n, p, T0, seq=i), status=status))
    assert set(eng.ingest_batch(shot_events(nodes, np.array([120.0, 80.0, 1.5]), T0 + 10**9, {}))) == {"new"}
    (shot,) = eng.finish()
    assert len(shot.nodes) == 9
    return shot.error_m


def test_a_surveying_nodes_position_error_widens_the_radius():
    exact = _located(None)
    # σh = 2.83 m radial is 2 m along any direction: ~5.8 ms against 20 µs onsets
    unsure = _located({"pos_state": "surveying", "pos_sigma_h_m": 2.83})
    assert unsure > 5.0 * exact
    # a configured (surveyed-by-hand) position reports None: exact again
    assert _located({"pos_state": "configured", "pos_sigma_h_m": None}) == pytest.approx(exact)
    # a value that is not a number is no position error (and no crash)
    assert _located({"pos_sigma_h_m": "2 m"}) == pytest.approx(exact)


def _few_nodes_shot(unfitted_wind_mps: float):
    """One shot heard by five nodes: too few to fit the wind or the speed of sound."""
    cfg = ServerConfig(database="x", temperature_c=20.0, allow_plaintext=True)
    cfg = dataclasses.replace(cfg, solver=dataclasses.replace(cfg.solver, unfitted_wind_mps=unfitted_wind_mps))
    eng = Engine(cfg, None)
    nodes = dict(list(node_grid(9).items())[:5])
    assert set(eng.ingest_batch(shot_events(nodes, np.array([120.0, 80.0, 1.5]), T0 + 10**9, {}))) == {"new"}
    (shot,) = eng.finish()
    assert len(shot.nodes) == 5
    return shot


def test_the_radius_of_a_shot_that_cannot_fit_the_wind_covers_an_unknown_wind():
    """Five nodes, 20 µs onsets: the timing alone would claim centimetres, but an
    unknown 2 m/s wind moves such a fix by about the wind × the travel time
    (~0.5 s here: a metre). The position is the same; the radius says so."""
    still = _few_nodes_shot(0.0)
    windy = _few_nodes_shot(2.0)
    assert (windy.lat, windy.lon) == (still.lat, still.lon)
    assert still.error_m < 0.5
    assert 1.0 < windy.error_m < 10.0


def test_an_empty_heartbeat_status_keeps_the_nodes_last_whole_status(tmp_path, caplog):
    """Nodes send their whole status only now and then (docs/protocol.md): an empty
    status is "unchanged" — for the position error, the node's problems, and what the
    store keeps — and stays so across a server restart."""
    import logging

    from server.store import Store

    db = str(tmp_path / "s.sqlite")
    whole = {"pos_state": "surveying", "pos_sigma_h_m": 2.83, "gps_problem": "no fix"}
    nodes = node_grid(9)
    store = Store(db)
    eng = Engine(ServerConfig(database=db, temperature_c=20.0, allow_plaintext=True), store)
    with caplog.at_level(logging.INFO, logger="earwitness"):
        for i, (n, p) in enumerate(nodes.items()):
            eng.ingest_heartbeat(dataclasses.replace(heartbeat(n, p, T0, t_ns=T0, seq=0), status=whole), T0)
            eng.ingest_heartbeat(heartbeat(n, p, T0 + 10**9, t_ns=T0 + 10**9, seq=1), T0 + 10**9)
    msgs = [r.getMessage() for r in caplog.records]
    assert sum("gps problem: no fix" in m for m in msgs) == 9 and not any("cleared" in m for m in msgs)
    assert all(n["status"] == whole and n["stream_utc_ns"] == T0 + 10**9 for n in store.nodes())
    assert set(eng.ingest_batch(shot_events(nodes, np.array([120.0, 80.0, 1.5]), T0 + 2 * 10**9, {}))) == {"new"}
    (shot,) = eng.finish()
    assert shot.error_m == pytest.approx(_located(whole))          # the surveying nodes' error still counts
    store.close()
    # restarted: the stored status stands until a node sends a whole one again
    store = Store(db)
    eng = Engine(ServerConfig(database=db, temperature_c=20.0, allow_plaintext=True), store)
    n0, p0 = next(iter(nodes.items()))
    eng.ingest_heartbeat(heartbeat(n0, p0, T0 + 3 * 10**9, t_ns=T0 + 3 * 10**9, seq=0), T0 + 3 * 10**9)
    assert store.nodes()[0]["status"] == whole
    eng.ingest_heartbeat(dataclasses.replace(heartbeat(n0, p0, T0 + 4 * 10**9, t_ns=T0 + 4 * 10**9, seq=1),
                                             status={"pos_state": "surveyed", "pos_sigma_h_m": 0.5}), T0 + 4 * 10**9)
    assert store.nodes()[0]["status"] == {"pos_state": "surveyed", "pos_sigma_h_m": 0.5}
    store.close()


def test_an_event_without_a_snippet_keeps_its_pick_in_the_final_solve():
    """The final solve cross-correlates the arrivals that carry a snippet; one
    without (a zero-length snippet is valid on the wire) keeps its own onset
    time, and the shot is where the others put it."""
    def locate(empty: set[int]):
        eng = Engine(ServerConfig(database="x", temperature_c=20.0, allow_plaintext=True), None)
        evs = shot_events(node_grid(9), np.array([120.0, 80.0, 1.5]), T0 + 10**9, {})
        evs = [dataclasses.replace(e, snippet=np.zeros(0, dtype=np.int16)) if i in empty else e
               for i, e in enumerate(evs)]
        assert set(eng.ingest_batch(evs)) == {"new"}
        (shot,) = eng.finish()
        return shot

    whole = locate(set())
    for empty in ({0}, {3, 7}):
        shot = locate(empty)
        assert len(shot.nodes) == 9
        assert abs(shot.t_utc_ns - whole.t_utc_ns) < 100_000
        assert shot.lat == pytest.approx(whole.lat, abs=1e-6) and shot.lon == pytest.approx(whole.lon, abs=1e-6)
        assert shot.error_m < 2.0 * whole.error_m


def test_the_engine_gives_its_associators_the_winds_max_age():
    """``[solver] wind_max_age_s`` reaches the association and the review
    association (which shares the main one's view of the network)."""
    from dataclasses import replace as _replace

    from common.config import ServerConfig
    from server.engine import Engine

    cfg = ServerConfig(database=":memory:", temperature_c=15.0, allow_plaintext=True)
    cfg = _replace(cfg, solver=_replace(cfg.solver, wind_max_age_s=90.0))
    eng = Engine(cfg, None)
    assert eng.assoc.wind_max_age_ns == 90 * 10**9
    assert eng.review is not None and eng.review.wind_max_age_ns == 90 * 10**9


def test_a_shot_an_hour_after_the_one_that_taught_the_wind_is_located_as_if_alone():
    """Decided together (a replay, a node's backlog): shot A, heard by 9 nodes,
    teaches the wind; shot B an hour later, heard by 6 (too few to fit its
    own), must be solved in still air with the unknown wind in its radius —
    as if A had never been — not with A's long-lapsed wind as a tight prior."""
    nodes = node_grid(9)
    six = dict(list(nodes.items())[:6])
    cfg = ServerConfig(database=":memory:", temperature_c=20.0, allow_plaintext=True)

    def located(events):
        eng = Engine(cfg, None, clock_ns=lambda: T0)
        eng.ingest_batch(events)
        return eng.finish()

    a = shot_events(nodes, np.array([120.0, 80.0, 1.5]), T0 + 10**9, {})
    b = shot_events(six, np.array([200.0, 150.0, 1.5]), T0 + 3601 * 10**9, {n: 1 for n in nodes})
    both = located(a + b)
    (alone,) = located(b)
    assert len(both) == 2 and len(both[0].nodes) == 9
    # (the same to rounding: the engines' local frames have different origins)
    assert both[1].lat == pytest.approx(alone.lat, abs=1e-9) and both[1].lon == pytest.approx(alone.lon, abs=1e-9)
    assert both[1].error_m == pytest.approx(alone.error_m, rel=1e-6)
