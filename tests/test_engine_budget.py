"""server/engine.py: a budgeted advance (the ingest loop's) decides a backlog a
piece at a time and reaches exactly the decisions of one unbounded step."""

from __future__ import annotations

import numpy as np

from common.config import ServerConfig
from server.engine import Engine
from tests.test_store import T0, heartbeat, make_event, node_grid, shot_events


def _engine_with_backlog() -> Engine:
    eng = Engine(ServerConfig(database="x", temperature_c=20.0, allow_plaintext=True), None)
    nodes = node_grid(9)
    rng = np.random.default_rng(3)
    seqs: dict[str, int] = {}
    evs = []
    for k in range(12):                                      # 12 shots, 1.5 s apart
        src = np.array([*rng.uniform(0, 300, 2), 1.5])
        evs += shot_events(nodes, src, T0 + k * 1_500_000_000, seqs)
    for k in range(10):                                      # stray sounds at single nodes
        n = f"n{k % 9:04d}"
        seqs[n] += 1
        evs.append(make_event(n, nodes[n], seqs[n], T0 + int(rng.uniform(0, 18e9))))
    evs.sort(key=lambda e: e.t_utc_ns)
    assert set(eng.ingest_batch(evs)) == {"new"}
    for i, (n, p) in enumerate(nodes.items()):
        eng.ingest_heartbeat(heartbeat(n, p, T0 + 60 * 10**9, seq=i))
    return eng


def _key(r) -> tuple:
    return (r.t_utc_ns // 1_000_000, round(r.lat, 6), round(r.lon, 6), tuple(sorted(r.nodes)))


def test_budgeted_advance_decides_like_one_step():
    whole = _engine_with_backlog().advance()
    assert len(whole) == 12
    eng = _engine_with_backlog()
    sliced, calls = [], 0
    while True:
        sliced += eng.advance(budget_s=0.0)     # one seed search per call
        calls += 1
        if not eng.behind:
            break
        assert calls < 1000
    assert calls > 3                            # it really was cut short
    assert sorted(map(_key, sliced)) == sorted(map(_key, whole))
    assert eng.assoc.pending == 0
