"""NodeRunner (node/pipeline.py) against in-memory sources: channel and sample
rate of a WAV replay, the heartbeat watermark's promise, and faults (a full
disk while recording, no timing yet, a device failing mid-batch, lost frames)
that must neither stop the node nor lose audio already delivered."""

from __future__ import annotations

import errno
import logging
import wave

import numpy as np
import pytest
import scipy.io.wavfile

import node.pipeline
from common.config import AudioConfig, ConfigError, GpsConfig, NodeConfig, Position, PublisherConfig, TimebaseConfig
from common.recording_set import load_set
from common.timefmt import iso_to_ns
from node.audio import AudioBlock, AudioDeviceError, EndOfStream
from node.detector import detect
from node.outbox import Outbox, OutboxError
from node.pipeline import NodeRunner
from node.recorder import Recorder, RecorderError
from node.timebase import FixedTimebase
from node.wav_source import read_wav

FS = 48_000
T0 = 1_764_000_000 * 10**9
POS = Position(40.0, -80.0, 200.0)


# ------------------------------------------------------------------ stand-ins
class ArraySource:
    """A finite AudioSource over an array (n, channels): ``block`` frames per read,
    with a None ("nothing yet") after each block when ``gaps_between`` (so every
    batch is one block), and ``fail_at``: frame indices at which one read raises
    AudioDeviceError (the source then needs ``start()`` again and carries on)."""

    def __init__(self, x: np.ndarray, fs: float = FS, block: int = 480, *, gaps_between: bool = False,
                 fail_at: tuple[int, ...] = (), fail_opens: int = 0, skip: dict[int, int] | None = None) -> None:
        self.x = np.asarray(x, np.float32).reshape(len(x), -1)
        self.sample_rate = float(fs)
        self.channels = self.x.shape[1]
        self.block = block
        self.gaps_between = gaps_between
        self.fail_at = list(fail_at)
        self.fail_opens = fail_opens     # reads that fail right after a successful start()
        self.skip = dict(skip or {})     # frame → frames lost there (a gap in first_frame)
        self.pos = 0
        self.running = False
        self.starts = 0
        self._gap_next = False
        self._failing = 0

    def start(self) -> None:
        self.starts += 1
        self.running = True

    def read(self, timeout_s: float):
        if not self.running:
            raise AudioDeviceError("not running")
        if self.fail_opens > 0:
            self.fail_opens -= 1
            self.running = False
            raise AudioDeviceError("device opened but delivers nothing")
        if self.fail_at and self.pos >= self.fail_at[0]:
            self.fail_at.pop(0)
            self.running = False
            raise AudioDeviceError("USB microphone unplugged")
        if self.gaps_between and self._gap_next:
            self._gap_next = False
            return None
        if self.pos in self.skip:
            self.pos += self.skip.pop(self.pos)
        if self.pos >= len(self.x):
            raise EndOfStream("end")
        b = AudioBlock(samples=self.x[self.pos:self.pos + self.block], first_frame=self.pos)
        self.pos += self.block
        self._gap_next = True
        return b

    def stop(self) -> None:
        self.running = False

    def stats(self) -> dict:
        return {"xruns": 0, "dropped_blocks": 0}


class FullOutbox(Outbox):
    """An in-memory outbox whose disk is full while ``full`` is set."""

    def __init__(self) -> None:
        super().__init__(None)
        self.full = False

    def next_seq(self) -> int:
        if self.full:
            raise OutboxError("disk full: cannot write the outbox")
        return super().next_seq()


class Log:
    """A publisher stand-in that keeps what the node sent, in order."""

    def __init__(self) -> None:
        self.outbox = FullOutbox()
        self.sent: list[tuple[str, object]] = []

    @property
    def events(self) -> list:
        return [m for kind, m in self.sent if kind == "event"]

    @property
    def heartbeats(self) -> list:
        return [m for kind, m in self.sent if kind == "hb"]

    def submit(self, ev) -> None:
        self.sent.append(("event", ev))

    def heartbeat(self, hb) -> bool:
        self.sent.append(("hb", hb))
        return True

    def pump(self, timeout_ms: int = 0, now_s=None) -> int:
        return 0

    @property
    def unacked(self) -> int:
        return 0


