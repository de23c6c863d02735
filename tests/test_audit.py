"""server/audit.py: the hash chain and what tampering it catches."""

from __future__ import annotations

import sqlite3

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server import audit as A

SCHEMA = """
CREATE TABLE events (id INTEGER PRIMARY KEY, node_id TEXT NOT NULL, seq INTEGER NOT NULL,
    t_utc_ns INTEGER NOT NULL, peak_dbfs REAL NOT NULL, snippet BLOB NOT NULL);
CREATE TABLE incidents (id INTEGER PRIMARY KEY, first_t_ns INTEGER NOT NULL);
CREATE TABLE shots (id INTEGER PRIMARY KEY, incident_id INTEGER NOT NULL, lat REAL, lon REAL,
    verdict TEXT);
"""


def make_db(path=":memory:", n_events=5):
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(SCHEMA)
    log = A.AuditLog(conn)
    conn.execute("BEGIN")
    for i in range(1, n_events + 1):
        conn.execute("INSERT INTO events VALUES (?,?,?,?,?,?)",
                     (i, f"n{i % 3}", i, 1_700_000_000_000_000_000 + i, -12.5 + i, bytes([i]) * 8))
        log.seal("insert", "events", i)
    conn.execute("INSERT INTO incidents VALUES (1, 1700000000000000000)")
    log.seal("insert", "incidents", 1)
    conn.execute("INSERT INTO shots VALUES (1, 1, 40.44, -79.99, NULL)")
    log.seal("insert", "shots", 1)
    conn.execute("COMMIT")
    return conn, log


def check(conn, **kw):
    return A.verify(conn, A.load_row_sqlite(conn), **kw)


def full_check(conn, **kw):
    return A.verify(conn, A.load_row_sqlite(conn), list_ids=A.list_ids_sqlite(conn), **kw)


def audit_id_for(conn, table, ref):
    return conn.execute("SELECT MAX(id) FROM audit WHERE ref_table=? AND ref_id=?",
                        (table, ref)).fetchone()[0]


def attacker(conn):
    """Someone with the database file: the triggers are no obstacle."""
    conn.execute("DROP TRIGGER audit_no_update")
    conn.execute("DROP TRIGGER audit_no_delete")


# --------------------------------------------------------------------------
def test_empty_db_verifies():
    conn = sqlite3.connect(":memory:", isolation_level=None)
    log = A.AuditLog(conn)
    assert log.head() == (0, A.GENESIS)
    r = full_check(conn)
    assert r.ok and r.checked == 0 and r.rows_checked == 0 and r.head_id == 0


def test_db_without_audit_table_fails():
    conn = sqlite3.connect(":memory:")
    r = check(conn)
    assert not r.ok and "audit table" in r.reason


def test_chain_ok():
    conn, log = make_db()
    r = full_check(conn)
    assert r.ok, r.reason
    assert r.checked == 7 and r.rows_checked == 7
    assert (r.head_id, r.head_hash) == log.head()
    assert r.first_bad_audit_id is None


def test_modified_event_row_fails_at_that_row():
    conn, _ = make_db()
    conn.execute("UPDATE events SET peak_dbfs = 0.0 WHERE id = 3")
    r = check(conn)
    assert not r.ok
    assert (r.ref_table, r.ref_id) == ("events", 3)
    assert r.first_bad_audit_id == audit_id_for(conn, "events", 3)
    assert "modified" in r.reason


def test_modified_blob_fails():
    conn, _ = make_db()
    conn.execute("UPDATE events SET snippet = ? WHERE id = 2", (b"\x00" * 8,))
    r = check(conn)
    assert not r.ok and (r.ref_table, r.ref_id) == ("events", 2)


def test_deleted_row_fails():
    conn, _ = make_db()
    conn.execute("DELETE FROM events WHERE id = 4")
    r = check(conn)
    assert not r.ok and (r.ref_table, r.ref_id) == ("events", 4) and "missing" in r.reason


def test_row_added_behind_the_servers_back():
    conn, _ = make_db()
    conn.execute("INSERT INTO events VALUES (99, 'n1', 99, 1700000000000000099, -3.0, x'00')")
    assert check(conn).ok                      # the chain alone cannot see it
    r = full_check(conn)
    assert not r.ok and (r.ref_table, r.ref_id) == ("events", 99) and "no audit record" in r.reason
    assert r.first_bad_audit_id is None


def test_triggers_refuse_accidental_changes():
    conn, _ = make_db()
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("UPDATE audit SET kind = 'x' WHERE id = 1")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("DELETE FROM audit WHERE id = 1")
    assert check(conn).ok


