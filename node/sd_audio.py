"""The microphone adapter: PortAudio input through ``sounddevice``.

This is the only module that imports ``sounddevice``; it does so lazily, in
:meth:`SoundDeviceSource.start`, so the rest of the node (and the tests) work on
machines without PortAudio.

The PortAudio callback does nothing but copy the samples and its timing into a
bounded queue as an :class:`~node.audio.AudioBlock`:

* ``first_frame`` from the adapter's own frame counter (every frame the driver
  delivered is counted, including blocks later dropped because the queue was full, so
  a gap in ``first_frame`` shows the loss);
* ``adc_time_s`` = PortAudio's ``inputBufferAdcTime`` as reported (which clock it is in
  depends on the device; the timebase works that out);
* ``mono_ns`` / ``wall_ns`` = ``time.monotonic_ns()`` / ``time.time_ns()`` in the callback;
* ``overflow`` = the driver reported lost input (``status.input_overflow``) since the
  previous delivered block, or this is the first block after a restart.

Failures (device missing at open, the stream stopping on its own, no callback for
``stall_timeout_s``) make :meth:`SoundDeviceSource.read` raise
:class:`~node.audio.AudioDeviceError` with a one-line reason, after any blocks already
queued have been delivered. Calling :meth:`SoundDeviceSource.start` again retries:
it closes the old stream (giving up on it after ``close_timeout_s`` if PortAudio
hangs), re-scans PortAudio's devices (so a re-plugged USB microphone is found) and
opens a new stream. The frame counter is never reset: after a restart it jumps ahead
by the frames that elapsed while the device was down (estimated from the monotonic
clock), so frame indices stay roughly aligned with time, and the first new block has
``overflow`` set so the timebase knows continuity is broken.

Retry policy: the pipeline (:class:`node.pipeline.NodeRunner`) calls ``start()``
after an AudioDeviceError, waiting :func:`node.pipeline.backoff_s` between attempts
(1 s, 2 s, 4 s … capped at 30 s), and resets the sequence once blocks flow again
(not when ``start()`` merely succeeds: a device that opens but delivers nothing
keeps backing off).
"""

from __future__ import annotations

import importlib
import queue
import threading
import time
from types import ModuleType
from typing import Any

from common.config import AudioConfig
from node.audio import AudioBlock, AudioDeviceError

_PORTAUDIO_FIX = "install it with: apt-get install libportaudio2"


def _import_sounddevice() -> ModuleType:
    """Import sounddevice, turning a missing PortAudio into AudioDeviceError."""
    try:
        return importlib.import_module("sounddevice")
    except OSError as exc:  # the wheel bundles no PortAudio on Linux
        raise AudioDeviceError(
            f"PortAudio library not found ({exc}); {_PORTAUDIO_FIX}") from None
    except ImportError as exc:
        raise AudioDeviceError(
            f"the Python package sounddevice is missing ({exc}); "
            "install it with: pip install 'earwitness[audio]'") from None


def _device_arg(device: str | None) -> int | str | None:
    """Config device → sounddevice argument: None (default), an index, or a name."""
    if device is None or device.strip() == "":
        return None
    d = device.strip()
    return int(d) if d.isdigit() else d