def _cfg(**audio) -> NodeConfig:
    return NodeConfig(id="n1", audio=AudioConfig(source="sounddevice", **audio), timebase=TimebaseConfig(mode="fixed"),
                      publisher=PublisherConfig(heartbeat_s=3600.0), gps=GpsConfig(enabled=False))


def _burst(rng, x, fs, t0, amp, dur_s, tau_s) -> None:
    n, i = int(dur_s * fs), int(t0 * fs)
    x[i:i + n] += amp * rng.normal(0, 1, n) * np.exp(-np.arange(n) / (tau_s * fs))


def _two_sounds(fs: float = FS) -> np.ndarray:
    """2 s of quiet noise with a noisy stretch at 0.5–0.7 s (an onset at 0.5 s) and,
    at 1.0 s, a weak first arrival 20 ms before a loud one: the loud one triggers
    and the detector's look-back moves the onset back to 1.0 s, further before its
    trigger than the pick window."""
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1e-3, int(2 * fs))
    _burst(rng, x, fs, 0.5, 0.1, 0.2, 10)
    _burst(rng, x, fs, 1.0, 0.15, 0.04, 1)
    _burst(rng, x, fs, 1.02, 0.5, 0.02, 0.005)
    return x


def _click(n: int, at: int, fs: float = FS) -> np.ndarray:
    x = np.random.default_rng(0).normal(0, 1e-3, n)
    x[at:at + 40] += 0.8 * np.exp(-np.arange(40) / 8.0)
    return x


def _assert_watermark_kept(pub: Log) -> None:
    """Every event's onset is at or after every watermark sent before it."""
    mark = 0
    for kind, m in pub.sent:
        if kind == "hb":
            mark = max(mark, m.stream_utc_ns)
        else:
            assert m.t_utc_ns >= mark, f"event at {m.t_utc_ns} came after the watermark {mark}"


# ------------------------------------------------------------ 1. WAV replay
def test_wav_replay_of_the_second_channel_at_the_files_own_rate(tmp_path, monkeypatch):
    """`earwitness node` on a stereo 44.1 kHz WAV with mic_channel = 1 under the
    default 48 kHz config: no IndexError, the click is stamped at its true time,
    and --record keeps that channel at the file's rate."""
    import node.main
    import node.publisher

    fs = 44_100
    x = np.random.default_rng(0).normal(0, 1e-3, (3 * fs, 2))
    at = 2 * fs + 100
    x[at:at + 40, 1] += 0.8 * np.exp(-np.arange(40) / 8.0)
    wav = tmp_path / "s.wav"
    scipy.io.wavfile.write(wav, fs, x.astype(np.float32))
    toml = tmp_path / "node.toml"
    toml.write_text(f'[node]\nid = "n1"\noutbox_path = "{tmp_path / "ob.sqlite"}"\n'
                    f'[audio]\nsource = "wav"\nwav_path = "{wav}"\nwav_start_utc = "2025-11-24T16:00:00Z"\n'
                    f'mic_channel = 1\n[timebase]\nmode = "fixed"\n[gps]\nenabled = false\n')
    pubs: list[Log] = []

    class Pub(Log):
        def __init__(self, node_id, server, outbox, cfg, curve=None) -> None:
            super().__init__()
            self.outbox = outbox
            pubs.append(self)

        def close(self) -> None:
            pass

    class Services:
        def __init__(self, cfg, outbox, timebase=None) -> None:
            pass

        def status(self) -> dict:
            return {}

        def position(self):
            return POS

        def close(self) -> None:
            pass

    monkeypatch.setattr(node.publisher, "Publisher", Pub)
    monkeypatch.setattr(node.main, "NodeServices", Services)
    rec = tmp_path / "rec"
    assert node.main.main(["--config", str(toml), "--record", str(rec)]) == 0
    (ev,) = pubs[0].events
    assert ev.sample_rate_hz == fs
    true_ns = iso_to_ns("2025-11-24T16:00:00Z") + round(at / fs * 1e9)
    assert abs(ev.t_utc_ns - true_ns) < 200_000          # 0.2 ms, not 8 % of 2 s
    (piece,) = [p for p in rec.iterdir() if p.is_dir()]
    y, rate = read_wav(load_set(piece).nodes[0].wav)
    assert rate == fs and y.shape == (3 * fs, 1)
    assert np.max(np.abs(y[:, 0] - x[:, 1])) < 1 / 32767 + 1e-6


