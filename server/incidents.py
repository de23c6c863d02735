"""Grouping located shots (rounds) into incidents: a burst of rounds is one incident."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.config import IncidentConfig


@dataclass(frozen=True)
class IncidentAssignment:
    """``incident``: the tracker's key for the incident (new or existing);
    ``round``: 1-based index of this shot within it; ``new``: it opened the incident."""

    incident: int
    round: int
    new: bool


@dataclass
class _Open:
    key: int
    last_t_ns: int
    positions: list


class IncidentTracker:
    """Rounds within ``gap_s`` of the incident's last round and within ``radius_m``
    of its mean position join it; otherwise they open a new incident. Two shooters
    firing in the same second at places further apart than ``radius_m`` therefore
    make two incidents."""

    def __init__(self, cfg: IncidentConfig) -> None:
        self.cfg = cfg
        self._open: list[_Open] = []
        self._next_key = 1

    def assign(self, t_ns: int, pos_enu: np.ndarray, key_for_new: int | None = None) -> IncidentAssignment:
        """Place a shot at ``t_ns`` / ``pos_enu`` (3,) m. ``key_for_new``: the key to
        give a new incident (e.g. its database id); default: a counter."""
        gap_ns = int(self.cfg.gap_s * 1e9)
        self._open = [o for o in self._open if t_ns - o.last_t_ns <= gap_ns]
        best = None
        for o in self._open:
            d = float(np.linalg.norm(np.mean(o.positions, axis=0)[:2] - np.asarray(pos_enu)[:2]))
            if d <= self.cfg.radius_m and (best is None or d < best[0]):
                best = (d, o)
        if best is not None:
            o = best[1]
            o.last_t_ns = max(o.last_t_ns, t_ns)
            o.positions.append(np.asarray(pos_enu, dtype=float))
            return IncidentAssignment(o.key, len(o.positions), False)
        key = key_for_new if key_for_new is not None else self._next_key
        self._next_key = max(self._next_key, key) + 1
        self._open.append(_Open(key, t_ns, [np.asarray(pos_enu, dtype=float)]))
        return IncidentAssignment(key, 1, True)

    def restore(self, incident: int, t_ns: int, pos_enu: np.ndarray) -> None:
        """Give back a round ``incident`` had (after a restart; rounds in time
        order): later rounds may join it and their round numbers go on."""
        pos = np.asarray(pos_enu, dtype=float)
        for o in self._open:
            if o.key == incident:
                o.last_t_ns = max(o.last_t_ns, t_ns)
                o.positions.append(pos)
                break
        else:
            self._open.append(_Open(incident, t_ns, [pos]))
        self._next_key = max(self._next_key, incident + 1)

    def would_open(self, t_ns: int, pos_enu: np.ndarray) -> bool:
        """Whether :meth:`assign` would open a new incident for this shot."""
        gap_ns = int(self.cfg.gap_s * 1e9)
        return not any(
            t_ns - o.last_t_ns <= gap_ns
            and float(np.linalg.norm(np.mean(o.positions, axis=0)[:2] - np.asarray(pos_enu)[:2])) <= self.cfg.radius_m
            for o in self._open)
