"""NodeRunner: a node with no microphone or no GPS runs, says what is wrong once,
reports it in heartbeats, and recovers by itself."""

from __future__ import annotations

import logging
import socket
import threading
import time

import numpy as np

from common.config import AudioConfig, GpsConfig, NodeConfig, Position, PublisherConfig, TimebaseConfig
from node.audio import AudioBlock, AudioDeviceError
from node.outbox import Outbox
from node.pipeline import NodeRunner, backoff_s, status_states
from node.timebase import FixedTimebase

T0 = 1_764_000_000 * 10**9


class PacedMic:
    """A test microphone paced like a real one: 10 ms blocks of :meth:`_block`."""

    sample_rate = 48_000.0
    channels = 1

    def __init__(self) -> None:
        self.frame = 0

    def start(self) -> None:
        pass

    def _block(self, first_frame: int) -> np.ndarray:
        return np.zeros(480, np.float32)

    def read(self, timeout_s: float):
        time.sleep(0.01)
        b = AudioBlock(samples=self._block(self.frame)[:, None], first_frame=self.frame)
        self.frame += 480
        return b

    def stop(self) -> None:
        pass

    def stats(self) -> dict:
        return {"xruns": 0, "dropped_blocks": 0}


class FlakyMic(PacedMic):
    """An audio source whose device is missing until ``present`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.present = threading.Event()
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        if not self.present.is_set():
            raise AudioDeviceError("no input device matching 'hw:1,0' — is the USB microphone plugged in?")


class Capture:
    """A publisher stand-in that keeps what the node would send."""

    def __init__(self) -> None:
        self.outbox = Outbox(None)
        self.heartbeats = []
        self.events = []

    def submit(self, ev) -> None:
        self.events.append(ev)

    def heartbeat(self, hb) -> bool:
        self.heartbeats.append(hb)
        return True

    def pump(self, timeout_ms: int = 0, now_s=None) -> int:
        time.sleep(timeout_ms / 1000)
        return 0

    @property
    def unacked(self) -> int:
        return 0


def _cfg() -> NodeConfig:
    return NodeConfig(id="n1", audio=AudioConfig(source="sounddevice", device="hw:1,0"),
                      timebase=TimebaseConfig(mode="fixed"), publisher=PublisherConfig(heartbeat_s=0.2),
                      gps=GpsConfig(enabled=False))


def test_missing_microphone_is_reported_then_recovers(caplog, monkeypatch):
    monkeypatch.setattr("node.pipeline.backoff_s", lambda attempt: 0.2)
    mic = FlakyMic()
    pub = Capture()
    runner = NodeRunner(_cfg(), mic, FixedTimebase(T0, 48_000), pub, position=lambda: Position(40.0, -80.0, 200.0))
    stop = threading.Event()
    th = threading.Thread(target=runner.run, args=(stop,), daemon=True)
    with caplog.at_level(logging.INFO, logger="earwitness.node"):
        th.start()
        time.sleep(1.0)
        assert mic.starts >= 3                         # it keeps retrying
        # a problem appearing is a change of state: that heartbeat carries the whole status
        down = [hb for hb in pub.heartbeats if hb.status.get("audio_problem")]
        assert down and "USB microphone" in down[-1].status["audio_problem"]
        assert down[-1].stream_utc_ns > T0             # a node with no audio does not hold the network back
        mic.present.set()
        time.sleep(1.0)
        stop.set()
        th.join(5)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "hw:1,0" in errors[0].getMessage()   # one clear line, not one per retry
    assert any("back" in r.getMessage() for r in caplog.records)
    # ... and so is its clearing (the server keeps a node's last whole status)
    assert [hb for hb in pub.heartbeats if hb.status][-1].status["audio_problem"] == ""
    assert runner.detector.frames_seen > 0


def test_backoff_grows_and_caps():
    assert [backoff_s(k) for k in range(7)] == [1, 2, 4, 8, 16, 30, 30]


def test_missing_gps_shows_in_heartbeat_status():
    from node.gps import GpsClient

    with socket.socket() as s:                          # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    gps = GpsClient("127.0.0.1", port, connect_timeout_s=0.2, backoff_initial_s=0.1)
    gps.start()
    try:
        st = gps.wait_for(lambda g: "not reachable" in g.problem, 5.0)
        assert st is not None and "gpsd not reachable" in st.problem
        status = st.to_status()
        assert any("gpsd not reachable" in str(v) for v in status.values())
    finally:
        gps.stop()


class OneClick(PacedMic):
    """Quiet noise with one loud click after 1 s."""

    def __init__(self) -> None:
        super().__init__()
        self.noise = np.random.default_rng(0).normal(0, 1e-3, 480 * 1000).astype(np.float32)

    def _block(self, first_frame: int) -> np.ndarray:
        x = self.noise[first_frame % len(self.noise):][:480].copy()
        if first_frame == 48_000:
            x[100:140] += 0.8 * np.exp(-np.arange(40) / 8.0).astype(np.float32)
        return x


def test_heartbeats_come_faster_after_an_event():
    """A quiet node heartbeats every heartbeat_s; after it reports an event, every
    active_heartbeat_s (its watermark is what lets the server decide the shot)."""
    cfg = NodeConfig(id="n1", audio=AudioConfig(source="sounddevice"), timebase=TimebaseConfig(mode="fixed"),
                     publisher=PublisherConfig(heartbeat_s=30.0, active_heartbeat_s=0.1, active_s=0.8),
                     gps=GpsConfig(enabled=False))
    pub = Capture()
    runner = NodeRunner(cfg, OneClick(), FixedTimebase(T0, 48_000), pub, position=lambda: Position(40.0, -80.0, 200.0))
    stop = threading.Event()
    th = threading.Thread(target=runner.run, args=(stop,), daemon=True)
    th.start()
    deadline = time.monotonic() + 10
    while not pub.events and time.monotonic() < deadline:
        time.sleep(0.02)
    assert pub.events, "the click was not detected"
    before = len(pub.heartbeats)
    assert before <= 2                       # hello (+ maybe one): quiet means heartbeat_s
    # Conditions polled with generous deadlines, not counts in fixed sleeps: on two
    # shared CI cores the runner's thread may fall behind for a while.
    # While active: ~every 0.1 s, 8 in active_s; a quiet node would send none for 30 s.
    deadline = time.monotonic() + 10
    while len(pub.heartbeats) - before < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(pub.heartbeats) - before >= 3, "no fast heartbeats after the event"
    # Then active_s is over: back to heartbeat_s (30 s). Wait for a lull of 1 s (10×
    # active_heartbeat_s), then none may come but the final one on stop.
    deadline = time.monotonic() + 10
    last_n, last_change = len(pub.heartbeats), time.monotonic()
    while time.monotonic() - last_change < 1.0 and time.monotonic() < deadline:
        time.sleep(0.05)
        if len(pub.heartbeats) != last_n:
            last_n, last_change = len(pub.heartbeats), time.monotonic()
    assert time.monotonic() - last_change >= 1.0, "heartbeats never slowed down after active_s"
    quiet_from = len(pub.heartbeats)
    time.sleep(0.8)
    stop.set()
    th.join(5)
    assert not th.is_alive()
    assert len(pub.heartbeats) - quiet_from <= 1   # (the final one on stop)


def test_status_states_are_the_flags_texts_and_missing_items_not_the_measurements():
    a = {"timing_locked": True, "audio_problem": "", "noise_floor_dbfs": -60.0, "events_total": 3,
         "gps_eph_m": 2.5}
    assert status_states(a) == status_states({**a, "noise_floor_dbfs": -41.0, "events_total": 9, "gps_eph_m": 9.0})
    for changed in ({"timing_locked": False}, {"audio_problem": "device gone"}, {"gps_eph_m": None},
                    {"new_item": 1}):
        assert status_states(a) != status_states({**a, **changed})


def _run_lean(status_s: float, problems: list[str], seconds: float, at_least: int = 0) -> list:
    """Heartbeats of a node whose extra status reports ``problems[k]`` at its k-th
    heartbeat, run for ``seconds`` and until it has sent ``at_least`` (10 s at most)."""
    cfg = NodeConfig(id="n1", audio=AudioConfig(source="sounddevice"), timebase=TimebaseConfig(mode="fixed"),
                     publisher=PublisherConfig(heartbeat_s=0.05, status_s=status_s), gps=GpsConfig(enabled=False))
    pub = Capture()
    calls = iter(problems + [problems[-1]] * 10_000)
    runner = NodeRunner(cfg, PacedMic(), FixedTimebase(T0, 48_000), pub, position=lambda: Position(40.0, -80.0, 200.0),
                        status=lambda: {"gps_problem": next(calls), "gps_eph_m": float(np.random.rand())})
    stop = threading.Event()
    th = threading.Thread(target=runner.run, args=(stop,), daemon=True)
    th.start()
    time.sleep(seconds)
    deadline = time.monotonic() + 10
    while len(pub.heartbeats) < at_least and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    th.join(5)
    return pub.heartbeats


def test_heartbeats_carry_the_whole_status_only_when_due_or_when_a_state_changes():
    problems = [""] * 5 + ["gpsd not reachable"] * 5 + [""]
    hbs = _run_lean(3600.0, problems, 0.5, at_least=14)
    assert len(hbs) >= 14
    full = [k for k, hb in enumerate(hbs) if hb.status]
    # the first; the problem appearing; its clearing; the final one on stop (any whole status has every item)
    assert full[:3] == [0, 5, 10] and set(full[3:]) <= {len(hbs) - 1}
    assert hbs[5].status["gps_problem"] == "gpsd not reachable" and hbs[10].status["gps_problem"] == ""
    assert all(set(hbs[k].status) == set(hbs[0].status) for k in full)
    # the others still carry the watermark, and an empty status: "unchanged"
    assert all(hb.status == {} and hb.stream_utc_ns > 0 for k, hb in enumerate(hbs) if k not in full)


def test_whole_status_every_status_s_and_in_every_heartbeat_with_0():
    hbs = _run_lean(0.3, [""], 1.5, at_least=12)
    full = [k for k, hb in enumerate(hbs) if hb.status]
    # the first, one per 0.3 s of wall time after it (the run may outlast 1.5 s
    # waiting for 12 heartbeats), and the last
    assert len(full) >= 4 and len(full) < len(hbs)
    gaps = np.diff([hbs[k].t_utc_ns for k in full[:-1]]) * 1e-9
    assert np.all(gaps >= 0.3 - 0.02)
    assert all(hb.status for hb in _run_lean(0.0, [""], 0.5))