def test_tampered_audit_row():
    conn, _ = make_db()
    attacker(conn)
    conn.execute("UPDATE audit SET ref_id = 5 WHERE id = 3")
    r = check(conn)
    assert not r.ok and r.first_bad_audit_id == 3 and "modified" in r.reason


def test_tampered_audit_row_with_recomputed_hashes_breaks_the_next_link():
    conn, _ = make_db()
    conn.execute("UPDATE events SET peak_dbfs = 99.0 WHERE id = 2")
    attacker(conn)
    row = A.load_row_sqlite(conn)("events", 2)
    aid = audit_id_for(conn, "events", 2)
    _, kind, table, ref, _, prev, _, t, detail = conn.execute(
        "SELECT * FROM audit WHERE id = ?", (aid,)).fetchone()
    rec = A.row_hash(row)
    chain = A._chain_hash(aid, prev, rec, kind, table, ref, t, detail)
    conn.execute("UPDATE audit SET record_hash = ?, chain_hash = ? WHERE id = ?", (rec, chain, aid))
    r = check(conn)
    assert not r.ok and r.first_bad_audit_id == aid + 1 and "prev_hash" in r.reason


def rewrite_chain(conn):
    """The full attack: re-seal every row from scratch after changing data."""
    rows = conn.execute("SELECT id, kind, ref_table, ref_id, t_utc_ns, detail FROM audit ORDER BY id").fetchall()
    load = A.load_row_sqlite(conn)
    prev = A.GENESIS
    for aid, kind, table, ref, t, detail in rows:
        rec = A.row_hash(load(table, ref))
        chain = A._chain_hash(aid, prev, rec, kind, table, ref, t, detail)
        conn.execute("UPDATE audit SET record_hash=?, prev_hash=?, chain_hash=? WHERE id=?",
                     (rec, prev, chain, aid))
        prev = chain


def test_full_rewrite_is_only_caught_by_a_published_anchor():
    conn, log = make_db()
    anchor = log.head()
    conn.execute("UPDATE shots SET lat = 41.0 WHERE id = 1")
    attacker(conn)
    rewrite_chain(conn)
    assert full_check(conn).ok                 # documented limit
    r = full_check(conn, anchors=[anchor])
    assert not r.ok and r.first_bad_audit_id == anchor[0] and "anchor" in r.reason


def test_reordered_audit_rows():
    conn, _ = make_db()
    attacker(conn)
    conn.execute("UPDATE audit SET id = -1 WHERE id = 3")
    conn.execute("UPDATE audit SET id = 3 WHERE id = 4")
    conn.execute("UPDATE audit SET id = 4 WHERE id = -1")
    r = check(conn)
    assert not r.ok and r.first_bad_audit_id == 3


def test_deleted_audit_rows():
    conn, _ = make_db()
    attacker(conn)
    conn.execute("DELETE FROM audit WHERE id = 4")
    r = check(conn)
    assert not r.ok and r.first_bad_audit_id == 5 and "jump" in r.reason

    conn2, _ = make_db()
    attacker(conn2)
    conn2.execute("DELETE FROM audit WHERE id = 1")
    r = check(conn2)
    assert not r.ok and "start at id 1" in r.reason


def test_truncated_chain():
    conn, log = make_db()
    anchor = log.head()
    attacker(conn)
    conn.execute("DELETE FROM audit WHERE id = ?", (anchor[0],))
    conn.execute("DELETE FROM shots WHERE id = 1")  # and the row it covered
    assert full_check(conn).ok                       # undetectable without an anchor
    r = check(conn, anchors=[anchor])
    assert not r.ok and "cut off" in r.reason


def test_review_supersedes_and_records_who():
    conn, log = make_db()
    conn.execute("BEGIN")
    conn.execute("UPDATE shots SET verdict = 'false' WHERE id = 1")
    log.seal("review", "shots", 1, detail={"user": "alice", "note": "fireworks"})
    conn.execute("COMMIT")
    assert full_check(conn).ok
    rec = conn.execute("SELECT kind, detail FROM audit ORDER BY id DESC LIMIT 1").fetchone()
    assert rec == ("review", '{"note":"fireworks","user":"alice"}')
    attacker(conn)
    conn.execute("UPDATE audit SET detail = '{\"user\":\"mallory\"}' WHERE kind = 'review'")
    assert not check(conn).ok


def test_delete_kind():
    conn, log = make_db()
    conn.execute("BEGIN")
    conn.execute("DELETE FROM events WHERE id = 1")
    log.seal("delete", "events", 1, detail={"reason": "retention"})
    conn.execute("COMMIT")
    assert full_check(conn).ok
    conn.execute("INSERT INTO events VALUES (1, 'n1', 1, 1700000000000000001, -11.5, x'01')")
    r = check(conn)
    assert not r.ok and (r.ref_table, r.ref_id) == ("events", 1) and "back" in r.reason


