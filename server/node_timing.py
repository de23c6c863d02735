"""Which nodes hear every shot early or late: for each located shot, each
nearby node's nearest sound against the arrival the shot's solution predicts
there.

A node whose clock is off (GPS lost and its fallback drifting, a wrong PPS
edge, a misconfigured sound card) or whose surveyed position is wrong reports
every sound late (or early) by about the same amount. The association leaves
such an arrival out of the shot, or the fit spreads its error over the others,
so no shot shows it; measured against the solutions of many shots, the node's
median offset does. Pure bookkeeping, no IO: :meth:`NodeTimingCheck.add`
takes each shot's offsets (``Associator.heard_near``), :meth:`changes` returns
the nodes that have just become, or stopped being, off — one log line each —
and :meth:`offsets` all that is known.

Where the shot did use the node's arrival, the fit has taken up part of its
error (more of it the fewer nodes the shot has), so what is measured there is
what is left: a lower bound on the node's offset (3.0 ms of a 5 ms clock error
among nine nodes with 1 ms picks; all of it where the shot left the arrival
out). Judging each node against fits made without it would pull the others the
other way instead (tried: a 2 ms "early" neighbour).

Shots from one place share their paths, so a node behind a building, which
hears a reflection instead of the direct sound, shows a steady offset for the
shots from there too (and a burst is one place): a node is judged place by
place, and only on shots from several places.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Mapping

import numpy as np

#: Offsets kept per node (its last this many shots).
WINDOW = 30
#: A node is judged only after this many shots.
MIN_SHOTS = 5
#: A node's median offset must be this many standard errors from zero.
SIGNIFICANCE = 3.0
#: Shots within this (m) of each other are from one place.
PLACE_M = 50.0
#: A node is judged only on shots from at least this many places: a clock or
#: position error shows from every direction, a path around a building from
#: one place only (and a burst is one place).
MIN_PLACES = 3
#: Normal consistency factor of the median absolute deviation.
_MAD_K = 1.4826


@dataclass(frozen=True)
class NodeOffset:
    """One node against the shots it heard, place by place (shots within
    ``PLACE_M`` of each other are one place): the median over the places of
    each place's median time (ms; positive: late) from the predicted arrival
    to its nearest sound, that time's robust spread between places (ms), how
    many shots and how many places."""

    node_id: str
    median_ms: float
    spread_ms: float
    shots: int
    places: int

    @property
    def stderr_ms(self) -> float:
        """Standard error of the median (ms), over the places."""
        return 1.2533 * self.spread_ms / math.sqrt(self.places)

    def text(self) -> str:
        way = "late" if self.median_ms > 0 else "early"
        return (f"node {self.node_id} hears shots {abs(self.median_ms):.1f} ms {way} (the last {self.shots} it "
                f"heard, from {self.places} places, against their solutions; ± {self.stderr_ms:.1f} ms): "
                "check its clock (GPS lock, PPS) and its surveyed position")


class NodeTimingCheck:
    """Per node, the offsets of its last ``window`` shots and where they were;
    a node is *off* when at least ``min_shots`` of them, from at least
    ``MIN_PLACES`` places, put its median (place by place) more than
    ``min_offset_s`` from zero and more than ``SIGNIFICANCE`` standard errors."""

    def __init__(self, min_offset_s: float, window: int = WINDOW, min_shots: int = MIN_SHOTS) -> None:
        if not min_offset_s > 0 or not 2 <= min_shots <= window:
            raise ValueError(f"node timing check: min_offset_s {min_offset_s} must be > 0 and "
                             f"2 <= min_shots {min_shots} <= window {window}")
        self.min_offset_s = float(min_offset_s)
        self.window = window
        self.min_shots = min_shots
        self._off_s: dict[str, deque[tuple[float, float, float]]] = {}
        self._reported: set[str] = set()

    def add(self, offsets_s: Mapping[str, float], source_xy: tuple[float, float]) -> None:
        """One located shot at ``source_xy`` (m, east and north in the
        network's frame): per node that heard it, the time (s) from the
        predicted arrival to the node's sound."""
        for node, x in offsets_s.items():
            if math.isfinite(x):
                self._off_s.setdefault(node, deque(maxlen=self.window)).append(
                    (float(x), float(source_xy[0]), float(source_xy[1])))

    def offsets(self) -> list[NodeOffset]:
        """Every node with at least ``min_shots`` shots, the largest |median| first."""
        out = []
        for node, xs in self._off_s.items():
            if len(xs) < self.min_shots:
                continue
            per_place = np.array([np.median(v) for v in _by_place(xs)])
            med = float(np.median(per_place))
            spread = _MAD_K * float(np.median(np.abs(per_place - med)))
            out.append(NodeOffset(node, med * 1e3, spread * 1e3, len(xs), len(per_place)))
        return sorted(out, key=lambda o: -abs(o.median_ms))

    def off(self) -> list[NodeOffset]:
        """The nodes that are off now (see the class)."""
        return [o for o in self.offsets()
                if o.places >= MIN_PLACES and abs(o.median_ms) > self.min_offset_s * 1e3
                and abs(o.median_ms) > SIGNIFICANCE * max(o.stderr_ms, 1e-6)]

    def changes(self) -> list[tuple[str, bool]]:
        """(log line, is a warning) for each node that has become off, or is no
        longer, since the last call."""
        now = {o.node_id: o for o in self.off()}
        out = [(now[n].text(), True) for n in sorted(now.keys() - self._reported)]
        out += [(f"node {n}: hears shots on time again", False) for n in sorted(self._reported - now.keys())]
        self._reported = set(now)
        return out


def _by_place(xs) -> list[list[float]]:
    """The offsets of ``xs`` ((offset, x, y) per shot) grouped by place: each
    shot joins the first place within ``PLACE_M`` of where that place began."""
    places: list[tuple[float, float, list[float]]] = []
    for off, x, y in xs:
        for px, py, v in places:
            if math.hypot(x - px, y - py) <= PLACE_M:
                v.append(off)
                break
        else:
            places.append((x, y, [off]))
    return [v for _, _, v in places]
