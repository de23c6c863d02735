"""SQLite store of events, shots, incidents and nodes, sealed into the audit chain.

Rows of ``events``, ``shots`` and ``incidents`` are written once and never updated
(what happened to an event is a row in ``event_outcomes``; an incident's rounds are
its ``shots`` rows), so every stored fact can be covered by the tamper-evident
audit chain (server/audit.py): each insert is sealed (``AuditLog.seal``) in the
same transaction as the row, so the row and its audit record are committed — or
rolled back — together. ``earwitness audit verify --db PATH`` checks them all.
The ``nodes`` table (last heartbeat of each node) is live status, and
``review_queue`` (events put aside that the review search has not decided yet)
and ``engine_state`` (what the association has learnt of the network) are
working state; none of them is evidence, and none is sealed.

WAL mode, ``synchronous=FULL``; every public write commits before it returns
(or joins the caller's :meth:`Store.transaction`), so an event is durable before
the server acks it. A new database gets 16 KiB pages (an event row with its
snippet is ~3 KB: fewer page writes per event), and a file database is
checkpointed by a background thread (``CHECKPOINT_S``) instead of inside the
writer's commits. A write that fails (disk full, ``max_bytes`` reached, I/O
error) raises :class:`StoreError` after rolling the whole transaction back:
nothing half-written stays behind, and the store keeps working once there is
space again.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

import numpy as np

from common.protocol import Event, Heartbeat
from server.audit import AuditLog, VerifyResult, list_ids_sqlite, load_row_sqlite, verify
from server.reports import CandidateReport, ShotReport

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    node_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    t_utc_ns INTEGER NOT NULL,
    sigma_ns REAL NOT NULL,
    sample_rate_hz REAL NOT NULL,
    peak_dbfs REAL NOT NULL,
    snr_db REAL NOT NULL,
    snippet_t0_ns INTEGER NOT NULL,
    snippet BLOB NOT NULL,
    snippet_full_scale REAL NOT NULL,
    features TEXT NOT NULL,
    degraded INTEGER NOT NULL,
    lat REAL NOT NULL, lon REAL NOT NULL, alt REAL NOT NULL,
    received_ns INTEGER NOT NULL,
    UNIQUE (node_id, seq)
);
CREATE INDEX IF NOT EXISTS events_time ON events (t_utc_ns);
CREATE TABLE IF NOT EXISTS incidents (
    id INTEGER PRIMARY KEY,
    first_t_ns INTEGER NOT NULL,
    created_ns INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS shots (
    id INTEGER PRIMARY KEY,
    incident_id INTEGER NOT NULL REFERENCES incidents (id),
    round INTEGER NOT NULL,
    t_utc_ns INTEGER NOT NULL,
    lat REAL NOT NULL, lon REAL NOT NULL, alt REAL NOT NULL,
    error_m REAL NOT NULL,
    residual_ms REAL NOT NULL,
    nodes TEXT NOT NULL,
    created_ns INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS candidates (
    id INTEGER PRIMARY KEY,
    t_utc_ns INTEGER NOT NULL,
    lat REAL NOT NULL, lon REAL NOT NULL, alt REAL NOT NULL,
    error_m REAL NOT NULL,
    residual_ms REAL NOT NULL,
    nodes TEXT NOT NULL,
    chance REAL NOT NULL,
    event_ids TEXT NOT NULL,
    created_ns INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS event_outcomes (
    event_id INTEGER PRIMARY KEY REFERENCES events (id),
    shot_id INTEGER REFERENCES shots (id),
    outcome TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS shots_time ON shots (t_utc_ns);
CREATE INDEX IF NOT EXISTS shots_incident ON shots (incident_id);
CREATE INDEX IF NOT EXISTS outcomes_shot ON event_outcomes (shot_id);
CREATE TABLE IF NOT EXISTS review_queue (
    event_id INTEGER PRIMARY KEY REFERENCES events (id),
    seed INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS engine_state (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS nodes (
    node_id TEXT PRIMARY KEY,
    last_seen_ns INTEGER NOT NULL,
    stream_utc_ns INTEGER NOT NULL,
    lat REAL, lon REAL, alt REAL,
    version TEXT,
    status TEXT NOT NULL
);
"""

log = logging.getLogger("earwitness.server.store")

