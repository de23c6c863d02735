"""Tamper-evident, append-only record of what the server stored and decided.

An ``audit`` table in the server's SQLite database holds one row per fact::

    audit(id, kind, ref_table, ref_id, record_hash, prev_hash, chain_hash, t_utc_ns, detail)

* ``record_hash`` = SHA-256 (hex) of the referenced row's canonical encoding
  (:func:`canonical_row`), taken when the record is appended;
* ``chain_hash`` = SHA-256 (hex) of the canonical JSON array
  ``[id, prev_hash, record_hash, kind, ref_table, ref_id, t_utc_ns, detail]``;
* ``prev_hash`` = the previous row's ``chain_hash`` (:data:`GENESIS` for id 1).
  Ids are consecutive from 1.

:func:`verify` walks the chain and recomputes each referenced row's hash from the
live table, so it detects: a modified or deleted data row, a data row with no audit
record (with ``list_ids``), and modified, deleted, inserted or reordered audit rows.

What it cannot detect on its own: someone with write access to the database file
who rewrites the referenced rows AND recomputes the whole chain after them, or who
cuts off the newest records. Against that, publish the head (:meth:`AuditLog.head`,
``earwitness audit head``) somewhere the attacker cannot write (another machine, a
printed log, a timestamping service) and pass it back as an anchor to ``verify``.

Kinds: ``"insert"`` (a new row), ``"update"`` (a row legitimately changed: the new
record supersedes older ones for that row), ``"delete"`` (the row is meant to be
gone), ``"review"`` (an analyst's action, e.g. marking a shot false; ``detail``
holds who and why; the row is re-sealed in its reviewed state). :func:`verify`
checks each row against its LATEST record.

Transactions: :meth:`AuditLog.append` and :meth:`AuditLog.seal` never commit; they
run inside the caller's transaction so the data row and its audit record are
committed (or rolled back) together. One writer connection is assumed; a second
concurrent writer fails with SQLITE_BUSY rather than forking the chain (WAL). The
table has triggers refusing UPDATE and DELETE, which stops application bugs, not an
attacker (who can drop them; :func:`verify` still catches the change).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import sqlite3
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

GENESIS = "0" * 64
KINDS = ("insert", "update", "delete", "review")
#: Tables the default loader may read, and each one's key column: the tables
#: whose rows the server's store seals (server/store.py).
AUDITED_TABLES: Mapping[str, str] = {
    "events": "id", "shots": "id", "incidents": "id", "candidates": "id",
    "event_outcomes": "event_id",
}
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_MAX_EXACT_INT_FLOAT = 2.0**53
#: A str as a JSON string literal with ASCII escapes (the json module's own C encoder).
_json_str = json.encoder.encode_basestring_ascii

#: The audit table, its index and the append-only triggers, one statement each
#: (``executescript`` would commit the caller's open transaction).
SCHEMA: tuple[str, ...] = (
    "CREATE TABLE IF NOT EXISTS audit (id INTEGER PRIMARY KEY, kind TEXT NOT NULL,"
    " ref_table TEXT NOT NULL, ref_id INTEGER NOT NULL, record_hash TEXT NOT NULL,"
    " prev_hash TEXT NOT NULL, chain_hash TEXT NOT NULL, t_utc_ns INTEGER NOT NULL,"
    " detail TEXT NOT NULL DEFAULT '')",
    "CREATE INDEX IF NOT EXISTS audit_ref ON audit (ref_table, ref_id)",
    "CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit"
    " BEGIN SELECT RAISE(ABORT, 'the audit table is append-only'); END",
    "CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit"
    " BEGIN SELECT RAISE(ABORT, 'the audit table is append-only'); END",
)


class AuditError(ValueError):
    """A record that cannot be appended, or a table/row that cannot be read. The text says why."""


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of :func:`verify`.

    ``checked``: audit rows whose chain link was verified; ``rows_checked``: data
    rows whose hash was recomputed. On failure ``first_bad_audit_id`` is the audit
    row at fault (None for a data row with no audit record), ``ref_table``/``ref_id``
    the data row concerned (if any) and ``reason`` one line saying what is wrong.
    ``head_id``/``head_hash``: the last audit row and its chain hash (the value to
    publish as an anchor), as found in the database.
    """

    ok: bool
    checked: int
    first_bad_audit_id: int | None
    ref_table: str | None
    ref_id: int | None
    reason: str
    rows_checked: int = 0
    head_id: int = 0
    head_hash: str = GENESIS


