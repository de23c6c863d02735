"""Faults over real sockets on loopback: the server killed with SIGKILL mid-stream
and restarted, a node cut off for 10 minutes, a full disk on the node.
(A full disk on the server: tests/test_net.py and tests/test_store.py.)

Time compression in the partition test: the node's clocks — the UTC stamps of
its events and the monotonic clock its outbox resends by (``Publisher.pump(now_s=…)``)
— advance 10 minutes while the partition lasts about a second of real time.
ZeroMQ's own timers (reconnect, heartbeats) and the server run on real time; the
partition ends the way it does after minutes of silence, with every TCP
connection through the cut link dead on both sides."""

from __future__ import annotations

import os
import select
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from common.config import PublisherConfig
from node.outbox import Outbox, OutboxFullError
from node.publisher import Publisher
from server import audit as A
from server import keys as K
from tests.conftest import PROJECT
from tests.test_net import harness, now_event
from tests.test_security_e2e import curve_of
from tests.test_store import heartbeat, make_event, node_grid, shot_events


class RecordingOutbox(Outbox):
    """An outbox that remembers every seq the server acknowledged."""

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.acked: set[int] = set()

    def ack(self, seqs) -> int:
        seqs = list(seqs)
        self.acked.update(seqs)
        return super().ack(seqs)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ctx():
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


# ---------------------------------------------------------- kill -9 + restart
class ServerProcess:
    """`earwitness server --config …` as a child process."""

    def __init__(self, tmp_path: Path, keydir: Path) -> None:
        self.port = free_port()
        self.db = tmp_path / "server.sqlite"
        self.config = tmp_path / "server.toml"
        self.config.write_text(
            "[server]\n"
            f'bind = "tcp://127.0.0.1:{self.port}"\n'
            'publish = "tcp://127.0.0.1:0"\n'
            f'database = "{self.db}"\n'
            f'keys_dir = "{keydir}"\n'
            "temperature_c = 20.0\n")
        self.log = tmp_path / "server.log"
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "earwitness.py", "server", "--config", str(self.config)],
                                     cwd=PROJECT, stdout=subprocess.DEVNULL,
                                     stderr=open(self.log, "ab"))

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(5)

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(10)

    def query(self, sql: str) -> list[tuple]:
        if not self.db.exists():
            return []
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5)
        try:
            return conn.execute(sql).fetchall()
        except sqlite3.OperationalError:
            return []
        finally:
            conn.close()