#: Page size of a new database (bytes).
PAGE_SIZE = 16384
#: How often the background thread moves the WAL into the database file (s).
CHECKPOINT_S = 1.0

#: Verdicts an analyst can give a shot or a candidate (:meth:`Store.review`).
VERDICTS = ("confirmed", "false-alarm", "unsure")
#: What can be reviewed: table → what one row of it is called.
REVIEWED = {"shots": "shot", "candidates": "candidate"}

_EVENT_COLS = ("node_id, seq, t_utc_ns, sigma_ns, sample_rate_hz, peak_dbfs, snr_db, snippet_t0_ns,"
               " snippet, snippet_full_scale, features, degraded, lat, lon, alt")
_EVENT_KEYS = ("id", *(c.strip() for c in _EVENT_COLS.split(",")), "received_ns")


class StoreError(RuntimeError):
    """A write the database refused (disk full, size cap, I/O error). Nothing of the
    failed transaction was kept. The text says what happened and what to do."""


@dataclass(frozen=True)
class StoredEvent:
    """What :meth:`Store.add_event` did. ``status``: ``"new"`` (stored now),
    ``"duplicate"`` (the same event was stored before: a resend or replay) or
    ``"conflict"`` (a DIFFERENT event was stored before under the same node id and
    sequence number; the stored one is kept). ``event_id``: the stored row's id."""

    status: Literal["new", "duplicate", "conflict"]
    event_id: int


@dataclass(frozen=True)
class Review:
    """An analyst's verdict on a shot or a candidate (``ref_table`` "shots" or
    "candidates", row ``ref_id``), as recorded in the audit chain."""

    audit_id: int
    ref_table: str
    ref_id: int
    verdict: str
    reviewer: str
    note: str
    t_utc_ns: int


def _event_values(ev: Event) -> tuple:
    """The stored column values of an event (the order of ``_EVENT_COLS``)."""
    return (ev.node_id, ev.seq, ev.t_utc_ns, float(ev.sigma_ns), float(ev.sample_rate_hz),
            float(ev.peak_dbfs), float(ev.snr_db), ev.snippet_t0_ns,
            np.asarray(ev.snippet, dtype="<i2").tobytes(), float(ev.snippet_full_scale),
            json.dumps({k: float(v) for k, v in dict(ev.features).items()}, sort_keys=True),
            int(bool(ev.degraded)), float(ev.lat), float(ev.lon), float(ev.alt))


def _is_full(exc: sqlite3.Error) -> bool:
    return getattr(exc, "sqlite_errorcode", None) == 13 or "full" in str(exc)


