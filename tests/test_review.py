"""Candidates for review: line-ups among the arrivals no shot took that would be
shots but for the chance threshold (server/engine.py, Engine._review)."""

from __future__ import annotations

import dataclasses
import sqlite3

import numpy as np
import pytest

from common.config import ServerConfig
from server.engine import Engine
from server.store import Store
from tests.test_store import C20, FRAME, T0, heartbeat, make_event, node_grid, shot_events

#: Four nodes on a 400 m square, and a shot inside it.
SQUARE = {f"s{i}": np.array([x, y, 5.0]) for i, (x, y) in enumerate([(0, 0), (400, 0), (0, 400), (400, 400)])}
SRC = np.array([150.0, 230.0, 1.5])


def _engine(review_max_chance: float = 0.1, store: Store | None = None, unfitted_wind_mps: float = 2.0) -> Engine:
    cfg = ServerConfig(database="x", temperature_c=20.0, allow_plaintext=True)
    cfg = dataclasses.replace(cfg, association=dataclasses.replace(cfg.association,
                                                                   review_max_chance=review_max_chance),
                              solver=dataclasses.replace(cfg.solver, unfitted_wind_mps=unfitted_wind_mps))
    return Engine(cfg, store)


def _offset_m(lat: float, lon: float, src: np.ndarray) -> float:
    return float(np.hypot(*(FRAME.to_enu(lat, lon, 0.0)[:2] - src[:2])))


def test_a_lone_four_node_shot_is_a_candidate_not_a_shot():
    """Four arrivals fit one source exactly, but with one arrival to spare that
    is no proof (expected chance alignments ~2·10⁻³ > max_chance 10⁻⁴): no shot,
    one candidate where the shot was, carrying its chance. Off, or with a
    review threshold below that chance: nothing."""
    for review in (0.1, 0.0, 1e-3):
        eng = _engine(review)
        eng.ingest_batch(shot_events(SQUARE, SRC, T0 + 10**9, {}))
        assert eng.finish() == []
        cands = eng.take_candidates()
        if review < 0.1:
            assert cands == [] and (eng.review is None) == (review == 0.0)
            continue
        (c,) = cands
        assert _offset_m(c.lat, c.lon, SRC) < 1.0
        assert sorted(c.nodes) == sorted(SQUARE) and eng.cfg.association.max_chance < c.chance <= 0.1
        assert abs(c.t_utc_ns - (T0 + 10**9)) < 10**6
        assert c.to_json()["chance"] == pytest.approx(c.chance, rel=1e-2)
        assert eng.take_candidates() == []              # handed out once
        assert eng.counters["candidates"] == 1


def test_echoes_of_a_located_shot_are_no_candidate():
    """A shot heard by nine nodes, and at every node its echo 0.2 s later, 20 dB
    weaker: one shot, and its echoes — put aside by the association — are judged
    against it in review too, not offered as a second source."""
    nodes = node_grid(9)
    seqs: dict[str, int] = {}
    evs = shot_events(nodes, np.array([120.0, 80.0, 1.5]), T0 + 10**9, seqs)
    echoes = [dataclasses.replace(e, seq=e.seq + 100, t_utc_ns=e.t_utc_ns + 200_000_000,
                                  snippet_t0_ns=e.snippet_t0_ns + 200_000_000, peak_dbfs=-26.0) for e in evs]
    eng = _engine()
    eng.ingest_batch(sorted(evs + echoes, key=lambda e: e.t_utc_ns))
    (shot,) = eng.finish()
    assert len(shot.nodes) == 9
    assert eng.take_candidates() == []
    assert eng.counters["unassociated"] == 9


def test_candidates_are_stored_sealed_and_name_their_events(tmp_path):
    st = Store(tmp_path / "db.sqlite")
    eng = _engine(store=st)
    eng.ingest_batch(shot_events(SQUARE, SRC, T0 + 10**9, {}))
    assert eng.finish() == []
    (c,) = eng.take_candidates()
    (row,) = st.candidates()
    assert row.candidate_id == c.candidate_id and row.event_ids == c.event_ids and len(row.event_ids) == 4
    assert row == c                                     # stored as published
    assert (row.t_utc_ns, row.lat, row.lon, row.chance) == (c.t_utc_ns, c.lat, c.lon, c.chance)
    outcomes = dict(st.conn.execute("SELECT event_id, outcome FROM event_outcomes").fetchall())
    assert {outcomes[i] for i in row.event_ids} == {"unassociated"}
    assert st.verify().ok
    st.conn.execute("UPDATE candidates SET lat = lat + 0.001")
    assert not st.verify().ok                           # the candidate row is sealed
    st.close()