class SoundDeviceSource:
    """A PortAudio input stream as an :class:`~node.audio.AudioSource`.

    Uses ``cfg.device`` (name substring or index; None = PortAudio's default input),
    ``cfg.sample_rate``, ``cfg.channels``, ``cfg.blocksize`` (frames per callback;
    0 lets PortAudio choose) and ``cfg.queue_blocks`` (queue bound). Blocks are
    (frames, channels) float32.
    """

    def __init__(self, cfg: AudioConfig, *, stall_timeout_s: float = 2.0,
                 close_timeout_s: float = 2.0) -> None:
        if cfg.sample_rate <= 0:
            raise ValueError(f"audio.sample_rate must be > 0 Hz, got {cfg.sample_rate}")
        if cfg.channels < 1:
            raise ValueError(f"audio.channels must be >= 1, got {cfg.channels}")
        if cfg.blocksize < 0:
            raise ValueError(f"audio.blocksize must be >= 0 frames, got {cfg.blocksize}")
        if cfg.queue_blocks < 1:
            raise ValueError(f"audio.queue_blocks must be >= 1, got {cfg.queue_blocks}")
        if stall_timeout_s <= 0 or close_timeout_s <= 0:
            raise ValueError("stall_timeout_s and close_timeout_s must be > 0 s")
        self.cfg = cfg
        self.sample_rate = float(cfg.sample_rate)
        self.channels = int(cfg.channels)
        self.stall_timeout_s = float(stall_timeout_s)
        self.close_timeout_s = float(close_timeout_s)
        self._device = _device_arg(cfg.device)
        self._device_label = repr(cfg.device) if self._device is not None else "default input"
        self._queue: queue.Queue[AudioBlock] = queue.Queue(maxsize=cfg.queue_blocks)
        self._lock = threading.Lock()
        self._stream: Any = None
        self._generation = 0
        self._state = "stopped"
        self._reason = ""
        self._starts = 0
        self._attempts = 0
        self._stuck_streams = 0
        # Written by the callback thread; plain ints/bools under the GIL.
        self._next_frame = 0
        self._pending_overflow = False
        self._resync = False
        self._last_cb_mono_ns = 0
        self._start_mono_ns = 0
        self._xruns = 0
        self._dropped = 0

    # ------------------------------------------------------------ callbacks
    def _make_callback(self, generation: int):
        def callback(indata, frames, time_info, status) -> None:
            mono = time.monotonic_ns()
            wall = time.time_ns()
            if generation != self._generation:
                return  # a stream we already gave up on
            frames = int(frames)
            if self._resync:
                # First callback after a restart: skip the counter ahead by the frames
                # that elapsed since the old stream's last callback.
                self._resync = False
                if self._last_cb_mono_ns:
                    elapsed = (mono - self._last_cb_mono_ns) * self.sample_rate / 1e9
                    self._next_frame += max(0, round(elapsed) - frames)
            self._last_cb_mono_ns = mono
            overflow = bool(status.input_overflow)
            if overflow:
                self._xruns += 1
            first = self._next_frame
            self._next_frame += frames
            if self._state != "running":
                if self._state == "failed":  # a stalled stream came back: not delivered
                    self._dropped += 1
                return
            try:
                adc = float(time_info.inputBufferAdcTime)
            except (AttributeError, TypeError, ValueError):
                adc = None
            flag = overflow or self._pending_overflow
            try:
                self._queue.put_nowait(AudioBlock(
                    samples=indata.copy(), first_frame=first, adc_time_s=adc,
                    mono_ns=mono, wall_ns=wall, overflow=flag))
                self._pending_overflow = False
            except queue.Full:
                self._dropped += 1
                self._pending_overflow = flag
        return callback

    def _make_finished_callback(self, generation: int):
        def finished() -> None:
            if generation == self._generation and self._state == "running":
                self._fail(f"audio stream on {self._device_label} stopped by the driver "
                           "(device unplugged or failed?)")
        return finished

    # ------------------------------------------------------------ lifecycle
    def _fail(self, reason: str) -> None:
        with self._lock:
            if self._state == "running":
                self._state = "failed"
                self._reason = reason

    def _input_devices(self, sd: ModuleType) -> str:
        try:
            names = [d["name"] for d in sd.query_devices() if d.get("max_input_channels", 0) > 0]
        except Exception:  # listing is only for the message
            return "(could not list devices)"
        if not names:
            return "PortAudio sees no input devices"
        shown = ", ".join(repr(n) for n in names[:8])
        return f"input devices: {shown}" + (" …" if len(names) > 8 else "")

    def _close_stream(self) -> None:
        """Close the current stream, giving up after close_timeout_s if PortAudio hangs."""
        stream, self._stream = self._stream, None
        if stream is None:
            return
        self._generation += 1

        def close() -> None:
            try:
                stream.abort(ignore_errors=True)
                stream.close(ignore_errors=True)
            except Exception:  # the stream is being thrown away anyway
                pass

        t = threading.Thread(target=close, name="earwitness-audio-close", daemon=True)
        t.start()
        t.join(self.close_timeout_s)
        if t.is_alive():
            self._stuck_streams += 1

    def _rescan(self, sd: ModuleType) -> None:
        """Re-initialise PortAudio so it enumerates devices again (hot-plug).

        Skipped while an abandoned stream may still be inside PortAudio: terminating
        under it can abort the process.
        """
        if self._stuck_streams:
            return
        try:
            sd._terminate()
            sd._initialize()
        except Exception:  # a failed rescan shows up as an open error just after
            pass

    def start(self) -> None:
        """Open the device and start the stream; retry after a failure.

        Raises AudioDeviceError (one line: which device, what went wrong, what to
        check) when PortAudio is missing or the device cannot be opened.
        """
        if self._state == "running":
            return
        sd = _import_sounddevice()
        self._close_stream()
        if self._attempts:
            self._rescan(sd)
        self._attempts += 1
        generation = self._generation
        try:
            stream = sd.InputStream(
                device=self._device, samplerate=self.sample_rate, channels=self.channels,
                blocksize=self.cfg.blocksize, dtype="float32",
                callback=self._make_callback(generation),
                finished_callback=self._make_finished_callback(generation))
        except (sd.PortAudioError, ValueError, TypeError) as exc:
            self._state, self._reason = "failed", f"cannot open {self._device_label}"
            raise AudioDeviceError(
                f"cannot open audio input {self._device_label} at {self.sample_rate:g} Hz, "
                f"{self.channels} ch: {str(exc).strip() or type(exc).__name__}; "
                f"{self._input_devices(sd)}; check the microphone is plugged in and "
                "[audio] device/sample_rate/channels") from None
        self._resync = self._starts > 0
        self._pending_overflow = self._starts > 0
        self._start_mono_ns = time.monotonic_ns()
        if not self._resync:
            self._last_cb_mono_ns = 0
        with self._lock:
            self._stream = stream
            self._state, self._reason = "running", ""
        try:
            stream.start()
        except sd.PortAudioError as exc:
            self._state, self._reason = "failed", f"cannot start {self._device_label}"
            self._close_stream()
            raise AudioDeviceError(
                f"cannot start audio input {self._device_label}: {exc}; "
                "check the microphone and that no other program holds the device") from None
        self._starts += 1

    def _check_health(self) -> None:
        if self._state == "failed":
            raise AudioDeviceError(self._reason)
        if self._state != "running":
            raise AudioDeviceError(
                f"audio input {self._device_label} is not running; call start()")
        now = time.monotonic_ns()
        last = max(self._last_cb_mono_ns, self._start_mono_ns)
        if now - last > self.stall_timeout_s * 1e9:
            self._fail(f"no audio from {self._device_label} for "
                       f"{(now - last) / 1e9:.1f} s (stream stalled)")
        else:
            stream = self._stream
            try:
                active = stream is not None and bool(stream.active)
            except Exception:
                active = False
            if not active:
                self._fail(f"audio stream on {self._device_label} is no longer active")
        if self._state == "failed":
            raise AudioDeviceError(self._reason)

    def read(self, timeout_s: float) -> AudioBlock | None:
        """The next block, or None if none arrived within ``timeout_s``.

        Blocks already queued are always delivered first; after that a failed or
        stalled device raises AudioDeviceError (until ``start()`` succeeds again).
        """
        deadline = time.monotonic() + max(0.0, float(timeout_s))
        while True:
            try:
                return self._queue.get_nowait()
            except queue.Empty:
                pass
            self._check_health()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            try:
                return self._queue.get(timeout=min(remaining, 0.05))
            except queue.Empty:
                continue

    def stop(self) -> None:
        """Stop and close the stream. Blocks already queued stay readable. Safe twice."""
        with self._lock:
            self._state = "stopped"
        self._close_stream()

    def stats(self) -> dict:
        """``xruns``, ``dropped_blocks``, ``device``, ``state`` and a few more counters."""
        return {
            "xruns": self._xruns,
            "dropped_blocks": self._dropped,
            "device": self.cfg.device if self.cfg.device is not None else "default",
            "state": self._state,
            "last_error": self._reason,
            "restarts": max(0, self._starts - 1),
            "frames": self._next_frame,
            "queued_blocks": self._queue.qsize(),
            "stuck_streams": self._stuck_streams,
        }
