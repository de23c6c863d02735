"""The node pipeline: audio source → timebase → detector → events → publisher.

:class:`NodeRunner` is the same for a pole-mounted node, a WAV replay and the
simulation; only the adapters handed to it differ. It runs in one thread: the
audio adapter's own callback thread only copies blocks into a queue.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from common.config import NodeConfig, Position
from common.protocol import Event, Heartbeat
from node.audio import AudioBlock, AudioDeviceError, AudioSource, EndOfStream
from node.detector import Detector, Onset
from node.outbox import OutboxError
from node.timebase import Timebase

log = logging.getLogger("earwitness.node")

VERSION = "0.1.0"
#: Gather audio into chunks of this many seconds before processing (fewer,
#: larger numpy calls: a fifth of the CPU of 10 ms blocks; adds ≤ 0.1 s latency).
BATCH_S = 0.1
#: Onsets kept in memory at most while the outbox cannot take them (disk full).
HELD_MAX = 10_000


@dataclass(frozen=True)
class RunSummary:
    frames: int
    events: int
    heartbeats: int
    device_errors: int


def onset_to_event(onset: Onset, *, node_id: str, seq: int, timebase: Timebase, sample_rate_hz: float,
                   position: Position) -> Event:
    """Stamp a detector onset with UTC from the timebase and wrap it as an Event."""
    st = timebase.status()
    pick_sigma_ns = onset.sigma_samples / sample_rate_hz * 1e9
    return Event(
        node_id=node_id, seq=seq,
        t_utc_ns=timebase.to_utc_ns(onset.frame),
        sigma_ns=float(math.hypot(st.sigma_ns, pick_sigma_ns)),
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


def backoff_s(attempt: int, first_s: float = 1.0, max_s: float = 30.0) -> float:
    """Delay before retry number ``attempt`` (0-based): 1, 2, 4, … capped at 30 s."""
    return min(max_s, first_s * 2.0 ** max(0, attempt))


class NodeRunner:
    """Runs one node until ``stop`` is set or a finite source ends.

    ``position``: returns the node's current position (surveyed or from GPS), or
    None while it is unknown — events are then held back, since the server cannot
    use an event without a position.
    ``status``: returns extra heartbeat fields (GPS, clock, system metrics).
    ``heartbeat_stream_s``: also send a heartbeat every this many seconds of audio
    (lets a faster-than-real-time simulation advance the server's watermark).
    ``tap``: also called with every block processed (e.g. the recorder).
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
        self.fs = float(cfg.audio.sample_rate)
        self.detector = Detector(cfg.detector, self.fs)
        self.heartbeat_stream_s = heartbeat_stream_s
        self.tap = tap
        self._held: list[Onset] = []
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
        attempt = 0
        started = False
        self._heartbeat()           # say hello (and where we are) before any audio
        while not stop.is_set():
            try:
                if not started:
                    self.source.start()
                    started = True
                    if self._problem:
                        log.info("audio device is back: %s", self.cfg.audio.device or "default")
                        self._problem = ""
                    attempt = 0
                block = self._read_batch()
            except EndOfStream:
                self._handle(self.detector.flush())
                self._heartbeat(final=True)
                self._drain(stop)
                break
            except AudioDeviceError as exc:
                self._device_errors += 1
                started = False
                delay = backoff_s(attempt)
                attempt += 1
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

    def _read_batch(self) -> AudioBlock | None:
        first = self.source.read(0.2)
        if first is None:
            return None
        blocks = [first]
        frames = first.frames
        deadline = time.monotonic() + BATCH_S
        while frames < BATCH_S * self.fs:
            try:
                nxt = self.source.read(max(0.0, deadline - time.monotonic()))
            except EndOfStream:
                break
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
            self.tap(block)
        if block.overflow:
            self._overflows += 1
        if block.first_frame != self.detector.frames_seen:
            gap = block.first_frame - self.detector.frames_seen
            log.warning("audio: %d frames lost before frame %d; the detector restarts", gap, block.first_frame)
            self.detector = _restarted(self.detector, self.cfg, self.fs, block.first_frame)
        mic = block.samples[:, self.cfg.audio.mic_channel]
        self._peak_recent = max(self._peak_recent, float(np.max(np.abs(mic))) if mic.size else 0.0)
        self._clipped_recent += int(np.count_nonzero(np.abs(mic) >= 0.999))
        self._handle(self.detector.process(mic))

    def _handle(self, onsets: list[Onset]) -> None:
        pos = self.position()
        if pos is None:
            self._held.extend(onsets)
            return
        pending = self._held + onsets
        self._held = []
        for k, onset in enumerate(pending):
            try:
                seq = self.publisher.outbox.next_seq()
            except OutboxError as exc:        # disk full: keep the onsets, say so once
                self._held = pending[k:][-HELD_MAX:]
                if not self._outbox_problem:
                    log.error("outbox: %s — holding %d event(s) in memory until there is space",
                              exc, len(self._held))
                self._outbox_problem = str(exc)
                return
            ev = onset_to_event(onset, node_id=self.cfg.id, seq=seq, timebase=self.timebase,
                                sample_rate_hz=self.fs, position=pos)
            self.publisher.submit(ev)
            self._events += 1
            self._last_event_wall = time.monotonic()
        if self._outbox_problem:
            log.info("outbox: writable again")
        self._outbox_problem = ""

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

        From the timebase while audio flows; while the audio device is down (or
        before the timebase has any timing) nothing earlier than now can come
        from this node, so the wall clock — otherwise a node with a dead
        microphone would hold the whole network's association back."""
        frames = self.detector.frames_seen
        if not final:
            frames -= self.detector.need_after + self.detector.pick_pre
        try:
            mark = self.timebase.to_utc_ns(max(0, frames))
        except RuntimeError:
            mark = 0
        if self._problem or mark == 0:
            mark = max(mark, time.time_ns())
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


def _restarted(old: Detector, cfg: NodeConfig, fs: float, first_frame: int) -> Detector:
    det = Detector(cfg.detector, fs, start_frame=first_frame)
    return det
