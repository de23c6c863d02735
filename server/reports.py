"""What the server reports, as values and as published JSON (docs/protocol.md §6):
located shots and candidates for review. Shared by the engine that makes them,
the store that keeps the candidates, and the tools that show them."""

from __future__ import annotations

from dataclasses import dataclass

from common.timefmt import ns_to_iso, ns_to_s


@dataclass(frozen=True)
class LocatedReport:
    """What a located shot and a candidate for review share: the source's
    emission time (UTC ns) and position (WGS84), ``error_m`` (95 % horizontal
    radius, m), ``residual_ms`` (rms arrival-time residual of the nodes used) and
    those nodes."""

    t_utc_ns: int
    lat: float
    lon: float
    alt: float
    error_m: float
    residual_ms: float
    nodes: tuple[str, ...]

    def located_json(self) -> dict:
        """These fields as published (docs/protocol.md)."""
        return {"time_utc": ns_to_iso(self.t_utc_ns), "time": ns_to_s(self.t_utc_ns),
                "lat": round(self.lat, 7), "lon": round(self.lon, 7), "alt": round(self.alt, 1),
                "error_m": round(self.error_m, 2), "nodes": list(self.nodes),
                "residual_ms": round(self.residual_ms, 3)}


@dataclass(frozen=True)
class ShotReport(LocatedReport):
    """One located shot (round): ``shot_id`` (the store's id, None without a
    store), its ``incident`` and its ``round`` in it."""

    shot_id: int | None
    incident: int
    round: int

    def to_json(self) -> dict:
        """The shot as published (docs/protocol.md §6): ``"shot"`` is the store's
        id, the one ``earwitness review shot`` takes; without a store
        (``earwitness locate``) there is none and the key is left out."""
        shot = {} if self.shot_id is None else {"shot": self.shot_id}
        return {**shot, "incident": self.incident, "round": self.round, **self.located_json()}


@dataclass(frozen=True)
class CandidateReport(LocatedReport):
    """An unconfirmed candidate: a line-up of arrivals the association put aside
    that fits one source, but whose timing is too likely a coincidence for a
    shot (expected ``chance`` alignments as good, between ``max_chance`` and
    ``review_max_chance``). For an analyst to review, with the events it is made
    of (``event_ids``: the store's, None without a store); never part of an
    incident. ``error_m`` is the association's solution's, with the shots'
    allowance for the unfitted wind and speed of sound;
    ``candidate_id``: the store's id (``earwitness locate`` numbers them 1, 2, … in
    time order). As stored, it is what :meth:`server.store.Store.candidates` returns."""

    candidate_id: int | None
    chance: float
    event_ids: tuple[int, ...] | None = None

    def to_json(self) -> dict:
        return {"candidate": self.candidate_id, **self.located_json(), "chance": float(f"{self.chance:.3g}"),
                "event_ids": None if self.event_ids is None else list(self.event_ids)}