def test_mic_channel_the_source_lacks_is_a_config_error():
    cfg = NodeConfig(id="n1", audio=AudioConfig(source="wav", wav_path="x.wav", mic_channel=2))
    with pytest.raises(ConfigError, match=r"mic_channel = 2, but the audio source has 2 channel"):
        NodeRunner(cfg, ArraySource(np.zeros((10, 2))), FixedTimebase(T0, FS), Log(), lambda: POS)


# ------------------------------------------------------------ 2. watermark
def test_watermark_allows_for_the_detectors_look_back():
    """The look-back moves the second onset ~20 ms before its trigger, more than
    the pick window: no heartbeat may promise past it before it is sent."""
    x = _two_sounds()
    pub = Log()
    runner = NodeRunner(_cfg(), ArraySource(x, block=96, gaps_between=True), FixedTimebase(T0, FS), pub,
                        lambda: POS, heartbeat_stream_s=0.001)
    runner.run()
    ons = [round((ev.t_utc_ns - T0) * FS / 1e9) for ev in pub.events]
    assert len(ons) == 2 and abs(ons[1] - FS) < 100          # the weak first arrival at 1.0 s
    assert len(pub.heartbeats) > 900
    _assert_watermark_kept(pub)


def test_watermark_waits_for_onsets_held_without_a_position():
    x = _two_sounds()
    pub = Log()
    runner: list[NodeRunner] = []
    # no position until 1.5 s into the stream: both onsets are held until then
    position = (lambda: POS if runner[0].detector.frames_seen > 1.5 * FS else None)
    runner.append(NodeRunner(_cfg(), ArraySource(x, block=480, gaps_between=True), FixedTimebase(T0, FS), pub,
                             position, heartbeat_stream_s=0.01))
    runner[0].run()
    assert len(pub.events) == 2
    _assert_watermark_kept(pub)


def test_watermark_waits_for_onsets_held_while_the_outbox_is_full_and_at_the_end():
    x = _two_sounds()
    pub = Log()
    pub.outbox.full = True                       # the disk stays full to the end
    runner = NodeRunner(_cfg(), ArraySource(x, block=480, gaps_between=True), FixedTimebase(T0, FS), pub,
                        lambda: POS, heartbeat_stream_s=0.01)
    runner.run()
    final = pub.heartbeats[-1]
    assert pub.events == [] and final.status["final"] and final.status["events_held"] == 2
    first_onset = detect(x.astype(np.float32), runner.cfg.detector, FS)[0].frame
    assert all(hb.stream_utc_ns < FixedTimebase(T0, FS).to_utc_ns(first_onset) for hb in pub.heartbeats)


def test_onsets_held_without_a_position_are_bounded(monkeypatch, caplog):
    monkeypatch.setattr(node.pipeline, "HELD_MAX", 1)
    pub = Log()
    runner = NodeRunner(_cfg(), ArraySource(_two_sounds(), block=4800), FixedTimebase(T0, FS), pub, lambda: None)
    with caplog.at_level(logging.INFO, logger="earwitness.node"):
        runner.run()
    assert pub.heartbeats[-1].status["events_held"] == 1
    assert pub.heartbeats[-1].status.get("events_held_dropped") == 1
    assert sum("dropping the oldest" in r.getMessage() for r in caplog.records) == 1


