"""server/net.py over real ZeroMQ sockets on loopback (plaintext mode): store then
ack, replays and conflicts, every kind of hostile message counted and dropped,
rate-limited logging, a full database, the PUB feed."""

from __future__ import annotations

import dataclasses
import json
import logging
import sqlite3
import threading
import time
from contextlib import contextmanager

import msgpack
import numpy as np
import pytest
import zmq

from common.config import ServerConfig
from common.protocol import MAX_FRAME_BYTES, Ack, Event, decode, encode
from server.engine import Engine
from server.net import IngestServer, RateLimitedLog, classify
from server.store import Store
from tests.test_store import fill_disk, free_disk, heartbeat, make_event, node_grid, shot_events


class Harness:
    """An IngestServer (+ Engine + Store) serving in a thread."""

    def __init__(self, tmp_path, *, security=None, **cfg_kw) -> None:
        kw = dict(bind="tcp://127.0.0.1:*", publish="tcp://127.0.0.1:*", database=str(tmp_path / "server.sqlite"),
                  temperature_c=20.0, allow_plaintext=security is None)
        kw.update(cfg_kw)
        self.cfg = ServerConfig(**kw)
        self.store = Store(self.cfg.database)
        self.engine = Engine(self.cfg, self.store)
        self.server = IngestServer(self.cfg, self.engine, security=security)
        self.stop_ev = threading.Event()
        self.thread = threading.Thread(target=self.server.run, args=(self.stop_ev,), daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return self.server.bound

    def stop(self) -> None:
        self.stop_ev.set()
        self.thread.join(5)
        assert not self.thread.is_alive(), "server thread did not stop"

    def close(self) -> None:
        if self.thread.is_alive():
            self.stop()
        self.server.close()
        self.store.close()

    def stored(self) -> list[tuple[str, int]]:
        """(node_id, seq) of every stored event, read through a second connection."""
        conn = sqlite3.connect(self.cfg.database)
        try:
            return conn.execute("SELECT node_id, seq FROM events ORDER BY id").fetchall()
        finally:
            conn.close()


@contextmanager
def harness(tmp_path, **kw):
    h = Harness(tmp_path, **kw)
    try:
        yield h
    finally:
        h.close()


@pytest.fixture
def ctx():
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


def dealer(ctx, endpoint: str, rid: str | bytes, curve=None) -> zmq.Socket:
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.ROUTING_ID, rid.encode() if isinstance(rid, str) else rid)
    s.setsockopt(zmq.LINGER, 0)
    # a send that cannot be queued (no pipe: e.g. a refused handshake took it
    # down) fails with zmq.Again after 5 s instead of hanging the suite
    s.setsockopt(zmq.SNDTIMEO, 5000)
    if curve is not None:
        s.curve_publickey, s.curve_secretkey, s.curve_serverkey = (k.encode() for k in curve)
    s.connect(endpoint)
    return s


def send_if_queued(sock: zmq.Socket, frames: list[bytes]) -> None:
    """Send ``frames`` from a client whose handshake will be refused: once libzmq
    has dropped the refused connection there is nowhere to queue them, and that
    is fine (the point is that nothing gets through)."""
    try:
        sock.send_multipart(frames, flags=zmq.NOBLOCK)
    except zmq.Again:
        pass


def recv_acks(sock, want: set[int], timeout_s: float = 3.0) -> set[int]:
    """Receive Acks until every seq in ``want`` was acked (or timeout); returns all acked."""
    got: set[int] = set()
    deadline = time.monotonic() + timeout_s
    while not want <= got and time.monotonic() < deadline:
        if sock.poll(50):
            msg = decode(sock.recv_multipart())
            assert isinstance(msg, Ack)
            got |= set(msg.seqs)
    return got


def now_event(node: str, seq: int, dt_s: float = 0.0, **kw) -> Event:
    return make_event(node, np.zeros(3), seq, time.time_ns() + int(dt_s * 1e9), **kw)