def test_a_live_server_decides_a_candidate_once_the_watermark_passes_it():
    """Live, a candidate waits like a shot does: until every node has reported
    audio past the latest time its arrivals could come."""
    eng = _engine()
    now = T0 + 100 * 10**9
    for i, (n, p) in enumerate(SQUARE.items()):
        eng.ingest_heartbeat(heartbeat(n, p, T0, seq=i), received_ns=now)
    eng.ingest_batch(shot_events(SQUARE, SRC, T0 + 10**9, {}), received_ns=now)
    for n, p in SQUARE.items():                        # audio up to just after the shot
        eng.ingest_heartbeat(heartbeat(n, p, T0 + 2 * 10**9, seq=10), received_ns=now)
    assert eng.advance(now_ns=now) == [] and eng.take_candidates() == []
    for n, p in SQUARE.items():                        # and well past it (see Associator.wait_ns)
        eng.ingest_heartbeat(heartbeat(n, p, T0 + 20 * 10**9, seq=11), received_ns=now)
    assert eng.advance(now_ns=now) == []
    (c,) = eng.take_candidates()
    assert _offset_m(c.lat, c.lon, SRC) < 1.0


@pytest.mark.parametrize("seeds", [0, 1])
def test_review_searches_only_from_arrivals_whose_own_search_came_close(seeds):
    """The review associator is handed everything put aside, but searches only
    from arrivals marked as seeds; the others can still complete a line-up."""
    eng = _engine()
    eng.ingest_batch(shot_events(SQUARE, SRC, T0 + 10**9, {}))
    arrivals = sorted(eng.assoc._pending, key=lambda a: a.t_ns)
    review = eng.review
    for i, a in enumerate(arrivals):
        review.add(a, seed=i < seeds)
    review.adopt_network(eng.assoc)
    found, put_aside = review.step(None)
    assert len(found) == seeds and len(put_aside) == 4 * (1 - seeds)


def _db_with_a_candidate(tmp_path) -> tuple[str, int, int]:
    """A database holding one candidate (the lone four-node shot) and one shot
    (nine other nodes, 6 km away); returns (path, candidate id, shot id)."""
    path = tmp_path / "db.sqlite"
    st = Store(path)
    eng = _engine(store=st)
    eng.ingest_batch(shot_events(SQUARE, SRC, T0 + 10**9, {}))
    far = {n: p + [6000.0, 0.0, 0.0] for n, p in node_grid(9, prefix="g").items()}    # out of earshot
    eng.ingest_batch(shot_events(far, np.array([6120.0, 80.0, 1.5]), T0 + 60 * 10**9, {}))
    (shot,) = eng.finish()
    (cand,) = eng.take_candidates()
    st.close()
    return str(path), cand.candidate_id, shot.shot_id


def test_review_command_lists_candidates_and_seals_verdicts(tmp_path, capsys):
    """`earwitness review`: the candidate is listed until someone gives a
    verdict; verdicts on candidates and shots go into the audit chain with who
    and why, and the chain still verifies."""
    import json

    from server.review import main

    db, cid, sid = _db_with_a_candidate(tmp_path)
    assert main(["list", "--db", db, "--json"]) == 0
    (line,) = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert line["candidate"] == cid and line["verdict"] is None and len(line["event_ids"]) == 4
    assert main(["candidate", str(cid), "confirmed", "--by", "alice", "--note", "a shot on the snippets",
                 "--db", db]) == 0
    assert f"candidate {cid}: confirmed by alice" in capsys.readouterr().out
    assert main(["list", "--db", db, "--json"]) == 0
    assert capsys.readouterr().out == ""                     # nothing left to review
    assert main(["list", "--db", db, "--all"]) == 0
    out = capsys.readouterr().out
    assert "confirmed" in out and str(cid) in out
    assert main(["shot", str(sid), "false-alarm", "--by", "bob", "--db", db]) == 0
    st = Store(db)
    try:
        (rc,) = st.reviews("candidates")
        (rs,) = st.reviews("shots")
        assert (rc.ref_id, rc.verdict, rc.reviewer, rc.note) == (cid, "confirmed", "alice", "a shot on the snippets")
        assert (rs.ref_id, rs.verdict, rs.reviewer) == (sid, "false-alarm", "bob")
        assert (rc.ref_table, rs.ref_table) == ("candidates", "shots")
        assert st.verify().ok
    finally:
        st.close()