# ------------------------------------------------------------ 3. faults
def test_a_full_disk_while_recording_stops_recording_not_the_node(caplog):
    calls = []

    def tap(block: AudioBlock) -> None:
        calls.append(block.first_frame)
        if len(calls) >= 3:
            raise RecorderError("cannot write /rec/n1.wav: No space left on device")

    pub = Log()
    runner = NodeRunner(_cfg(), ArraySource(_two_sounds(), block=4800), FixedTimebase(T0, FS), pub, lambda: POS,
                        tap=tap)
    with caplog.at_level(logging.INFO, logger="earwitness.node"):
        summary = runner.run()
    assert summary.frames == 2 * FS and len(pub.events) == 2     # detection went on to the end
    assert len(calls) == 3                                       # and the tap was not called again
    assert "No space left" in pub.heartbeats[-1].status["record_problem"]
    assert sum("No space left" in r.getMessage() for r in caplog.records) == 1


def test_recorder_disk_full_finishes_the_piece_and_raises_recorder_error(tmp_path, monkeypatch):
    real = wave.Wave_write.writeframes
    n = [0]

    def writeframes(self, data):
        n[0] += 1
        if n[0] >= 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, data)

    monkeypatch.setattr(wave.Wave_write, "writeframes", writeframes)
    tb = FixedTimebase(T0, 12_000)
    rec = Recorder(tmp_path, "pole-7", 12_000, 1, tb.to_utc_ns, lambda: POS)
    x = np.random.default_rng(0).uniform(-0.5, 0.5, (12_000, 2)).astype(np.float32)
    for i in range(2):
        rec.write(AudioBlock(samples=x[i * 1200:(i + 1) * 1200], first_frame=i * 1200))
    with pytest.raises(RecorderError, match="No space left on device"):
        rec.write(AudioBlock(samples=x[2400:3600], first_frame=2400))
    with pytest.raises(RecorderError):                     # stopped for good
        rec.write(AudioBlock(samples=x[3600:4800], first_frame=3600))
    assert rec.close_piece() is None
    (piece,) = rec.pieces                                  # what was written stays replayable
    y, fs = read_wav(load_set(piece).nodes[0].wav)
    assert fs == 12_000 and y.shape == (2400, 1)
    assert np.max(np.abs(y[:, 0] - x[:2400, 1])) < 1 / 32767 + 1e-6


def test_system_timebase_with_a_wav_source_is_a_config_error():
    from node.main import make_timebase

    cfg = NodeConfig(id="n1", audio=AudioConfig(source="wav", wav_path="x.wav"), timebase=TimebaseConfig(mode="system"))
    with pytest.raises(ConfigError, match=r'mode = "system".*source = "wav".*mode = "fixed".*wav_start_utc'):
        make_timebase(cfg, 48_000.0)


def test_pps_audio_timebase_counts_the_wav_files_own_channels():
    """PPS in channel 1 of a recording: a stereo WAV has it, whatever ``[audio]
    channels`` says; a mono one is a config error naming the file's count."""
    from node.main import make_timebase

    cfg = NodeConfig(id="n1", audio=AudioConfig(source="wav", wav_path="x.wav", channels=1),
                     timebase=TimebaseConfig(mode="pps-audio", pps_channel=1))
    assert make_timebase(cfg, 48_000.0, channels=2) is not None
    with pytest.raises(ConfigError, match=r"PPS from input channel 1 .*the WAV file has 1 channel"):
        make_timebase(cfg, 48_000.0, channels=1)


class LateTimebase(FixedTimebase):
    """Has no timing until ``ready`` frames have been observed (a PPS timebase before lock)."""

    def __init__(self, ready: int) -> None:
        super().__init__(T0, FS)
        self.ready = ready
        self.seen = 0

    def observe(self, block: AudioBlock) -> None:
        self.seen = block.first_frame + block.frames

    def to_utc_ns(self, frame: float) -> int:
        if self.seen < self.ready:
            raise RuntimeError("no PPS lock yet")
        return super().to_utc_ns(frame)


