"""The PortAudio adapter: its state machine against a fake sounddevice module, and the
real thing against PortAudio + a JACK dummy server (skipped without jackd/PortAudio)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time

import numpy as np
import pytest

from common.config import AudioConfig, TimebaseConfig
from node import sd_audio
from node.audio import AudioDeviceError, AudioSource
from node.sd_audio import SoundDeviceSource
from node.timebase_system import SystemClockTimebase


# ------------------------------------------------------------------ fake sounddevice
class _Flags:
    def __init__(self, overflow: bool) -> None:
        self.input_overflow = overflow


class _Time:
    def __init__(self, adc: float) -> None:
        self.inputBufferAdcTime = adc


class FakePortAudioError(Exception):
    pass


class FakeSd:
    """Just enough of the sounddevice module for SoundDeviceSource."""

    PortAudioError = FakePortAudioError

    def __init__(self) -> None:
        self.streams: list[FakeStream] = []
        self.rescans = 0
        self.hang_close = threading.Event()  # set → close() blocks until released
        self.release = threading.Event()
        sd = self

        class FakeStream:
            def __init__(self, *, device, samplerate, channels, blocksize, dtype,
                         callback, finished_callback) -> None:
                if device == "missing":
                    raise FakePortAudioError("Error querying device -1")
                self.device, self.channels, self.dtype = device, channels, dtype
                self.callback, self.finished = callback, finished_callback
                self.active = False
                self.closed = False
                sd.streams.append(self)

            def start(self) -> None:
                self.active = True

            def abort(self, ignore_errors=True) -> None:
                self.active = False

            def close(self, ignore_errors=True) -> None:
                if sd.hang_close.is_set():
                    sd.release.wait(10)
                self.closed = True

            def feed(self, frames: int = 480, adc: float = 1.0, overflow: bool = False,
                     value: float = 0.25) -> np.ndarray:
                data = np.full((frames, self.channels), value, np.float32)
                self.callback(data, frames, _Time(adc), _Flags(overflow))
                return data

        self.InputStream = FakeStream

    def query_devices(self):
        return [{"name": "USB Mic: Audio (hw:1,0)", "max_input_channels": 1},
                {"name": "HDMI out", "max_input_channels": 0}]

    def _terminate(self) -> None:
        self.rescans += 1

    def _initialize(self) -> None:
        pass


@pytest.fixture
def fake_sd(monkeypatch):
    sd = FakeSd()
    monkeypatch.setattr(sd_audio, "_import_sounddevice", lambda: sd)
    yield sd
    sd.release.set()


def _cfg(**kw) -> AudioConfig:
    base = dict(device="USB Mic", sample_rate=48_000, channels=2, blocksize=480)
    base.update(kw)
    return AudioConfig(**base)


def test_portaudio_missing_gives_install_hint(monkeypatch):
    def no_portaudio(name):
        raise OSError("PortAudio library not found")
    monkeypatch.setattr(sd_audio.importlib, "import_module", no_portaudio)
    src = SoundDeviceSource(_cfg())
    with pytest.raises(AudioDeviceError, match="apt-get install libportaudio2") as exc:
        src.start()
    assert "\n" not in str(exc.value)


def test_callback_blocks_frames_and_timestamps(fake_sd):
    src = SoundDeviceSource(_cfg())
    assert isinstance(src, AudioSource)
    src.start()
    stream = fake_sd.streams[-1]
    assert stream.dtype == "float32" and stream.channels == 2
    data = stream.feed(adc=10.0)
    data[:] = 9.0  # the block must be a copy, not PortAudio's buffer
    stream.feed(adc=10.01, overflow=True)
    stream.feed(frames=100, adc=10.02)
    blocks = [src.read(0.1) for _ in range(3)]
    assert [b.first_frame for b in blocks] == [0, 480, 960]
    assert [b.frames for b in blocks] == [480, 480, 100]
    assert np.all(blocks[0].samples == 0.25) and blocks[0].samples.shape == (480, 2)
    assert [b.adc_time_s for b in blocks] == [10.0, 10.01, 10.02]
    assert [b.overflow for b in blocks] == [False, True, False]
    assert all(b.mono_ns > 0 and b.wall_ns > 1_600_000_000 * 10 ** 9 for b in blocks)
    assert blocks[0].mono_ns <= blocks[1].mono_ns <= blocks[2].mono_ns
    st = src.stats()
    assert st["xruns"] == 1 and st["dropped_blocks"] == 0 and st["state"] == "running"
    assert st["device"] == "USB Mic" and st["frames"] == 1060
    assert src.read(0.02) is None  # nothing queued, not stalled: a timeout
    src.stop()
    src.stop()
    assert stream.closed and src.stats()["state"] == "stopped"


def test_full_queue_drops_are_counted_and_leave_a_frame_gap(fake_sd):
    src = SoundDeviceSource(_cfg(queue_blocks=2))
    src.start()
    s = fake_sd.streams[-1]
    for _ in range(4):
        s.feed()
    assert [src.read(0.1).first_frame for _ in range(2)] == [0, 480]
    assert src.stats()["dropped_blocks"] == 2
    s.feed()
    assert src.read(0.1).first_frame == 1920  # 960 and 1440 were lost, visibly
    src.stop()


def test_stall_raises_after_queued_blocks_and_start_retries(fake_sd):
    src = SoundDeviceSource(_cfg(), stall_timeout_s=0.1)
    src.start()
    old = fake_sd.streams[-1]
    old.feed()
    old.feed()
    time.sleep(0.15)
    assert src.read(0.0).first_frame == 0  # queued blocks first
    assert src.read(0.0).first_frame == 480
    stalled = r"no audio from 'USB Mic' for 0\.\d s \(stream stalled\)"
    with pytest.raises(AudioDeviceError, match=stalled):
        src.read(0.5)
    with pytest.raises(AudioDeviceError, match="stalled"):
        src.read(0.0)
    assert src.stats()["state"] == "failed"
    # taken before the old stream's last callback, so no margin is needed below
    t_stall = time.monotonic()
    old.feed()  # the stalled stream comes back: not delivered, counted
    assert src.stats()["dropped_blocks"] == 1
    src.start()  # retry: closes the old stream, rescans, opens a new one
    assert old.closed and len(fake_sd.streams) == 2 and fake_sd.rescans == 1
    time.sleep(0.05)
    fake_sd.streams[-1].feed()
    b = src.read(0.1)
    assert b.overflow  # continuity broken across the restart
    elapsed = (time.monotonic() - t_stall) * 48_000
    # Skipped ahead by the outage: the frames between the old stream's last callback
    # and the new one's first (≥ the 0.05 s slept, ≤ all the time since t_stall),
    # less the new block's own 480.
    assert b.first_frame >= 1440 + 0.05 * 48_000 - 480
    assert b.first_frame <= 1440 + elapsed - 480 + 1
    assert src.stats()["restarts"] == 1 and src.stats()["state"] == "running"
    src.stop()


def test_driver_stopping_the_stream_raises(fake_sd):
    src = SoundDeviceSource(_cfg())
    src.start()
    fake_sd.streams[-1].finished()
    with pytest.raises(AudioDeviceError, match="stopped by the driver"):
        src.read(0.1)
    src.start()
    fake_sd.streams[-1].feed()
    assert src.read(0.1) is not None


def test_inactive_stream_raises(fake_sd):
    src = SoundDeviceSource(_cfg())
    src.start()
    fake_sd.streams[-1].active = False
    with pytest.raises(AudioDeviceError, match="no longer active"):
        src.read(0.1)


def test_open_error_is_one_clear_line(fake_sd):
    src = SoundDeviceSource(_cfg(device="missing"))
    with pytest.raises(AudioDeviceError) as exc:
        src.start()
    msg = str(exc.value)
    assert "'missing'" in msg and "Error querying device" in msg
    assert "USB Mic: Audio (hw:1,0)" in msg and "HDMI" not in msg  # inputs only
    assert "\n" not in msg
    assert src.stats()["state"] == "failed"
    with pytest.raises(AudioDeviceError):
        src.read(0.0)


def test_read_before_start_raises(fake_sd):
    with pytest.raises(AudioDeviceError, match="not running; call start"):
        SoundDeviceSource(_cfg()).read(0.0)


def test_hanging_close_does_not_block_the_retry(fake_sd):
    src = SoundDeviceSource(_cfg(), stall_timeout_s=0.05, close_timeout_s=0.2)
    src.start()
    time.sleep(0.08)
    with pytest.raises(AudioDeviceError):
        src.read(0.0)
    fake_sd.hang_close.set()
    t = time.monotonic()
    src.start()
    assert time.monotonic() - t < 1.5
    assert src.stats()["stuck_streams"] == 1
    assert fake_sd.rescans == 0  # never re-initialise PortAudio under a stuck stream
    fake_sd.release.set()
    src.stop()


def test_config_validation():
    with pytest.raises(ValueError, match="channels"):
        SoundDeviceSource(_cfg(channels=0))
    with pytest.raises(ValueError, match="queue_blocks"):
        SoundDeviceSource(_cfg(queue_blocks=0))


# ------------------------------------------------------------------ real PortAudio + JACK
def _real_sounddevice():
    try:
        import sounddevice
    except OSError as exc:
        pytest.skip(f"PortAudio missing ({exc}); apt-get install libportaudio2")
    return sounddevice


def test_real_portaudio_nonexistent_device():
    _real_sounddevice()
    src = SoundDeviceSource(_cfg(device="no-such-device-xyz"))
    with pytest.raises(AudioDeviceError, match="no-such-device-xyz") as exc:
        src.start()
    assert "\n" not in str(exc.value)
    src.stop()


@pytest.fixture(scope="module")
def jack_server():
    """A private JACK dummy server (48 kHz, 480-frame periods) that PortAudio sees."""
    if shutil.which("jackd") is None:
        pytest.skip("jackd not installed (apt-get install jackd2)")
    sd = _real_sounddevice()
    name = f"earwitness-test-{os.getpid()}"
    old_env = os.environ.get("JACK_DEFAULT_SERVER")
    os.environ["JACK_DEFAULT_SERVER"] = name
    proc = subprocess.Popen(
        ["jackd", "-n", name, "--no-realtime", "-d", "dummy", "-r", "48000", "-p", "480"],
        env={**os.environ, "JACK_NO_AUDIO_RESERVATION": "1"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def restore_env():
        if old_env is None:
            os.environ.pop("JACK_DEFAULT_SERVER", None)
        else:
            os.environ["JACK_DEFAULT_SERVER"] = old_env

    found = False
    for _ in range(50):
        time.sleep(0.1)
        if proc.poll() is not None:
            break
        sd._terminate()
        sd._initialize()
        if any("JACK" in sd.query_hostapis(d["hostapi"])["name"] for d in sd.query_devices()):
            found = True
            break
    if not found:
        proc.kill()
        proc.wait()
        restore_env()
        sd._terminate()
        sd._initialize()
        pytest.skip("jackd did not start a dummy server PortAudio can see")
    yield proc
    # PortAudio's JACK host keeps a client open: terminate it before the server goes,
    # or Pa_Terminate asserts at interpreter exit.
    sd._terminate()
    if proc.poll() is None:
        proc.send_signal(signal.SIGCONT)
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    restore_env()
    sd._initialize()


def _read_for(src: SoundDeviceSource, seconds: float) -> list:
    blocks = []
    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end:
        b = src.read(0.5)
        assert b is not None, "no block within 0.5 s from the JACK dummy device"
        blocks.append(b)
    return blocks


def test_jack_stream_blocks_are_continuous_and_timed(jack_server):
    src = SoundDeviceSource(_cfg(device="system", channels=2))
    try:
        src.start()
        blocks = _read_for(src, 2.0)
    finally:
        src.stop()
    assert 150 <= len(blocks) <= 260
    assert all(b.samples.shape == (480, 2) and b.samples.dtype == np.float32 for b in blocks)
    assert blocks[0].first_frame == 0
    for a, b in zip(blocks, blocks[1:]):
        assert b.first_frame == a.first_frame + a.frames
    mono = np.array([b.mono_ns for b in blocks], dtype=np.float64) / 1e9
    gaps = np.diff(mono)
    assert abs(np.median(gaps) - 0.010) < 0.002  # 480 frames at 48 kHz
    # Frames are counted at the pace of time (none lost or invented): the callbacks'
    # clock against the frame counter over half the run, the median over all such
    # pairs — robust to a few callbacks a busy machine delays, which the first and
    # last alone are not.
    frame_s = np.array([b.first_frame for b in blocks], dtype=np.float64) / 48_000
    half = len(blocks) // 2
    pace = np.median((mono[half:] - mono[:-half]) / (frame_s[half:] - frame_s[:-half]))
    assert abs(pace - 1) < 0.05, pace          # 5 % of ~1 s: five 10 ms blocks
    adc = np.array([b.adc_time_s for b in blocks])
    assert np.all(np.diff(adc) > 0)
    assert abs(np.median(np.diff(adc)) - 0.010) < 0.001
    st = src.stats()
    # A loaded machine may make JACK report an xrun; the counter must match the flags.
    assert st["xruns"] == sum(b.overflow for b in blocks) <= 3
    assert st["dropped_blocks"] == 0
    # The JACK backend's ADC time is stream-relative: the timebase must see that and
    # fall back to the callback's clock.
    tb = SystemClockTimebase(TimebaseConfig(fit_window_s=10.0), 48_000)
    for b in blocks:
        tb.observe(b)
    assert tb.adc_clock() == "stream-relative"
    assert tb.source == "callback"
    assert abs(tb.rate_hz() / 48_000 - 1) < 1e-3
    t_first = tb.to_utc_ns(blocks[0].first_frame)
    # Against the callbacks' wall clock (the median over the blocks of when frame 0
    # was due, not the first block alone, which a busy machine may delay): a timebase
    # that took JACK's stream-relative ADC time for UTC would be off by decades. The
    # bound is 10× a 50 ms callback jitter so that shared CI cores cannot make it flaky.
    wall_s = np.array([b.wall_ns for b in blocks], dtype=np.float64) / 1e9
    frame0_wall_s = float(np.median(wall_s - (frame_s - frame_s[0])))
    assert abs(t_first / 1e9 - frame0_wall_s) < 0.5


def test_jack_stall_is_reported_and_restart_recovers(jack_server):
    src = SoundDeviceSource(_cfg(device="system", channels=2), stall_timeout_s=0.4)
    try:
        src.start()
        before = _read_for(src, 0.3)
        jack_server.send_signal(signal.SIGSTOP)
        try:
            with pytest.raises(AudioDeviceError, match="stalled"):
                for _ in range(100):
                    src.read(0.1)
        finally:
            jack_server.send_signal(signal.SIGCONT)
        time.sleep(0.2)
        src.start()
        after = _read_for(src, 0.3)
    finally:
        src.stop()
    assert after[0].overflow
    assert after[0].first_frame > before[-1].first_frame + 0.3 * 48_000
    for a, b in zip(after, after[1:]):
        assert b.first_frame == a.first_frame + a.frames
    assert src.stats()["restarts"] == 1
