"""A map a person can read at a glance: nodes, located shots with their 95 %
uncertainty circles, incidents by colour, and (for simulations and benchmarks) the
true positions. Written with matplotlib's non-interactive Agg backend."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class MapShot:
    """A located shot in local metres: ``xy`` (2,), 95 % radius, incident key."""

    xy: tuple[float, float]
    error_m: float
    incident: int
    label: str = ""


def draw_map(path: str | Path, nodes_xy: np.ndarray, node_ids: Sequence[str], shots: Sequence[MapShot], *,
             truth_xy: np.ndarray | None = None, walls: Sequence[tuple[tuple[float, float], tuple[float, float]]] = (),
             title: str = "", links: Sequence[tuple[int, int]] = (),
             candidates: Sequence[MapShot] = (), analysed: Sequence[bool] | None = None) -> Path:
    """Write a PNG map. ``nodes_xy``: (n, 2) m; ``truth_xy``: (k, 2) m;
    ``links``: (shot index, truth index) pairs drawn as thin lines (errors);
    ``candidates``: candidates for review (not shots), drawn grey and dashed;
    ``analysed``: per node, whether it gave anything to locate with (None: all
    did); the others are drawn hollow and grey (a set's nodes without audio in
    audio mode, say)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Circle

    fig, ax = plt.subplots(figsize=(9, 9), dpi=110)
    for (x0, y0), (x1, y1) in walls:
        ax.plot([x0, x1], [y0, y1], color="0.75", lw=2.5, solid_capstyle="butt", zorder=1)
    used = np.ones(len(nodes_xy), dtype=bool) if analysed is None else np.asarray(analysed, dtype=bool)
    if used.shape != (len(nodes_xy),):
        raise ValueError(f"analysed: {used.size} flags for {len(nodes_xy)} nodes")
    ax.scatter(nodes_xy[used, 0], nodes_xy[used, 1], marker="^", s=90, c="black", zorder=4, label="nodes")
    if not used.all():
        ax.scatter(nodes_xy[~used, 0], nodes_xy[~used, 1], marker="^", s=90, facecolors="none",
                   edgecolors="0.55", zorder=4, label="nodes not analysed")
    for (x, y), nid, u in zip(nodes_xy, node_ids, used):
        ax.annotate(nid, (x, y), xytext=(5, 5), textcoords="offset points", fontsize=8,
                    color="black" if u else "0.55")
    if truth_xy is not None and len(truth_xy):
        ax.scatter(truth_xy[:, 0], truth_xy[:, 1], marker="x", s=80, c="red", lw=2, zorder=5, label="true position")
    incidents = sorted({s.incident for s in shots})
    cmap = plt.get_cmap("tab10")
    for s in shots:
        col = cmap(incidents.index(s.incident) % 10)
        ax.add_patch(Circle(s.xy, max(s.error_m, 0.5), fill=False, ec=col, lw=1.2, alpha=0.8, zorder=3))
        ax.scatter([s.xy[0]], [s.xy[1]], s=28, color=col, zorder=6)
        if s.label:
            ax.annotate(s.label, s.xy, xytext=(6, -10), textcoords="offset points", fontsize=7, color=col)
    for c in candidates:
        ax.add_patch(Circle(c.xy, max(c.error_m, 0.5), fill=False, ec="0.45", lw=1.0, ls="--", zorder=2))
        ax.scatter([c.xy[0]], [c.xy[1]], s=28, marker="D", facecolors="none", edgecolors="0.35", zorder=6)
        if c.label:
            ax.annotate(c.label, c.xy, xytext=(6, 4), textcoords="offset points", fontsize=7, color="0.35")
    if candidates:
        ax.scatter([], [], marker="D", facecolors="none", edgecolors="0.35", label="candidate for review")
    for si, ti in links:
        if truth_xy is not None:
            ax.plot([shots[si].xy[0], truth_xy[ti, 0]], [shots[si].xy[1], truth_xy[ti, 1]], color="red", lw=0.6)
    for k, inc in enumerate(incidents[:10]):
        ax.scatter([], [], color=cmap(k % 10), label=f"incident {inc}")
    ax.set_aspect("equal")
    ax.set_xlabel("east (m)")
    ax.set_ylabel("north (m)")
    ax.grid(True, alpha=0.3)
    ax.set_title(title or "Earwitness: located shots (circles: 95 % radius)")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