class Store:
    """The server's database. ``path=":memory:"`` for tests and offline runs.

    ``max_bytes``: optional cap on the database file (SQLite ``max_page_count``);
    reaching it behaves exactly like a full disk (:class:`StoreError`). One writer:
    use one Store per database file (a second writer fails with SQLITE_BUSY).
    """

    def __init__(self, path: str | Path, *, max_bytes: int | None = None) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._stop = threading.Event()
        #: Per node, a sequence number at or above the highest one stored (its
        #: events above it are new without a lookup). Only ever too high — after a
        #: rolled-back batch — which costs a lookup, never a wrong answer.
        self._seq_high: dict[str, int] = {}
        self._checkpointer: threading.Thread | None = None
        try:
            self.conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                        timeout=5.0)
            self.conn.execute(f"PRAGMA page_size={PAGE_SIZE}")    # only takes effect on a new file
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.executescript(SCHEMA)
            self.audit = AuditLog(self.conn)
            if self.path != ":memory:":
                self.conn.execute("PRAGMA wal_autocheckpoint=0")
                self._checkpointer = threading.Thread(target=self._checkpoint_loop, name="store-checkpoint",
                                                      daemon=True)
                self._checkpointer.start()
        except sqlite3.Error as exc:
            raise RuntimeError(f"cannot open the database {self.path}: {exc}") from None
        if max_bytes is not None:
            self.set_max_bytes(max_bytes)

    def close(self) -> None:
        self._stop.set()
        if self._checkpointer is not None:
            self._checkpointer.join(5)
        self.conn.close()

    def _checkpoint_loop(self) -> None:
        """Copy committed WAL pages into the database file, off the writer's path
        (its own connection; SQLite runs it without holding the GIL)."""
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=5.0)
        except sqlite3.Error as exc:
            log.error("database %s: no background checkpoints (%s)", self.path, exc)
            return
        try:
            while not self._stop.wait(CHECKPOINT_S):
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error as exc:     # full disk, busy: try again later
                    log.debug("checkpoint of %s failed: %s", self.path, exc)
            try:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass
        finally:
            conn.close()

    def set_max_bytes(self, max_bytes: int) -> None:
        """Cap the database file at about ``max_bytes`` (never below its current size)."""
        page = self.conn.execute("PRAGMA page_size").fetchone()[0]
        self.conn.execute(f"PRAGMA max_page_count={max(1, int(max_bytes) // page)}")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN … COMMIT (ROLLBACK on any error, also a failed COMMIT); nested use
        joins the outer one. SQLite errors come out as :class:`StoreError`."""
        if self.conn.in_transaction:
            yield self.conn
            return
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise self._error("begin a transaction", exc) from None
        try:
            yield self.conn
            self.conn.execute("COMMIT")
        except BaseException as exc:
            if self.conn.in_transaction:
                try:
                    self.conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            if isinstance(exc, sqlite3.Error):
                raise self._error("write", exc) from None
            raise

    def _error(self, what: str, exc: sqlite3.Error) -> StoreError:
        if _is_full(exc):
            return StoreError(f"database {self.path} is full ({exc}); nothing of this write was kept. "
                              "Free disk space (or raise the size cap); the server retries")
        return StoreError(f"database {self.path}: cannot {what}: {exc}")

    # ------------------------------------------------------------ events
    def add_event(self, ev: Event, received_ns: int) -> StoredEvent:
        """Store one event and seal it into the audit chain (committed on return,
        unless inside :meth:`transaction`). An event whose (node_id, seq) is already
        stored is not stored again: ``"duplicate"`` if it is the same event,
        ``"conflict"`` if its content differs. Raises StoreError."""
        return self.add_events([ev], received_ns)[0]

    def add_events(self, events: list[Event], received_ns: int) -> list[StoredEvent]:
        """:meth:`add_event` for a batch, in one transaction (committed on return
        unless inside :meth:`transaction`): the same results, rows and audit
        records as adding them one by one in order (an event repeated within the
        batch is a duplicate of its first copy), at a fraction of the cost — the
        already-stored keys are looked up once, the new rows and their audit
        records inserted together. Raises StoreError and stores nothing of the
        batch if the database refuses the write."""
        if not events:
            return []
        rec = int(received_ns)
        values = [_event_values(ev) for ev in events]
        out: list[StoredEvent | None] = [None] * len(events)
        with self.transaction() as c:
            stored: dict[tuple[str, int], tuple] = {}
            probe = f"SELECT id, {_EVENT_COLS} FROM events WHERE node_id = ? AND seq = ?"
            high = self._seq_high
            for key in {(ev.node_id, ev.seq) for ev in events}:
                h = high.get(key[0])
                if h is None:
                    h = c.execute("SELECT MAX(seq) FROM events WHERE node_id = ?", key[:1]).fetchone()[0]
                    high[key[0]] = h = -1 if h is None else int(h)
                if key[1] > h:
                    continue          # above everything stored for this node: new
                # a resend (or a node that restarted its numbering): look it up
                row = c.execute(probe, key).fetchone()
                if row is not None:
                    stored[key] = (int(row[0]), tuple(row[1:]))
            next_id = int(c.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0]) + 1
            rows, audit = [], []
            for j, (ev, vals) in enumerate(zip(events, values)):
                key = (ev.node_id, ev.seq)
                old = stored.get(key)
                if old is not None:
                    out[j] = StoredEvent("duplicate" if old[1] == vals else "conflict", old[0])
                    continue
                eid = next_id
                next_id += 1
                stored[key] = (eid, vals)
                if ev.seq > high[ev.node_id]:
                    high[ev.node_id] = ev.seq
                rows.append((eid, *vals, rec))
                # the row exactly as inserted (every value already of its column's
                # type, so it hashes as verify() will read it back; tests check that)
                audit.append((eid, rows[-1], rec))
                out[j] = StoredEvent("new", eid)
            c.executemany(f"INSERT INTO events (id, {_EVENT_COLS}, received_ns)"
                          " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
            self.audit.append_many("insert", "events", audit, columns=_EVENT_KEYS)
        return out  # type: ignore[return-value]

    def insert_event(self, ev: Event, received_ns: int) -> int | None:
        """Store one event; returns its id, or None if (node_id, seq) is already stored."""
        r = self.add_event(ev, received_ns)
        return r.event_id if r.status == "new" else None

    def event_row_to_event(self, row: tuple) -> Event:
        (_, node_id, seq, t, sigma, fs, peak, snr, st0, snip, fsc, feats, deg, lat, lon, alt, _) = row
        return Event(node_id=node_id, seq=seq, t_utc_ns=t, sigma_ns=sigma, sample_rate_hz=fs,
                     peak_dbfs=peak, snr_db=snr, snippet_t0_ns=st0,
                     snippet=np.frombuffer(snip, dtype="<i2").astype(np.int16),
                     lat=lat, lon=lon, alt=alt, features=json.loads(feats),
                     snippet_full_scale=fsc, degraded=bool(deg))

    def pending_events(self) -> list[tuple[int, Event]]:
        """Events stored but not yet decided (no outcome): after a restart the engine
        feeds them back into association. Events that are already part of a shot,
        or were put aside, have an outcome and are not returned — so a restart
        never forms a shot twice."""
        rows = self.conn.execute(
            "SELECT e.* FROM events e LEFT JOIN event_outcomes o ON o.event_id = e.id"
            " WHERE o.event_id IS NULL ORDER BY e.t_utc_ns").fetchall()
        return [(r[0], self.event_row_to_event(r)) for r in rows]

    def shots_since(self, t_utc_ns: int) -> list[tuple[ShotReport, list[tuple[int, Event]]]]:
        """The shots at or after ``t_utc_ns`` in time order, each with its stored
        events (id, event): after a restart the association judges echoes of the
        last shots against them, as it did before."""
        shots = self._shot_reports("WHERE t_utc_ns >= ?", (t_utc_ns,))
        if not shots:
            return []
        rows = self.conn.execute(
            "SELECT o.shot_id, e.* FROM events e JOIN event_outcomes o ON o.event_id = e.id"
            " WHERE o.outcome = 'shot' AND o.shot_id IN (SELECT id FROM shots WHERE t_utc_ns >= ?)"
            " ORDER BY e.t_utc_ns", (t_utc_ns,)).fetchall()
        events: dict[int, list[tuple[int, Event]]] = {}
        for r in rows:
            events.setdefault(r[0], []).append((r[1], self.event_row_to_event(r[1:])))
        return [(s, events.get(s.shot_id, [])) for s in shots]

    def open_incident_shots(self, gap_s: float) -> list[ShotReport]:
        """Every shot, in time order, of the incidents whose last round is within
        ``gap_s`` of the last stored shot: the incidents a round after a restart
        may still join."""
        last = self.conn.execute("SELECT MAX(t_utc_ns) FROM shots").fetchone()[0]
        if last is None:
            return []
        return self._shot_reports(
            "WHERE incident_id IN (SELECT incident_id FROM shots WHERE t_utc_ns >= ?)",
            (int(last - gap_s * 1e9),))

    def queue_for_review(self, event_id: int, seed: bool) -> None:
        """Note an event the association put aside, until the review search has
        decided it (``seed``: searched from itself, see Engine). Working state,
        not evidence: not sealed; it lets a restart resume the review search."""
        with self.transaction() as c:
            c.execute("INSERT OR REPLACE INTO review_queue (event_id, seed) VALUES (?,?)",
                      (event_id, int(bool(seed))))

    def reviewed(self, event_ids: list[int]) -> None:
        """The review search has decided these events (a candidate or nothing)."""
        if event_ids:
            with self.transaction() as c:
                c.executemany("DELETE FROM review_queue WHERE event_id = ?", [(k,) for k in event_ids])

    def review_queue(self) -> list[tuple[int, Event, bool]]:
        """The events put aside but not yet decided by the review search, in time
        order: (event id, event, seed)."""
        rows = self.conn.execute(
            "SELECT q.seed, e.* FROM review_queue q JOIN events e ON e.id = q.event_id"
            " ORDER BY e.t_utc_ns").fetchall()
        return [(r[1], self.event_row_to_event(r[1:]), bool(r[0])) for r in rows]

    def save_state(self, key: str, value: object) -> None:
        """Keep a piece of the engine's learnt state (a JSON value) under ``key``.
        Working state, not evidence: not sealed."""
        with self.transaction() as c:
            c.execute("INSERT OR REPLACE INTO engine_state (key, value) VALUES (?,?)",
                      (key, json.dumps(value, allow_nan=False)))

    def load_state(self, key: str) -> object | None:
        """What :meth:`save_state` kept under ``key`` (None: nothing). Raises
        ValueError when it is not JSON."""
        row = self.conn.execute("SELECT value FROM engine_state WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        try:
            return json.loads(row[0])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"the stored {key!r} state is not JSON ({exc})") from None

    def record_outcome(self, event_id: int, outcome: str, shot_id: int | None = None) -> None:
        """What became of an event (``"shot"`` with its shot id, ``"unassociated"``), sealed."""
        with self.transaction() as c:
            existed = c.execute("SELECT 1 FROM event_outcomes WHERE event_id = ?", (event_id,)).fetchone()
            c.execute("INSERT OR REPLACE INTO event_outcomes (event_id, shot_id, outcome) VALUES (?,?,?)",
                      (event_id, shot_id, outcome))
            self.audit.seal("update" if existed else "insert", "event_outcomes", event_id)

    def count_events(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]

    # ------------------------------------------------------- shots/incidents
    def insert_incident(self, first_t_ns: int, created_ns: int) -> int:
        with self.transaction() as c:
            iid = int(c.execute("INSERT INTO incidents (first_t_ns, created_ns) VALUES (?,?)",
                                (first_t_ns, created_ns)).lastrowid)
            self.audit.seal("insert", "incidents", iid, t_utc_ns=created_ns)
        return iid

    def insert_shot(self, incident_id: int, round_: int, t_utc_ns: int, lat: float, lon: float, alt: float,
                    error_m: float, residual_ms: float, nodes: list[str], created_ns: int) -> int:
        return self._insert_sealed("shots", {
            "incident_id": incident_id, "round": round_, "t_utc_ns": t_utc_ns, "lat": lat, "lon": lon, "alt": alt,
            "error_m": error_m, "residual_ms": residual_ms, "nodes": json.dumps(list(nodes)),
            "created_ns": created_ns}, created_ns)

    def _insert_sealed(self, table: str, row: dict, created_ns: int) -> int:
        """Insert ``row`` (column → value) into ``table`` and seal it, in one
        transaction; returns the new row's id."""
        cols = ", ".join(row)
        with self.transaction() as c:
            rid = int(c.execute(f"INSERT INTO {table} ({cols}) VALUES ({','.join('?' * len(row))})",
                                tuple(row.values())).lastrowid)
            self.audit.seal("insert", table, rid, t_utc_ns=created_ns)
        return rid

    def shots(self) -> list[ShotReport]:
        """Every stored shot in time order, as the engine reported it."""
        return self._shot_reports()

    def _shot_reports(self, where: str = "", params: tuple = ()) -> list[ShotReport]:
        rows = self.conn.execute(
            "SELECT t_utc_ns, lat, lon, alt, error_m, residual_ms, nodes, id, incident_id, round"
            f" FROM shots {where} ORDER BY t_utc_ns", params).fetchall()
        return [ShotReport(*r[:6], tuple(json.loads(r[6])), *r[7:]) for r in rows]

    def insert_candidate(self, t_utc_ns: int, lat: float, lon: float, alt: float, error_m: float,
                         residual_ms: float, nodes: list[str], chance: float, event_ids: list[int],
                         created_ns: int) -> int:
        """Store a candidate for review (its events keep their "unassociated"
        outcome; ``event_ids`` name them), sealed into the audit chain."""
        return self._insert_sealed("candidates", {
            "t_utc_ns": t_utc_ns, "lat": lat, "lon": lon, "alt": alt, "error_m": error_m,
            "residual_ms": residual_ms, "nodes": json.dumps(list(nodes)), "chance": float(chance),
            "event_ids": json.dumps([int(i) for i in event_ids]), "created_ns": created_ns}, created_ns)

    def candidates(self) -> list[CandidateReport]:
        """The stored candidates for review, in time order, as published."""
        rows = self.conn.execute(
            "SELECT t_utc_ns, lat, lon, alt, error_m, residual_ms, nodes, id, chance, event_ids"
            " FROM candidates ORDER BY t_utc_ns").fetchall()
        return [CandidateReport(*r[:6], tuple(json.loads(r[6])), *r[7:9], tuple(json.loads(r[9]))) for r in rows]

    # ------------------------------------------------------------ reviews
    def review(self, table: Literal["shots", "candidates"], ref_id: int, verdict: str, reviewer: str,
               note: str = "", t_utc_ns: int | None = None) -> Review:
        """Record an analyst's verdict on a shot or a candidate for review
        (``"confirmed"``, ``"false-alarm"``, ``"unsure"``) as a ``review`` record in
        the audit chain: who, what, why, and the row as it stands (the row itself
        is never changed). The latest review is the current verdict
        (:meth:`reviews`). Bad input is a ValueError saying what to fix."""
        if table not in REVIEWED:
            raise ValueError(f"only {' and '.join(REVIEWED)} are reviewed, not {table!r}")
        if verdict not in VERDICTS:
            raise ValueError(f"verdict {verdict!r} is not one of {', '.join(VERDICTS)}")
        if not isinstance(reviewer, str) or not reviewer.strip() or len(reviewer) > 128:
            raise ValueError("reviewer must name who reviewed (1-128 characters)")
        if not isinstance(note, str) or len(note) > 4096:
            raise ValueError("note must be text of at most 4096 characters")
        with self.transaction() as c:
            if c.execute(f"SELECT 1 FROM {table} WHERE id = ?", (ref_id,)).fetchone() is None:
                raise ValueError(f"no {REVIEWED[table]} {ref_id} in {self.path}")
            self.audit.seal("review", table, int(ref_id), t_utc_ns=t_utc_ns,
                            detail={"verdict": verdict, "reviewer": reviewer, "note": note})
            aid, _ = self.audit.head()
        return self._reviews("AND id = ?", (aid,))[0]

    def reviews(self, table: Literal["shots", "candidates"], ref_id: int | None = None) -> list[Review]:
        """Reviews (oldest first) of one shot or candidate, or of every one."""
        if ref_id is None:
            return self._reviews("AND ref_table = ?", (table,))
        return self._reviews("AND ref_table = ? AND ref_id = ?", (table, int(ref_id)))

    def _reviews(self, where: str, args: tuple) -> list[Review]:
        rows = self.conn.execute(
            "SELECT id, ref_table, ref_id, detail, t_utc_ns FROM audit WHERE kind = 'review' "
            f"{where} ORDER BY id", args).fetchall()
        out = []
        for aid, table, ref, detail, t in rows:
            d = json.loads(detail or "{}")
            out.append(Review(aid, table, ref, str(d.get("verdict", "")), str(d.get("reviewer", "")),
                              str(d.get("note", "")), t))
        return out

    # ------------------------------------------------------------- audit
    def verify(self) -> VerifyResult:
        """Check the audit chain and every audited row (what `earwitness audit verify` does)."""
        return verify(self.conn, load_row_sqlite(self.conn), list_ids=list_ids_sqlite(self.conn))

    # ------------------------------------------------------------- nodes
    def update_node(self, hb: Heartbeat, received_ns: int) -> None:
        try:
            self.conn.execute(
                "INSERT INTO nodes (node_id, last_seen_ns, stream_utc_ns, lat, lon, alt, version, status)"
                " VALUES (?,?,?,?,?,?,?,?) ON CONFLICT (node_id) DO UPDATE SET last_seen_ns=excluded.last_seen_ns,"
                " stream_utc_ns=excluded.stream_utc_ns, lat=excluded.lat, lon=excluded.lon, alt=excluded.alt,"
                " version=excluded.version, status=excluded.status",
                (hb.node_id, received_ns, hb.stream_utc_ns, hb.lat, hb.lon, hb.alt, hb.version,
                 json.dumps(dict(hb.status), sort_keys=True)),
            )
        except sqlite3.Error as exc:
            raise self._error("record a heartbeat", exc) from None

    def nodes(self) -> list[dict]:
        rows = self.conn.execute("SELECT node_id, last_seen_ns, stream_utc_ns, lat, lon, alt, version, status"
                                 " FROM nodes ORDER BY node_id").fetchall()
        keys = ("node_id", "last_seen_ns", "stream_utc_ns", "lat", "lon", "alt", "version", "status")
        return [dict(zip(keys, r[:7] + (json.loads(r[7]),))) for r in rows]
