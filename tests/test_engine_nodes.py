"""server/engine.py: what a node says of its own position error weighs its arrivals."""

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