# -------------------------------------------------------------------- basics
def test_events_are_stored_then_acked_and_replays_are_acked_not_stored(tmp_path, ctx):
    with harness(tmp_path) as h:
        s = dealer(ctx, h.endpoint, "a")
        evs = [now_event("a", i) for i in range(1, 6)]
        for ev in evs:
            s.send_multipart(encode(ev))
        assert recv_acks(s, {1, 2, 3, 4, 5}) == {1, 2, 3, 4, 5}
        assert h.stored() == [("a", i) for i in range(1, 6)]
        # replay: acked again, stored once
        s.send_multipart(encode(evs[2]))
        assert recv_acks(s, {3}) == {3}
        # a different event under a used number: a conflict, acked, the first one kept
        s.send_multipart(encode(dataclasses.replace(evs[3], peak_dbfs=-1.0)))
        assert recv_acks(s, {4}) == {4}
        h.stop()
        assert h.stored() == [("a", i) for i in range(1, 6)]
        st = h.server.stats()
        assert st["events_new"] == 5 and st["duplicates"] == 1 and st["conflicts"] == 1
        assert st["acked"] == 7 and st["rejected"] == 0
        assert h.store.verify().ok


def test_shots_are_published_as_json(tmp_path, ctx):
    with harness(tmp_path) as h:
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"shot")
        sub.connect(h.server.pub_bound)
        time.sleep(0.2)                          # let the subscription reach the PUB
        nodes = node_grid(5)
        socks = {n: dealer(ctx, h.endpoint, n) for n in nodes}
        t_shot = time.time_ns() - 20 * 10**9
        seqs: dict[str, int] = {}
        for ev in shot_events(nodes, np.array([60.0, 40.0, 1.5]), t_shot, seqs):
            socks[ev.node_id].send_multipart(encode(ev))
        for n, p in nodes.items():               # the watermark passes the shot
            socks[n].send_multipart(encode(heartbeat(n, p, time.time_ns())))
        assert sub.poll(5000), "no shot published"
        topic, body = sub.recv_multipart()
        doc = json.loads(body)
        assert topic == b"shot" and doc["incident"] >= 1 and doc["round"] == 1
        assert sorted(doc["nodes"]) == sorted(nodes) and doc["error_m"] < 5


def test_candidates_for_review_are_published_on_their_own_topic(tmp_path, ctx):
    """Four nodes hear one sound: no shot, but a candidate on topic "candidate"
    (a subscriber to "shot" alone does not see it)."""
    with harness(tmp_path) as h:
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"candidate")
        sub.connect(h.server.pub_bound)
        time.sleep(0.2)                          # let the subscription reach the PUB
        nodes = node_grid(4, spacing=300.0)
        socks = {n: dealer(ctx, h.endpoint, n) for n in nodes}
        seqs: dict[str, int] = {}
        for ev in shot_events(nodes, np.array([110.0, 170.0, 1.5]), time.time_ns() - 20 * 10**9, seqs):
            socks[ev.node_id].send_multipart(encode(ev))
        for n, p in nodes.items():
            socks[n].send_multipart(encode(heartbeat(n, p, time.time_ns())))
        assert sub.poll(5000), "no candidate published"
        topic, body = sub.recv_multipart()
        doc = json.loads(body)
        assert topic == b"candidate" and doc["candidate"] >= 1 and sorted(doc["nodes"]) == sorted(nodes)
        assert list(h.server.reports) == [] and len(h.store.candidates()) == 1


# ------------------------------------------------------------ hostile input
def _valid_body(ev: Event) -> dict:
    return msgpack.unpackb(encode(ev)[1], raw=False)


def _frames(kind: str, body: dict, version: int = 1, magic: str = "earwitness") -> list[bytes]:
    return [msgpack.packb([magic, version, kind]), msgpack.packb(body, use_bin_type=True)]