# ------------------------------------------------------------ canonical form
def _typed(v: Any, column: str) -> str:
    """One value's canonical JSON text (see :func:`canonical_row`)."""
    t = type(v)
    if t is str:
        return '["s",' + _json_str(v) + "]"
    if t is int:
        return f'["i",{v}]'
    if t is bytes:
        return '["b","' + v.hex() + '"]'
    if t is float:
        # SQLite column affinity turns 2 into 2.0 (REAL) and 2.0 into 2 (INTEGER):
        # an exactly integral float is encoded as that integer so both hash alike.
        if v.is_integer() and abs(v) <= _MAX_EXACT_INT_FLOAT:     # (False for inf and nan)
            return f'["i",{int(v)}]'
        return '["f",' + _json_str(repr(v)) + "]"
    if v is None:
        return "null"
    return _typed(_plain(v, column), column)


def _plain(v: Any, column: str) -> int | float | str | bytes:
    """``v`` (a numpy scalar, a bool, a subclass or buffer of an allowed type) as
    the exact builtin type :func:`_typed` encodes."""
    if hasattr(v, "item") and type(v).__module__ == "numpy":   # numpy scalar
        v = v.item()
    for kind in (int, float, str):          # (bool is an int: True → 1)
        if isinstance(v, kind):
            return kind(v)
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v)
    raise AuditError(f"column {column}: cannot hash a value of type {type(v).__name__} "
                     "(allowed: None, int, float, str, bytes)")


def canonical_row(row: Mapping[str, Any]) -> bytes:
    """The bytes hashed for a row: UTF-8 JSON object, keys sorted, no spaces, ASCII
    escapes; each value a typed pair — ``["i", int]`` (also bools and integral
    floats), ``["f", repr(float)]``, ``["s", text]``, ``["b", hex]`` — or null.
    Typing keeps the text "ab" and the bytes b"\\xab" apart. (Exactly what
    ``json.dumps(..., sort_keys=True, separators=(",", ":"), ensure_ascii=True)``
    gives for those pairs — tests/test_audit.py checks — written out directly
    because it is hashed for every stored event.)"""
    if not isinstance(row, Mapping):
        raise AuditError(f"row must be a mapping of column name to value, got {type(row).__name__}")
    for k in row:
        if not isinstance(k, str):
            raise AuditError(f"row column names must be strings, got {k!r}")
    parts = [_json_str(k) + ":" + _typed(row[k], k) for k in sorted(row)]
    return ("{" + ",".join(parts) + "}").encode("ascii")


def row_hasher(columns: Sequence[str]) -> Callable[[Sequence[Any]], str]:
    """A function giving, for a tuple of values in the order of ``columns``, the
    same hash as :func:`row_hash` of the mapping ``dict(zip(columns, values))`` —
    without building and sorting that mapping (the store hashes every event)."""
    cols = tuple(columns)
    if len(set(cols)) != len(cols) or not all(isinstance(c, str) for c in cols):
        raise AuditError(f"columns must be distinct strings, got {cols!r}")
    order = sorted(range(len(cols)), key=cols.__getitem__)
    plan = [(("{" if j == 0 else ",") + _json_str(cols[i]) + ":", i, cols[i]) for j, i in enumerate(order)]
    sha = hashlib.sha256

    def h(values: Sequence[Any]) -> str:
        if len(values) != len(cols):
            raise AuditError(f"expected {len(cols)} values ({', '.join(cols)}), got {len(values)}")
        if not plan:
            return sha(b"{}").hexdigest()
        text = "".join([p + _typed(values[i], c) for p, i, c in plan]) + "}"
        return sha(text.encode("ascii")).hexdigest()

    return h


