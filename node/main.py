"""`earwitness node --config FILE`: run a field node.

Builds the adapters the config names — microphone (PortAudio) or WAV replay,
timebase (system clock + chrony, or PPS in the audio), GPS (gpsd), persistent
outbox, link to the server — and runs :class:`node.pipeline.NodeRunner`.
Problems (no GPS, no microphone, no clock sync, no server) are logged in one
clear line each and reported in heartbeats; the node keeps running and recovers
when the device or service comes back.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from pathlib import Path

from common.config import ConfigError, NodeConfig, Position, load_node_config
from common.timefmt import iso_to_ns

log = logging.getLogger("earwitness.node")


def make_source(cfg: NodeConfig):
    """The audio adapter ``[audio] source`` names. It delivers all its channels at
    its own sample rate (a WAV file's rate may differ from ``[audio] sample_rate``;
    the node uses ``source.sample_rate``); a ``mic_channel`` it lacks is a ConfigError."""
    a = cfg.audio
    if a.source == "sounddevice":
        from node.sd_audio import SoundDeviceSource

        source = SoundDeviceSource(a)
    elif a.source == "wav":
        if not a.wav_path:
            raise ConfigError("[audio] source = \"wav\" needs wav_path (and wav_start_utc)")
        from node.wav_source import WavSource

        source = WavSource(a.wav_path, blocksize=max(a.blocksize, 4800))
    else:
        raise ConfigError(f"[audio] source = {a.source!r} is only for `earwitness sim`; "
                          "use \"sounddevice\" or \"wav\"")
    from node.pipeline import check_mic_channel

    check_mic_channel(a.mic_channel, source.channels,
                      a.wav_path if a.source == "wav" else "the sound card (as opened: [audio] channels)")
    return source


def make_timebase(cfg: NodeConfig, sample_rate: float, channels: int | None = None):
    """The timebase ``[timebase] mode`` names, at the source's ``sample_rate`` (Hz);
    ``channels``: how many the source delivers (a WAV file's own count; None:
    ``[audio] channels``).

    ``"system"`` needs live audio (it fits the callback times of a sound card): a
    WAV replay has none, so that combination is a ConfigError naming what to use."""
    mode = cfg.timebase.mode
    if mode == "system":
        if cfg.audio.source == "wav":
            raise ConfigError("[timebase] mode = \"system\" stamps live audio from the sound card's callback "
                              "times, but [audio] source = \"wav\" has none: use mode = \"fixed\" with "
                              "[audio] wav_start_utc (UTC of the file's first sample), or \"pps-audio\" if "
                              "the file recorded the GPS PPS in a channel")
        from node.timebase_system import SystemClockTimebase

        return SystemClockTimebase(cfg.timebase, sample_rate)
    if mode == "pps-audio":
        have = cfg.audio.channels if channels is None else channels
        if have <= cfg.timebase.pps_channel:
            what = (f"the WAV file has {have} channel(s)" if cfg.audio.source == "wav"
                    else f"[audio] channels = {have}; set channels = {cfg.timebase.pps_channel + 1}")
            raise ConfigError(f"[timebase] mode = \"pps-audio\" reads PPS from input channel "
                              f"{cfg.timebase.pps_channel} (0-based), but {what}")
        from node.timebase_pps import PpsAudioTimebase

        return PpsAudioTimebase(cfg.timebase, sample_rate)
    if mode == "fixed":
        if not cfg.audio.wav_start_utc:
            raise ConfigError("[timebase] mode = \"fixed\" needs [audio] wav_start_utc (UTC of the first sample)")
        from node.timebase import FixedTimebase

        return FixedTimebase(iso_to_ns(cfg.audio.wav_start_utc), sample_rate)
    raise ConfigError(f"[timebase] mode = {mode!r} is only for `earwitness sim`")


class NodeServices:
    """GPS, survey-in, clock health and system metrics, refreshed in a background
    thread so that a slow gpsd or chronyc never stalls the audio pipeline.

    ``timebase``: the node's timebase. When it is the system-clock one
    (``[timebase] mode = "system"``, whose times are the chrony-disciplined system
    clock), every refresh hands it chrony's error bound and whether chrony is
    synchronised (:func:`node.chrony.timebase_clock_error`); the PPS-in-audio and
    fixed timebases do not take their time from the system clock and get nothing.

    Each problem (gps, position, clock) is logged once when it appears or
    changes and once when it clears: problem texts carry no running figures."""

    def __init__(self, cfg: NodeConfig, outbox, timebase=None) -> None:
        from node.chrony import read_clock_health, timebase_clock_error
        from node.survey import Survey, fix_from_gps
        from node.sysmetrics import SysMetricsSampler
        from node.timebase_system import SystemClockTimebase

        self.cfg = cfg
        self.outbox = outbox
        self._read_clock = read_clock_health
        self._clock_error = timebase_clock_error
        self._system_timebase = timebase if isinstance(timebase, SystemClockTimebase) else None
        self._fix_from_gps = fix_from_gps
        self.gps = None
        if cfg.gps.enabled:
            from node.gps import GpsClient

            self.gps = GpsClient.from_config(cfg.gps)
            self.gps.start()
        self.survey = Survey.from_config(cfg.gps, cfg.position)
        self.sys = SysMetricsSampler(disk_path=str(Path(cfg.outbox_path).resolve().parent))
        self._status: dict = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._problems: dict[str, str] = {}
        self._thread = threading.Thread(target=self._loop, name="node-services", daemon=True)
        self.refresh()
        self._thread.start()

    def _note(self, what: str, problem: str, detail: str = "") -> None:
        """Log ``what``'s problem when it appears or changes, and "OK again" when it
        clears ("" = no problem). ``detail`` (running figures: for how long, how
        far) goes into that one log line but is not compared."""
        old = self._problems.get(what, "")
        if problem and problem != old:
            if detail:
                log.warning("%s: %s (%s)", what, problem, detail)
            else:
                log.warning("%s: %s", what, problem)
        elif not problem and old:
            log.info("%s: OK again", what)
        self._problems[what] = problem

    def refresh(self) -> None:
        now = time.monotonic()
        st: dict = {}
        if self.gps is not None:
            g = self.gps.state()
            self.survey.update(self._fix_from_gps(g), now)
            st.update(g.to_status())
            self._note("gps", g.problem, g.detail)
        sv = self.survey.status(now)
        st.update(sv.to_status())
        self._note("position", sv.problem, sv.detail)     # "" clears it
        clock = self._read_clock()
        st.update(clock.to_status())
        self._note("clock", clock.problem)
        if self._system_timebase is not None:
            # Runs in this health thread, not the audio thread: set_clock_error
            # swaps one tuple (atomic in CPython), so no lock is needed.
            self._system_timebase.set_clock_error(*self._clock_error(clock))
        m = self.sys.sample()
        st.update(m.to_status())
        ob = self.outbox.stats()
        st.update({f"outbox_{k}": v for k, v in ob.items() if isinstance(v, (int, float)) or v is None})
        with self._lock:
            self._status = st
            self._position = sv.position

    def _loop(self) -> None:
        while not self._stop.wait(5.0):
            try:
                self.refresh()
            except Exception as exc:  # never let health reporting kill the node
                log.warning("health refresh failed: %s", exc)

    def status(self) -> dict:
        with self._lock:
            return dict(self._status)

    def position(self) -> Position | None:
        with self._lock:
            return self._position

    def close(self) -> None:
        self._stop.set()
        if self.gps is not None:
            self.gps.stop()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="earwitness node", description="Run an Earwitness field node.")
    p.add_argument("--config", required=True, help="node TOML config (see examples/node.toml)")
    p.add_argument("--record", metavar="DIR", help="also keep the raw audio as recording sets in DIR "
                                                   "(for `earwitness locate`)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        cfg = load_node_config(args.config)
        source = make_source(cfg)
        timebase = make_timebase(cfg, source.sample_rate, source.channels)   # a WAV file's own rate and channels
    except (ConfigError, ValueError) as exc:
        print(f"earwitness node: {exc}", file=sys.stderr)
        return 2
    from node.outbox import Outbox, OutboxError
    from node.pipeline import NodeRunner
    from node.publisher import CurveClientKeys, Publisher

    try:
        outbox = Outbox(cfg.outbox_path, cfg.outbox_max_items)
    except OutboxError as exc:
        print(f"earwitness node: {exc}", file=sys.stderr)
        return 2
    sec = cfg.security
    curve = None
    if sec.public_key and sec.secret_key and sec.server_public_key:
        curve = CurveClientKeys(sec.public_key, sec.secret_key, sec.server_public_key)
    elif any((sec.public_key, sec.secret_key, sec.server_public_key)):
        print("earwitness node: [security] needs all three of server_public_key, public_key and secret_key "
              "(paste the snippet from `earwitness keys enroll`)", file=sys.stderr)
        return 2
    else:
        log.warning("no [security] keys: talking plaintext; the server accepts that only with allow_plaintext")
    services = NodeServices(cfg, outbox, timebase)
    publisher = Publisher(cfg.id, cfg.server, outbox, cfg.publisher, curve=curve)
    recorder = None
    if args.record:
        from node.recorder import Recorder

        recorder = Recorder(args.record, cfg.id, source.sample_rate, cfg.audio.mic_channel,
                            timebase.to_utc_ns, services.position, detector=cfg.detector)
    runner = NodeRunner(cfg, source, timebase, publisher, services.position, status=services.status,
                        tap=recorder.write if recorder else None)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    log.info("node %s: audio %s at %g Hz, timebase %s, server %s", cfg.id, cfg.audio.source,
             source.sample_rate, cfg.timebase.mode, cfg.server)
    try:
        summary = runner.run(stop)
        log.info("stopped: %s", summary)
    finally:
        if recorder is not None:
            recorder.close_piece()
        services.close()
        publisher.close()
        outbox.close()
    return 0