def hostile_messages() -> list[tuple[str, list[bytes], str]]:
    """(description, frames, expected reject reason), all from routing id "evil"."""
    ev = now_event("evil", 1)
    good = _valid_body(ev)
    hb = encode(heartbeat("evil", np.zeros(3), time.time_ns()))
    out = [
        ("one frame", [b"x"], "malformed"),
        ("three frames", encode(ev) + [b"x"], "malformed"),
        ("empty frames", [b"", b""], "malformed"),
        ("not msgpack", [b"\xc1\xc1", b"\xc1"], "malformed"),
        ("wrong magic", _frames("event", good, magic="quietness"), "malformed"),
        ("body not a map", [encode(ev)[0], msgpack.packb([1, 2, 3])], "malformed"),
        ("future version", _frames("event", good, version=2), "unsupported-version"),
        ("unknown type", _frames("gunshot", good), "unknown-type"),
        ("NaN field", _frames("event", {**good, "sigma_ns": float("nan")}), "invalid-field"),
        ("inf position", _frames("event", {**good, "lat": float("inf")}), "invalid-field"),
        ("string seq", _frames("event", {**good, "seq": "1"}), "invalid-field"),
        ("negative seq", _frames("event", {**good, "seq": -1}), "invalid-field"),
        ("unknown field", _frames("event", {**good, "shell": "rm -rf /"}), "invalid-field"),
        ("missing field", _frames("event", {k: v for k, v in good.items() if k != "lat"}), "invalid-field"),
        ("huge snippet", _frames("event", {**good, "snippet": b"\0\0" * 48_001}), "invalid-field"),
        ("odd snippet", _frames("event", {**good, "snippet": b"\0\0\0"}), "invalid-field"),
        ("onset outside snippet", _frames("event", {**good, "t_utc_ns": good["t_utc_ns"] + 10**9}),
         "invalid-field"),
        ("ext type", [encode(ev)[0], msgpack.packb({"node_id": msgpack.ExtType(1, b"x")})], "malformed"),
        ("deep nesting", [encode(ev)[0], b"\x91" * 5000 + b"\xc0"], "malformed"),
        ("over the size limit", _frames("event", {**good, "features": {"x" * 20: 1.0},
                                                  "snippet": b"\0" * (MAX_FRAME_BYTES - 200)}), "oversized"),
        ("another node's id", encode(now_event("victim", 1)), "identity-mismatch"),
        ("ack to the server", encode(Ack("evil", (1, 2))), "unexpected-type"),
        ("time an hour off", encode(now_event("evil", 2, dt_s=7200)), "implausible-event"),
        ("heartbeat from 1999", encode(heartbeat("evil", np.zeros(3), 930_000_000 * 10**9,
                                                 t_ns=930_000_000 * 10**9)), "implausible-heartbeat"),
    ]
    return out + [("heartbeat", hb, ""), ("replayed heartbeat", hb, "stale-heartbeat")]


def test_every_hostile_message_is_counted_and_dropped(tmp_path, ctx, caplog):
    caplog.set_level(logging.WARNING, logger="earwitness.server")
    with harness(tmp_path) as h:
        s = dealer(ctx, h.endpoint, "evil")
        expected: dict[str, int] = {}
        for desc, frames, reason in hostile_messages():
            s.send_multipart(frames)
            if reason:
                expected[reason] = expected.get(reason, 0) + 1
        # the server still answers a valid node
        ok = dealer(ctx, h.endpoint, "good")
        ok.send_multipart(encode(now_event("good", 1)))
        assert recv_acks(ok, {1}) == {1}
        deadline = time.monotonic() + 3
        while h.server.rejects != expected and time.monotonic() < deadline:
            time.sleep(0.02)
        h.stop()
        assert h.server.rejects == expected
        assert h.server.counters["rejected"] == sum(expected.values())
        assert h.stored() == [("good", 1)]
        assert not s.poll(0), "a hostile message was acked"
    logged = {r.getMessage().split(":")[0] for r in caplog.records}
    assert set(expected) <= logged


