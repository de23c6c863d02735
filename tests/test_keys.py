"""server/keys.py: key directory tooling, and real CURVE+ZAP sockets on loopback."""

from __future__ import annotations

import os
import stat
import time
import tomllib

import pytest
import zmq
import zmq.auth
from zmq.utils.monitor import recv_monitor_message

from server import keys as K
from tests.test_net import send_if_queued


def mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


@pytest.fixture
def keydir(tmp_path):
    d = tmp_path / "keys"
    K.init_server(d)
    return d


# ------------------------------------------------------------ files and CLI
def test_init_server_layout_and_permissions(keydir):
    assert mode(keydir) == 0o700
    assert mode(keydir / "nodes") == 0o700
    assert mode(keydir / "revoked") == 0o700
    assert mode(keydir / "server.key_secret") == 0o600
    pub, sec = zmq.auth.load_certificate(keydir / "server.key_secret")
    assert sec is not None and K.is_valid_key(pub) and K.is_valid_key(sec)
    pub2, sec2 = zmq.auth.load_certificate(keydir / "server.key")
    assert pub2 == pub and sec2 is None
    loaded = K.load_server_keys(keydir)
    assert loaded.public_key == pub.decode() and loaded.secret_key == sec.decode()
    assert loaded.secret_key not in repr(loaded)


def test_init_server_refuses_to_overwrite_unless_forced(keydir):
    before = K.load_server_keys(keydir).public_key
    with pytest.raises(K.KeyToolError, match="already exists.*--force"):
        K.init_server(keydir)
    assert K.load_server_keys(keydir).public_key == before
    new = K.init_server(keydir, force=True)
    assert new.public_key != before
    assert K.load_server_keys(keydir).public_key == new.public_key


def test_enroll_requires_server_key(tmp_path):
    with pytest.raises(K.KeyToolError, match=r"run `earwitness keys init-server --dir .*` first"):
        K.enroll(tmp_path / "nothing", "n1", "tcp://127.0.0.1:5555")


@pytest.mark.parametrize("bad", ["", "-x", "a b", "x" * 65, "../etc", "a/b", "n@1"])
def test_enroll_rejects_bad_ids(keydir, bad):
    with pytest.raises(K.KeyToolError, match="bad node id"):
        K.enroll(keydir, bad, "tcp://127.0.0.1:5555")
    assert list((keydir / "nodes").iterdir()) == []


def test_enroll_rejects_bad_endpoint(keydir):
    with pytest.raises(K.KeyToolError, match="bad server endpoint"):
        K.enroll(keydir, "n1", "127.0.0.1:5555")


def test_enroll_writes_public_key_only_and_a_usable_snippet(keydir):
    e = K.enroll(keydir, "pole-07", "tcp://server.example.org:5555")
    path = keydir / "nodes" / "pole-07.key"
    assert e.public_path == path and path.exists()
    # pyzmq's own loader (what configure_curve uses) reads our file
    assert zmq.auth.load_certificates(keydir / "nodes") == {e.public_key.encode(): True}
    # the node's secret key is nowhere in the key directory
    for p in keydir.rglob("*"):
        if p.is_file():
            assert e.secret_key not in p.read_text()
    assert e.secret_key not in repr(e)
    cfg = tomllib.loads(e.config_toml)
    assert cfg["node"] == {"id": "pole-07", "server": "tcp://server.example.org:5555"}
    assert cfg["security"] == {"server_public_key": K.load_server_keys(keydir).public_key,
                               "public_key": e.public_key, "secret_key": e.secret_key}
    # the key pair is a real pair: the public key derives from the secret key
    assert zmq.curve_public(e.secret_key.encode()) == e.public_key.encode()


def test_snippet_loads_as_node_config(keydir, tmp_path):
    from common import config
    e = K.enroll(keydir, "pole-08", "tcp://10.0.0.1:5555")
    p = tmp_path / "node.toml"
    p.write_text(e.config_toml)
    cfg = config.load_node_config(p)
    assert (cfg.id, cfg.server) == ("pole-08", "tcp://10.0.0.1:5555")
    assert (cfg.security.public_key, cfg.security.secret_key) == (e.public_key, e.secret_key)
    assert cfg.security.server_public_key == e.server_public_key


