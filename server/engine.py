"""The server's processing core, free of sockets: events in, located shots out.

The live server (server/net.py) and the offline locator (server/locate.py) both
drive this same class, so a recording replayed through ``earwitness locate`` takes
exactly the path a live event takes: store → association → solver → incidents.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping

import numpy as np

from common.acoustics import speed_of_sound
from common.config import ServerConfig
from common.geodesy import LocalFrame
from common.protocol import Event, Heartbeat
from server.association import Arrival, Association, Associator
from server.reports import CandidateReport, ShotReport
from server.solver import Solution, solve
from server.incidents import IncidentTracker
from server.node_timing import NodeTimingCheck
from server.registry import NodeRegistry
from server.store import Store, StoreError

log = logging.getLogger("earwitness.server")
#: Least time between two log lines about a failing database write (s).
STORE_ERROR_LOG_S = 10.0
#: The store's key for what the association has learnt of the network.
LEARNT_KEY = "association.learnt"
#: A node that hears shots steadily more than this early or late (s; and more
#: than twice the model timing error) is reported (server/node_timing.py).
NODE_OFFSET_MIN_S = 0.001
#: Shots with fewer arrivals than this do not judge the nodes' timing: their
#: solutions are too loose to tell a node's offset from their own error.
NODE_CHECK_MIN_ARRIVALS = 6


@dataclass
class _NodeMark:
    stream_ns: int
    last_wall_ns: int


class Engine:
    """Association, solving and incident grouping over a stream of events.

    ``store``: where events, shots and outcomes are committed (None: in memory only).
    ``ingest_batch(events)`` stores a batch of events in one committed
    transaction and queues the new ones (per event ``"new"``, ``"duplicate"`` or
    ``"conflict"``; the live server's way in); ``ingest_events`` is the same with
    a True/False per event (the offline locator's); ``ingest_heartbeat(hb)``
    records a node's position, health and watermark;
    ``advance(now)`` decides everything the network's watermark allows;
    ``finish()`` decides everything left (end of a recording or of a simulation).
    """

    def __init__(self, cfg: ServerConfig, store: Store | None = None,
                 clock_ns: Callable[[], int] = time.time_ns) -> None:
        self.cfg = cfg
        self.store = store
        self.clock_ns = clock_ns
        self.c = speed_of_sound(cfg.temperature_c)
        self.frame: LocalFrame | None = None
        if cfg.temperature_c is None:
            # unknown air: try -10 … +35 °C in association, then fit c per shot
            c_try: tuple[float, ...] = tuple(speed_of_sound(t) for t in (-10.0, 0.0, 10.0, 20.0, 30.0))
            self.c_sigma = 0.6 * cfg.solver.unknown_temperature_sigma_c
        else:
            c_try = (self.c,)
            self.c_sigma = 0.6 * cfg.solver.temperature_sigma_c
        self.assoc = Associator(cfg.association, c_try, z_source=None, model_sigma_s=cfg.solver.model_sigma_s,
                                z_sigma=cfg.solver.height_sigma_m if cfg.solver.mode == "auto" else None,
                                wind_max_age_s=cfg.solver.wind_max_age_s)
        #: Searches the arrivals the association put aside for line-ups that would
        #: be shots but for ``max_chance``: candidates for review (None: off).
        self.review: Associator | None = None
        if cfg.association.review_max_chance > cfg.association.max_chance:
            self.review = Associator(replace(cfg.association, max_chance=cfg.association.review_max_chance),
                                     c_try, z_source=None, model_sigma_s=cfg.solver.model_sigma_s,
                                     z_sigma=self.assoc.z_sigma, wind_max_age_s=cfg.solver.wind_max_age_s)
        self._new_candidates: list[CandidateReport] = []
        self._learnt_saved: dict | None = None
        self.incidents = IncidentTracker(cfg.incidents)
        #: Which nodes hear shots steadily early or late (their clock, their
        #: surveyed position): judged beyond twice the model timing error and 1 ms.
        self.timing = NodeTimingCheck(max(NODE_OFFSET_MIN_S, 2.0 * cfg.solver.model_sigma_s))
        self._marks: dict[str, _NodeMark] = {}
        self._node_z: dict[str, float] = {}
        self._pos_cache: dict[str, tuple[tuple[float, float, float], np.ndarray]] = {}
        #: Per node, the 1-σ error (m) of its position along any direction, as far as known.
        self._pos_sigma_m: dict[str, float] = {}
        #: True when the last budgeted :meth:`advance` left decidable events.
        self.behind = False
        self._seen: set[tuple[str, int]] = set()
        #: per node, its last whole health status (a heartbeat's empty status: unchanged)
        self._status: dict[str, Mapping[str, Any]] = {}
        self._started_ns = clock_ns()
        self.registry = NodeRegistry(cfg.association.stale_node_s)
        self._next_key = 1
        self.counters = {"events": 0, "duplicates": 0, "conflicts": 0, "shots": 0, "unassociated": 0,
                         "candidates": 0, "store_errors": 0}
        self._store_error_logged = -1e18
        if store is not None:
            # After a restart, every node known from before holds the watermark until
            # it reports again (or for stale_node_s), so shots are not decided before
            # the nodes have reconnected and delivered what they hold.
            restart_ns = self.clock_ns()
            for n in store.nodes():
                self._marks[n["node_id"]] = _NodeMark(int(n["stream_utc_ns"]), restart_ns)
                self._status[n["node_id"]] = n["status"]
            # After a restart: the events stored (and acked) but not yet decided.
            # Events with an outcome are part of a shot already (or were put aside),
            # so they are not reloaded and no shot is formed twice.
            for event_id, ev in store.pending_events():
                self._queue_stored(ev, event_id)
            self._resume(store)

    # ------------------------------------------------------------- inputs
    def ingest_events(self, events: list[Event], received_ns: int | None = None) -> list[bool]:
        """Store a batch of events in one committed transaction, then queue the new
        ones. Returns, per event, False for a duplicate (node id + seq seen before).
        When this returns, every event is durable and may be acknowledged."""
        return [s == "new" for s in self.ingest_batch(events, received_ns)]

    def ingest_batch(self, events: list[Event], received_ns: int | None = None) -> list[str]:
        """Store a batch of events in one committed transaction (each sealed into
        the audit chain), then queue the new ones for association. Returns, per
        event, ``"new"``, ``"duplicate"`` (the same event was stored before under
        its node id + seq: a resend or a replay) or ``"conflict"`` (a different
        event was stored before under that node id + seq; the stored one is kept;
        without a store, conflicts count as duplicates). When this returns, every
        event is durable and may be acknowledged. Raises StoreError — and stores
        nothing of the batch — if the database refuses the write."""
        received_ns = self.clock_ns() if received_ns is None else received_ns
        done: list[tuple[str, int]] = []
        if self.store is not None:
            with self.store.transaction():
                done = [(r.status, r.event_id) for r in self.store.add_events(events, received_ns)]
        else:
            for ev in events:
                if (ev.node_id, ev.seq) in self._seen:
                    done.append(("duplicate", 0))
                    continue
                self._seen.add((ev.node_id, ev.seq))
                done.append(("new", self._next_key))
                self._next_key += 1
        for ev, (status, key) in zip(events, done):
            if status == "new":
                self.counters["events"] += 1
                self._queue_stored(ev, key)
            elif status == "duplicate":
                self.counters["duplicates"] += 1
            else:
                self.counters["conflicts"] += 1
        return [status for status, _ in done]

    def _queue_stored(self, ev: Event, key: int) -> None:
        """Queue a received event WITHOUT letting it move its node's watermark.

        Nodes resend unacknowledged events (after a partition, a server restart, a
        full queue), so an event does not prove that the same node's earlier events
        have arrived: a watermark raised to its time would decide those earlier
        events' shots without them. Only heartbeats move a node's watermark (and the
        node never promises one past an event it has not seen acked)."""
        mark = self._marks.get(ev.node_id)
        held = None if mark is None else mark.stream_ns
        self._queue(ev, key)
        mark = self._marks.get(ev.node_id)
        if mark is not None:
            mark.stream_ns = held if held is not None else min(mark.stream_ns, ev.t_utc_ns - 1)

    def set_node_position_sigma(self, node: str, sigma_m: float | None) -> None:
        """How far (m, 1 σ, along any direction) ``node`` may be from the position
        it reports (None: exact as far as anyone knows). Its arrivals from now on
        carry that much more timing error (σ / c): they weigh less in a fit and
        widen the reported radius, but still count as arrivals."""
        if sigma_m is None or not math.isfinite(sigma_m) or sigma_m <= 0.0:
            self._pos_sigma_m.pop(node, None)
        else:
            self._pos_sigma_m[node] = float(sigma_m)

    def ingest_heartbeat(self, hb: Heartbeat, received_ns: int | None = None) -> None:
        received_ns = self.clock_ns() if received_ns is None else received_ns
        if hb.status:
            self._status[hb.node_id] = hb.status
        else:
            # an empty status is "unchanged" (docs/protocol.md): the node's last whole one stands
            hb = replace(hb, status=self._status.get(hb.node_id, {}))
        if "pos_sigma_h_m" in hb.status:
            # a node's survey reports its horizontal position error, radial (√(σe² + σn²)):
            # along one direction that is σh / √2; None while it has no survey (configured)
            sigma_h = hb.status["pos_sigma_h_m"]
            known = isinstance(sigma_h, (int, float)) and not isinstance(sigma_h, bool)
            self.set_node_position_sigma(hb.node_id, float(sigma_h) / math.sqrt(2.0) if known else None)
        self._log_changes(self.registry.heartbeat(hb.node_id, hb.status, received_ns))
        mark = self._marks.get(hb.node_id)
        if mark is None:
            self._marks[hb.node_id] = _NodeMark(hb.stream_utc_ns, received_ns)
        else:
            mark.stream_ns = max(mark.stream_ns, hb.stream_utc_ns)
            mark.last_wall_ns = received_ns
        if not (hb.lat == 0.0 and hb.lon == 0.0):       # 0, 0: position not known yet
            pos, changed = self._node_pos(hb.node_id, hb.lat, hb.lon, hb.alt)
            if changed:
                self.assoc.add_node(hb.node_id, pos)
        if self.store is not None:
            with self.store.transaction():
                self.store.update_node(hb, received_ns)

    def _enu(self, lat: float, lon: float, alt: float) -> np.ndarray:
        if self.frame is None:
            self.frame = LocalFrame(lat, lon, 0.0)
        return self.frame.to_enu(lat, lon, alt)

    def _node_pos(self, node: str, lat: float, lon: float, alt: float) -> tuple[np.ndarray, bool]:
        """The node's position (m ENU) as reported now, and whether it differs from
        what it reported last (most messages repeat it: converted once)."""
        last = self._pos_cache.get(node)
        if last is not None and last[0] == (lat, lon, alt):
            return last[1], False
        pos = self._enu(lat, lon, alt)
        self._pos_cache[node] = ((lat, lon, alt), pos)
        self._note_node_z(node, pos)
        return pos, True

    def _resume(self, store: Store) -> None:
        """After a restart, carry on where the last run stopped: reopen the
        incidents a new round may still join (its round numbers go on), give the
        review search back the arrivals it had not decided, and show both
        associators the shots formed shortly before — so the echoes of a shot
        decided just before the restart are still judged as its echoes, not
        formed into a shot of their own — and give the association back what it
        had learnt of the network (timing scale, wind)."""
        try:
            learnt = store.load_state(LEARNT_KEY)
            if learnt is not None:
                self.assoc.restore_learnt(learnt, self.cfg.solver.wind_sigma_mps)
        except ValueError as exc:
            log.warning("ignoring what the database says the association had learnt of the network: %s; "
                        "starting again from the configured timing error and no wind", exc)
        for s in store.open_incident_shots(self.cfg.incidents.gap_s):
            self.incidents.restore(s.incident, s.t_utc_ns, self._enu(s.lat, s.lon, s.alt))
        queued = store.review_queue()
        if self.review is None:
            store.reviewed([key for key, _, _ in queued])     # review turned off since
        else:
            for key, ev, seed in queued:
                self.review.add(self._arrival(ev, key), seed=seed)
        starts = [t for t in (self.assoc.oldest_pending_ns,
                              None if self.review is None else self.review.oldest_pending_ns) if t is not None]
        if not starts:
            return
        since = min(starts) - 2 * self.assoc.max_travel_ns() - int(5e9)
        for rep, events in store.shots_since(since):
            if not events:
                continue
            arrivals = tuple(self._arrival(ev, key) for key, ev in events)
            pos = self._enu(rep.lat, rep.lon, rep.alt)
            n = len(arrivals)
            sol = Solution(pos=pos, t0_s=0.0, cov=np.zeros((3, 3)), used=np.ones(n, dtype=bool),
                           residuals_s=np.zeros(n), rms_s=rep.residual_ms * 1e-3, error95_m=rep.error_m,
                           mode="stored", c_mps=self.c)
            shot = Association(arrivals=arrivals, solution=sol, ref_ns=rep.t_utc_ns, n_core=n)
            self.assoc.note_formed(shot)
            if self.review is not None:
                self.review.note_formed(shot)

    def _arrival(self, ev: Event, key: int) -> Arrival:
        pos, _ = self._node_pos(ev.node_id, ev.lat, ev.lon, ev.alt)
        return Arrival(key=key, node=ev.node_id, t_ns=ev.t_utc_ns, sigma_s=ev.sigma_ns * 1e-9, pos=pos,
                       # the level is the snippet's peak: an event without one has none
                       peak_dbfs=ev.peak_dbfs if ev.snippet.size else math.nan, degraded=ev.degraded,
                       snippet=ev.snippet if ev.snippet.size else None,
                       snippet_t0_ns=ev.snippet_t0_ns, sample_rate_hz=ev.sample_rate_hz,
                       path_sigma_s=self._pos_sigma_m.get(ev.node_id, 0.0) / self.c)

    def _queue(self, ev: Event, key: int) -> None:
        self.assoc.add(self._arrival(ev, key))
        mark = self._marks.get(ev.node_id)
        now = self.clock_ns()
        if mark is None:
            self._marks[ev.node_id] = _NodeMark(ev.t_utc_ns, now)
        else:
            mark.stream_ns = max(mark.stream_ns, ev.t_utc_ns)
            mark.last_wall_ns = now

    def _note_node_z(self, node: str, pos: np.ndarray) -> None:
        if self._node_z.get(node) != float(pos[2]):
            self._node_z[node] = float(pos[2])
            self.assoc.z_source = self._z_source()

    def _z_source(self) -> float | None:
        """Expected source height (m ENU): ``source_height_m`` above the ground,
        which lies ``node_height_m`` below the nodes' median altitude."""
        if self.cfg.solver.mode == "3d":
            return None
        ground = float(np.median(list(self._node_z.values()))) - self.cfg.solver.node_height_m
        return ground + self.cfg.solver.source_height_m

    # ------------------------------------------------------------- decide
    def watermark(self, now_ns: int | None = None) -> int | None:
        """The network's watermark: the earliest audio time up to which every live
        node has reported. Nodes silent for ``stale_node_s`` do not hold it back."""
        now_ns = self.clock_ns() if now_ns is None else now_ns
        stale = int(self.cfg.association.stale_node_s * 1e9)
        missing = [n for n in self.cfg.expected_nodes if n not in self._marks]
        if missing and now_ns - self._started_ns <= stale:
            return None                      # wait for the expected nodes to report
        live = [m.stream_ns for m in self._marks.values() if now_ns - m.last_wall_ns <= stale]
        if not live:
            return max((m.stream_ns for m in self._marks.values()), default=None)
        return min(live)

    def _log_changes(self, changes) -> None:
        for ch in changes:
            (log.warning if ch.warning else log.info)("%s", ch.text)

    def advance(self, now_ns: int | None = None, budget_s: float | None = None) -> list[ShotReport]:
        """Decide what the network's watermark allows. ``budget_s``: stop after
        about this much time (at least one seed search) even if more is
        decidable — the ingest loop must keep acking on a night of fireworks;
        :attr:`behind` then says so, and the next call carries on where this one
        stopped (the same decisions as one unbounded call)."""
        self._log_changes(self.registry.check(self.clock_ns() if now_ns is None else now_ns))
        wm = self.watermark(now_ns)
        self.behind = False
        if wm is None:
            return []
        out = self._decide(wm, None if budget_s is None else time.monotonic() + budget_s)
        self.behind = self.assoc.incomplete or (self.review is not None and self.review.incomplete)
        return out

    def finish(self) -> list[ShotReport]:
        """Decide every pending event (no more input will come)."""
        return self._decide(None)

    def take_candidates(self) -> list[CandidateReport]:
        """The candidates for review decided since the last call (time order)."""
        out, self._new_candidates = sorted(self._new_candidates, key=lambda c: c.t_utc_ns), []
        return out

    def _decide(self, watermark_ns: int | None, deadline: float | None = None) -> list[ShotReport]:
        """Decide what ``watermark_ns`` allows (None: everything) and record it in
        one transaction. If recording fails — the database refuses the write
        (StoreError) or anything else raises (a bug in the solver, the audit
        chain) — nothing of the decision stands: the arrivals go back to the
        association, the incidents, counters and learnt state are as before, and
        the next step decides them again. A StoreError is logged and the step
        returns no shots; any other exception is raised again after the undo."""
        learnt_before = self.assoc.learnt()
        shots, rejected = self.assoc.step(watermark_ns, deadline)
        if not shots and not rejected:
            if self.review is not None and self.review.pending:
                self._review([], [], watermark_ns, deadline, {})     # the watermark may have freed some
            return []
        reports: list[ShotReport] = []
        # which put-aside arrivals the review searches from: where the
        # association's own search came close (the rest, echoes and stray sounds,
        # may still complete a line-up); asking forgets, so ask for all
        for shot in shots:
            for a in shot.arrivals:
                self.assoc.came_close(a.key)
        seeds = {a.key: self.assoc.came_close(a.key) for a in rejected}
        now = self.clock_ns()
        ctx = self.store.transaction() if self.store is not None else nullcontext()
        tracker, counters = copy.deepcopy(self.incidents), dict(self.counters)
        learnt = None
        heard: list[tuple[dict[str, float], tuple[float, float]]] = []     # for the node timing check
        try:
            with ctx:
                for a in rejected:
                    self.counters["unassociated"] += 1
                    if self.store is not None:
                        self.store.record_outcome(a.key, "unassociated")
                        if self.review is not None:
                            self.store.queue_for_review(a.key, seeds[a.key])
                for shot in shots:
                    rep, offsets = self._report(shot, now)
                    reports.append(rep)
                    if offsets is not None:
                        heard.append(offsets)
                if shots and self.store is not None:
                    learnt = self.assoc.learnt()
                    if learnt != self._learnt_saved:
                        self.store.save_state(LEARNT_KEY, learnt)
        except Exception as exc:
            # Nothing of this decision was stored (one transaction): undo it and
            # decide these arrivals again at the next step, when the disk may have
            # room. Shots are published only once they are on record.
            self.incidents, self.counters = tracker, counters
            # what these shots taught the association is learnt again when they are
            self.assoc.restore_learnt(learnt_before, self.cfg.solver.wind_sigma_mps)
            for a in rejected:
                self.assoc.add(a)
            for shot in shots:
                for a in shot.arrivals:
                    self.assoc.add(a)
            if not isinstance(exc, StoreError):
                raise           # a bug: the caller reports it (IngestServer.advance counts and logs it)
            self.counters["store_errors"] += 1
            if time.monotonic() - self._store_error_logged >= STORE_ERROR_LOG_S:
                self._store_error_logged = time.monotonic()
                log.error("could not record %d shot(s) and %d other event outcome(s): %s; "
                          "retrying (%d failures so far)", len(shots), len(rejected), exc,
                          self.counters["store_errors"])
            return []
        if learnt is not None:
            self._learnt_saved = learnt
        # what these shots say of each node's timing, once they are on record
        for offsets, where in heard:
            self.timing.add(offsets, where)
        for text, warning in self.timing.changes():
            (log.warning if warning else log.info)("%s", text)
        self._review(shots, rejected, watermark_ns, deadline, seeds)
        return reports

    def _review(self, shots: list[Association], rejected: list[Arrival], watermark_ns: int | None,
                deadline: float | None, seeds: dict[int, bool]) -> None:
        """Search what the association put aside for candidates to review. The
        review associator knows the main one's shots (their echoes are judged
        against them) and its view of the network; it decides a line-up only once
        every arrival that could be part of it is final in the main one (before
        its oldest undecided arrival). ``seeds``: per arrival of ``rejected``,
        whether the review searches from it (its own search came close)."""
        review = self.review
        if review is None:
            return
        for shot in shots:
            review.note_formed(shot)
        for a in rejected:
            review.add(a, seed=seeds[a.key])
        review.adopt_network(self.assoc)
        oldest = self.assoc.oldest_pending_ns
        # the earlier of the two; None (decide everything) only when both are
        cands, dropped = review.step(min((t for t in (oldest, watermark_ns) if t is not None), default=None),
                                     deadline)
        if not cands and not dropped:
            return
        now = self.clock_ns()
        ctx = self.store.transaction() if self.store is not None else nullcontext()
        try:
            with ctx:
                reports = [self._candidate_report(c, now) for c in cands]
                if self.store is not None:
                    self.store.reviewed([a.key for a in dropped] + [a.key for c in cands for a in c.arrivals])
        except StoreError as exc:
            self.counters["store_errors"] += 1
            for c in cands:                  # reviewed again at the next step
                for a in c.arrivals:
                    review.add(a)
            # (the dropped stay dropped; their queue rows only make a restart look
            # at them once more)
            if time.monotonic() - self._store_error_logged >= STORE_ERROR_LOG_S:
                self._store_error_logged = time.monotonic()
                log.error("could not record %d candidate(s) for review: %s; retrying", len(cands), exc)
            return
        self.counters["candidates"] += len(reports)
        self._new_candidates.extend(reports)

    def _candidate_report(self, cand: Association, now_ns: int) -> CandidateReport:
        sol = self._candidate_solution(cand)
        assert self.frame is not None
        lat, lon, alt = (float(v) for v in self.frame.to_wgs84(sol.pos))
        nodes = tuple(a.node for a in cand.arrivals)
        cid, ids = None, None
        if self.store is not None:
            ids = tuple(a.key for a in cand.arrivals)
            cid = self.store.insert_candidate(cand.t0_ns, lat, lon, alt, sol.error95_m, sol.rms_s * 1e3,
                                              list(nodes), cand.chance, list(ids), now_ns)
        return CandidateReport(candidate_id=cid, t_utc_ns=cand.t0_ns, lat=lat, lon=lon, alt=alt,
                               error_m=sol.error95_m, residual_ms=sol.rms_s * 1e3, nodes=nodes,
                               chance=cand.chance, event_ids=ids)

    def _final_solution(self, shot: Association):
        """The association's solution, re-solved with what the shot's arrivals can
        tell beyond it: the speed of sound (≥ ``fit_speed_min_nodes`` arrivals: the
        air is never exactly as assumed; prior from the configured temperature) and
        the wind (≥ ``fit_wind_min_nodes``), and the arrival times refined by
        cross-correlating the event snippets when the arrivals carry them
        (``refine_xcorr``). The wind is the same for every shot of the network:
        each shot that can fit it adds its own estimate to the associator's pooled
        one, and the pooled wind is the prior of every shot. The reported radius
        also covers what the shot cannot fit: the speed of sound (± the
        temperature's uncertainty) and, before the network has learnt it, the
        wind (± ``unfitted_wind_mps``)."""
        scfg = self.cfg.solver
        assoc = self.assoc
        n = len(shot.arrivals)
        fit_c = scfg.fit_speed_min_nodes > 0 and n >= scfg.fit_speed_min_nodes
        fit_w = scfg.fit_wind_min_nodes > 0 and n >= scfg.fit_wind_min_nodes
        t_ns = np.array([a.t_ns for a in shot.arrivals], dtype=np.int64)
        has = [a.snippet is not None and a.snippet.size > 0 for a in shot.arrivals]
        if scfg.refine_xcorr and sum(has) >= 2:
            # cross-correlate the event snippets: a refinement of the picks (server/tdoa.py)
            from server.tdoa import Snippet, refine_times

            snips = [Snippet(a.snippet, a.snippet_t0_ns, a.sample_rate_hz, a.t_ns) if h else None
                     for a, h in zip(shot.arrivals, has)]
            refined, _ = refine_times(snips)
            t_ns = np.where(has, refined, t_ns)        # an arrival without a snippet keeps its pick
        rec = np.array([a.pos for a in shot.arrivals])
        ts = (t_ns - shot.ref_ns) * 1e-9
        sig = assoc.sigma(shot.arrivals)
        kw = dict(self._resolve_kw(assoc, shot.solution.pos), c_sigma=self.c_sigma if fit_c else None)
        c0 = self.c if fit_c else (shot.solution.c_mps or self.c)
        if fit_w:
            own = solve(rec, ts, sig, c0, wind_sigma=scfg.wind_sigma_mps, **kw)
            # a shot's wind counts only if, with it, the arrivals fit as well as
            # the nodes claim (residual scale ≤ 2 × the a-priori σ): where timing
            # is several times worse (urban paths, mis-surveyed nodes) the two
            # extra unknowns would only chase those errors
            if own is not None and own.scale <= 2.0:
                assoc.note_wind(own.wind_mps, own.cov[-2:, -2:], scfg.wind_sigma_mps, t_ns=shot.t0_ns)
        # the network's wind as it stands at this shot: the estimates of its own
        # time only (a wind learnt hours ago has changed since; wind_max_age_s)
        assoc.wind_at(shot.t0_ns)
        # what is not fitted (the speed of sound with too few arrivals, the wind
        # before the network has learnt it) is still uncertain: the radius says so
        unfitted = (self.c_sigma, scfg.unfitted_wind_mps)
        if assoc.wind_sigma_mps is not None:
            sol = solve(rec, ts, sig, c0, wind0=assoc.wind_mps, wind_sigma=max(assoc.wind_sigma_mps, 0.2),
                        unfitted_sigma=unfitted, **kw)
        else:
            sol = solve(rec, ts, sig, c0, unfitted_sigma=unfitted, **kw)
        return sol if sol is not None else shot.solution

    def _candidate_solution(self, cand: Association) -> Solution:
        """A candidate's solution (still air, as the review association found
        it) re-solved so that its radius, like a shot's, allows for the speed of
        sound and the wind it does not fit: a reviewer compares like with like.
        The association's solution if the re-solve fails."""
        assert self.review is not None
        rec = np.array([a.pos for a in cand.arrivals])
        ts = np.array([(a.t_ns - cand.ref_ns) * 1e-9 for a in cand.arrivals])
        sol = solve(rec, ts, self.review.sigma(cand.arrivals), cand.solution.c_mps or self.c,
                    unfitted_sigma=(self.c_sigma, self.cfg.solver.unfitted_wind_mps),
                    **self._resolve_kw(self.review, cand.solution.pos))
        return sol if sol is not None else cand.solution

    def _resolve_kw(self, assoc: Associator, x0: np.ndarray) -> dict:
        """What every re-solve of a formed line-up (a shot's final solution, a
        candidate's) shares: its start ``x0``, the height model ``assoc`` uses,
        every arrival kept."""
        scfg = self.cfg.solver
        return dict(x0=x0, z_source=assoc.z_source if scfg.mode == "2d" else None,
                    z_prior=assoc.height_prior() if scfg.mode == "auto" else None, max_reject=0,
                    min_used=self.cfg.association.min_nodes)

    def _report(self, shot: Association, now_ns: int
                ) -> tuple[ShotReport, tuple[dict[str, float], tuple[float, float]] | None]:
        """The shot's report, recorded in the store, and, for the node timing
        check, what its nodes heard against its solution and where it was (None:
        too few arrivals to judge by)."""
        sol = self._final_solution(shot)
        assert self.frame is not None
        lat, lon, alt = (float(v) for v in self.frame.to_wgs84(sol.pos))
        t_ns = shot.ref_ns + int(round(sol.t0_s * 1e9))
        nodes = tuple(a.node for a in shot.arrivals)
        key_for_new = None
        if self.store is not None and self.incidents.would_open(t_ns, sol.pos):
            key_for_new = self.store.insert_incident(t_ns, now_ns)
        inc = self.incidents.assign(t_ns, sol.pos, key_for_new)
        shot_id = None
        if self.store is not None:
            shot_id = self.store.insert_shot(inc.incident, inc.round, t_ns, lat, lon, alt, sol.error95_m,
                                             sol.rms_s * 1e3, list(nodes), now_ns)
            for a in shot.arrivals:
                self.store.record_outcome(a.key, "shot", shot_id)
        self.counters["shots"] += 1
        offsets = None
        if len(shot.arrivals) >= NODE_CHECK_MIN_ARRIVALS:
            offsets = (self.assoc.heard_near(sol, t_ns), (float(sol.pos[0]), float(sol.pos[1])))
        return ShotReport(shot_id=shot_id, incident=inc.incident, round=inc.round, t_utc_ns=t_ns,
                          lat=lat, lon=lon, alt=alt, error_m=sol.error95_m,
                          residual_ms=sol.rms_s * 1e3, nodes=nodes), offsets