def test_review_command_says_what_is_wrong(tmp_path, capsys):
    from server.review import main

    db, cid, _ = _db_with_a_candidate(tmp_path)
    assert main(["candidate", str(cid + 5), "confirmed", "--by", "alice", "--db", db]) == 2
    assert f"no candidate {cid + 5}" in capsys.readouterr().err
    assert main(["candidate", str(cid), "confirmed", "--by", " ", "--db", db]) == 2
    assert "reviewer must name who reviewed" in capsys.readouterr().err
    missing = str(tmp_path / "nowhere.sqlite")
    assert main(["list", "--db", missing]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "nowhere.sqlite").exists()         # not created by asking
    with pytest.raises(SystemExit):
        main(["candidate", str(cid), "maybe", "--by", "alice", "--db", db])


def test_a_candidate_the_database_refuses_is_offered_again(tmp_path):
    """If the candidate cannot be recorded (a full disk, here a refused INSERT),
    nothing is published; the next step offers it again, once."""
    import sqlite3

    st = Store(tmp_path / "db.sqlite")
    eng = _engine(store=st)
    eng.ingest_batch(shot_events(SQUARE, SRC, T0 + 10**9, {}))
    st.conn.set_authorizer(lambda action, table, *_: sqlite3.SQLITE_DENY
                           if action == sqlite3.SQLITE_INSERT and table == "candidates" else sqlite3.SQLITE_OK)
    assert eng.finish() == [] and eng.take_candidates() == [] and eng.counters["store_errors"] == 1
    assert st.candidates() == [] and eng.review.pending == 4
    st.conn.set_authorizer(None)
    assert eng.finish() == []
    (c,) = eng.take_candidates()
    (row,) = st.candidates()
    assert row.candidate_id == c.candidate_id and _offset_m(c.lat, c.lon, SRC) < 1.0
    assert eng.finish() == [] and eng.take_candidates() == []
    assert st.verify().ok
    st.close()


def _dies_before_recording_the_candidate(db) -> None:
    """A lone four-node shot whose candidate the disk refuses to record; then the
    server dies, its put-aside arrivals still in the review queue."""
    st = Store(db)
    eng = _engine(store=st)
    eng.ingest_batch(shot_events(SQUARE, SRC, T0 + 10**9, {}))
    st.conn.set_authorizer(lambda action, table, *_: sqlite3.SQLITE_DENY
                           if action == sqlite3.SQLITE_INSERT and table == "candidates" else sqlite3.SQLITE_OK)
    assert eng.finish() == [] and eng.take_candidates() == [] and eng.counters["store_errors"] == 1
    assert len(st.review_queue()) == 4 and [k for k, _, seed in st.review_queue() if seed]
    st.close()


def test_a_restart_resumes_the_review_search(tmp_path):
    """The arrivals put aside wait in the store's review queue until the review
    search has decided them: after a restart the review search picks the queue
    up and the candidate is recorded, once."""
    db = tmp_path / "db.sqlite"
    _dies_before_recording_the_candidate(db)
    st = Store(db)
    eng = _engine(store=st)
    assert eng.finish() == []
    (c,) = eng.take_candidates()
    assert _offset_m(c.lat, c.lon, SRC) < 1.0 and st.candidates() == [c]
    assert st.review_queue() == [] and st.verify().ok
    st.close()
    st = Store(db)                                      # and again: nothing left to review
    eng = _engine(store=st)
    assert eng.finish() == [] and eng.take_candidates() == [] and len(st.candidates()) == 1
    st.close()


def test_a_restart_with_review_turned_off_empties_the_queue(tmp_path):
    db = tmp_path / "db.sqlite"
    _dies_before_recording_the_candidate(db)
    st = Store(db)
    eng = _engine(review_max_chance=0.0, store=st)
    assert eng.finish() == [] and eng.take_candidates() == []
    assert st.review_queue() == [] and st.candidates() == []
    st.close()


def test_a_candidates_radius_allows_for_the_wind_as_a_shots_does():
    """A reviewer compares a candidate with shots: its radius carries the same
    allowance for a wind it cannot fit, and it stays where the association put it."""
    def candidate(wind):
        eng = _engine(unfitted_wind_mps=wind)
        eng.ingest_batch(shot_events(SQUARE, SRC, T0 + 10**9, {}))
        assert eng.finish() == []
        (c,) = eng.take_candidates()
        return c
    still, windy = candidate(0.0), candidate(2.0)
    assert windy.error_m > still.error_m + 1.0
    assert (windy.lat, windy.lon) == (still.lat, still.lon) and _offset_m(windy.lat, windy.lon, SRC) < 0.05
