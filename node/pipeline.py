"""The node pipeline: audio source → timebase → detector → events → publisher.

:class:`NodeRunner` is the same for a pole-mounted node, a WAV replay and the
simulation; only the adapters handed to it differ. It runs in one thread: the
audio adapter's own callback thread only copies blocks into a queue.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from common.config import ConfigError, NodeConfig, Position
from common.protocol import MAX_SIGMA_NS, Event, Heartbeat
from node.audio import AudioBlock, AudioDeviceError, AudioSource, EndOfStream
from node.detector import Detector, Onset
from node.outbox import OutboxError
from node.publisher import HOLD_MAX_S
from node.timebase import Timebase

log = logging.getLogger("earwitness.node")

VERSION = "0.1.0"
#: Gather audio into chunks of this many seconds before processing (fewer,
#: larger numpy calls: a fifth of the CPU of 10 ms blocks; adds ≤ 0.1 s latency).
BATCH_S = 0.1
#: Onsets kept in memory at most while they cannot be sent (no position yet, no
#: timing yet, outbox full); beyond it the oldest are dropped (counted in health).
HELD_MAX = 10_000


@dataclass(frozen=True)
class RunSummary:
    frames: int
    events: int
    heartbeats: int
    device_errors: int


def onset_to_event(onset: Onset, *, node_id: str, seq: int, timebase: Timebase, sample_rate_hz: float,
                   position: Position) -> Event:
    """Stamp a detector onset with UTC from the timebase and wrap it as an Event.
    Its σ is the timebase's and the pick's in quadrature, at most the protocol's
    ``MAX_SIGMA_NS`` (a timebase with no fit yet says 1 s)."""
    st = timebase.status()
    pick_sigma_ns = onset.sigma_samples / sample_rate_hz * 1e9
    return Event(
        node_id=node_id, seq=seq,
        t_utc_ns=timebase.to_utc_ns(onset.frame),
        sigma_ns=min(float(math.hypot(st.sigma_ns, pick_sigma_ns)), MAX_SIGMA_NS),
        sample_rate_hz=float(sample_rate_hz),
        peak_dbfs=float(max(onset.peak_dbfs, -400.0)),
        snr_db=float(np.clip(onset.snr_db, -100.0, 400.0)),
        snippet_t0_ns=timebase.to_utc_ns(onset.snippet_first_frame),
        snippet=onset.snippet,
        lat=position.lat, lon=position.lon, alt=position.alt,
        features={k: float(v) for k, v in onset.features.items()},
        degraded=bool(st.degraded),
    )


def status_states(status: Mapping[str, Any]) -> frozenset:
    """The states in a heartbeat status, as opposed to its measurements: every
    flag and text (a problem, a mode, a detail) with its value, and which items
    are missing (null). A node sends its whole status at once when these change;
    levels, counters and metrics wait for the next periodic one (docs/protocol.md)."""
    return frozenset((k, v) if v is None or isinstance(v, (bool, str)) else (k, "number")
                     for k, v in status.items())


def check_mic_channel(mic_channel: int, channels: int, source: str) -> None:
    """ConfigError unless ``[audio] mic_channel`` is one of the ``channels`` the
    audio ``source`` (named so in the message) delivers."""
    if not 0 <= mic_channel < channels:
        raise ConfigError(f"[audio] mic_channel = {mic_channel}, but {source} has {channels} channel(s); "
                          f"channels count from 0: set mic_channel to 0..{channels - 1}")


def backoff_s(attempt: int, first_s: float = 1.0, max_s: float = 30.0) -> float:
    """Delay before retry number ``attempt`` (0-based): 1, 2, 4, … capped at 30 s.

    The node's one retry back-off for the audio device: :class:`NodeRunner`
    counts the attempts since audio last flowed (reset by the first block after
    a restart, not by a successful open)."""
    return min(max_s, first_s * 2.0 ** max(0, attempt))


class NodeRunner:
    """Runs one node until ``stop`` is set or a finite source ends.

    ``position``: returns the node's current position (surveyed or from GPS), or
    None while it is unknown — events are then held back, since the server cannot
    use an event without a position.
    ``status``: returns extra heartbeat fields (GPS, clock, system metrics).
    ``heartbeat_stream_s``: also send a heartbeat every this many seconds of audio
    (lets a faster-than-real-time simulation advance the server's watermark).
    ``tap``: also called with every block processed (e.g. the recorder). If it
    raises (a full disk while recording), it is logged once, reported in the
    heartbeat status as ``record_problem`` and not called again; detection goes on.

    The detector runs at the source's sample rate (a WAV file's own rate, which
    may differ from ``[audio] sample_rate``) on column ``[audio] mic_channel`` of
    the source's blocks (every adapter delivers all its channels); a
    ``mic_channel`` the source does not have is a ConfigError here.
    Onsets that cannot be sent yet (no position, no timing yet, outbox full) are
    held in memory, at most ``HELD_MAX`` (the oldest are dropped beyond that,
    counted as ``events_held_dropped``), and hold the heartbeat watermark back
    for up to ``HOLD_MAX_S`` each, like unacked events in the publisher.
    """

    def __init__(self, cfg: NodeConfig, source: AudioSource, timebase: Timebase, publisher,
                 position: Callable[[], Position | None], *,
                 status: Callable[[], dict] | None = None,
                 heartbeat_stream_s: float | None = None,
                 tap: Callable[[AudioBlock], None] | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.cfg = cfg
        self.source = source
        self.timebase = timebase
        self.publisher = publisher
        self.position = position
        self.status_fn = status
        self.sleep = sleep
        check_mic_channel(cfg.audio.mic_channel, int(source.channels), "the audio source")
        self.fs = float(source.sample_rate)
        if self.fs != float(cfg.audio.sample_rate):
            log.info("audio: the source runs at %g Hz ([audio] sample_rate = %d is not used for it)",
                     self.fs, cfg.audio.sample_rate)
        self.detector = Detector(cfg.detector, self.fs)
        self.heartbeat_stream_s = heartbeat_stream_s
        self.tap = tap
        #: onsets not sent yet, each with the monotonic time it was first held
        self._held: list[tuple[Onset, float]] = []
        self._held_dropped = 0
        self._timing_problem = ""
        self._record_problem = ""
        self._attempt = 0           # device retries since audio last flowed
        self._hb_seq = 0
        self._events = 0
        self._last_event_wall = -1e18      # monotonic time of the last event reported
        self._heartbeats = 0
        self._device_errors = 0
        self._problem = ""
        self._last_hb_wall = 0.0
        self._last_hb_frame = 0
        self._overflows = 0
        self._peak_recent = 0.0
        self._clipped_recent = 0
        self._last_mark = 0
        self._outbox_problem = ""
        self._status_sent_wall: float | None = None     # monotonic time of the last full status sent
        self._status_states: frozenset | None = None    # its states (status_states)

    # ---------------------------------------------------------------- run
    def run(self, stop: threading.Event | None = None) -> RunSummary:
        stop = stop or threading.Event()
        self._attempt = 0
        started = False
        self._heartbeat()           # say hello (and where we are) before any audio
        while not stop.is_set():
            try:
                if not started:
                    self.source.start()
                    started = True
                block = self._read_batch()
            except EndOfStream:
                self._handle(self.detector.flush())
                self._heartbeat(final=True)
                self._drain(stop)
                break
            except AudioDeviceError as exc:
                self._device_errors += 1
                started = False
                delay = backoff_s(self._attempt)
                self._attempt += 1
                if str(exc) != self._problem:
                    log.error("audio: %s — retrying in %.0f s", exc, delay)
                self._problem = str(exc)
                self.source.stop()
                self._heartbeat()
                self._wait(stop, delay)
                continue
            if block is not None:
                self._process(block)
            self.publisher.pump(0)
            self._maybe_heartbeat()
        self.source.stop()
        return RunSummary(self.detector.frames_seen, self._events, self._heartbeats, self._device_errors)

    def _wait(self, stop: threading.Event, delay: float) -> None:
        end = time.monotonic() + delay
        while not stop.is_set() and time.monotonic() < end:
            self.publisher.pump(100)
            self._maybe_heartbeat()

    def _drain(self, stop: threading.Event, timeout_s: float = 10.0) -> None:
        """After the last block: keep sending until every event is acked."""
        end = time.monotonic() + timeout_s
        while self.publisher.unacked and time.monotonic() < end and not stop.is_set():
            self.publisher.pump(50)

    def _audio_flows(self) -> None:
        """A block arrived: the device works, so the next failure retries from scratch."""
        self._attempt = 0
        if self._problem:
            log.info("audio device is back: %s", self.cfg.audio.device or "default")
            self._problem = ""

    def _read_batch(self) -> AudioBlock | None:
        """About ``BATCH_S`` of contiguous audio, or None if nothing came. A device
        failure mid-batch is raised only after the blocks read so far are processed."""
        first = self.source.read(0.2)
        if first is None:
            return None
        self._audio_flows()
        blocks = [first]
        frames = first.frames
        deadline = time.monotonic() + BATCH_S
        while frames < BATCH_S * self.fs:
            try:
                nxt = self.source.read(max(0.0, deadline - time.monotonic()))
            except EndOfStream:
                break
            except AudioDeviceError:
                self._process(self._merge(blocks))
                raise
            if nxt is None:
                break
            if nxt.first_frame != blocks[-1].first_frame + blocks[-1].frames:
                self._process(self._merge(blocks))
                blocks, frames = [], 0
            blocks.append(nxt)
            frames += nxt.frames
        return self._merge(blocks)

    def _merge(self, blocks: list[AudioBlock]) -> AudioBlock:
        for b in blocks:
            self.timebase.observe(b)
        if len(blocks) == 1:
            return blocks[0]
        return AudioBlock(samples=np.concatenate([b.samples for b in blocks]), first_frame=blocks[0].first_frame,
                          adc_time_s=blocks[0].adc_time_s, mono_ns=blocks[0].mono_ns, wall_ns=blocks[0].wall_ns,
                          overflow=any(b.overflow for b in blocks))

    def _process(self, block: AudioBlock) -> None:
        if self.tap is not None:
            try:
                self.tap(block)
            except Exception as exc:  # recording is optional: a full disk must not stop detection
                self._record_problem = f"recording stopped: {exc}"
                log.error("%s; detection goes on", self._record_problem)
                self.tap = None
        if block.overflow:
            self._overflows += 1
        if block.first_frame != self.detector.frames_seen:
            gap = block.first_frame - self.detector.frames_seen
            log.warning("audio: %d frames lost before frame %d; the detector restarts", gap, block.first_frame)
            # finish the triggers still waiting for samples after them, with the samples there are
            self._handle(self.detector.flush())
            self.detector = Detector(self.cfg.detector, self.fs, start_frame=block.first_frame)
        mic = block.samples[:, self.cfg.audio.mic_channel]
        self._peak_recent = max(self._peak_recent, float(np.max(np.abs(mic))) if mic.size else 0.0)
        self._clipped_recent += int(np.count_nonzero(np.abs(mic) >= 0.999))
        self._handle(self.detector.process(mic))

    def _hold(self, pending: list[tuple[Onset, float]]) -> None:
        """Keep onsets that cannot be sent yet: the newest ``HELD_MAX``."""
        excess = len(pending) - HELD_MAX
        if excess > 0:
            if not self._held_dropped:
                log.error("holding more than %d events that cannot be sent yet (no position, no timing "
                          "or outbox full): dropping the oldest (counted in events_held_dropped)", HELD_MAX)
            self._held_dropped += excess
            pending = pending[excess:]
        self._held = pending

    def _handle(self, onsets: list[Onset]) -> None:
        now = time.monotonic()
        pending = self._held + [(o, now) for o in onsets]
        self._held = []
        if not pending:
            return
        pos = self.position()
        if pos is None:               # the server cannot use an event without a position
            self._hold(pending)
            return
        for k, (onset, _since) in enumerate(pending):
            try:
                ev = onset_to_event(onset, node_id=self.cfg.id, seq=0, timebase=self.timebase,
                                    sample_rate_hz=self.fs, position=pos)
            except RuntimeError as exc:       # the timebase has no timing yet: keep the onsets, say so once
                if not self._timing_problem:
                    log.warning("timing: %s — holding %d event(s) until the timebase can stamp them",
                                exc, len(pending) - k)
                self._timing_problem = str(exc) or "no timing yet"
                self._hold(pending[k:])
                return
            try:
                seq = self.publisher.outbox.next_seq()
            except OutboxError as exc:        # disk full: keep the onsets, say so once
                self._hold(pending[k:])
                if not self._outbox_problem:
                    log.error("outbox: %s — holding %d event(s) in memory until there is space",
                              exc, len(self._held))
                self._outbox_problem = str(exc)
                return
            self.publisher.submit(dataclasses.replace(ev, seq=seq))
            self._events += 1
            self._last_event_wall = time.monotonic()
        if self._timing_problem:
            log.info("timing: events can be stamped again")
        self._timing_problem = ""
        if self._outbox_problem:
            log.info("outbox: writable again")
        self._outbox_problem = ""

    def _held_cap_ns(self) -> int | None:
        """Just before the earliest onset still held (and held for less than
        ``HOLD_MAX_S``), or None when none is. When the timebase cannot stamp it
        yet, the last mark sent: the watermark then does not move."""
        since = time.monotonic() - HOLD_MAX_S
        frames = [o.frame for o, held_at in self._held if held_at >= since]
        if not frames:
            return None
        try:
            return self.timebase.to_utc_ns(min(frames)) - 1
        except RuntimeError:
            return self._last_mark

    # ----------------------------------------------------------- heartbeats
    def _maybe_heartbeat(self) -> None:
        now = time.monotonic()
        frames = self.detector.frames_seen
        pc = self.cfg.publisher
        active = now - self._last_event_wall <= pc.active_s     # something was heard lately
        due_wall = now - self._last_hb_wall >= (pc.active_heartbeat_s if active else pc.heartbeat_s)
        due_stream = (self.heartbeat_stream_s is not None
                      and frames - self._last_hb_frame >= self.heartbeat_stream_s * self.fs)
        if due_wall or due_stream:
            self._heartbeat()

    def stream_watermark_ns(self, final: bool = False) -> int:
        """UTC time before which this node will report no further onsets.

        From the timebase while audio flows: a trigger still waiting for the
        samples after it is at most ``need_after`` frames old, and its onset
        lies at most ``max_lead`` frames before it (the pick window or the
        look-back, and the leading-edge refinement). While the audio device is down (or before the timebase has any
        timing) nothing earlier than now can come from the audio, so the wall
        clock — otherwise a node with a dead microphone would hold the whole
        network's association back. Either way the mark stays before every onset
        held back unsent (no position, no timing, outbox full) for less than
        ``HOLD_MAX_S``; it never goes back."""
        frames = self.detector.frames_seen
        if not final:
            frames -= self.detector.need_after + self.detector.max_lead
        try:
            mark = self.timebase.to_utc_ns(max(0, frames))
        except RuntimeError:
            mark = 0
        if self._problem or mark == 0:
            mark = max(mark, time.time_ns())
        cap = self._held_cap_ns()
        if cap is not None:
            mark = min(mark, cap)
        self._last_mark = max(self._last_mark, mark)
        return self._last_mark

    def _heartbeat(self, final: bool = False) -> None:
        pos = self.position()
        st = self.timebase.status()
        status = {
            "timing_mode": st.mode, "timing_locked": st.locked, "timing_sigma_ns": float(st.sigma_ns),
            "timing_degraded": st.degraded, "timing_detail": st.detail[:200], "sample_rate_est_hz": float(st.rate_hz),
            "audio_problem": self._problem[:200], "audio_overflows": self._overflows,
            "outbox_problem": self._outbox_problem[:200], "events_held": len(self._held),
            "audio_peak_dbfs": float(20 * np.log10(max(self._peak_recent, 1e-10))),
            "audio_clipped_samples": self._clipped_recent,
            "noise_floor_dbfs": self.detector.noise_floor_dbfs(),
            "outbox_pending": self.publisher.unacked,
            "events_total": self._events, "position_known": pos is not None,
            "final": final,
        }
        if self._held_dropped:
            status["events_held_dropped"] = self._held_dropped
        if self._record_problem:
            status["record_problem"] = self._record_problem[:200]
        if self._timing_problem:
            status["timing_problem"] = self._timing_problem[:200]
        for k, v in self.source.stats().items():
            if isinstance(v, (int, float, str, bool)) or v is None:
                status[f"audio_{k}"] = v
        link = getattr(self.publisher, "status", None)
        if callable(link):
            status.update(link())
        if self.status_fn is not None:
            status.update(self.status_fn())
        now = time.monotonic()
        states = status_states(status)
        full = (final or self._status_sent_wall is None or states != self._status_states
                or now - self._status_sent_wall >= self.cfg.publisher.status_s)
        hb = Heartbeat(node_id=self.cfg.id, seq=self._hb_seq, t_utc_ns=time.time_ns(),
                       stream_utc_ns=self.stream_watermark_ns(final),
                       lat=pos.lat if pos else 0.0, lon=pos.lon if pos else 0.0, alt=pos.alt if pos else 0.0,
                       version=VERSION, status=status if full else {})
        self._hb_seq += 1
        self._heartbeats += 1
        self.publisher.heartbeat(hb)
        self._last_hb_wall = now
        self._last_hb_frame = self.detector.frames_seen
        if full:
            self._status_sent_wall, self._status_states = now, states
            # the peak and clipping reported cover the time since the last full status
            self._peak_recent = 0.0
            self._clipped_recent = 0

