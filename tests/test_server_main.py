"""server/main.py: `earwitness server` closes what it opened — on a failed start
and on shutdown — so the store's final WAL checkpoint runs and nothing leaks."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import zmq

from common.config import ServerConfig
from server.main import close_server, make_server
from server.store import Store

PROJECT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _checkpointers() -> int:
    return sum(t.name == "store-checkpoint" and t.is_alive() for t in threading.enumerate())


@pytest.fixture
def squatter():
    """A socket bound to a loopback port (its endpoint): that address is in use."""
    ctx = zmq.Context()
    s = ctx.socket(zmq.PUB)
    s.setsockopt(zmq.LINGER, 0)
    port = free_port()
    s.bind(f"tcp://127.0.0.1:{port}")
    yield f"tcp://127.0.0.1:{port}"
    s.close(linger=0)
    ctx.term()


def _cfg(tmp_path, **kw) -> ServerConfig:
    base = dict(bind="tcp://127.0.0.1:*", publish="tcp://127.0.0.1:*", database=str(tmp_path / "s.sqlite"),
                allow_plaintext=True, temperature_c=20.0)
    base.update(kw)
    return ServerConfig(**base)


def test_a_failed_start_closes_the_store(tmp_path, squatter):
    before = _checkpointers()
    with pytest.raises(zmq.ZMQError):
        make_server(_cfg(tmp_path, bind=squatter))
    assert _checkpointers() == before              # the store's thread is stopped
    assert not (tmp_path / "s.sqlite-wal").exists()  # and its connection closed


def test_a_publish_address_in_use_frees_the_ingest_port_too(tmp_path, squatter):
    bind = f"tcp://127.0.0.1:{free_port()}"
    with pytest.raises(zmq.ZMQError):
        make_server(_cfg(tmp_path, bind=bind, publish=squatter))
    server, security = make_server(_cfg(tmp_path, bind=bind))     # the ingest port is free again
    try:
        assert server.bound == bind
    finally:
        close_server(server, security)


def test_close_server_closes_the_store(tmp_path):
    before = _checkpointers()
    server, security = make_server(_cfg(tmp_path))
    store = server.engine.store
    assert isinstance(store, Store) and (tmp_path / "s.sqlite-wal").exists()
    close_server(server, security)
    assert _checkpointers() == before
    assert not (tmp_path / "s.sqlite-wal").exists()


def test_earwitness_server_checkpoints_its_database_on_shutdown(tmp_path):
    db = tmp_path / "server.sqlite"
    config = tmp_path / "server.toml"
    config.write_text("[server]\n"
                      'bind = "tcp://127.0.0.1:*"\n'
                      'publish = "tcp://127.0.0.1:*"\n'
                      f'database = "{db}"\n'
                      "allow_plaintext = true\n"
                      "temperature_c = 20.0\n")
    log = tmp_path / "server.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, "earwitness.py", "server", "--config", str(config)],
                                cwd=PROJECT, stdout=subprocess.DEVNULL, stderr=err)
        try:
            deadline = time.monotonic() + 20
            while "listening for nodes" not in log.read_text() and time.monotonic() < deadline:
                assert proc.poll() is None, log.read_text()
                time.sleep(0.05)
            assert (tmp_path / "server.sqlite-wal").exists(), log.read_text()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(10) == 0, log.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
    assert not (tmp_path / "server.sqlite-wal").exists(), log.read_text()
