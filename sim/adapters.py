"""The simulation's audio adapter: a :class:`node.audio.AudioSource` over a NodeRenderer.

The node pipeline reads it like a microphone. Blocks are rendered on demand, so the
source costs no memory beyond one block and delivers as fast as it is consumed
(``realtime=False``) or paced at the real sample rate (``realtime=True``).
"""

from __future__ import annotations

import math
import time

import numpy as np

from node.audio import AudioBlock, EndOfStream
from sim.render import NodeRenderer


class SimAudioSource:
    """Mono blocks of one simulated node's microphone.

    renderer: the node's :class:`~sim.render.NodeRenderer`.
    duration_s: how much audio to deliver (None: the scenario's duration); after it,
        :meth:`read` raises :class:`~node.audio.EndOfStream`.
    blocksize: frames per block (the last block may be shorter).
    realtime: pace blocks at the sample rate (a block is delivered once its last
        frame is "due"); ``mono_ns`` / ``wall_ns`` are then read at delivery.
        Otherwise blocks come as fast as they are read and the times are 0.
    """

    channels = 1

    def __init__(self, renderer: NodeRenderer, duration_s: float | None = None, blocksize: int = 4800,
                 realtime: bool = False) -> None:
        if not isinstance(renderer, NodeRenderer):
            raise TypeError(f"renderer must be a sim.render.NodeRenderer, got {type(renderer).__name__}")
        if duration_s is None:
            duration_s = renderer.scenario.duration_s
        if not (math.isfinite(duration_s) and duration_s > 0):
            raise ValueError(f"duration_s must be > 0 s, got {duration_s}")
        if isinstance(blocksize, bool) or not isinstance(blocksize, (int, np.integer)) or blocksize < 1:
            raise ValueError(f"blocksize must be a positive integer number of frames, got {blocksize!r}")
        self._renderer = renderer
        self.sample_rate = renderer.sample_rate
        self.blocksize = int(blocksize)
        self.realtime = bool(realtime)
        self.total_frames = int(round(float(duration_s) * self.sample_rate))
        self._next = 0
        self._blocks = 0
        self._started = False
        self._stopped = False
        self._t0_mono_ns = 0

    def start(self) -> None:
        """Begin delivering from frame 0 (real-time pacing starts now)."""
        if self._stopped:
            raise RuntimeError("this SimAudioSource was stopped; make a new one to replay")
        if not self._started:
            self._started = True
            self._t0_mono_ns = time.monotonic_ns()

    @property
    def started_mono_ns(self) -> int | None:
        """Monotonic clock (ns) at :meth:`start` — with ``realtime``, when frame 0
        was due — or None before it."""
        return self._t0_mono_ns if self._started else None

    def read(self, timeout_s: float) -> AudioBlock | None:
        """The next block: (n, 1) float32; None if (realtime) it is not due within
        ``timeout_s`` (None: wait as long as it takes).

        Raises EndOfStream after the last block (and after :meth:`stop`).
        """
        if self._stopped:
            raise EndOfStream("simulated audio source was stopped")
        if not self._started:
            raise RuntimeError("call start() before read()")
        if self._next >= self.total_frames:
            raise EndOfStream(f"simulated audio ended after {self.total_frames} frames")
        n = min(self.blocksize, self.total_frames - self._next)
        mono_ns = wall_ns = 0
        if self.realtime:
            due_ns = self._t0_mono_ns + round((self._next + n) * 1e9 / self.sample_rate)
            wait_s = (due_ns - time.monotonic_ns()) / 1e9
            limit = math.inf if timeout_s is None else max(0.0, float(timeout_s))
            if wait_s > limit:
                time.sleep(limit)
                return None
        samples = self._renderer.render(self._next, n).reshape(n, 1)
        if self.realtime:
            wait_s = (due_ns - time.monotonic_ns()) / 1e9
            if wait_s > 0:
                time.sleep(wait_s)
            mono_ns, wall_ns = time.monotonic_ns(), time.time_ns()
        block = AudioBlock(samples=samples, first_frame=self._next, adc_time_s=None,
                           mono_ns=mono_ns, wall_ns=wall_ns, overflow=False)
        self._next += n
        self._blocks += 1
        return block

    def stop(self) -> None:
        """Stop delivering. Safe to call twice."""
        self._stopped = True

    def stats(self) -> dict:
        """``xruns`` and ``dropped_blocks`` (always 0 here), blocks and frames delivered."""
        return {"xruns": 0, "dropped_blocks": 0, "blocks": self._blocks, "frames": self._next,
                "node_id": self._renderer.node_id}
