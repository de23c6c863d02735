"""server/engine.py: a decision that fails to be recorded for any reason — not
only a full database — is undone whole and taken again at the next step."""

from __future__ import annotations

import numpy as np
import pytest

import server.engine as engine_mod
from common.config import ServerConfig
from server.engine import Engine
from server.store import Store
from tests.test_store import T0, node_grid, shot_events


def _engine(with_store: bool) -> tuple[Engine, Store | None]:
    st = Store(":memory:") if with_store else None
    eng = Engine(ServerConfig(database=":memory:", temperature_c=20.0, allow_plaintext=True), st,
                 clock_ns=lambda: T0)
    statuses = eng.ingest_batch(shot_events(node_grid(9), np.array([120.0, 80.0, 1.5]), T0 + 10**9, {}))
    assert set(statuses) == {"new"}
    return eng, st


def _fail_once(monkeypatch, target, name: str) -> list[int]:
    """Make ``target.name`` raise a RuntimeError (a bug) on its first call."""
    real = getattr(target, name)
    calls = []

    def once(*args, **kw):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a bug")
        return real(*args, **kw)

    monkeypatch.setattr(target, name, once)
    return calls


@pytest.mark.parametrize("with_store", [True, False])
def test_a_failing_solve_undoes_the_decision_and_a_retry_decides_the_shot(monkeypatch, with_store):
    eng, st = _engine(with_store)
    counters = dict(eng.counters)
    calls = _fail_once(monkeypatch, engine_mod, "solve")
    with pytest.raises(RuntimeError, match="a bug"):
        eng.finish()
    assert calls
    # the arrivals are back in the association; nothing was counted
    assert eng.assoc.pending == 9
    assert eng.counters == counters
    (shot,) = eng.finish()
    assert len(shot.nodes) == 9 and (shot.incident, shot.round) == (1, 1)
    if st is not None:
        assert st.pending_events() == []
        assert [s.shot_id for s in st.shots()] == [shot.shot_id]


def test_a_failure_after_the_incident_was_opened_leaves_no_phantom_incident(monkeypatch):
    """The shot's incident row is inserted, then recording the shot fails (not a
    StoreError): the transaction is rolled back, and so is the incident tracker,
    so the retried shot opens an incident that exists in the store."""
    eng, st = _engine(True)
    assert st is not None
    _fail_once(monkeypatch, st, "insert_shot")
    with pytest.raises(RuntimeError, match="a bug"):
        eng.finish()
    assert st.conn.execute("SELECT COUNT(*) FROM incidents").fetchone()[0] == 0
    assert st.pending_events() != []
    (shot,) = eng.finish()
    assert st.pending_events() == []
    ids = [r[0] for r in st.conn.execute("SELECT id FROM incidents")]
    assert ids == [shot.incident]
    assert eng.counters["shots"] == 1 and eng.counters["store_errors"] == 0