def test_onsets_before_the_timebase_has_timing_are_held_not_a_crash(caplog):
    pub = Log()
    runner = NodeRunner(_cfg(), ArraySource(_two_sounds(), block=480, gaps_between=True), LateTimebase(int(1.5 * FS)),
                        pub, lambda: POS, heartbeat_stream_s=0.01)
    with caplog.at_level(logging.INFO, logger="earwitness.node"):
        runner.run()
    assert len(pub.events) == 2
    assert any(hb.status.get("timing_problem") == "no PPS lock yet" for hb in pub.heartbeats)
    assert "timing_problem" not in pub.heartbeats[-1].status
    assert sum("no PPS lock yet" in r.getMessage() for r in caplog.records) == 1
    # from the first onset held until it is sent, the watermark does not move
    # (the timebase cannot say when the held onsets were)
    k0 = next(k for k, (kind, m) in enumerate(pub.sent) if kind == "hb" and m.status.get("timing_problem"))
    k1 = next(k for k, (kind, _m) in enumerate(pub.sent) if kind == "event")
    marks = {m.stream_utc_ns for kind, m in pub.sent[k0:k1] if kind == "hb"}
    assert len(marks) == 1 and k1 - k0 > 20


# ------------------------------------------------- 4.–6. device errors, gaps
def test_audio_read_before_a_device_failure_mid_batch_is_processed(monkeypatch, caplog):
    monkeypatch.setattr(node.pipeline, "backoff_s", lambda attempt: 0.0)
    at = FS + 100
    # blocks come back to back (one batch is 10 of them); the device fails two
    # blocks into the batch that holds the click
    src = ArraySource(_click(2 * FS, at), block=480, fail_at=(FS + 960,))
    pub = Log()
    runner = NodeRunner(_cfg(), src, FixedTimebase(T0, FS), pub, lambda: POS)
    with caplog.at_level(logging.INFO, logger="earwitness.node"):
        summary = runner.run()
    assert summary.device_errors == 1 and summary.frames == 2 * FS
    assert not any("frames lost" in r.getMessage() for r in caplog.records)
    (ev,) = pub.events
    assert abs((ev.t_utc_ns - T0) * FS / 1e9 - at) < 2


def test_retry_backoff_resets_when_audio_flows_not_when_the_device_opens(monkeypatch):
    attempts: list[int] = []
    monkeypatch.setattr(node.pipeline, "backoff_s", lambda attempt: attempts.append(attempt) or 0.0)
    # opens fine three times but delivers nothing; then audio flows; then fails once more
    src = ArraySource(np.zeros(FS // 2), block=480, fail_opens=3, fail_at=(FS // 4,))
    runner = NodeRunner(_cfg(), src, FixedTimebase(T0, FS), Log(), lambda: POS)
    runner.run()
    assert src.starts == 5
    assert attempts == [0, 1, 2, 0]


def test_triggers_pending_when_frames_are_lost_are_finished_not_dropped(caplog):
    """A click 20 ms before a gap: its trigger waits for samples after it that
    never come; the restarted detector must not forget it."""
    at = FS + 4800 - 960
    pub = Log()
    src = ArraySource(_click(2 * FS, at), block=480, gaps_between=True, skip={FS + 4800: FS // 2})
    runner = NodeRunner(_cfg(), src, FixedTimebase(T0, FS), pub, lambda: POS)
    with caplog.at_level(logging.INFO, logger="earwitness.node"):
        runner.run()
    assert any("frames lost" in r.getMessage() for r in caplog.records)
    (ev,) = pub.events
    assert abs((ev.t_utc_ns - T0) * FS / 1e9 - at) < 2


def test_an_onset_from_a_timebase_without_a_fit_still_encodes():
    """A timebase that cannot vouch for its time says σ = 1 s (the protocol's
    limit); with the pick's own σ on top the event must still be one the
    protocol takes, at that limit."""
    from common.protocol import MAX_SIGMA_NS, decode, encode
    from tests.conftest import friedlander

    x = np.random.default_rng(3).normal(0.0, 1e-3, FS * 2)
    x += friedlander(x.size, FS * 1.2, 0.3, FS)
    (onset,) = detect(x, NodeConfig(id="n1").detector, FS)
    ev = node.pipeline.onset_to_event(onset, node_id="n1", seq=1, timebase=FixedTimebase(T0, FS, sigma_ns=1e9),
                                      sample_rate_hz=FS, position=POS)
    assert ev.sigma_ns == MAX_SIGMA_NS
    assert decode(encode(ev)).sigma_ns == MAX_SIGMA_NS
