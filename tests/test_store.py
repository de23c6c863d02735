"""server/store.py: events, shots, incidents and reviews sealed into the audit chain;
duplicates vs conflicts; a full database fails cleanly; restart semantics."""

from __future__ import annotations

import dataclasses
import sqlite3
import time

import numpy as np
import pytest

from common.acoustics import speed_of_sound
from common.config import ServerConfig
from common.geodesy import LocalFrame
from common.protocol import Event, Heartbeat
from server import audit as A
from server.engine import Engine
from server.store import Store, StoreError

FRAME = LocalFrame(40.44, -79.99, 250.0)
C20 = speed_of_sound(20.0)


def _snippet() -> np.ndarray:
    t = np.arange(1440) / 48_000.0
    return np.where(t >= 0.005, np.exp(-(t - 0.005) / 0.001) * 20_000, 0).astype(np.int16)


SNIP = _snippet()


def node_grid(n: int, spacing: float = 150.0, prefix: str = "n") -> dict[str, np.ndarray]:
    """``n`` node positions (m ENU, 5 m up) on a square lattice."""
    k = int(np.ceil(np.sqrt(n)))
    return {f"{prefix}{i:04d}": np.array([(i % k) * spacing, (i // k) * spacing, 5.0]) for i in range(n)}


def make_event(node: str, pos: np.ndarray, seq: int, t_ns: int, **kw) -> Event:
    lat, lon, alt = (float(v) for v in FRAME.to_wgs84(pos))
    kw.setdefault("snippet", SNIP)
    return Event(node_id=node, seq=seq, t_utc_ns=int(t_ns), sigma_ns=20_000.0, sample_rate_hz=48_000.0,
                 peak_dbfs=-6.0, snr_db=40.0, snippet_t0_ns=int(t_ns) - 5_000_000,
                 lat=lat, lon=lon, alt=alt, **kw)


def shot_events(nodes: dict[str, np.ndarray], src: np.ndarray, t_emit_ns: int,
                seqs: dict[str, int]) -> list[Event]:
    """One shot at ``src`` (m ENU) heard by every node; advances ``seqs``."""
    out = []
    for n, p in nodes.items():
        seqs[n] = seqs.get(n, 0) + 1
        out.append(make_event(n, p, seqs[n], t_emit_ns + np.linalg.norm(src - p) / C20 * 1e9))
    return out


def heartbeat(node: str, pos: np.ndarray, stream_ns: int, t_ns: int | None = None, seq: int = 0) -> Heartbeat:
    lat, lon, alt = (float(v) for v in FRAME.to_wgs84(pos))
    return Heartbeat(node_id=node, seq=seq, t_utc_ns=t_ns or time.time_ns(), stream_utc_ns=int(stream_ns),
                     lat=lat, lon=lon, alt=alt, version="test", status={})


T0 = 1_800_000_000_000_000_000


def fill_disk(st: Store) -> None:
    """Make the database "full": cap it at its size and fill every free byte
    (SQLite's max_page_count behaves like a full disk: SQLITE_FULL)."""
    page = st.conn.execute("PRAGMA page_size").fetchone()[0]
    st.conn.execute("CREATE TABLE IF NOT EXISTS ballast (x BLOB)")
    st.set_max_bytes((st.conn.execute("PRAGMA page_count").fetchone()[0] + 4) * page)
    for size in (4000, 500, 50, 1):
        try:
            while True:
                st.conn.execute("INSERT INTO ballast VALUES (zeroblob(?))", (size,))
        except sqlite3.OperationalError as exc:
            assert "full" in str(exc)


def free_disk(st: Store) -> None:
    st.conn.execute("DROP TABLE IF EXISTS ballast")
    st.set_max_bytes(1 << 30)


# ------------------------------------------------------------------ events
def test_add_event_new_duplicate_conflict(tmp_path):
    st = Store(tmp_path / "s.sqlite")
    ev = make_event("a", np.zeros(3), 7, T0)
    r1 = st.add_event(ev, 1)
    assert r1.status == "new"
    assert st.add_event(ev, 2) == dataclasses.replace(r1, status="duplicate")
    forged = dataclasses.replace(ev, t_utc_ns=ev.t_utc_ns + 1000)
    assert st.add_event(forged, 3).status == "conflict"
    assert st.count_events() == 1
    # the stored one is the first, unchanged
    (eid, stored), = st.pending_events()
    assert eid == r1.event_id and stored == ev
    assert st.insert_event(ev, 4) is None
    assert st.verify().ok


def test_add_events_batch_equals_one_by_one(tmp_path):
    """The batch path gives the same statuses, rows and audit chain as adding the
    events one at a time (duplicates and a conflict within and across batches)."""
    evs = [make_event(f"n{i % 3}", np.full(3, float(i)), i // 3, T0 + i * 1_000_000) for i in range(12)]
    evs[4] = dataclasses.replace(evs[4], features={"x": 1, "y": 2.5}, sigma_ns=20000, lat=40)
    forged = dataclasses.replace(evs[2], t_utc_ns=evs[2].t_utc_ns + 7)
    batches = [evs[:5] + [evs[1]], evs[3:9] + [forged], evs[8:] + [evs[0], evs[11]]]
    one, many = Store(tmp_path / "one.sqlite"), Store(tmp_path / "many.sqlite")
    for k, b in enumerate(batches):
        with one.transaction():
            expect = [one.add_event(ev, 100 + k) for ev in b]
        assert many.add_events(b, 100 + k) == expect
    assert [r.status for r in many.add_events(batches[1], 9)][-2:] == ["duplicate", "conflict"]
    q_ev = "SELECT * FROM events ORDER BY id"
    q_au = "SELECT id, kind, ref_table, ref_id, record_hash, prev_hash, chain_hash, t_utc_ns FROM audit ORDER BY id"
    assert many.conn.execute(q_ev).fetchall() == one.conn.execute(q_ev).fetchall()
    assert many.conn.execute(q_au).fetchall() == one.conn.execute(q_au).fetchall()
    assert many.count_events() == 12 and many.verify().ok
    assert many.add_events([], 0) == []


def test_add_events_failure_keeps_nothing(tmp_path):
    st = Store(tmp_path / "s.sqlite")
    st.add_events([make_event("a", np.zeros(3), 0, T0)], 0)
    st.set_max_bytes((st.conn.execute("PRAGMA page_count").fetchone()[0] + 2) * st.conn.execute("PRAGMA page_size").fetchone()[0])
    big = [make_event("b", np.zeros(3), i, T0 + i) for i in range(200)]
    with pytest.raises(StoreError, match="full"):
        st.add_events(big, 1)
    assert st.count_events() == 1 and st.verify().ok
    st.set_max_bytes(1 << 30)
    assert {r.status for r in st.add_events(big, 2)} == {"new"}
    assert st.count_events() == 201 and st.verify().ok


def test_features_and_int_values_round_trip_as_duplicates(tmp_path):
    st = Store(tmp_path / "s.sqlite")
    ev = dataclasses.replace(make_event("a", np.zeros(3), 1, T0), features={"x": 1, "y": 2.5},
                             sigma_ns=20000, lat=40)
    assert st.add_event(ev, 0).status == "new"
    assert st.add_event(ev, 0).status == "duplicate"
    assert st.verify().ok


def test_every_stored_fact_is_sealed_and_verify_finds_a_modified_row(tmp_path):
    db = tmp_path / "s.sqlite"
    st = Store(db)
    cfg = ServerConfig(database=str(db), temperature_c=20.0, allow_plaintext=True)
    eng = Engine(cfg, st)
    nodes = node_grid(6)
    seqs: dict[str, int] = {}
    evs = []
    for k in range(3):
        evs += shot_events(nodes, np.array([60.0 + 30 * k, 90.0, 1.5]), T0 + k * 10**10, seqs)
    evs.append(make_event("n0000", nodes["n0000"], 99, T0 + 5 * 10**10))   # a lone sound
    evs.sort(key=lambda e: e.t_utc_ns)
    assert all(s == "new" for s in eng.ingest_batch(evs))
    reps = eng.finish()
    assert len(reps) == 3 and all(r.shot_id is not None for r in reps)
    n_rows = {t: st.conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
              for t in ("events", "shots", "incidents", "event_outcomes")}
    assert n_rows == {"events": 19, "shots": 3, "incidents": 3, "event_outcomes": 19}
    kinds = dict(st.conn.execute("SELECT ref_table, COUNT(*) FROM audit GROUP BY ref_table").fetchall())
    assert kinds == n_rows
    res = st.verify()
    assert res.ok, res.reason
    st.close()
    assert A.main(["verify", "--db", str(db)]) == 0

    # an insider edits a shot's position: verify fails at exactly that row
    conn = sqlite3.connect(db)
    sid = conn.execute("SELECT id FROM shots ORDER BY id LIMIT 1 OFFSET 1").fetchone()[0]
    conn.execute("UPDATE shots SET lat = lat + 0.001 WHERE id = ?", (sid,))
    conn.commit()
    res = A.verify(conn, A.load_row_sqlite(conn), list_ids=A.list_ids_sqlite(conn))
    assert not res.ok and (res.ref_table, res.ref_id) == ("shots", sid)
    conn.close()
    assert A.main(["verify", "--db", str(db)]) == 1


def test_review_is_recorded_in_the_chain(tmp_path):
    st = Store(tmp_path / "s.sqlite")
    iid = st.insert_incident(T0, T0)
    sid = st.insert_shot(iid, 1, T0, 40.44, -79.99, 250.0, 3.0, 0.2, ["a", "b", "c", "d"], T0)
    r = st.review("shots", sid, "false-alarm", "alice", "fireworks at the park")
    assert (r.ref_table, r.ref_id, r.verdict, r.reviewer, r.note) == ("shots", sid, "false-alarm", "alice",
                                                                    "fireworks at the park")
    st.review("shots", sid, "confirmed", "bob")
    assert [x.verdict for x in st.reviews("shots", sid)] == ["false-alarm", "confirmed"]
    assert st.verify().ok
    with pytest.raises(ValueError, match="verdict"):
        st.review("shots", sid, "maybe", "alice")
    with pytest.raises(ValueError, match="no shot"):
        st.review("shots", sid + 100, "confirmed", "alice")
    with pytest.raises(ValueError, match="reviewer"):
        st.review("shots", sid, "confirmed", " ")
    # editing the review's text breaks the chain at that record
    st.conn.execute("DROP TRIGGER audit_no_update")
    st.conn.execute("UPDATE audit SET detail = replace(detail, 'alice', 'mallory') WHERE id = ?", (r.audit_id,))
    res = st.verify()
    assert not res.ok and res.first_bad_audit_id == r.audit_id


# ---------------------------------------------------------------- failures
def test_full_database_raises_store_error_and_keeps_working(tmp_path):
    st = Store(tmp_path / "s.sqlite")
    st.add_event(make_event("a", np.zeros(3), 0, T0), 0)
    pages = st.conn.execute("PRAGMA page_count").fetchone()[0]
    page = st.conn.execute("PRAGMA page_size").fetchone()[0]
    st.set_max_bytes((pages + 2) * page)
    with pytest.raises(StoreError, match="full"):
        with st.transaction():
            for i in range(1, 200):
                st.add_event(make_event("a", np.zeros(3), i, T0 + i), 0)
    assert not st.conn.in_transaction
    assert st.count_events() == 1           # the whole batch rolled back
    assert st.verify().ok
    st.set_max_bytes(1 << 30)
    with st.transaction():
        for i in range(1, 200):
            st.add_event(make_event("a", np.zeros(3), i, T0 + i), 0)
    assert st.count_events() == 200 and st.verify().ok


def test_engine_store_failure_acks_nothing_and_decisions_retry(tmp_path):
    st = Store(tmp_path / "s.sqlite")
    eng = Engine(ServerConfig(database="x", temperature_c=20.0, allow_plaintext=True), st)
    nodes = node_grid(5)
    seqs: dict[str, int] = {}
    evs = sorted(shot_events(nodes, np.array([70.0, 80.0, 1.5]), T0, seqs), key=lambda e: e.t_utc_ns)
    assert eng.ingest_batch(evs) == ["new"] * 5
    fill_disk(st)
    more = sorted(shot_events(nodes, np.array([10.0, 10.0, 1.5]), T0 + 10**10, seqs), key=lambda e: e.t_utc_ns)
    with pytest.raises(StoreError):
        eng.ingest_batch(more)
    assert eng.counters["events"] == 5
    # Recording the decision fails too (small rows may still fit in the tables'
    # partly filled pages, so this write failure is injected with an authorizer):
    # nothing is published, the arrivals go back to association, retried later.
    st.conn.set_authorizer(lambda action, *_: sqlite3.SQLITE_DENY if action == sqlite3.SQLITE_INSERT
                           else sqlite3.SQLITE_OK)
    assert eng.finish() == [] and eng.counters["store_errors"] == 1
    st.conn.set_authorizer(None)
    assert st.shots() == [] and eng.assoc.pending == 5
    free_disk(st)
    reps = eng.finish()
    assert len(reps) == 1 and reps[0].round == 1 and st.shots() == reps   # stored as reported
    assert st.verify().ok


def test_restart_reloads_only_undecided_events(tmp_path):
    db = tmp_path / "s.sqlite"
    cfg = ServerConfig(database=str(db), temperature_c=20.0, allow_plaintext=True)
    st = Store(db)
    eng = Engine(cfg, st)
    nodes = node_grid(5)
    seqs: dict[str, int] = {}
    first = sorted(shot_events(nodes, np.array([70.0, 80.0, 1.5]), T0, seqs), key=lambda e: e.t_utc_ns)
    eng.ingest_batch(first)
    assert len(eng.finish()) == 1
    second = sorted(shot_events(nodes, np.array([20.0, 40.0, 1.5]), T0 + 10**10, seqs), key=lambda e: e.t_utc_ns)
    eng.ingest_batch(second)
    st.close()                               # "crash" before the second shot was decided
    st2 = Store(db)
    eng2 = Engine(cfg, st2)
    assert eng2.assoc.pending == 5           # only the undecided ones
    # the nodes resend everything they have not seen acked: all duplicates
    assert set(eng2.ingest_batch(first + second)) == {"duplicate"}
    reps = eng2.finish()
    assert len(reps) == 1 and len(st2.shots()) == 2
    assert st2.verify().ok


def _watermark(eng: Engine, nodes: dict[str, np.ndarray], stream_ns: int, now_ns: int) -> list:
    """Every node reports audio up to ``stream_ns``; what the engine then decides."""
    for n, p in nodes.items():
        eng.ingest_heartbeat(heartbeat(n, p, stream_ns, now_ns), received_ns=now_ns)
    return eng.advance(now_ns=now_ns)


def test_echoes_of_the_last_shot_stay_echoes_across_a_restart(tmp_path):
    """A wall 280 m east of a shot reflects it to every node as a clean line-up
    (a mirror-image source). The server decides the shot, then restarts before
    the echoes' line-up is decided: after the restart the echoes are still
    judged against the stored shot, as without the restart — no second shot."""
    nodes = node_grid(6)
    src, mirror = np.array([120.0, 80.0, 1.5]), np.array([680.0, 80.0, 1.5])
    now = T0 + 100 * 10**9
    for restart in (False, True):
        db = tmp_path / f"s{restart}.sqlite"
        cfg = ServerConfig(database=str(db), temperature_c=20.0, allow_plaintext=True)
        st = Store(db)
        eng = Engine(cfg, st)
        seqs: dict[str, int] = {}
        direct = shot_events(nodes, src, T0, seqs)
        echoes = shot_events(nodes, mirror, T0, seqs)
        eng.ingest_batch(sorted(direct + echoes, key=lambda e: e.t_utc_ns), received_ns=now)
        wait = eng.assoc.wait_ns()
        first = min(e.t_utc_ns for e in direct)
        assert len(_watermark(eng, nodes, first + wait + 400_000_000, now)) == 1
        assert eng.assoc.pending == 6                 # the echoes, not decided yet
        if restart:
            st.close()
            st = Store(db)
            eng = Engine(cfg, st)
            assert eng.assoc.pending == 6
        assert eng.finish() == []
        assert len(st.shots()) == 1 and eng.take_candidates() == []
        st.close()


def test_a_burst_split_by_a_restart_stays_one_incident(tmp_path):
    """Four rounds 0.5 s apart from one place; the server restarts after the
    first two are decided. The last two join the same incident as rounds 3 and 4."""
    db = tmp_path / "s.sqlite"
    cfg = ServerConfig(database=str(db), temperature_c=20.0, allow_plaintext=True)
    nodes = node_grid(6)
    src = np.array([150.0, 100.0, 1.5])
    seqs: dict[str, int] = {}
    rounds = [shot_events(nodes, src, T0 + k * 500_000_000, seqs) for k in range(4)]
    now = T0 + 100 * 10**9
    st = Store(db)
    eng = Engine(cfg, st)
    eng.ingest_batch(sorted(sum(rounds, []), key=lambda e: e.t_utc_ns), received_ns=now)
    wait = eng.assoc.wait_ns()
    done = _watermark(eng, nodes, T0 + wait + 1_200_000_000, now)
    assert [r.round for r in done] == [1, 2]
    st.close()
    st = Store(db)
    eng = Engine(cfg, st)
    rest = eng.finish()
    assert [r.round for r in rest] == [3, 4]
    assert {r.incident for r in done + rest} == {done[0].incident}
    assert len(st.conn.execute("SELECT id FROM incidents").fetchall()) == 1
    st.close()


def _rough_shots(n: int) -> list[Event]:
    """``n`` shots 10 s apart heard by 9 nodes, their arrivals 1 ms (1 σ) worse
    than the nodes claim (20 µs): shots that teach the network's timing scale."""
    rng = np.random.default_rng(4)
    nodes = node_grid(9)
    seqs: dict[str, int] = {}
    evs = []
    for k in range(n):
        for e in shot_events(nodes, np.array([60.0 + 40 * k, 90.0, 1.5]), T0 + k * 10**10, seqs):
            dt = int(rng.normal(0.0, 1e6))
            evs.append(dataclasses.replace(e, t_utc_ns=e.t_utc_ns + dt, snippet_t0_ns=e.snippet_t0_ns + dt))
    return sorted(evs, key=lambda e: e.t_utc_ns)


@pytest.mark.parametrize("refused", ["every table", "engine_state"])
def test_a_decision_that_could_not_be_recorded_teaches_nothing(tmp_path, refused):
    """When recording a decision fails (whatever write it fails at, down to the
    learnt state itself), the shots are formed again later: what they taught
    the association (timing scale, wind) counts once, as without the failure,
    and is on record once they are."""
    cfg = ServerConfig(database="x", temperature_c=20.0, allow_plaintext=True)
    learnt = []
    for fail in (False, True):
        st = Store(tmp_path / f"s{fail}.sqlite")
        eng = Engine(cfg, st)
        eng.ingest_batch(_rough_shots(3))
        if fail:
            st.conn.set_authorizer(lambda action, table, *_: sqlite3.SQLITE_DENY
                                   if action == sqlite3.SQLITE_INSERT and refused in ("every table", table)
                                   else sqlite3.SQLITE_OK)
            assert eng.finish() == [] and eng.counters["store_errors"] == 1 and st.shots() == []
            st.conn.set_authorizer(None)
        assert len(eng.finish()) == 3
        learnt.append(eng.assoc.learnt())
        assert st.load_state("association.learnt") == learnt[-1]
        st.close()
    assert learnt[0] == learnt[1] and len(learnt[0]["scales"]) == 3


def test_what_the_association_learnt_survives_a_restart(tmp_path, caplog):
    """Shots whose arrivals are 1 ms worse than their nodes claim teach the
    association the network's timing scale; a restarted server starts from what
    was learnt, not from the configured value. A state that is not one is
    ignored with a warning."""
    db = tmp_path / "s.sqlite"
    cfg = ServerConfig(database=str(db), temperature_c=20.0, allow_plaintext=True)
    st = Store(db)
    eng = Engine(cfg, st)
    eng.ingest_batch(_rough_shots(4))
    assert len(eng.finish()) == 4
    learnt = (eng.assoc.net_scale, eng.assoc.learnt_model_sigma_s, eng.assoc.wind_mps, eng.assoc.wind_sigma_mps)
    assert learnt[0] > 1.0 and learnt[1] is not None and learnt[1] > cfg.solver.model_sigma_s
    st.close()
    st = Store(db)
    eng = Engine(cfg, st)
    assert (eng.assoc.net_scale, eng.assoc.learnt_model_sigma_s, eng.assoc.wind_mps,
            eng.assoc.wind_sigma_mps) == learnt
    for bad in ('{"scales": "fast"}', "not json", '{"scales": [-1], "model_sigmas": [], "winds": []}'):
        st.conn.execute("UPDATE engine_state SET value = ?", (bad,))
        caplog.clear()
        eng = Engine(cfg, st)
        assert eng.assoc.net_scale == 1.0 and eng.assoc.learnt_model_sigma_s is None
        assert "ignoring what the database says the association had learnt" in caplog.text
    st.close()