def test_enroll_twice_is_an_error(keydir):
    first = K.enroll(keydir, "n1", "tcp://h:1")
    with pytest.raises(K.KeyToolError, match="already enrolled.*revoke n1"):
        K.enroll(keydir, "n1", "tcp://h:1")
    assert K.node_id_for_public_key(keydir, first.public_key) == "n1"


def test_list_revoke_reenroll(keydir):
    a = K.enroll(keydir, "a", "tcp://h:1")
    b = K.enroll(keydir, "b", "tcp://h:1")
    nodes = K.list_nodes(keydir)
    assert [(n.node_id, n.status, n.public_key) for n in nodes] == [
        ("a", "enrolled", a.public_key), ("b", "enrolled", b.public_key)]
    assert all(abs(n.created_utc_ns - time.time_ns()) < 60e9 for n in nodes)

    r = K.revoke(keydir, "a")
    assert r.status == "revoked" and r.public_key == a.public_key and r.revoked_utc_ns
    assert not (keydir / "nodes" / "a.key").exists()
    assert (keydir / "revoked" / "a.key").exists()
    assert K.node_id_for_public_key(keydir, a.public_key) is None
    assert K.node_id_for_public_key(keydir, b.public_key.encode()) == "b"
    assert zmq.auth.load_certificates(keydir / "nodes") == {b.public_key.encode(): True}

    with pytest.raises(K.KeyToolError, match="unknown node 'a'.*enrolled: b"):
        K.revoke(keydir, "a")
    with pytest.raises(K.KeyToolError, match="unknown node"):
        K.revoke(keydir, "zzz")

    a2 = K.enroll(keydir, "a", "tcp://h:1")   # a revoked id may get a new key
    assert a2.public_key != a.public_key
    K.revoke(keydir, "a")                      # second revocation keeps the first on record
    revoked = [n for n in K.list_nodes(keydir) if n.status == "revoked"]
    assert sorted(n.public_key for n in revoked) == sorted([a.public_key, a2.public_key])
    assert {n.node_id for n in revoked} == {"a"}
    assert len(list((keydir / "revoked").glob("a@*.key"))) == 1


def test_list_nodes_reports_malformed_file(keydir):
    (keydir / "nodes" / "junk.key").write_text("not a certificate\n")
    with pytest.raises(K.KeyToolError, match="junk.key: no valid Z85 public-key"):
        K.list_nodes(keydir)


def test_keydir_watcher(keydir):
    w = K.KeydirWatcher(keydir)
    assert not w.changed()
    K.enroll(keydir, "n1", "tcp://h:1")
    assert w.changed()
    assert not w.changed()
    K.revoke(keydir, "n1")
    assert w.changed()
    assert not w.changed()


def test_allowlist_lookup_refresh_and_bad_files(keydir):
    a = K.enroll(keydir, "a", "tcp://h:1")
    al = K.AllowList(keydir, refresh_s=None)
    assert al.is_allowed(a.public_key) and al.node_id(a.public_key.encode()) == "a"
    assert not al.is_allowed(None) and not al.is_allowed("x" * 40) and len(al) == 1
    K.revoke(keydir, "a")
    assert al.is_allowed(a.public_key)          # no auto refresh configured
    assert al.refresh() and not al.is_allowed(a.public_key)
    assert not al.refresh()
    # a copied certificate under a second name: both refused, reported
    b = K.enroll(keydir, "b", "tcp://h:1")
    (keydir / "nodes" / "c.key").write_text((keydir / "nodes" / "b.key").read_text()
                                            .replace('node-id = "b"', 'node-id = "c"'))
    (keydir / "nodes" / "junk.key").write_text("garbage")
    al.reload()
    assert not al.is_allowed(b.public_key)
    assert any("same public key" in p for p in al.problems)
    assert any("junk.key" in p for p in al.problems)


def test_allowlist_auto_refresh(keydir):
    a = K.enroll(keydir, "a", "tcp://h:1")
    al = K.AllowList(keydir, refresh_s=0.0)
    assert al.is_allowed(a.public_key)
    K.revoke(keydir, "a")
    assert not al.is_allowed(a.public_key)