def row_hash(row: Mapping[str, Any]) -> str:
    """SHA-256 hex of :func:`canonical_row`."""
    return hashlib.sha256(canonical_row(row)).hexdigest()


def _chain_hash(audit_id: int, prev_hash: str, record_hash: str, kind: str, ref_table: str,
                ref_id: int, t_utc_ns: int, detail: str) -> str:
    # = json.dumps([audit_id, prev_hash, ...], separators=(",", ":"), ensure_ascii=True)
    # (tests/test_audit.py checks), written out: it runs for every stored event
    data = (f"[{int(audit_id)},{_json_str(prev_hash)},{_json_str(record_hash)},{_json_str(kind)},"
            f"{_json_str(ref_table)},{int(ref_id)},{int(t_utc_ns)},{_json_str(detail)}]")
    return hashlib.sha256(data.encode("ascii")).hexdigest()


def _detail_text(detail: Mapping[str, Any] | None) -> str:
    if detail is None:
        return ""
    if not isinstance(detail, Mapping):
        raise AuditError("detail must be a mapping, e.g. {'user': 'alice', 'note': '...'}")
    for k, v in detail.items():
        if not isinstance(k, str) or not (v is None or isinstance(v, (str, int, float, bool))):
            raise AuditError(f"detail[{k!r}]: keys must be strings and values scalars")
        if isinstance(v, float) and not math.isfinite(v):
            raise AuditError(f"detail[{k!r}]: must be finite")
    return json.dumps(dict(detail), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


# ------------------------------------------------------------ loaders
def _check_table(table: str, tables: Mapping[str, str]) -> str:
    if table not in tables:
        raise AuditError(f"table {table!r} is not audited (known: {', '.join(tables)})")
    return tables[table]


def load_row_sqlite(conn: sqlite3.Connection, tables: Mapping[str, str] = AUDITED_TABLES
                    ) -> Callable[[str, int], dict[str, Any] | None]:
    """A ``load_row(table, key)`` for :func:`verify` that SELECTs * by key from one of
    the whitelisted ``tables`` (name → key column); None if the row (or the table)
    does not exist. Any other table name raises AuditError."""
    for t, col in tables.items():
        if not _NAME_RE.match(t) or not _NAME_RE.match(col):
            raise AuditError(f"bad table or column name {t!r}/{col!r}")

    def load(table: str, key: int) -> dict[str, Any] | None:
        col = _check_table(table, tables)
        try:
            cur = conn.execute(f'SELECT * FROM "{table}" WHERE "{col}" = ?', (key,))
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return None
            raise
        r = cur.fetchone()
        if r is None:
            return None
        return dict(zip((d[0] for d in cur.description), r))

    return load


def list_ids_sqlite(conn: sqlite3.Connection, tables: Mapping[str, str] = AUDITED_TABLES
                    ) -> Callable[[str], Iterator[int]]:
    """A ``list_ids(table)`` for :func:`verify`: every key in a whitelisted table
    (nothing if the table does not exist)."""
    def ids(table: str) -> Iterator[int]:
        col = _check_table(table, tables)
        try:
            cur = conn.execute(f'SELECT "{col}" FROM "{table}" ORDER BY "{col}"')
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return iter(())
            raise
        return (r[0] for r in cur)

    return ids


# ------------------------------------------------------------ the log
class AuditLog:
    """Appends audit records through ``conn`` (creates the table and triggers if
    missing; that DDL joins the caller's transaction if one is open)."""

    def __init__(self, conn: sqlite3.Connection, tables: Mapping[str, str] = AUDITED_TABLES) -> None:
        self.conn = conn
        self._tables = tables
        self._hashers: dict[tuple[str, ...], Callable[[Sequence[Any]], str]] = {}
        for stmt in SCHEMA:
            conn.execute(stmt)

    def head(self) -> tuple[int, str]:
        """(id, chain_hash) of the last record; (0, GENESIS) when empty. Publish it."""
        r = self.conn.execute("SELECT id, chain_hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
        return (0, GENESIS) if r is None else (int(r[0]), str(r[1]))

    def append(self, kind: str, ref_table: str, ref_id: int, row: Mapping[str, Any], *,
               detail: Mapping[str, Any] | None = None, t_utc_ns: int | None = None) -> str:
        """Append a record for ``row`` (the row AS STORED: prefer :meth:`seal`, which
        reads it back, so column affinities match what :func:`verify` will read).
        Returns the new chain hash. Does not commit."""
        if kind not in KINDS:
            raise AuditError(f"kind {kind!r} is not one of {', '.join(KINDS)}")
        if not isinstance(ref_table, str) or not _NAME_RE.match(ref_table):
            raise AuditError(f"bad ref_table {ref_table!r}: a table name")
        if not isinstance(ref_id, int) or isinstance(ref_id, bool):
            raise AuditError(f"ref_id must be an integer row key, got {ref_id!r}")
        record = row_hash(row)
        detail_text = _detail_text(detail)
        t = time.time_ns() if t_utc_ns is None else int(t_utc_ns)
        head_id, head_hash = self.head()
        new_id = head_id + 1
        chain = _chain_hash(new_id, head_hash, record, kind, ref_table, ref_id, t, detail_text)
        self.conn.execute(
            "INSERT INTO audit (id, kind, ref_table, ref_id, record_hash, prev_hash, chain_hash,"
            " t_utc_ns, detail) VALUES (?,?,?,?,?,?,?,?,?)",
            (new_id, kind, ref_table, ref_id, record, head_hash, chain, t, detail_text))
        return chain

    def append_many(self, kind: str, ref_table: str, records: Sequence[tuple[int, Any, int]], *,
                    columns: Sequence[str] | None = None) -> str | None:
        """:meth:`append` for many rows of one table at once (the same records, in
        order, as that many ``append`` calls; the chain head is read once and the
        records inserted together). ``records``: ``(ref_id, row, t_utc_ns)`` each,
        ``row`` a mapping — or, with ``columns``, a tuple of values in that order.
        Returns the last chain hash (None if ``records`` is empty). Does not commit."""
        if kind not in KINDS:
            raise AuditError(f"kind {kind!r} is not one of {', '.join(KINDS)}")
        if not isinstance(ref_table, str) or not _NAME_RE.match(ref_table):
            raise AuditError(f"bad ref_table {ref_table!r}: a table name")
        if not records:
            return None
        hasher = row_hash
        if columns is not None:
            cols = tuple(columns)
            hasher = self._hashers.get(cols)
            if hasher is None:
                hasher = self._hashers[cols] = row_hasher(cols)
        head_id, head_hash = self.head()
        out = []
        for ref_id, row, t in records:
            if not isinstance(ref_id, int) or isinstance(ref_id, bool):
                raise AuditError(f"ref_id must be an integer row key, got {ref_id!r}")
            record = hasher(row)
            head_id += 1
            chain = _chain_hash(head_id, head_hash, record, kind, ref_table, ref_id, int(t), "")
            out.append((head_id, kind, ref_table, ref_id, record, head_hash, chain, int(t), ""))
            head_hash = chain
        self.conn.executemany(
            "INSERT INTO audit (id, kind, ref_table, ref_id, record_hash, prev_hash, chain_hash,"
            " t_utc_ns, detail) VALUES (?,?,?,?,?,?,?,?,?)", out)
        return head_hash

    def seal(self, kind: str, ref_table: str, ref_id: int, *,
             detail: Mapping[str, Any] | None = None, t_utc_ns: int | None = None) -> str:
        """Read row ``ref_id`` of ``ref_table`` back through this connection and
        append a record for it (for ``kind="delete"`` the row must be gone and an
        empty row is recorded). Does not commit."""
        row = load_row_sqlite(self.conn, self._tables)(ref_table, ref_id)
        if kind == "delete":
            if row is not None:
                raise AuditError(f"{ref_table} row {ref_id} still exists: delete it before sealing")
            row = {}
        elif row is None:
            raise AuditError(f"{ref_table} row {ref_id} does not exist: insert it before sealing")
        return self.append(kind, ref_table, ref_id, row, detail=detail, t_utc_ns=t_utc_ns)


# ------------------------------------------------------------ verification
def verify(conn: sqlite3.Connection, load_row: Callable[[str, int], Mapping[str, Any] | None], *,
           anchors: Iterable[tuple[int, str]] = (),
           list_ids: Callable[[str], Iterable[int]] | None = None,
           tables: Iterable[str] = tuple(AUDITED_TABLES)) -> VerifyResult:
    """Check the whole chain, then every referenced row against its latest record.

    ``anchors``: published ``(audit_id, chain_hash)`` pairs that must still be in the
    chain (catches a rewritten or truncated chain). ``list_ids``: if given, every
    row of each of ``tables`` must have an audit record (catches rows inserted
    behind the server's back). Stops at the first problem.
    """
    try:
        rows = conn.execute(
            "SELECT id, kind, ref_table, ref_id, record_hash, prev_hash, chain_hash, t_utc_ns, detail"
            " FROM audit ORDER BY id").fetchall()
    except sqlite3.OperationalError as exc:
        return VerifyResult(False, 0, None, None, None,
                            f"cannot read the audit table ({exc}): not an Earwitness server "
                            "database, or the table was removed")

    def fail(n: int, aid: int | None, table: str | None, ref: int | None, why: str,
             rows_checked: int = 0) -> VerifyResult:
        return VerifyResult(False, n, aid, table, ref, why, rows_checked, head_id, head_hash)

    head_id, head_hash = (0, GENESIS) if not rows else (rows[-1][0], rows[-1][6])
    prev_id, prev_hash = 0, GENESIS
    latest: dict[tuple[str, int], tuple[int, str, str]] = {}
    chain_at: dict[int, str] = {}
    for n, r in enumerate(rows):
        aid, kind, table, ref, record, prev, chain, t, detail = r
        if not (isinstance(aid, int) and isinstance(ref, int) and isinstance(t, int)
                and all(isinstance(x, str) for x in (kind, table, record, prev, chain, detail))):
            return fail(n, aid, None, None, f"audit row {aid} has fields of the wrong type")
        if aid != prev_id + 1:
            why = ("the audit chain does not start at id 1: its first records were removed"
                   if prev_id == 0 else
                   f"audit ids jump from {prev_id} to {aid}: record(s) removed")
            return fail(n, aid, table, ref, why)
        if prev != prev_hash:
            return fail(n, aid, table, ref,
                        f"audit row {aid}'s prev_hash does not match row {prev_id}'s chain hash: "
                        "records removed, inserted or reordered")
        if _chain_hash(aid, prev, record, kind, table, ref, t, detail) != chain:
            return fail(n, aid, table, ref, f"audit row {aid} was modified (its chain hash does not match)")
        prev_id, prev_hash = aid, chain
        chain_at[aid] = chain
        latest[(table, ref)] = (aid, record, kind)
    checked = len(rows)

    for aid, want in anchors:
        if aid not in chain_at:
            return fail(checked, aid, None, None,
                        f"anchor {aid} is beyond the last audit record {head_id}: records were cut off")
        if chain_at[aid] != want:
            return fail(checked, aid, None, None,
                        f"audit row {aid} differs from its published anchor: the chain was rewritten")

    rows_checked = 0
    for (table, ref), (aid, record, kind) in sorted(latest.items(), key=lambda kv: kv[1][0]):
        try:
            live = load_row(table, ref)
            live_hash = None if live is None else row_hash(live)
        except (AuditError, sqlite3.Error) as exc:
            return fail(checked, aid, table, ref, f"cannot check {table} row {ref}: {exc}", rows_checked)
        rows_checked += 1
        if kind == "delete":
            if live is not None:
                return fail(checked, aid, table, ref,
                            f"{table} row {ref} is back although audit row {aid} records its deletion",
                            rows_checked)
        elif live is None:
            return fail(checked, aid, table, ref,
                        f"{table} row {ref} is missing (deleted after audit row {aid})", rows_checked)
        elif live_hash != record:
            return fail(checked, aid, table, ref,
                        f"{table} row {ref} was modified after audit row {aid} sealed it", rows_checked)

    if list_ids is not None:
        for table in tables:
            try:
                ids = list(list_ids(table))
            except (AuditError, sqlite3.Error) as exc:
                return fail(checked, None, table, None, f"cannot list {table}: {exc}", rows_checked)
            for ref in ids:
                if (table, ref) not in latest:
                    return fail(checked, None, table, ref,
                                f"{table} row {ref} has no audit record (added behind the server's back)",
                                rows_checked)

    return VerifyResult(True, checked, None, None, None,
                        f"ok: {checked} audit records, {rows_checked} rows match", rows_checked,
                        head_id, head_hash)


# --------------------------------------------------------------------- CLI
def _anchor(text: str) -> tuple[int, str]:
    m = re.match(r"^(\d+):([0-9a-f]{64})$", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not ID:HASH (as printed by `earwitness audit head`)")
    return int(m.group(1)), m.group(2)


def _open_ro(path: str) -> sqlite3.Connection:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"database {p} does not exist")
    return sqlite3.connect(p.resolve().as_uri() + "?mode=ro", uri=True)


def main(argv: Sequence[str] | None = None) -> int:
    """``earwitness audit verify|head --db PATH``: 0 = intact, 1 = broken, 2 = cannot check."""
    p = argparse.ArgumentParser(prog="earwitness audit",
                                description="Check the server database's tamper-evident record.")
    sub = p.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("verify", help="walk the hash chain and re-hash every audited row")
    sp.add_argument("--db", required=True, help="the server's SQLite database")
    sp.add_argument("--anchor", type=_anchor, action="append", default=[], metavar="ID:HASH",
                    help="a head published earlier (`earwitness audit head`); repeatable")
    sp.add_argument("--allow-unaudited", action="store_true",
                    help="do not fail on data rows that have no audit record")
    sp = sub.add_parser("head", help="print ID:HASH of the last record, to publish elsewhere")
    sp.add_argument("--db", required=True, help="the server's SQLite database")
    try:
        args = p.parse_args(list(argv) if argv is not None else None)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        conn = _open_ro(args.db)
    except (OSError, sqlite3.Error) as exc:
        print(f"earwitness audit {args.cmd}: cannot open {args.db}: {exc}", file=sys.stderr)
        return 2
    try:
        if args.cmd == "head":
            try:
                r = conn.execute("SELECT id, chain_hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
            except sqlite3.Error as exc:
                print(f"earwitness audit head: {args.db}: {exc}", file=sys.stderr)
                return 2
            hid, hh = (0, GENESIS) if r is None else r
            print(f"{hid}:{hh}")
            return 0
        res = verify(conn, load_row_sqlite(conn), anchors=args.anchor,
                     list_ids=None if args.allow_unaudited else list_ids_sqlite(conn))
    except sqlite3.Error as exc:
        print(f"earwitness audit verify: {args.db}: {exc}", file=sys.stderr)
        return 2
    finally:
        conn.close()
    if res.ok:
        print(f"OK {args.db}: {res.reason}; head {res.head_id}:{res.head_hash}")
        return 0
    where = f" (audit id {res.first_bad_audit_id})" if res.first_bad_audit_id is not None else ""
    print(f"BROKEN {args.db}{where}: {res.reason}")
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