def test_append_and_seal_do_not_commit(tmp_path):
    p = str(tmp_path / "db.sqlite")
    conn, log = make_db(p)
    other = sqlite3.connect(p)
    n = other.execute("SELECT COUNT(*) FROM audit").fetchone()[0]
    conn.execute("BEGIN")
    conn.execute("INSERT INTO events VALUES (50, 'n1', 50, 1700000000000000050, -1.0, x'00')")
    log.seal("insert", "events", 50)
    assert other.execute("SELECT COUNT(*) FROM audit").fetchone()[0] == n
    conn.execute("ROLLBACK")
    assert conn.execute("SELECT COUNT(*) FROM audit").fetchone()[0] == n
    assert full_check(conn).ok


def test_seal_errors():
    conn, log = make_db()
    with pytest.raises(A.AuditError, match="does not exist"):
        log.seal("insert", "events", 1234)
    with pytest.raises(A.AuditError, match="still exists"):
        log.seal("delete", "events", 1)
    with pytest.raises(A.AuditError, match="kind"):
        log.append("tamper", "events", 1, {})
    with pytest.raises(A.AuditError, match="not audited"):
        log.seal("insert", "sqlite_master", 1)
    with pytest.raises(A.AuditError, match="cannot hash"):
        log.append("insert", "events", 1, {"x": object()})
    assert full_check(conn).ok


def test_loader_whitelists_tables():
    conn, _ = make_db()
    load = A.load_row_sqlite(conn)
    with pytest.raises(A.AuditError, match="not audited"):
        load("audit", 1)
    assert load("events", 12345) is None
    assert A.load_row_sqlite(conn, {"gone": "id"})("gone", 1) is None     # allowed but absent table


def test_the_audited_tables_are_the_stores_sealed_tables():
    """Every table the default loader allows exists in the server's schema with
    its key column: none is named that exists nowhere."""
    from server.store import Store

    st = Store(":memory:")
    try:
        for table, key in A.AUDITED_TABLES.items():
            cols = [r[1] for r in st.conn.execute(f'PRAGMA table_info("{table}")')]
            assert key in cols, f"{table}.{key} is not in the store's schema"
    finally:
        st.close()


def test_canonical_row():
    assert A.canonical_row({"b": 1, "a": "x"}) == A.canonical_row({"a": "x", "b": 1})
    assert A.canonical_row({"v": 2}) == A.canonical_row({"v": 2.0})    # SQLite affinity
    assert A.canonical_row({"v": True}) == A.canonical_row({"v": 1})
    assert A.canonical_row({"v": "ab"}) != A.canonical_row({"v": b"\xab"})
    assert A.canonical_row({"v": 0.1}) != A.canonical_row({"v": 0.1000000001})
    assert A.canonical_row({"v": None}) != A.canonical_row({"v": 0})
    assert A.canonical_row({"v": float("nan")}) == b'{"v":["f","nan"]}'
    assert A.canonical_row({"id": 1, "t": 0.5, "s": "é", "b": b"\x01"}) == (
        b'{"b":["b","01"],"id":["i",1],"s":["s","\\u00e9"],"t":["f","0.5"]}')


def _reference_canonical(row):
    """The canonical form as first specified: typed pairs through json.dumps."""
    import json
    import math

    def typed(v):
        if v is None:
            return None
        if isinstance(v, bool) or isinstance(v, int):
            return ["i", int(v)]
        if isinstance(v, float):
            if math.isfinite(v) and v.is_integer() and abs(v) <= 2.0**53:
                return ["i", int(v)]
            return ["f", repr(v)]
        if isinstance(v, str):
            return ["s", v]
        return ["b", bytes(v).hex()]
    return json.dumps({k: typed(v) for k, v in row.items()}, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=True, allow_nan=False).encode("ascii")


_values = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**63 - 1), st.floats(), st.text(),
                    st.binary(), st.floats(-1e20, 1e20).map(lambda f: float(int(f))))


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.text(max_size=8), _values, max_size=8))
def test_canonical_row_is_the_specified_json(row):
    assert A.canonical_row(row) == _reference_canonical(row)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=8), _values, max_size=8))
def test_row_hasher_equals_row_hash(row):
    cols = tuple(row)
    assert A.row_hasher(cols)(tuple(row.values())) == A.row_hash(row)


