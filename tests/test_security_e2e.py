"""CURVE end to end over loopback: the real IngestServer with server.security and
real node Publishers. Unenrolled keys get nothing in; a node speaks only as
itself; revocation and enrolment take effect without a restart, and a revoked
node that is connected is cut off."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest
import zmq

from common.config import PublisherConfig, ServerConfig
from common.protocol import encode
from node.outbox import Outbox
from node.publisher import CurveClientKeys, Publisher
from server import keys as K
from server.main import close_server, make_server
from server.security import secure_server_options
from tests.test_net import dealer, harness, now_event, recv_acks, send_if_queued
from tests.test_store import heartbeat


@pytest.fixture
def keydir(tmp_path):
    d = tmp_path / "keys"
    K.init_server(d)
    return d


@pytest.fixture
def ctx():
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


def curve_of(e: K.Enrolment) -> CurveClientKeys:
    return CurveClientKeys(e.public_key, e.secret_key, e.server_public_key)


class Node:
    """A node's link as `earwitness node` builds it: outbox + Publisher (+ CURVE)."""

    def __init__(self, ctx, node_id: str, endpoint: str, curve: CurveClientKeys | None, resend_s: float = 0.3):
        self.id = node_id
        self.outbox = Outbox(None)
        self.pub = Publisher(node_id, endpoint, self.outbox, PublisherConfig(resend_s=resend_s), ctx=ctx, curve=curve)
        self.seq = 0

    def send_event(self) -> int:
        self.seq = self.outbox.next_seq()
        self.pub.submit(now_event(self.id, self.seq))
        return self.seq

    def pump_until_acked(self, timeout_s: float = 3.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while self.pub.unacked and time.monotonic() < deadline:
            self.pub.pump(20)
        return self.pub.unacked == 0

    def close(self) -> None:
        self.pub.close()


def wait_for(cond, timeout_s: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def test_enrolled_node_delivers_and_unknown_key_gets_nothing_in(tmp_path, keydir, ctx, caplog):
    caplog.set_level(logging.WARNING)
    a = K.enroll(keydir, "pole-01", "tcp://127.0.0.1:1")
    with harness(tmp_path, security=secure_server_options(keydir)) as h:
        good = Node(ctx, "pole-01", h.endpoint, curve_of(a))
        for _ in range(3):
            good.send_event()
        assert good.pump_until_acked()
        # an intruder with a key pair of its own, even using an enrolled node's id
        pub, sec = (k.decode() for k in zmq.curve_keypair())
        server_pub = K.load_server_keys(keydir).public_key
        intruder = Node(ctx, "pole-01", h.endpoint, CurveClientKeys(pub, sec, server_pub))
        intruder.seq = 10**9
        intruder.pub.submit(now_event("pole-01", 10**9))
        intruder.pub.pump(0)
        # and a plaintext client against the CURVE server: its handshake is
        # refused, and once libzmq has dropped the connection there is nowhere
        # even to queue the message (then the send fails at once)
        plain = dealer(ctx, h.endpoint, "pole-01")
        send_if_queued(plain, encode(now_event("pole-01", 10**9 + 1)))
        for _ in range(20):
            intruder.pub.pump(50)
        assert intruder.pub.unacked == 1 and not plain.poll(100)
        assert wait_for(lambda: h.server.stats()["handshakes_refused"] >= 1)
        h.stop()
        assert sorted(seq for _, seq in h.stored()) == sorted(range(good.seq - 2, good.seq + 1))
        assert h.server.counters["rejected"] == 0        # nothing of theirs reached the application
        good.close()
        intruder.close()
    assert any("refused a connection from a key that is not enrolled" in r.getMessage() for r in caplog.records)


def test_a_node_key_can_speak_only_for_its_own_node(tmp_path, keydir, ctx):
    a = K.enroll(keydir, "a", "tcp://127.0.0.1:1")
    K.enroll(keydir, "b", "tcp://127.0.0.1:1")
    with harness(tmp_path, security=secure_server_options(keydir)) as h:
        ca = (a.public_key, a.secret_key, a.server_public_key)
        # a's key, b's routing id and node id
        s = dealer(ctx, h.endpoint, "b", curve=ca)
        s.send_multipart(encode(now_event("b", 1)))
        # a's key and routing id, b's node id
        s2 = dealer(ctx, h.endpoint, "a", curve=ca)
        s2.send_multipart(encode(now_event("b", 2)))
        s2.send_multipart(encode(now_event("a", 3)))
        assert recv_acks(s2, {3}) == {3}
        h.stop()
        assert h.stored() == [("a", 3)]
        assert h.server.rejects == {"identity-mismatch": 2}


def test_revocation_and_enrolment_without_restart(tmp_path, keydir, ctx, caplog):
    caplog.set_level(logging.WARNING)
    a = K.enroll(keydir, "a", "tcp://127.0.0.1:1")
    b = K.enroll(keydir, "b", "tcp://127.0.0.1:1")
    sec = secure_server_options(keydir, poll_s=0.2)
    with harness(tmp_path, security=sec) as h:
        na, nb = Node(ctx, "a", h.endpoint, curve_of(a)), Node(ctx, "b", h.endpoint, curve_of(b))
        na.send_event()
        nb.send_event()
        assert na.pump_until_acked() and nb.pump_until_acked()

        K.revoke(keydir, "a")
        assert wait_for(lambda: h.server.counters["connections_cut"] == 1), "revoked node was not cut off"
        t_cut = time.monotonic()
        # the revoked node keeps trying: nothing more of it is stored, ever
        revoked_seqs = [na.send_event() for _ in range(3)]
        # the enrolled node carries on (its message lost in the cut is resent from its outbox)
        nb_seqs = [nb.send_event() for _ in range(3)]
        deadline = time.monotonic() + 4
        while (nb.pub.unacked or time.monotonic() - t_cut < 1.0) and time.monotonic() < deadline:
            na.pub.pump(10)
            nb.pub.pump(10)
        assert nb.pub.unacked == 0 and na.pub.unacked == 3

        # enrol a new node while the server runs: it gets in without a restart
        c = K.enroll(keydir, "c", "tcp://127.0.0.1:1")
        nc = Node(ctx, "c", h.endpoint, curve_of(c))
        nc.send_event()
        assert nc.pump_until_acked(timeout_s=5.0), "newly enrolled node not admitted"
        h.stop()
        stored = h.stored()
        assert not set(("a", s) for s in revoked_seqs) & set(stored)
        assert set(("b", s) for s in nb_seqs) <= set(stored)
        assert ("c", nc.seq) in stored
        assert h.server.stats()["handshakes_refused"] >= 1
        for n in (na, nb, nc):
            n.close()
    msgs = [r.getMessage() for r in caplog.records]
    assert any("revoked node(s) a were connected" in m for m in msgs)
    assert any("refused a connection from revoked node 'a'" in m for m in msgs)


def test_frames_of_a_revoked_key_are_dropped_even_before_the_cut(tmp_path, keydir, ctx):
    """Per-message check: the allow-list is reloaded, the connection still up."""
    a = K.enroll(keydir, "a", "tcp://127.0.0.1:1")
    sec = secure_server_options(keydir, poll_s=3600)   # no automatic reload/cut
    with harness(tmp_path, security=sec) as h:
        s = dealer(ctx, h.endpoint, "a", curve=(a.public_key, a.secret_key, a.server_public_key))
        s.send_multipart(encode(now_event("a", 1)))
        assert recv_acks(s, {1}) == {1}
        K.revoke(keydir, "a")
        sec.allow.reload()                   # as tick() does, minus the connection cut
        s.send_multipart(encode(now_event("a", 2)))
        s.send_multipart(encode(heartbeat("a", np.zeros(3), time.time_ns())))
        assert recv_acks(s, {2}, timeout_s=0.5) == set()
        h.stop()
        assert h.stored() == [("a", 1)] and h.server.rejects == {"unknown-key": 2}


def test_make_server_needs_keys_or_explicit_plaintext(tmp_path, keydir):
    from common.config import ConfigError

    base = dict(bind="tcp://127.0.0.1:*", publish="tcp://127.0.0.1:*", database=str(tmp_path / "s.sqlite"))
    with pytest.raises(ConfigError, match="allow_plaintext"):
        make_server(ServerConfig(**base))
    with pytest.raises(K.KeyToolError, match="init-server"):
        make_server(ServerConfig(**base, keys_dir=str(tmp_path / "nokeys")))
    server, security = make_server(ServerConfig(**base, keys_dir=str(keydir)))
    try:
        assert security is not None and server.security is security
        assert server.router.curve_server
    finally:
        close_server(server, security)
    server, security = make_server(ServerConfig(**base, allow_plaintext=True))
    try:
        assert security is None and not server.router.curve_server
    finally:
        close_server(server, security)


def test_a_refused_node_says_which_key_is_wrong(tmp_path, keydir, ctx, caplog):
    """An unenrolled key is refused by the server's authenticator (it says so); a wrong
    server public key makes the server drop the connection without a reason. The
    node's one log line tells the two apart."""
    caplog.set_level(logging.ERROR, logger="earwitness")
    server_pub = K.load_server_keys(keydir).public_key
    with harness(tmp_path, security=secure_server_options(keydir)) as h:
        pub, sec = (k.decode() for k in zmq.curve_keypair())
        stranger = Node(ctx, "pole-09", h.endpoint, CurveClientKeys(pub, sec, server_pub))
        a = K.enroll(keydir, "pole-01", "tcp://127.0.0.1:1")
        other_server, _ = (k.decode() for k in zmq.curve_keypair())
        misconfigured = Node(ctx, "pole-01", h.endpoint, CurveClientKeys(a.public_key, a.secret_key, other_server))
        for n in (stranger, misconfigured):
            n.send_event()

        def said(text: str) -> bool:
            stranger.pub.pump(20)
            misconfigured.pub.pump(20)
            return any(text in r.getMessage() for r in caplog.records)

        assert wait_for(lambda: said("not enrolled or was revoked"))
        assert wait_for(lambda: said("server_public_key is not the server's"))
        lines = [r.getMessage() for r in caplog.records if "refused the connection" in r.getMessage()]
        assert len(lines) == 2                          # one line each, not one per retry
        h.stop()
        assert h.stored() == []
        stranger.close()
        misconfigured.close()
