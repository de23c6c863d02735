"""What the server reports, as values and as published JSON (docs/protocol.md §6):
located shots and candidates for review. Shared by the engine that makes them,
the store that keeps the candidates, and the tools that show them."""

from __future__ import annotations

from dataclasses import dataclass

from common.timefmt import ns_to_iso, ns_to_s


def located_json(r: ShotReport | CandidateReport) -> dict:
    """The fields a shot and a candidate share, as published (docs/protocol.md)."""
    return {"time_utc": ns_to_iso(r.t_utc_ns), "time": ns_to_s(r.t_utc_ns),
            "lat": round(r.lat, 7), "lon": round(r.lon, 7), "alt": round(r.alt, 1),
            "error_m": round(r.error_m, 2), "nodes": list(r.nodes), "residual_ms": round(r.residual_ms, 3)}


@dataclass(frozen=True)
class ShotReport:
    """One located shot (round). ``error_m``: 95 % horizontal radius (m);
    ``residual_ms``: rms arrival-time residual of the nodes used."""

    shot_id: int | None
    incident: int
    round: int
    t_utc_ns: int
    lat: float
    lon: float
    alt: float
    error_m: float
    residual_ms: float
    nodes: tuple[str, ...]

    def to_json(self) -> dict:
        return {"incident": self.incident, "round": self.round, **located_json(self)}


@dataclass(frozen=True)
class CandidateReport:
    """An unconfirmed candidate: a line-up of arrivals the association put aside
    that fits one source, but whose timing is too likely a coincidence for a
    shot (expected ``chance`` alignments as good, between ``max_chance`` and
    ``review_max_chance``). For an analyst to review, with the events it is made
    of (``event_ids``: the store's, None without a store); never part of an
    incident. ``error_m``: 95 % horizontal radius (m) of the association's solution;
    ``candidate_id``: the store's id (``earwitness locate`` numbers them 1, 2, … in
    time order). As stored, it is what :meth:`server.store.Store.candidates` returns."""

    candidate_id: int | None
    t_utc_ns: int
    lat: float
    lon: float
    alt: float
    error_m: float
    residual_ms: float
    nodes: tuple[str, ...]
    chance: float
    event_ids: tuple[int, ...] | None = None

    def to_json(self) -> dict:
        return {"candidate": self.candidate_id, **located_json(self), "chance": float(f"{self.chance:.3g}"),
                "event_ids": None if self.event_ids is None else list(self.event_ids)}
