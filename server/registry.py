"""The server's node registry: who is reporting, and who has gone stale or degraded.

Pure bookkeeping over heartbeats (no IO): :meth:`NodeRegistry.heartbeat` and
:meth:`NodeRegistry.check` return the state changes worth one log line each —
a node appearing, going silent (no heartbeat for ``stale_s``), coming back, its
timing or position degrading or recovering, its microphone or GPS reporting a
problem — so an operator hears about a node once per change, not once per
heartbeat.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping


@dataclass(frozen=True)
class NodeChange:
    """One state change of one node; ``text`` is the log line."""

    node_id: str
    kind: str          # "new", "stale", "back", "degraded", "healthy", "problem", "problem-cleared"
    text: str
    warning: bool


@dataclass
class _Node:
    last_ns: int
    stale: bool = False
    degraded: bool = False
    problems: dict[str, str] = field(default_factory=dict)


#: Heartbeat status fields whose non-empty text is a problem worth reporting
#: (one line when it appears or changes, one when it clears). ``timing_detail``
#: is not one: it says why the timing is degraded, changes with every heartbeat
#: ("PPS lost for 12.0 s"), and is shown in the line about ``timing_degraded``.
PROBLEM_FIELDS = ("audio_problem", "gps_problem", "clock_problem", "pos_alert")


def _problems(status: Mapping[str, Any]) -> dict[str, str]:
    return {k: str(status[k]) for k in PROBLEM_FIELDS if status.get(k)}


class NodeRegistry:
    def __init__(self, stale_s: float) -> None:
        self.stale_ns = int(stale_s * 1e9)
        self._nodes: dict[str, _Node] = {}

    def heartbeat(self, node_id: str, status: Mapping[str, Any], now_ns: int) -> list[NodeChange]:
        out: list[NodeChange] = []
        n = self._nodes.get(node_id)
        if n is None:
            n = self._nodes[node_id] = _Node(now_ns)
            out.append(NodeChange(node_id, "new", f"node {node_id} reporting", False))
        elif n.stale:
            silent = (now_ns - n.last_ns) / 1e9
            out.append(NodeChange(node_id, "back", f"node {node_id} is back after {silent:.0f} s of silence", False))
        n.last_ns = now_ns
        n.stale = False
        degraded = bool(status.get("timing_degraded"))
        if degraded != n.degraded:
            n.degraded = degraded
            out.append(NodeChange(node_id, "degraded" if degraded else "healthy",
                                  f"node {node_id} timing {'DEGRADED' if degraded else 'healthy again'}"
                                  + (f": {status.get('timing_detail')}" if degraded and status.get("timing_detail") else "")
                                  + ("; its events are down-weighted" if degraded else ""), degraded))
        probs = _problems(status)
        for k, v in probs.items():
            if n.problems.get(k) != v:
                out.append(NodeChange(node_id, "problem", f"node {node_id} {k.replace('_', ' ')}: {v}", True))
        for k in set(n.problems) - set(probs):
            out.append(NodeChange(node_id, "problem-cleared", f"node {node_id} {k.replace('_', ' ')} cleared", False))
        n.problems = probs
        return out

    def check(self, now_ns: int) -> list[NodeChange]:
        """Nodes that have just gone silent for longer than ``stale_s``."""
        out = []
        for node_id, n in self._nodes.items():
            if not n.stale and now_ns - n.last_ns > self.stale_ns:
                n.stale = True
                out.append(NodeChange(node_id, "stale",
                                      f"node {node_id} STALE: no heartbeat for {(now_ns - n.last_ns) / 1e9:.0f} s "
                                      "(power, network or process down?)", True))
        return out

    def summary(self) -> dict[str, int]:
        return {"nodes": len(self._nodes), "stale": sum(n.stale for n in self._nodes.values()),
                "degraded": sum(n.degraded for n in self._nodes.values())}
