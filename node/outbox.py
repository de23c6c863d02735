"""The node's bounded, persistent outbox: at-least-once delivery to the server.

Every event the node reports gets a sequence number from :meth:`Outbox.next_seq`
(node/pipeline.py), is stored with :meth:`Outbox.put` *before* it is sent, is
(re)sent from :meth:`Outbox.due` until the server acknowledges it, and is removed by
:meth:`Outbox.ack` (node/publisher.py). ZeroMQ silently loses what was in flight
when a peer dies (see FIELD-NOTES); the outbox is what makes that loss temporary.
The server deduplicates on ``(node_id, seq)``. Heartbeats never come here: the
publisher sends them directly, numbered by the pipeline's own heartbeat counter
(a stale heartbeat is worth nothing, the next one supersedes it).

Storage: one SQLite file in WAL mode with ``synchronous=FULL``. Why FULL and not
NORMAL: in WAL mode NORMAL does not fsync at commit, so after a power cut the last
transactions before it may be rolled back (the file stays consistent). For the
outbox that would mean (a) an event that ``put`` reported stored is gone — and it
may be the only copy of a gunshot — and (b) the sequence counter moves back, so the
node would reuse numbers the server has already seen and deduplicated, and drop new
events as duplicates. Events are rare (a few per second at worst), so an fsync per
``put``/``next_seq``/``ack`` is cheap. The "last sent" marks written by ``due`` are
not worth an fsync (losing them only causes a resend), so that commit runs with
``synchronous=NORMAL``; they are cleared anyway when the outbox is reopened, since
they refer to the previous process's monotonic clock.

The file is opened with ``locking_mode=EXCLUSIVE``: a second process cannot open the
same outbox (it would reuse sequence numbers and break the item count).

Bound: at most ``max_items`` items. When full, ``put`` first drops the oldest
low-value item (priority 0); a low-value item arriving when only events are
stored is itself dropped; otherwise the oldest item overall goes. Drops are
counted (``stats()``) for the heartbeat to report. The node stores only events
(priority 1) today, so when full it drops the oldest event; the low-value tier is
there for a kind of message worth less than any event (none exists yet) and is
covered by the outbox's own tests.

A full disk (SQLITE_FULL) raises :class:`OutboxFullError`; the transaction is rolled
back, nothing already stored is lost or corrupted, and the outbox keeps working
(acks free space). ``max_bytes`` caps the database file, so the outbox cannot
fill the SD card by itself; hitting it behaves exactly like a full disk.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from typing import Iterable

import msgpack

from common.protocol import MAX_SEQ

PRIORITY_LOW = 0
PRIORITY_EVENT = 1
_SQLITE_FULL = 13
_SCHEMA_VERSION = 1


class OutboxError(RuntimeError):
    """The outbox cannot be used (in use, corrupt, unreadable). The text says what to do."""


class OutboxFullError(OutboxError):
    """The disk (or ``max_bytes``) is full: the item was NOT stored; stored items are intact."""


def _is_full(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code == _SQLITE_FULL or "database or disk is full" in str(exc)


class Outbox:
    """Bounded persistent outbox (see the module docstring for guarantees).

    ``path``: the SQLite file (its directory must exist), or None for an in-memory
    outbox (tests, simulation: nothing survives the process). ``max_items``: the
    bound. ``max_bytes``: optional cap on the database size. ``first_seq``: the
    first number :meth:`next_seq` returns for a NEW outbox; the default is 1 in
    memory and the current UTC time in microseconds for a file, so that a node whose
    outbox file was lost (new SD card) still never reuses a sequence number the
    server has seen (assuming its clock did not go back and it made fewer than a
    million numbers per second). Ignored when the file already exists.

    Thread-safe (one lock around the connection). Not for several processes.
    """

    def __init__(self, path: str | None, max_items: int = 100_000, *,
                 max_bytes: int | None = None, first_seq: int | None = None) -> None:
        if not isinstance(max_items, int) or isinstance(max_items, bool) or max_items < 1:
            raise ValueError(f"max_items must be an integer ≥ 1, got {max_items!r}")
        if max_bytes is not None and (not isinstance(max_bytes, int) or max_bytes < 64 * 1024):
            raise ValueError(f"max_bytes must be at least 65536, got {max_bytes!r}")
        self._path = path
        self._max_items = max_items
        self._lock = threading.Lock()
        where = path if path is not None else ":memory:"
        if path is not None and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise OutboxError(f"outbox directory {os.path.dirname(os.path.abspath(path))} "
                              "does not exist; create it or fix publisher outbox path")
        try:
            self._conn = sqlite3.connect(where, isolation_level=None, check_same_thread=False,
                                         timeout=0.5)
            c = self._conn
            if path is not None:
                c.execute("PRAGMA locking_mode=EXCLUSIVE")
                mode = c.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if mode.lower() != "wal":
                    raise OutboxError(f"outbox {path}: cannot use WAL journal (got {mode})")
            c.execute("PRAGMA synchronous=FULL")
            # No integrity scan at start (it would read the whole file: seconds on an SD
            # card with a large backlog); damage surfaces as OutboxError when touched.
            c.execute("BEGIN IMMEDIATE")
            c.execute("CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
            c.execute("CREATE TABLE IF NOT EXISTS items(seq INTEGER PRIMARY KEY, "
                      "priority INTEGER NOT NULL, frames BLOB NOT NULL, "
                      "created_utc_s REAL NOT NULL, sent_s REAL, attempts INTEGER NOT NULL DEFAULT 0)")
            c.execute("CREATE INDEX IF NOT EXISTS items_priority ON items(priority, seq)")
            if first_seq is None:
                first_seq = 1 if path is None else time.time_ns() // 1000
            if not (isinstance(first_seq, int) and 0 <= first_seq <= MAX_SEQ):
                raise ValueError(f"first_seq must be an integer in 0..{MAX_SEQ}")
            for key, value in (("schema_version", _SCHEMA_VERSION), ("next_seq", first_seq),
                               ("dropped_total", 0), ("dropped_low_value", 0)):
                c.execute("INSERT OR IGNORE INTO meta(key, value) VALUES (?, ?)", (key, value))
            # "last sent" times belong to the previous process's clock: resend all now.
            c.execute("UPDATE items SET sent_s = NULL WHERE sent_s IS NOT NULL")
            c.execute("COMMIT")
            if max_bytes is not None:
                page = c.execute("PRAGMA page_size").fetchone()[0]
                c.execute(f"PRAGMA max_page_count={max(1, max_bytes // page)}")
            self._count = c.execute("SELECT COUNT(*) FROM items").fetchone()[0]
        except sqlite3.OperationalError as exc:
            self._close_quietly()
            if "locked" in str(exc):
                raise OutboxError(f"outbox {path} is in use by another process "
                                  "(only one node process may use it)") from None
            if _is_full(exc):
                raise OutboxFullError(f"outbox {where}: disk full while opening; free space") from None
            raise OutboxError(f"cannot open outbox {where}: {exc}") from None
        except sqlite3.DatabaseError as exc:
            self._close_quietly()
            raise OutboxError(f"outbox {where} is not a readable SQLite database ({exc}); "
                              "move it aside, the node will start a new one") from None
        except BaseException:
            self._close_quietly()
            raise

    # ------------------------------------------------------------ helpers
    def _close_quietly(self) -> None:
        conn = getattr(self, "_conn", None)
        if conn is not None:
            try:
                conn.close()
            except sqlite3.Error:
                pass

    def _meta(self, key: str) -> int:
        return self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0]

    def _rollback(self) -> None:
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")

    def _full(self, what: str) -> OutboxFullError:
        return OutboxFullError(
            f"outbox {self._path or ':memory:'}: disk full ({what} was NOT done); the "
            f"{self._count} stored item(s) are intact. Free space on the node's disk"
            + (" or raise max_bytes" if self._path else ""))

    # ------------------------------------------------------------ API
    def next_seq(self) -> int:
        """A new sequence number: strictly increasing, persisted before it is returned,
        never reused, also across restarts and power cuts. Raises OutboxFullError."""
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                seq = self._meta("next_seq")
                if seq > MAX_SEQ:
                    raise OutboxError("sequence numbers exhausted (2**63): start a new outbox")
                self._conn.execute("UPDATE meta SET value = ? WHERE key = 'next_seq'", (seq + 1,))
                self._conn.execute("COMMIT")
                return seq
            except sqlite3.Error as exc:
                self._rollback()
                if _is_full(exc):
                    raise self._full("next_seq") from None
                raise OutboxError(f"outbox next_seq failed: {exc}") from None
            except BaseException:
                self._rollback()
                raise

    def put(self, seq: int, frames: list[bytes], priority: int = PRIORITY_EVENT) -> None:
        """Store a message (its encoded frames) durably before it is first sent.

        ``priority``: 1 = event (all the node stores today), 0 = low value, dropped
        before any event (no such message yet). Applies the drop policy when
        ``max_items`` is reached. Raises ValueError for a bad
        argument or a ``seq`` already stored, OutboxFullError if the disk is full
        (nothing changed then).
        """
        if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq <= MAX_SEQ:
            raise ValueError(f"seq must be an integer in 0..{MAX_SEQ}, got {seq!r}")
        if priority not in (PRIORITY_LOW, PRIORITY_EVENT) or isinstance(priority, bool):
            raise ValueError(f"priority must be 0 (low value) or 1 (event), got {priority!r}")
        if not isinstance(frames, (list, tuple)) or not frames or not all(
                isinstance(f, (bytes, bytearray, memoryview)) for f in frames):
            raise ValueError("frames must be a non-empty list of bytes (protocol.encode output)")
        blob = msgpack.packb([bytes(f) for f in frames], use_bin_type=True)
        with self._lock:
            c = self._conn
            try:
                c.execute("BEGIN IMMEDIATE")
                if c.execute("SELECT 1 FROM items WHERE seq = ?", (seq,)).fetchone():
                    raise ValueError(f"seq {seq} is already in the outbox; use next_seq()")
                delta = 0
                if self._count >= self._max_items:
                    victim = c.execute("SELECT seq FROM items WHERE priority = 0 "
                                       "ORDER BY seq LIMIT 1").fetchone()
                    if victim is None and priority == PRIORITY_LOW:
                        # Only events are stored: the new low-value item is what goes.
                        c.execute("UPDATE meta SET value = value + 1 "
                                  "WHERE key IN ('dropped_total', 'dropped_low_value')")
                        c.execute("COMMIT")
                        return
                    low = victim is not None
                    if victim is None:
                        victim = c.execute("SELECT seq FROM items ORDER BY seq LIMIT 1").fetchone()
                    c.execute("DELETE FROM items WHERE seq = ?", victim)
                    c.execute("UPDATE meta SET value = value + 1 WHERE key = 'dropped_total'")
                    if low:
                        c.execute("UPDATE meta SET value = value + 1 WHERE key = 'dropped_low_value'")
                    delta = -1
                c.execute("INSERT INTO items(seq, priority, frames, created_utc_s) VALUES (?, ?, ?, ?)",
                          (seq, priority, blob, time.time()))
                c.execute("COMMIT")
                self._count += delta + 1
            except sqlite3.Error as exc:
                self._rollback()
                if _is_full(exc):
                    raise self._full(f"put seq={seq}") from None
                raise OutboxError(f"outbox put failed: {exc}") from None
            except BaseException:
                self._rollback()
                raise

    def due(self, now_s: float, resend_s: float, limit: int) -> list[tuple[int, list[bytes]]]:
        """Up to ``limit`` items, lowest seq first, never sent or last sent at least
        ``resend_s`` before ``now_s``; marks them sent at ``now_s``.

        ``now_s`` must come from one monotonic clock (``time.monotonic()``) for the
        life of this object. If the marks cannot be written (disk full) the items are
        still returned, unmarked.
        """
        if limit <= 0:
            return []
        with self._lock:
            c = self._conn
            rows = c.execute(
                "SELECT seq, frames FROM items WHERE sent_s IS NULL OR sent_s <= ? "
                "ORDER BY seq LIMIT ?", (now_s - resend_s, int(limit))).fetchall()
            if not rows:
                return []
            try:
                c.execute("PRAGMA synchronous=NORMAL")
                c.execute("BEGIN IMMEDIATE")
                c.executemany("UPDATE items SET sent_s = ?, attempts = attempts + 1 WHERE seq = ?",
                              [(now_s, r[0]) for r in rows])
                c.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                if not _is_full(exc):
                    raise OutboxError(f"outbox due failed: {exc}") from None
            finally:
                c.execute("PRAGMA synchronous=FULL")
            return [(seq, list(msgpack.unpackb(blob, raw=False))) for seq, blob in rows]

    def ack(self, seqs: Iterable[int]) -> int:
        """Remove acknowledged items; returns how many were present (acks of unknown
        or already-acked seqs are ignored). Raises OutboxFullError if the disk is so
        full that even the deletion cannot be logged (nothing removed then)."""
        todo = []
        for s in seqs:
            if not isinstance(s, int) or isinstance(s, bool):
                raise ValueError(f"ack seqs must be integers, got {s!r}")
            todo.append((s,))
        if not todo:
            return 0
        with self._lock:
            c = self._conn
            try:
                c.execute("BEGIN IMMEDIATE")
                cur = c.executemany("DELETE FROM items WHERE seq = ?", todo)
                n = cur.rowcount
                c.execute("COMMIT")
                self._count -= n
                return n
            except sqlite3.Error as exc:
                self._rollback()
                if _is_full(exc):
                    raise self._full("ack") from None
                raise OutboxError(f"outbox ack failed: {exc}") from None

    def __len__(self) -> int:
        return self._count

    def stats(self) -> dict[str, int | float]:
        """``pending``, ``pending_events``, ``dropped_total``, ``dropped_low_value``
        (both since the outbox was created), ``oldest_age_s`` (wall-clock age of the
        oldest pending item, 0.0 if none), ``max_items``."""
        with self._lock:
            c = self._conn
            oldest, events = c.execute(
                "SELECT MIN(created_utc_s), COALESCE(SUM(priority = 1), 0) FROM items").fetchone()
            return {
                "pending": self._count,
                "pending_events": int(events),
                "dropped_total": self._meta("dropped_total"),
                "dropped_low_value": self._meta("dropped_low_value"),
                "oldest_age_s": max(0.0, time.time() - oldest) if oldest is not None else 0.0,
                "max_items": self._max_items,
            }

    def close(self) -> None:
        """Close the database (idempotent). Everything already returned is on disk."""
        with self._lock:
            self._close_quietly()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
