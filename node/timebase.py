"""Timebases: sample index → UTC nanoseconds.

Every event's time comes from here, never from the wall clock at processing time.
A timebase is fed every :class:`~node.audio.AudioBlock` (``observe``) before the
detector sees it, and answers ``to_utc_ns(frame)`` for any (fractional) frame index
of the stream.

Modes (``TimebaseConfig.mode``):

* ``fixed`` / ``simulated``: a known start time and nominal rate (recordings with a
  GPS start stamp; the simulation, which adds its per-node clock error as an offset).
* ``system``: the chrony-disciplined system clock; a robust fit of callback times
  against frame counts (node/timebase_system.py).
* ``pps-audio``: GPS PPS edges recorded in a second input channel (node/timebase_pps.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from common.timefmt import NS_PER_S
from node.audio import AudioBlock


@dataclass(frozen=True)
class TimingStatus:
    """The timebase's own view of its health, sent in heartbeats and events."""

    mode: str
    locked: bool
    #: 1-σ uncertainty of ``to_utc_ns`` (ns).
    sigma_ns: float
    #: Timing is not GPS-grade: the server must down-weight or exclude the events.
    degraded: bool
    #: Estimated true sample rate (Hz).
    rate_hz: float
    #: Why it is degraded / unlocked; empty when healthy.
    detail: str = ""


class Timebase(Protocol):
    def observe(self, block: AudioBlock) -> None:
        """Learn from one block's timing (and PPS channel, in pps-audio mode)."""

    def to_utc_ns(self, frame: float) -> int:
        """UTC ns of the stream's (fractional) frame index ``frame``."""

    def status(self) -> TimingStatus:
        """Current lock state and uncertainty."""


class FixedTimebase:
    """UTC(frame) = start_utc_ns + offset_ns + frame / sample_rate.

    For recordings with a GPS-stamped first sample and for the simulation
    (``offset_ns`` = the simulated node's clock error, unknown to the node itself).
    """

    def __init__(self, start_utc_ns: int, sample_rate: float, *, offset_ns: int = 0,
                 sigma_ns: float = 1000.0, mode: str = "fixed") -> None:
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be > 0, got {sample_rate}")
        self._start = int(start_utc_ns) + int(offset_ns)
        self._fs = float(sample_rate)
        self._status = TimingStatus(mode=mode, locked=True, sigma_ns=float(sigma_ns),
                                    degraded=False, rate_hz=self._fs)

    def observe(self, block: AudioBlock) -> None:
        return None

    def to_utc_ns(self, frame: float) -> int:
        # frame / fs in ns stays far below 2**53 for any real stream length, so the
        # float product is exact to well under a nanosecond.
        return self._start + round(float(frame) * (NS_PER_S / self._fs))

    def status(self) -> TimingStatus:
        return self._status