def test_cli(tmp_path, capsys):
    d = str(tmp_path / "k")
    assert K.main(["init-server", "--dir", d]) == 0
    assert "server public key:" in capsys.readouterr().out
    assert K.main(["init-server", "--dir", d]) == 1
    assert "--force" in capsys.readouterr().err
    assert K.main(["enroll", "n1", "--server", "tcp://h:5555", "--dir", d]) == 0
    out = capsys.readouterr()
    cfg = tomllib.loads(out.out)
    assert cfg["node"]["id"] == "n1" and "SECRET" in out.err
    out_file = tmp_path / "n2.toml"
    assert K.main(["enroll", "n2", "--server", "tcp://h:5555", "--dir", d,
                   "--out", str(out_file)]) == 0
    assert mode(out_file) == 0o600 and tomllib.loads(out_file.read_text())["node"]["id"] == "n2"
    capsys.readouterr()
    assert K.main(["list", "--dir", d]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[:2] for ln in lines] == [["n1", "enrolled"], ["n2", "enrolled"]]
    assert K.main(["revoke", "n1", "--dir", d]) == 0
    assert K.main(["revoke", "n1", "--dir", d]) == 1
    assert "unknown node" in capsys.readouterr().err
    assert K.main(["enroll", "bad id", "--server", "tcp://h:1", "--dir", d]) == 1
    assert K.main(["frobnicate"]) == 2
    assert K.main(["enroll", "x", "--dir", str(tmp_path / "none"), "--server", "tcp://h:1"]) == 1
    assert "init-server" in capsys.readouterr().err


# ------------------------------------------------------------ real sockets
@pytest.fixture
def ctx():
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


def _server(ctx, keydir):
    auth = K.make_authenticator(ctx, keydir)
    sk = K.load_server_keys(keydir)
    r = ctx.socket(zmq.ROUTER)
    r.linger = 0
    r.curve_server = True
    r.curve_secretkey = sk.secret_key.encode()
    r.curve_publickey = sk.public_key.encode()
    r.bind("tcp://127.0.0.1:0")
    return auth, r, r.last_endpoint.decode()


def _client(ctx, keydir, endpoint, pub, sec, rid):
    c = ctx.socket(zmq.DEALER)
    c.linger = 0
    c.sndtimeo = 5000      # a send with nowhere to queue fails instead of hanging the suite
    c.reconnect_ivl = 20
    c.routing_id = rid
    c.curve_serverkey = K.load_server_keys(keydir).public_key.encode()
    c.curve_publickey = pub.encode() if isinstance(pub, str) else pub
    c.curve_secretkey = sec.encode() if isinstance(sec, str) else sec
    mon = c.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                               | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)
    c.connect(endpoint)
    return c, mon


def _handshake(mon, timeout_ms=3000) -> int:
    assert mon.poll(timeout_ms), "no handshake event within timeout"
    return recv_monitor_message(mon)["event"]


def _recv(r, timeout_ms=2000):
    if not r.poll(timeout_ms):
        return None
    frames = r.recv_multipart(copy=False)
    return [bytes(f) for f in frames], K.frame_user_id(frames[-1])


def test_enrolled_node_gets_through_with_user_id(ctx, keydir):
    e = K.enroll(keydir, "n1", "tcp://127.0.0.1:1")
    auth, r, ep = _server(ctx, keydir)
    try:
        c, mon = _client(ctx, keydir, ep, e.public_key, e.secret_key, b"n1")
        assert _handshake(mon) == zmq.EVENT_HANDSHAKE_SUCCEEDED
        c.send_multipart([b"h", b"b"])
        frames, uid = _recv(r)
        assert frames == [b"n1", b"h", b"b"]
        assert uid == e.public_key
        assert K.AllowList(keydir).node_id(uid) == "n1"
    finally:
        auth.stop()