@pytest.mark.slow
def test_kill_9_mid_stream_loses_no_acked_event_and_forms_no_shot_twice(tmp_path, ctx):
    keydir = tmp_path / "keys"
    K.init_server(keydir)
    nodes = node_grid(5)
    srv = ServerProcess(tmp_path, keydir)
    links = {}
    for n in nodes:
        e = K.enroll(keydir, n, srv.endpoint)
        ob = RecordingOutbox(str(tmp_path / f"{n}.outbox"))
        links[n] = (ob, Publisher(n, srv.endpoint, ob, PublisherConfig(resend_s=0.5), ctx=ctx, curve=curve_of(e)))
    n_shots, kill_after, restart_after = 12, 5, 8
    t_base = time.time_ns() - (20 * n_shots + 120) * 10**9
    shot_t = [t_base + k * 20 * 10**9 for k in range(n_shots)]
    seqs: dict[str, int] = {}
    submitted: set[tuple[str, int]] = set()

    def pump(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for _, pub in links.values():
                pub.pump(5)

    srv.start()
    try:
        # the network is up: every node has said hello (the server knows whom to wait for)
        deadline = time.monotonic() + 20
        while srv.query("SELECT COUNT(*) FROM nodes") != [(len(nodes),)] and time.monotonic() < deadline:
            for n, p in nodes.items():
                links[n][1].heartbeat(heartbeat(n, p, t_base - 10**9))
            pump(0.1)
        for k in range(n_shots):
            src = np.array([40.0 + 60 * (k % 3), 60.0 + 50 * (k % 2), 1.5])
            for ev in shot_events(nodes, src, shot_t[k], seqs):
                ev = make_event(ev.node_id, nodes[ev.node_id], links[ev.node_id][0].next_seq(), ev.t_utc_ns)
                links[ev.node_id][1].submit(ev)
                submitted.add((ev.node_id, ev.seq))
            for n, p in nodes.items():      # "no more events before t_k + 15 s" → shot k can be decided
                links[n][1].heartbeat(heartbeat(n, p, shot_t[k] + 15 * 10**9))
            pump(0.25)
            if k == kill_after:
                # wait until the server has formed shots, then kill it while nodes keep sending
                deadline = time.monotonic() + 20
                while srv.query("SELECT COUNT(*) FROM shots")[0:1] < [(3,)] and time.monotonic() < deadline:
                    pump(0.1)
                shots_before = srv.query("SELECT COUNT(*) FROM shots")[0][0]
                assert shots_before >= 3, f"server formed no shots; log: {srv.log.read_text()[-2000:]}"
                srv.kill9()
            if k == restart_after:
                srv.start()
        # drain: every outbox empty, every shot decided
        final = shot_t[-1] + 60 * 10**9
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for n, p in nodes.items():
                links[n][1].heartbeat(heartbeat(n, p, final))
            pump(0.2)
            if (not any(len(ob) for ob, _ in links.values())
                    and srv.query("SELECT COUNT(*) FROM shots") == [(n_shots,)]):
                break
        assert srv.stop() == 0
    finally:
        if srv.proc and srv.proc.poll() is None:
            srv.proc.kill()
        for _, pub in links.values():
            pub.close()
    stored = srv.query("SELECT node_id, seq FROM events")
    acked = {(n, s) for n, (ob, _) in links.items() for s in ob.acked}
    assert acked and acked <= set(stored), "an acked event was lost"
    assert len(stored) == len(set(stored)) == len(submitted) and set(stored) == submitted
    shots = sorted(t for (t,) in srv.query("SELECT t_utc_ns FROM shots"))
    assert len(shots) == n_shots, f"{len(shots)} shots for {n_shots}: duplicates or misses"
    assert np.all(np.abs(np.array(shots) - np.array(shot_t)) < 2e6)      # each one, once, in place
    assert srv.query("SELECT COUNT(*) FROM event_outcomes") == [(len(submitted),)]
    assert A.main(["verify", "--db", str(srv.db)]) == 0
    log = srv.log.read_text()
    assert "resumed" in log or "CURVE" in log


# ------------------------------------------------------- 10-minute partition
class CuttableLink:
    """A TCP relay standing in for the network between node and server.
    ``cut()``: from now on bytes vanish both ways (connections stay open, new
    ones are accepted and black-holed too: a dead link, not a refusing host);
    ``heal()``: the connections that lived through the cut are dead (as their
    heartbeat timeouts would have found long before 10 minutes), new ones relay."""

    def __init__(self, upstream_port: int) -> None:
        self.up = upstream_port
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(16)
        self.port = self.lsock.getsockname()[1]
        self.blackhole = False
        self._pairs: list[tuple[socket.socket, socket.socket, bool]] = []
        self._lock = threading.Lock()
        self._stop = False
        self.dropped_bytes = 0
        self._th = threading.Thread(target=self._run, daemon=True)
        self._th.start()

    def cut(self) -> None:
        with self._lock:
            self.blackhole = True
            self._pairs = [(a, b, True) for a, b, _ in self._pairs]

    def heal(self) -> None:
        with self._lock:
            self.blackhole = False
            for a, b, _ in self._pairs:
                a.close()
                b.close()
            self._pairs = []

    def close(self) -> None:
        self._stop = True
        self._th.join(2)
        self.heal()
        self.lsock.close()

    def _run(self) -> None:
        while not self._stop:
            with self._lock:
                socks = [self.lsock] + [s for a, b, _ in self._pairs for s in (a, b)]
            try:
                r, _, _ = select.select(socks, [], [], 0.02)
            except (OSError, ValueError):
                continue
            with self._lock:
                for s in r:
                    if s is self.lsock:
                        c, _ = self.lsock.accept()
                        u = socket.create_connection(("127.0.0.1", self.up))
                        self._pairs.append((c, u, self.blackhole))
                        continue
                    for i, (a, b, dead) in enumerate(self._pairs):
                        if s is a or s is b:
                            try:
                                data = s.recv(65536)
                            except OSError:
                                data = b""
                            if not data:
                                a.close()
                                b.close()
                                del self._pairs[i]
                            elif dead:
                                self.dropped_bytes += len(data)
                            else:
                                (b if s is a else a).sendall(data)
                            break


def test_node_cut_off_for_ten_minutes_delivers_its_backlog(tmp_path, ctx):
    keydir = tmp_path / "keys"
    K.init_server(keydir)
    e = K.enroll(keydir, "pole-9", "tcp://127.0.0.1:1")
    from server.security import secure_server_options

    with harness(tmp_path, security=secure_server_options(keydir)) as h:
        link = CuttableLink(int(h.endpoint.rsplit(":", 1)[1]))
        ob = RecordingOutbox(str(tmp_path / "node.outbox"))
        pub = Publisher("pole-9", f"tcp://127.0.0.1:{link.port}", ob, PublisherConfig(resend_s=2.0),
                        ctx=ctx, curve=curve_of(e))
        t0_ns = time.time_ns() - 11 * 60 * 10**9        # the node's story starts 11 minutes ago
        clock = {"mono": time.monotonic(), "offset_s": 0.0}

        def node_now() -> float:      # the node's monotonic clock, 10 minutes faster during the cut
            return time.monotonic() + clock["offset_s"]

        def detect(minute: float) -> int:
            seq = ob.next_seq()
            pub.submit(make_event("pole-9", np.zeros(3), seq, t0_ns + int(minute * 60e9)))
            return seq

        try:
            before = [detect(0.1 * i) for i in range(5)]
            end = time.monotonic() + 3
            while len(ob) and time.monotonic() < end:
                pub.pump(20, now_s=node_now())
            assert len(ob) == 0

            link.cut()
            during = []
            t_cut = time.monotonic()
            for k in range(100):                 # 100 detections over 10 minutes, every 6 s
                during.append(detect(1.0 + k * 0.1))
                clock["offset_s"] += 6.0
                pub.pump(5, now_s=node_now())     # resends every 2 s of node time: into the void
            while time.monotonic() - t_cut < 1.0:
                pub.pump(20, now_s=node_now())
            assert len(ob) == 100 and not (set(during) & ob.acked), "something crossed a dead link"
            assert link.dropped_bytes > 0

            link.heal()
            end = time.monotonic() + 10
            while len(ob) and time.monotonic() < end:
                pub.pump(20, now_s=node_now())
            assert len(ob) == 0, f"{len(ob)} events still waiting after the link came back"
            h.stop()
            stored = h.stored()
            assert stored == sorted(stored, key=lambda x: x[1])
            assert [s for _, s in stored] == before + during       # all, once, in order
            assert pub.stats["sent"] > len(before) + len(during)    # resends happened and were absorbed
        finally:
            pub.close()
            link.close()


# ----------------------------------------------------------- node full disk
def test_node_full_disk_keeps_events_in_memory_and_delivers_them(tmp_path, ctx, caplog):
    with harness(tmp_path) as h:
        ob = Outbox(str(tmp_path / "small.outbox"), max_bytes=65536)
        pub = Publisher("tiny", h.endpoint, ob, PublisherConfig(resend_s=0.3), ctx=ctx)
        try:
            seqs, refused = [], 0
            for _ in range(60):                    # ~3 KB each: the 64 KiB outbox fills up
                seq = ob.next_seq()
                if not pub.submit(now_event("tiny", seq)):
                    refused += 1
                seqs.append(seq)
            assert refused > 0
            st = pub.status()
            assert st["link_outbox_full"] == refused and st["link_spilled"] == refused
            assert any("disk full" in r.getMessage() for r in caplog.records)
            with pytest.raises(OutboxFullError):
                ob.put(10**12, [b"x" * 4000])
            end = time.monotonic() + 5
            while pub.unacked and time.monotonic() < end:
                pub.pump(20)
            assert pub.unacked == 0 and pub.status()["link_spilled"] == 0
            h.stop()
            assert sorted(s for _, s in h.stored()) == seqs
        finally:
            pub.close()
            ob.close()


# ------------------------------------------------- watermarks wait for backlogs
def test_heartbeat_never_promises_past_an_unacked_event(tmp_path, ctx, monkeypatch):
    import node.publisher as P
    from common.protocol import Ack, Heartbeat, decode, encode

    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.ROUTER_HANDOVER, 1)      # the restarted node takes its id back
    router.bind("tcp://127.0.0.1:*")
    ep = router.getsockopt(zmq.LAST_ENDPOINT).decode()

    def sent_stream(pub, stream_ns):
        hb = heartbeat("n1", np.zeros(3), stream_ns)
        deadline = time.monotonic() + 3
        while not pub.heartbeat(hb) and time.monotonic() < deadline:   # until connected
            time.sleep(0.02)
        while True:
            assert router.poll(2000)
            rid, *frames = router.recv_multipart()
            msg = decode(frames)
            if isinstance(msg, Heartbeat):
                return msg.stream_utc_ns

    path = str(tmp_path / "n1.outbox")
    ob = Outbox(path)
    pub = Publisher("n1", ep, ob, PublisherConfig(resend_s=3600), ctx=ctx)
    t_ev = time.time_ns() - 60 * 10**9
    seq = ob.next_seq()
    pub.submit(make_event("n1", np.zeros(3), seq, t_ev))
    assert sent_stream(pub, t_ev + 10**10) == t_ev - 1            # held back by the unacked event
    pub.close()
    ob.close()

    ob = Outbox(path)                                                # a restarted node: still held back
    pub = Publisher("n1", ep, ob, PublisherConfig(resend_s=3600), ctx=ctx)
    assert sent_stream(pub, t_ev + 2 * 10**10) == t_ev - 1
    router.send_multipart([b"n1"] + encode(Ack("n1", (seq,))))
    deadline = time.monotonic() + 3
    while len(ob) and time.monotonic() < deadline:
        pub.pump(20)
    assert len(ob) == 0
    assert sent_stream(pub, t_ev + 3 * 10**10) == t_ev + 3 * 10**10  # acked: the promise moves on

    seq2 = ob.next_seq()
    pub.submit(make_event("n1", np.zeros(3), seq2, t_ev + 4 * 10**10))
    monkeypatch.setattr(P, "HOLD_MAX_S", 0.0)                        # stuck too long: no longer holds
    time.sleep(0.01)
    assert sent_stream(pub, t_ev + 5 * 10**10) == t_ev + 5 * 10**10
    pub.close()
    ob.close()
    router.close(linger=0)
