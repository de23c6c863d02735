"""server/node_timing.py and the engine's use of it: a node that hears every
shot late (its clock, its surveyed position) is reported once, and only when
its shots show it; a healthy network reports nothing."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from common.config import ServerConfig
from server.engine import Engine
from server.node_timing import MIN_SHOTS, NodeTimingCheck
from tests.test_store import T0, make_event, node_grid, shot_events


def _feed(check: NodeTimingCheck, late_s: float, shots: int, seed: int = 1, place_m: float | None = None) -> None:
    """``shots`` shots, each from a place of its own (or all from ``place_m``
    east), node "a" ``late_s`` late."""
    rng = np.random.default_rng(seed)
    for k in range(shots):
        x = rng.normal(0.0, 2e-4, 6)
        x[0] += late_s
        check.add(dict(zip("abcdef", x)), (place_m, 0.0) if place_m is not None else (100.0 * k + 1000 * seed, 0.0))


def test_a_steadily_late_node_is_off_once_enough_shots_show_it():
    check = NodeTimingCheck(min_offset_s=0.001)
    _feed(check, 0.005, MIN_SHOTS - 1)
    assert check.off() == [] and check.changes() == []            # too few shots to judge
    _feed(check, 0.005, 1, seed=2)
    (off,) = check.off()
    assert off.node_id == "a" and off.median_ms == pytest.approx(5.0, abs=0.3) and off.shots == MIN_SHOTS
    ((text, warning),) = check.changes()
    assert warning and "node a" in text and "late" in text and "clock" in text
    assert check.changes() == []                                   # said once
    _feed(check, 0.0, 30, seed=3)                                  # fixed: its recent shots agree again
    assert check.off() == []
    ((text, warning),) = check.changes()
    assert not warning and "node a" in text


def test_an_offset_below_the_floor_or_within_the_noise_is_not_off():
    small = NodeTimingCheck(min_offset_s=0.001)
    _feed(small, 0.0005, 20)                      # clear, but below the floor
    assert small.off() == [] and small.offsets()[0].node_id == "a"
    noisy = NodeTimingCheck(min_offset_s=0.001)
    rng = np.random.default_rng(7)
    for k in range(6):                            # 2 ms median, but ±10 ms from shot to shot
        noisy.add({"a": 0.002 + rng.normal(0.0, 0.01)}, (100.0 * k, 0.0))
    assert noisy.off() == []
    one_place = NodeTimingCheck(min_offset_s=0.001)
    _feed(one_place, 0.005, 20, place_m=30.0)     # a burst, or a building in the way from one place
    assert one_place.off() == [] and one_place.offsets()[0].places == 1
    with pytest.raises(ValueError):
        NodeTimingCheck(min_offset_s=0.0)


def _network(late_ns: int, shots: int = 8):
    """Nine nodes, ``shots`` shots from different places; node n0004's clock
    ``late_ns`` late. Returns the engine after deciding everything, and its shots."""
    nodes = node_grid(9)
    eng = Engine(ServerConfig(database="x", temperature_c=20.0, allow_plaintext=True), None)
    rng = np.random.default_rng(3)
    seqs: dict[str, int] = {}
    events = []
    for k in range(shots):
        src = np.array([*rng.uniform(0, 300, 2), 1.5])
        for e in shot_events(nodes, src, T0 + k * 10 * 10**9, seqs):
            if e.node_id == "n0004":
                e = make_event(e.node_id, nodes[e.node_id], e.seq, e.t_utc_ns + late_ns)
            events.append(e)
    eng.ingest_events(events, received_ns=0)
    return eng, eng.finish()


def test_the_engine_reports_a_node_whose_clock_is_5_ms_late(caplog):
    """The late node's arrivals are left out of most shots (or spread over the
    fit), yet against the shots' solutions it is 5 ms late: reported, once;
    the others are not."""
    with caplog.at_level(logging.INFO, logger="earwitness.server"):
        eng, shots = _network(5_000_000)
    assert len(shots) == 8
    (off,) = eng.timing.off()
    assert off.node_id == "n0004" and off.median_ms == pytest.approx(5.0, abs=0.5)
    said = [r.getMessage() for r in caplog.records if "n0004" in r.getMessage() and "late" in r.getMessage()]
    assert len(said) == 1


def test_a_healthy_network_reports_no_node():
    eng, shots = _network(0)
    assert len(shots) == 8 and eng.timing.off() == []
    assert max(abs(o.median_ms) for o in eng.timing.offsets()) < 0.1
