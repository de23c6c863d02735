"""node/outbox.py: persistence, sequence numbers, bound and drop policy, acks,
full disk, and a process killed with SIGKILL in the middle of writing."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from node.outbox import Outbox, OutboxError, OutboxFullError

ROOT = Path(__file__).resolve().parents[1]


def frames(i: int, size: int = 16) -> list[bytes]:
    return [b"hdr%d" % i, bytes([i % 256]) * size]


def test_in_memory_basics():
    ob = Outbox(None)
    s1, s2 = ob.next_seq(), ob.next_seq()
    assert (s1, s2) == (1, 2)
    ob.put(s1, frames(1))
    ob.put(s2, frames(2), priority=0)
    assert len(ob) == 2
    assert ob.due(100.0, 2.0, 10) == [(1, frames(1)), (2, frames(2))]
    assert ob.due(101.0, 2.0, 10) == []                  # sent 1 s ago
    assert [s for s, _ in ob.due(102.0, 2.0, 10)] == [1, 2]
    assert ob.ack([1, 99]) == 1
    assert ob.ack([1]) == 0                               # idempotent
    assert ob.ack([]) == 0
    assert len(ob) == 1 and ob.stats()["pending"] == 1 and ob.stats()["pending_events"] == 0


def test_due_limit_and_order():
    ob = Outbox(None)
    for _ in range(5):
        ob.put(ob.next_seq(), frames(0))
    assert [s for s, _ in ob.due(0.0, 1.0, 2)] == [1, 2]
    assert [s for s, _ in ob.due(0.0, 1.0, 10)] == [3, 4, 5]
    assert ob.due(0.5, 1.0, 10) == []
    assert [s for s, _ in ob.due(1.0, 1.0, 10)] == [1, 2, 3, 4, 5]
    assert ob.due(5.0, 1.0, 0) == []


@pytest.mark.parametrize("args, match", [
    ((-1, [b"x"]), "seq"), ((True, [b"x"]), "seq"), ((1, []), "frames"),
    ((1, ["text"]), "frames"), ((1, [b"x"], 2), "priority"),
])
def test_put_rejects_bad_arguments(args, match):
    ob = Outbox(None)
    with pytest.raises(ValueError, match=match):
        ob.put(*args)
    assert len(ob) == 0


def test_put_same_seq_twice_is_an_error_and_keeps_the_first():
    ob = Outbox(None)
    ob.put(7, frames(1))
    with pytest.raises(ValueError, match="already in the outbox"):
        ob.put(7, frames(2))
    assert ob.due(0, 1, 10) == [(7, frames(1))]


def test_restart_persistence_and_seq_monotonic(tmp_path):
    p = str(tmp_path / "outbox.sqlite")
    ob = Outbox(p)
    seqs = [ob.next_seq() for _ in range(3)]
    assert seqs == sorted(set(seqs))
    for s in seqs:
        ob.put(s, frames(s % 256))
    ob.due(1e6, 1.0, 10)                 # marked as sent in this process's clock
    ob.ack([seqs[0]])
    burned = ob.next_seq()               # taken but never put: must not come back
    ob.close()

    ob = Outbox(p)
    assert len(ob) == 2
    # sent marks are from the old process's clock: everything is due again at once
    assert ob.due(0.0, 2.0, 10) == [(seqs[1], frames(seqs[1] % 256)), (seqs[2], frames(seqs[2] % 256))]
    nxt = ob.next_seq()
    assert nxt > burned > seqs[-1]
    ob.close()


def test_new_file_outbox_starts_seq_at_wall_clock_microseconds(tmp_path):
    import time
    before = time.time_ns() // 1000
    ob = Outbox(str(tmp_path / "o.sqlite"))
    assert before <= ob.next_seq() <= time.time_ns() // 1000 + 1
    ob.close()
    ob = Outbox(str(tmp_path / "p.sqlite"), first_seq=10)
    assert ob.next_seq() == 10


def test_second_process_cannot_open_the_same_outbox(tmp_path):
    p = str(tmp_path / "o.sqlite")
    ob = Outbox(p)
    ob.put(ob.next_seq(), frames(1))
    code = f"from node.outbox import Outbox; Outbox({p!r})"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=30)
    assert r.returncode != 0 and "in use by another process" in r.stderr
    ob.close()


def test_bound_drops_oldest_low_value_first_then_oldest():
    ob = Outbox(None, max_items=4)
    ob.put(1, frames(1), 1)
    ob.put(2, frames(2), 0)
    ob.put(3, frames(3), 1)
    ob.put(4, frames(4), 0)
    ob.put(5, frames(5), 1)              # full: oldest low (2) goes
    assert [s for s, _ in ob.due(0, 1, 10)] == [1, 3, 4, 5]
    ob.put(6, frames(6), 1)              # oldest low (4) goes
    assert [s for s, _ in ob.due(9, 1, 10)] == [1, 3, 5, 6]
    ob.put(7, frames(7), 0)              # only events stored: the new low item goes
    ob.put(8, frames(8), 1)              # only events: oldest overall (1) goes
    assert [s for s, _ in ob.due(99, 1, 10)] == [3, 5, 6, 8]
    st = ob.stats()
    assert st["dropped_total"] == 4 and st["dropped_low_value"] == 3
    assert st["pending"] == len(ob) == 4 and st["max_items"] == 4


def test_drop_counters_survive_restart(tmp_path):
    p = str(tmp_path / "o.sqlite")
    ob = Outbox(p, max_items=2)
    for i in range(5):
        ob.put(ob.next_seq(), frames(i), i % 2)
    assert ob.stats()["dropped_total"] == 3
    ob.close()
    ob = Outbox(p, max_items=2)
    assert ob.stats()["dropped_total"] == 3 and len(ob) == 2
    ob.close()


def test_stats_oldest_age():
    ob = Outbox(None)
    assert ob.stats()["oldest_age_s"] == 0.0
    ob.put(1, frames(1))
    age = ob.stats()["oldest_age_s"]
    assert 0.0 <= age < 5.0


def test_full_disk_raises_and_keeps_stored_items(tmp_path):
    """SQLite's max_page_count (via max_bytes) gives the same SQLITE_FULL error as a
    full file system."""
    p = str(tmp_path / "o.sqlite")
    ob = Outbox(p, max_bytes=96 * 1024)
    stored = {}
    with pytest.raises(OutboxFullError, match="disk full.*NOT done.*intact"):
        for i in range(10_000):
            s = ob.next_seq()
            fr = frames(i, size=3000)
            ob.put(s, fr)
            stored[s] = fr
    assert 5 < len(stored) < 10_000
    assert len(ob) == len(stored)
    # the failed put changed nothing; everything stored is readable and the file is sound
    assert dict(ob.due(0, 1, 10_000)) == stored
    # freeing space (acks) makes room again
    first = sorted(stored)[:5]
    assert ob.ack(first) == 5
    s = ob.next_seq()
    ob.put(s, frames(1, size=3000))
    ob.close()
    con = sqlite3.connect(p)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert con.execute("SELECT COUNT(*) FROM items").fetchone()[0] == len(stored) - 5 + 1
    con.close()
    ob = Outbox(p, max_bytes=96 * 1024)
    assert len(ob) == len(stored) - 5 + 1
    ob.close()


def test_corrupt_file_gives_clear_error(tmp_path):
    p = tmp_path / "o.sqlite"
    p.write_bytes(b"this is not a database" * 100)
    with pytest.raises(OutboxError, match="move it aside"):
        Outbox(str(p))


def test_missing_directory_gives_clear_error(tmp_path):
    with pytest.raises(OutboxError, match="does not exist"):
        Outbox(str(tmp_path / "nope" / "o.sqlite"))


def test_threads_share_one_outbox():
    ob = Outbox(None)
    got = []

    def worker():
        for _ in range(50):
            s = ob.next_seq()
            ob.put(s, frames(s))
            got.append(s)

    ts = [threading.Thread(target=worker) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert len(set(got)) == 200 and len(ob) == 200


CHILD = textwrap.dedent("""
    import sys
    from node.outbox import Outbox
    ob = Outbox(sys.argv[1])
    i = 0
    while True:
        s = ob.next_seq()
        ob.put(s, [b"h", s.to_bytes(8, "little") * 100], priority=i % 2)
        if i % 3 == 0:
            ob.ack([s])
            print("acked", s, flush=True)
        else:
            print("put", s, flush=True)
        i += 1
""")


def test_sigkill_mid_writes_loses_nothing_committed(tmp_path):
    p = str(tmp_path / "o.sqlite")
    proc = subprocess.Popen([sys.executable, "-c", CHILD, p], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    reported: dict[int, str] = {}
    try:
        for line in proc.stdout:
            what, s = line.split()
            reported[int(s)] = what
            if len(reported) >= 300:
                break
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert len(reported) >= 300

    ob = Outbox(p)
    items = dict(ob.due(0.0, 1.0, 1_000_000))
    for s, what in reported.items():
        if what == "put":
            assert items[s] == [b"h", s.to_bytes(8, "little") * 100], s
        else:
            assert s not in items
    # at most the one put after the last printed line may be there in addition
    extra = set(items) - set(reported)
    assert len(extra) <= 1 and all(e > max(reported) for e in extra)
    assert ob.next_seq() > max(max(reported), *(extra or {0}))
    ob.close()
    con = sqlite3.connect(p)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()