def test_row_hasher_errors():
    with pytest.raises(A.AuditError):
        A.row_hasher(("a", "a"))
    with pytest.raises(A.AuditError):
        A.row_hasher(("a", "b"))((1,))
    with pytest.raises(A.AuditError, match="column b"):
        A.row_hasher(("a", "b"))((1, object()))


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**62), st.text(), st.text(), st.sampled_from(A.KINDS), st.text(max_size=10),
       st.integers(-2**62, 2**62), st.integers(0, 2**63), st.text())
def test_chain_hash_is_the_specified_json(aid, prev, rec, kind, table, ref, t, detail):
    import hashlib
    import json
    data = json.dumps([aid, prev, rec, kind, table, ref, t, detail], separators=(",", ":"), ensure_ascii=True)
    assert A._chain_hash(aid, prev, rec, kind, table, ref, t, detail) == hashlib.sha256(data.encode()).hexdigest()


def test_append_many_equals_appends():
    rows = [(i, {"id": i, "v": i * 0.5, "b": bytes([i])}, 1000 + i) for i in range(1, 6)]
    c1, c2 = sqlite3.connect(":memory:"), sqlite3.connect(":memory:")
    l1, l2 = A.AuditLog(c1), A.AuditLog(c2)
    for ref, row, t in rows:
        l1.append("insert", "events", ref, row, t_utc_ns=t)
    assert l2.append_many("insert", "events", rows[:2]) is not None
    assert l2.append_many("insert", "events", [(r, tuple(row.values()), t) for r, row, t in rows[2:]],
                          columns=("id", "v", "b")) == l1.head()[1]
    q = "SELECT * FROM audit ORDER BY id"
    assert c1.execute(q).fetchall() == c2.execute(q).fetchall()
    assert l2.append_many("insert", "events", []) is None
    with pytest.raises(A.AuditError):
        l2.append_many("bogus", "events", rows)


def test_append_with_python_values_matches_stored_affinity():
    conn, log = make_db()
    conn.execute("INSERT INTO shots VALUES (2, 1, 40, -80, NULL)")  # ints into REAL columns
    log.append("insert", "shots", 2, {"id": 2, "incident_id": 1, "lat": 40, "lon": -80,
                                      "verdict": None})
    conn.commit()
    assert A.load_row_sqlite(conn)("shots", 2)["lat"] == 40.0
    assert full_check(conn).ok


def test_with_the_servers_store(tmp_path):
    import server.store as store_mod
    import numpy as np
    from common.protocol import Event
    st = store_mod.Store(tmp_path / "s.sqlite")
    log = A.AuditLog(st.conn)
    ev = Event(node_id="n1", seq=1, t_utc_ns=1_700_000_000_000_000_000, sigma_ns=1000.0,
               sample_rate_hz=48000.0, peak_dbfs=-3.0, snr_db=30.0,
               snippet_t0_ns=1_700_000_000_000_000_000 - 10**6,
               snippet=np.arange(96, dtype=np.int16), lat=40.4, lon=-79.9, alt=250.0,
               features={"f": 1.5})
    with st.transaction():
        eid = st.insert_event(ev, received_ns=1_700_000_000_100_000_000)
        log.seal("insert", "events", eid)
    r = A.verify(st.conn, A.load_row_sqlite(st.conn), list_ids=A.list_ids_sqlite(st.conn),
                 tables=["events"])
    assert r.ok, r.reason
    st.conn.execute("UPDATE events SET t_utc_ns = t_utc_ns + 1000 WHERE id = ?", (eid,))
    r = A.verify(st.conn, A.load_row_sqlite(st.conn))
    assert not r.ok and (r.ref_table, r.ref_id) == ("events", eid)
    st.close()


def test_cli(tmp_path, capsys):
    p = tmp_path / "db.sqlite"
    conn, log = make_db(str(p))
    head_id, head_hash = log.head()
    conn.close()
    assert A.main(["verify", "--db", str(p)]) == 0
    assert capsys.readouterr().out.startswith("OK")
    assert A.main(["head", "--db", str(p)]) == 0
    assert capsys.readouterr().out.strip() == f"{head_id}:{head_hash}"
    assert A.main(["verify", "--db", str(p), "--anchor", f"{head_id}:{head_hash}"]) == 0
    capsys.readouterr()
    conn = sqlite3.connect(p)
    conn.execute("UPDATE events SET node_id = 'evil' WHERE id = 2")
    conn.execute("INSERT INTO incidents VALUES (7, 1)")
    conn.commit()
    conn.close()
    assert A.main(["verify", "--db", str(p)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("BROKEN") and "events row 2" in out
    assert A.main(["verify", "--db", str(tmp_path / "missing.sqlite")]) == 2
    assert A.main(["verify", "--db", str(p), "--anchor", "nonsense"]) == 2
    assert A.main([]) == 2