def test_frames_over_maxmsgsize_drop_the_connection_not_the_server(tmp_path, ctx):
    with harness(tmp_path) as h:
        s = dealer(ctx, h.endpoint, "big")
        s.send_multipart([b"x" * (MAX_FRAME_BYTES + 4096), b"y"])
        ok = dealer(ctx, h.endpoint, "good")
        ok.send_multipart(encode(now_event("good", 1)))
        assert recv_acks(ok, {1}) == {1}
        assert h.server.counters["received"] == 1     # the big one never reached the application


def test_rejects_are_logged_at_most_once_per_window(caplog):
    caplog.set_level(logging.WARNING, logger="earwitness.server")
    rl = RateLimitedLog(every_s=60.0)
    assert rl.warn("malformed", "first")
    for i in range(1000):
        assert not rl.warn("malformed", f"again {i}")
    assert rl.warn("unknown-key", "another reason")
    assert [r.getMessage() for r in caplog.records] == ["malformed: first", "unknown-key: another reason"]
    rl.every_s = 0.0
    assert rl.warn("malformed", "later")
    assert caplog.records[-1].getMessage() == "malformed: later (1000 more since last report)"


def test_classify_decoder_errors():
    from common.protocol import ProtocolError, decode as dec
    cases = {
        "malformed": [[b"a"], [b"\xc1", b""]],
        "unsupported-version": [_frames("event", {}, version=9)],
        "unknown-type": [_frames("nope", {})],
        "invalid-field": [_frames("event", {})],
        "oversized": [[b"\0" * MAX_FRAME_BYTES, b"\0"]],
    }
    for reason, frame_sets in cases.items():
        for frames in frame_sets:
            with pytest.raises(ProtocolError) as ei:
                dec(frames)
            assert classify(ei.value) == reason, (reason, str(ei.value))


# -------------------------------------------------------------- full disk
def test_full_database_means_no_ack_and_the_server_keeps_serving(tmp_path, ctx, caplog):
    caplog.set_level(logging.ERROR, logger="earwitness.server")
    with harness(tmp_path) as h:
        s = dealer(ctx, h.endpoint, "a")
        s.send_multipart(encode(now_event("a", 1)))
        assert recv_acks(s, {1}) == {1}
        h.stop()                               # fill the disk while the loop is paused
        fill_disk(h.store)
        h.stop_ev.clear()
        h.thread = threading.Thread(target=h.server.run, args=(h.stop_ev,), daemon=True)
        h.thread.start()
        big = np.zeros(20_000, dtype=np.int16)   # 40 KB: needs new pages, however full the last one is
        for i in (2, 3):
            s.send_multipart(encode(now_event("a", i, snippet=big)))
        assert recv_acks(s, {2, 3}, timeout_s=1.0) == set()      # not stored → not acked
        s.send_multipart(encode(heartbeat("a", np.zeros(3), time.time_ns())))
        time.sleep(0.2)
        assert h.thread.is_alive() and h.server.counters["store_failed"] >= 2
        assert any("store-failed" in r.getMessage() for r in caplog.records)
        h.stop()
        free_disk(h.store)
        h.stop_ev.clear()
        h.thread = threading.Thread(target=h.server.run, args=(h.stop_ev,), daemon=True)
        h.thread.start()
        for i in (2, 3):                        # what the node's outbox would resend
            s.send_multipart(encode(now_event("a", i)))
        assert recv_acks(s, {2, 3}) == {2, 3}
        h.stop()
        assert h.stored() == [("a", 1), ("a", 2), ("a", 3)]
        assert h.store.verify().ok


def test_fast_ack_encoding_matches_the_protocol_encoder():
    from server.net import _ACK_HEADER, _ack_body
    for node, seqs in (("a", [1]), ("pole-07", list(range(4096))), ("n.1_x", [0, 2**63 - 1])):
        assert [_ACK_HEADER, _ack_body(node, seqs)] == encode(Ack(node_id=node, seqs=tuple(seqs)))