def test_unknown_key_gets_nothing_through(ctx, keydir):
    K.enroll(keydir, "n1", "tcp://127.0.0.1:1")
    auth, r, ep = _server(ctx, keydir)
    try:
        pub, sec = zmq.curve_keypair()
        c, mon = _client(ctx, keydir, ep, pub, sec, b"intruder")
        send_if_queued(c, [b"let me in"])
        assert _handshake(mon) == zmq.EVENT_HANDSHAKE_FAILED_AUTH
        assert _recv(r, 300) is None
    finally:
        auth.stop()


def test_revocation_after_reload_without_new_server_socket(ctx, keydir):
    a = K.enroll(keydir, "a", "tcp://127.0.0.1:1")
    b = K.enroll(keydir, "b", "tcp://127.0.0.1:1")
    auth, r, ep = _server(ctx, keydir)
    allow = K.AllowList(keydir, refresh_s=None)
    watcher = K.KeydirWatcher(keydir)
    try:
        ca, mon_a = _client(ctx, keydir, ep, a.public_key, a.secret_key, b"a")
        cb, mon_b = _client(ctx, keydir, ep, b.public_key, b.secret_key, b"b")
        assert _handshake(mon_a) == _handshake(mon_b) == zmq.EVENT_HANDSHAKE_SUCCEEDED

        K.revoke(keydir, "a")
        assert watcher.changed()
        assert K.reload(auth, keydir) == 1
        assert allow.refresh()

        # New connections with the revoked key are refused.
        ca2, mon_a2 = _client(ctx, keydir, ep, a.public_key, a.secret_key, b"a2")
        ca2.send(b"new connection")
        assert _handshake(mon_a2) == zmq.EVENT_HANDSHAKE_FAILED_AUTH

        # The ESTABLISHED connection of the revoked key still delivers (CURVE
        # authenticates only at the handshake): the AllowList check catches it.
        ca.send(b"still here")
        frames, uid = _recv(r)
        assert frames == [b"a", b"still here"] and uid == a.public_key
        assert not allow.is_allowed(uid)
        cb.send(b"fine")
        frames, uid = _recv(r)
        assert frames == [b"b", b"fine"] and allow.node_id(uid) == "b"

        # drop_connections cuts every established session; only allowed keys come back.
        # (the connection closes when the peer next sends; that message is lost)
        K.drop_connections(r, ep)
        got = []
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and len(got) < 3:
            for c in (ca, cb):   # a DEALER with no connected peer blocks: don't
                try:
                    c.send(b"after drop", zmq.NOBLOCK)
                except zmq.Again:
                    pass
            m = _recv(r, 100)
            while m is not None:
                got.append((m[0][0], m[1]))
                m = _recv(r, 20)
        assert len(got) >= 3 and all(g == (b"b", b.public_key) for g in got)
        # the revoked peer's old connection was closed; its reconnection fails ZAP
        events = []
        deadline = time.monotonic() + 3   # it retries every 20 ms: events never stop
        while (zmq.EVENT_HANDSHAKE_FAILED_AUTH not in events and time.monotonic() < deadline
               and mon_a.poll(100)):
            events.append(recv_monitor_message(mon_a)["event"])
        assert zmq.EVENT_HANDSHAKE_FAILED_AUTH in events
    finally:
        auth.stop()


def test_reload_with_malformed_file_fails_closed_for_it(ctx, keydir):
    a = K.enroll(keydir, "a", "tcp://127.0.0.1:1")
    auth, r, ep = _server(ctx, keydir)
    try:
        (keydir / "nodes" / "junk.key").write_text("garbage")
        K.revoke(keydir, "a")
        with pytest.raises(K.KeyToolError, match="junk.key"):
            K.reload(auth, keydir)
        # pyzmq's configure_curve alone would have kept the old list (with a)
        c, mon = _client(ctx, keydir, ep, a.public_key, a.secret_key, b"a")
        send_if_queued(c, [b"x"])
        assert _handshake(mon) == zmq.EVENT_HANDSHAKE_FAILED_AUTH
    finally:
        auth.stop()


def test_make_authenticator_refuses_missing_dir(ctx, tmp_path):
    with pytest.raises(K.KeyToolError, match="init-server"):
        K.make_authenticator(ctx, tmp_path / "none")
