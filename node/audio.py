"""The audio-source interface every adapter implements (microphone, WAV, simulation).

An adapter delivers :class:`AudioBlock` values in order. A real-time adapter's
callback only copies the samples and the callback's timing into a queue; all
processing happens in the consumer that calls :meth:`AudioSource.read`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


class EndOfStream(Exception):
    """A finite source (a WAV file, a simulation run) has delivered its last block."""


class AudioDeviceError(RuntimeError):
    """The audio device is missing or failed; the text says which and what to check."""


@dataclass(frozen=True)
class AudioBlock:
    """One block of input audio and when it was captured.

    samples: (n, channels) float32, full scale ±1.0.
    first_frame: index of ``samples[0]`` counted from the stream's first frame
        (counted by the adapter, never reset while the stream runs).
    adc_time_s: the driver's capture time of the first frame (PortAudio
        ``inputBufferAdcTime``) in the driver's own clock, or None when unknown.
    mono_ns / wall_ns: ``time.monotonic_ns()`` / ``time.time_ns()`` read in the
        callback (0 for sources with no real-time clock, such as files).
    overflow: the driver reported lost input before this block.
    """

    samples: np.ndarray
    first_frame: int
    adc_time_s: float | None = None
    mono_ns: int = 0
    wall_ns: int = 0
    overflow: bool = False

    @property
    def frames(self) -> int:
        return int(self.samples.shape[0])


@runtime_checkable
class AudioSource(Protocol):
    """What the node pipeline needs from an audio adapter."""

    sample_rate: float
    channels: int

    def start(self) -> None:
        """Open the device/file and begin delivering blocks."""

    def read(self, timeout_s: float) -> AudioBlock | None:
        """The next block, or None if none arrived within ``timeout_s``.

        Raises :class:`EndOfStream` after a finite source's last block and
        :class:`AudioDeviceError` when the device fails (the caller retries).
        """

    def stop(self) -> None:
        """Release the device. Safe to call twice."""

    def stats(self) -> dict:
        """Counters for heartbeats: at least ``xruns`` and ``dropped_blocks``."""
