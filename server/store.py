"""SQLite store of events, shots, incidents and nodes.

Rows of ``events``, ``shots`` and ``incidents`` are written once and never updated
(what happened to an event is a row in ``event_outcomes``; an incident's growing
round count is a new row in ``incident_updates``), so every stored fact can be
covered by the tamper-evident audit chain. WAL mode; every public write commits
before it returns, so an event is durable before the server acks it.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from common.protocol import Event, Heartbeat

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
CREATE TABLE IF NOT EXISTS event_outcomes (
    event_id INTEGER PRIMARY KEY REFERENCES events (id),
    shot_id INTEGER REFERENCES shots (id),
    outcome TEXT NOT NULL
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


@dataclass(frozen=True)
class ShotRow:
    id: int
    incident_id: int
    round: int
    t_utc_ns: int
    lat: float
    lon: float
    alt: float
    error_m: float
    residual_ms: float
    nodes: tuple[str, ...]


class Store:
    """The server's database. ``path=":memory:"`` for tests and offline runs."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self.conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.executescript(SCHEMA)
        except sqlite3.Error as exc:
            raise RuntimeError(f"cannot open the database {self.path}: {exc}") from None

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN … COMMIT (ROLLBACK on error); nested use joins the outer one."""
        if self.conn.in_transaction:
            yield self.conn
            return
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    # ------------------------------------------------------------ events
    def insert_event(self, ev: Event, received_ns: int) -> int | None:
        """Store one event; returns its id, or None if (node_id, seq) is already stored."""
        cur = self.conn.execute(
            "INSERT OR IGNORE INTO events (node_id, seq, t_utc_ns, sigma_ns, sample_rate_hz, peak_dbfs,"
            " snr_db, snippet_t0_ns, snippet, snippet_full_scale, features, degraded, lat, lon, alt,"
            " received_ns) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (ev.node_id, ev.seq, ev.t_utc_ns, float(ev.sigma_ns), float(ev.sample_rate_hz),
             float(ev.peak_dbfs), float(ev.snr_db), ev.snippet_t0_ns,
             np.asarray(ev.snippet, dtype="<i2").tobytes(), float(ev.snippet_full_scale),
             json.dumps(dict(ev.features), sort_keys=True), int(ev.degraded),
             float(ev.lat), float(ev.lon), float(ev.alt), int(received_ns)),
        )
        return cur.lastrowid if cur.rowcount == 1 else None

    def event_row_to_event(self, row: tuple) -> Event:
        (_, node_id, seq, t, sigma, fs, peak, snr, st0, snip, fsc, feats, deg, lat, lon, alt, _) = row
        return Event(node_id=node_id, seq=seq, t_utc_ns=t, sigma_ns=sigma, sample_rate_hz=fs,
                     peak_dbfs=peak, snr_db=snr, snippet_t0_ns=st0,
                     snippet=np.frombuffer(snip, dtype="<i2").astype(np.int16),
                     lat=lat, lon=lon, alt=alt, features=json.loads(feats),
                     snippet_full_scale=fsc, degraded=bool(deg))

    def pending_events(self) -> list[tuple[int, Event]]:
        """Events stored but not yet decided (after a restart: feed them back in)."""
        rows = self.conn.execute(
            "SELECT e.* FROM events e LEFT JOIN event_outcomes o ON o.event_id = e.id"
            " WHERE o.event_id IS NULL ORDER BY e.t_utc_ns").fetchall()
        return [(r[0], self.event_row_to_event(r)) for r in rows]

    def record_outcome(self, event_id: int, outcome: str, shot_id: int | None = None) -> None:
        self.conn.execute("INSERT OR REPLACE INTO event_outcomes (event_id, shot_id, outcome) VALUES (?,?,?)",
                          (event_id, shot_id, outcome))

    def count_events(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]

    # ------------------------------------------------------- shots/incidents
    def insert_incident(self, first_t_ns: int, created_ns: int) -> int:
        return self.conn.execute("INSERT INTO incidents (first_t_ns, created_ns) VALUES (?,?)",
                                 (first_t_ns, created_ns)).lastrowid

    def insert_shot(self, incident_id: int, round_: int, t_utc_ns: int, lat: float, lon: float, alt: float,
                    error_m: float, residual_ms: float, nodes: list[str], created_ns: int) -> int:
        return self.conn.execute(
            "INSERT INTO shots (incident_id, round, t_utc_ns, lat, lon, alt, error_m, residual_ms, nodes,"
            " created_ns) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (incident_id, round_, t_utc_ns, lat, lon, alt, error_m, residual_ms, json.dumps(nodes), created_ns),
        ).lastrowid

    def shots(self) -> list[ShotRow]:
        rows = self.conn.execute(
            "SELECT id, incident_id, round, t_utc_ns, lat, lon, alt, error_m, residual_ms, nodes"
            " FROM shots ORDER BY t_utc_ns").fetchall()
        return [ShotRow(*r[:9], nodes=tuple(json.loads(r[9]))) for r in rows]

    # ------------------------------------------------------------- nodes
    def update_node(self, hb: Heartbeat, received_ns: int) -> None:
        self.conn.execute(
            "INSERT INTO nodes (node_id, last_seen_ns, stream_utc_ns, lat, lon, alt, version, status)"
            " VALUES (?,?,?,?,?,?,?,?) ON CONFLICT (node_id) DO UPDATE SET last_seen_ns=excluded.last_seen_ns,"
            " stream_utc_ns=excluded.stream_utc_ns, lat=excluded.lat, lon=excluded.lon, alt=excluded.alt,"
            " version=excluded.version, status=excluded.status",
            (hb.node_id, received_ns, hb.stream_utc_ns, hb.lat, hb.lon, hb.alt, hb.version,
             json.dumps(dict(hb.status), sort_keys=True)),
        )

    def nodes(self) -> list[dict]:
        rows = self.conn.execute("SELECT node_id, last_seen_ns, stream_utc_ns, lat, lon, alt, version, status"
                                 " FROM nodes ORDER BY node_id").fetchall()
        keys = ("node_id", "last_seen_ns", "stream_utc_ns", "lat", "lon", "alt", "version", "status")
        return [dict(zip(keys, r[:7] + (json.loads(r[7]),))) for r in rows]
