"""The server's sockets: the only server module that owns any.

* ROUTER at ``ServerConfig.bind``: nodes' DEALERs send events and heartbeats;
  the server answers each batch of stored events with an Ack (docs/protocol.md).
  With a :class:`~server.security.ServerSecurity` it is a CURVE server: only
  enrolled node keys complete the handshake, and every message must come from a
  key that is enrolled *now* and speak for the node that key was enrolled as.
* PUB at ``ServerConfig.publish``: one JSON message per located shot, topic
  ``shot`` (see docs/protocol.md), for maps, dispatch tools and webhook relays;
  and one per unconfirmed candidate for an analyst to review, topic ``candidate``.

Every received message is checked — sender key, frames, :func:`common.protocol.decode`,
identity, plausibility — and anything wrong is counted per reason
(:attr:`IngestServer.rejects`), logged at most once per ``LOG_EVERY_S`` per reason,
and dropped: never stored, never acked, never a crash, never a blocking call.
Events are stored (one committed transaction per batch, sealed into the audit
chain) before they are acked; a resent or replayed event is acked again but not
stored twice. If the database refuses the write (disk full) nothing is acked —
nodes keep the events and resend — and the server keeps serving.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from contextlib import nullcontext
from typing import Callable

import msgpack
import zmq

from common.config import ServerConfig
from common.protocol import (MAX_ACK_SEQS, MAX_FRAME_BYTES, Ack, Event, Heartbeat, ProtocolError,
                             decode, encode)
from common.timefmt import ns_to_iso
from server.engine import CandidateReport, Engine, ShotReport
from server.keys import drop_connections, frame_user_id

log = logging.getLogger("earwitness.server")

LOG_EVERY_S = 10.0
#: Most messages handled per batch (one commit, then acks, then an association
#: step): bounds the ack latency a batch adds (~0.3 ms of work per event).
BATCH = 2000
#: Longest association step between two batches of messages (s): bounds how long
#: acks wait for association when events pour in (see :meth:`IngestServer.run`).
ASSOCIATION_BUDGET_S = 0.05
#: While messages are waiting, association gets at most this share of the loop's
#: time (ingest first: nothing is lost by deciding later, acks must not wait).
ASSOCIATION_SHARE = 0.1
#: Messages queued per node connection before ZeroMQ stops reading from it
#: (back-pressure: the node's events wait in its outbox).
RCVHWM = 100
#: How many of the latest published shots, and of the candidates, an
#: :class:`IngestServer` keeps in memory (:attr:`IngestServer.reports`,
#: :attr:`IngestServer.candidates`: the simulation reads them after a run). The
#: store holds them all; the lists must not grow for a live server's life.
KEEP_REPORTS = 10_000
#: Reasons a message is rejected (keys of :attr:`IngestServer.rejects`).
REJECT_REASONS = (
    "unknown-key",          # CURVE: the sender's key is not (or no longer) enrolled
    "malformed",            # wrong frame count, not msgpack, not an Earwitness header
    "oversized",            # over MAX_FRAME_BYTES
    "unsupported-version",  # another protocol version
    "unknown-type",         # a message type this version does not know
    "invalid-field",        # a field missing, of the wrong type, out of range, unknown
    "identity-mismatch",    # node_id ≠ the sender's enrolled id / routing id
    "unexpected-type",      # e.g. an Ack sent to the server
    "implausible-event",    # onset time far from the server clock
    "implausible-heartbeat",  # heartbeat time far from the server clock
    "stale-heartbeat",      # older than the last heartbeat of that node (replay)
    "internal-error",       # a bug: logged with its traceback, the server carries on
)


class RateLimitedLog:
    """Log a reason at most once per ``every_s``, with how many were suppressed."""

    def __init__(self, every_s: float = LOG_EVERY_S, logger: logging.Logger = log) -> None:
        self.every_s = every_s
        self._log = logger
        self._last: dict[str, tuple[float, int]] = {}

    def warn(self, reason: str, detail: str, level: int = logging.WARNING, exc_info: bool = False) -> bool:
        """Log ``reason: detail`` unless ``reason`` was logged less than ``every_s``
        ago; True if it was logged."""
        now = time.monotonic()
        last, n = self._last.get(reason, (-1e18, 0))
        if now - last >= self.every_s:
            more = f" ({n} more since last report)" if n else ""
            self._log.log(level, "%s: %s%s", reason, detail, more, exc_info=exc_info)
            self._last[reason] = (now, 0)
            return True
        self._last[reason] = (last, n + 1)
        return False


def classify(exc: ProtocolError) -> str:
    """The reject reason (one of ``REJECT_REASONS``) for a decoder error."""
    text = str(exc)
    if "protocol version" in text:
        return "unsupported-version"
    if "unknown message type" in text:
        return "unknown-type"
    if "-byte limit" in text:
        return "oversized"
    if "frames" in text or "msgpack" in text or "header frame" in text or "not a map" in text:
        return "malformed"
    return "invalid-field"


class IngestServer:
    """Receive, check, store, ack; drive the engine; publish shots.

    ``security``: a :class:`server.security.ServerSecurity` (CURVE on: its context,
    server key and allow-list are used, and :meth:`run` polls its key directory).
    Without it the server is plaintext (local simulation): the routing id must
    equal the node id and nothing is authenticated. ``curve_secret_key`` +
    ``identity_for`` are the lower-level way to the same (tests).
    ``on_shot``: called with every located shot (e.g. to print a JSON line).
    ``keep_reports``: how many of the latest shots and candidates
    :attr:`reports` and :attr:`candidates` keep (older ones drop out; the store
    has them all).
    """

    def __init__(self, cfg: ServerConfig, engine: Engine, *, ctx: zmq.Context | None = None,
                 on_shot: Callable[[ShotReport], None] | None = None,
                 security=None,
                 curve_secret_key: bytes | None = None,
                 identity_for: Callable[[str], str | None] | None = None,
                 keep_reports: int = KEEP_REPORTS) -> None:
        if isinstance(keep_reports, bool) or not isinstance(keep_reports, int) or keep_reports < 0:
            raise ValueError(f"keep_reports must be a whole number ≥ 0 (how many of the latest shots to "
                             f"keep in memory), not {keep_reports!r}")
        self.cfg = cfg
        self.engine = engine
        self.on_shot = on_shot
        self.security = security
        if security is not None:
            ctx = security.ctx
            curve_secret_key = security.server_secret_key
            identity_for = security.identity_for
        self.identity_for = identity_for
        self._ctx = ctx or zmq.Context.instance()
        self._sockets: list[zmq.Socket] = []     # what close() closes
        try:
            self._open_sockets(cfg, curve_secret_key, identity_for, security)
        except BaseException:
            self.close()          # e.g. the PUB address in use: do not leave the ROUTER bound
            raise
        self.counters: dict[str, int] = {
            "received": 0, "rejected": 0, "acked": 0, "heartbeats": 0, "events_new": 0,
            "duplicates": 0, "conflicts": 0, "store_failed": 0, "connections_cut": 0,
            "engine_errors": 0}
        self.rejects: dict[str, int] = {}
        self._rlog = RateLimitedLog()
        self._peer_keys: dict[str, str] = {}     # User-Id → node id, of keys seen delivering
        self._last_hb: dict[str, int] = {}
        #: The latest located shots and candidates published (newest last), for
        #: the simulation's report; at most ``keep_reports`` of each (the store
        #: holds them all).
        self.reports: deque[ShotReport] = deque(maxlen=keep_reports)
        self.candidates: deque[CandidateReport] = deque(maxlen=keep_reports)

    def _open_sockets(self, cfg: ServerConfig, curve_secret_key: bytes | None,
                      identity_for: Callable[[str], str | None] | None, security) -> None:
        r = self._ctx.socket(zmq.ROUTER)
        self._sockets.append(r)
        r.setsockopt(zmq.LINGER, 0)
        r.setsockopt(zmq.ROUTER_MANDATORY, 1)       # unroutable ack → error, not silence
        r.setsockopt(zmq.ROUTER_HANDOVER, 1)        # a reconnecting node takes its id back at once
        r.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES + 1024)  # bigger frames: connection dropped
        r.setsockopt(zmq.RCVHWM, RCVHWM)
        r.setsockopt(zmq.SNDHWM, RCVHWM)
        r.setsockopt(zmq.HEARTBEAT_IVL, 5_000)      # reap connections of vanished nodes
        r.setsockopt(zmq.HEARTBEAT_TIMEOUT, 15_000)
        r.setsockopt(zmq.HANDSHAKE_IVL, 5_000)      # a peer that never finishes its handshake
        if curve_secret_key is not None:
            r.curve_server = True
            r.curve_secretkey = curve_secret_key
            if security is not None:
                r.curve_publickey = security.server_public_key
        elif identity_for is not None:
            raise ValueError("identity_for needs curve_secret_key (a plaintext server has no User-Id)")
        r.bind(cfg.bind)
        self.router = r
        self.bound = r.getsockopt(zmq.LAST_ENDPOINT).decode()
        p = self._ctx.socket(zmq.PUB)
        self._sockets.append(p)
        p.setsockopt(zmq.LINGER, 0)
        p.bind(cfg.publish)
        self.pub = p
        self.pub_bound = p.getsockopt(zmq.LAST_ENDPOINT).decode()

    # ------------------------------------------------------------- loop
    def run(self, stop: threading.Event, step_s: float = 0.05) -> None:
        """Serve until ``stop`` is set. Association runs between batches of
        messages for at most ``ASSOCIATION_BUDGET_S`` at a time, so a flood of
        events (fireworks) never stops the server from storing and acking; a
        backlog of decisions is worked off whenever no message is waiting."""
        last_step = 0.0
        allowance = 0.0       # association time earned by ingest work while messages wait
        while not stop.is_set():
            t0 = time.monotonic()
            n = self.poll_once(timeout_ms=0 if self.engine.behind else int(step_s * 1000))
            self.check_keys()
            now = time.monotonic()
            flooded = n >= BATCH          # a full batch: more messages are waiting
            if flooded:
                allowance = min(allowance + ASSOCIATION_SHARE * (now - t0), ASSOCIATION_BUDGET_S)
            if not (self.engine.behind or now - last_step >= step_s):
                continue
            if flooded and allowance < ASSOCIATION_BUDGET_S / 5:
                continue        # the waiting messages come first; association gets its share
            self.advance(allowance if flooded else ASSOCIATION_BUDGET_S)
            spent = time.monotonic() - now
            allowance = allowance - spent if flooded else 0.0     # a long search is paid back
            last_step = now

    def advance(self, budget_s: float | None = None) -> None:
        """One association step (at most ``budget_s``, default
        ``ASSOCIATION_BUDGET_S``); publishes what it decides. Never raises."""
        try:
            reps = self.engine.advance(budget_s=ASSOCIATION_BUDGET_S if budget_s is None else budget_s)
        except Exception as exc:  # a bug in association must not stop ingest and acks
            self.counters["engine_errors"] += 1
            self._rlog.warn("engine-error", f"association step failed: {exc!r}", logging.ERROR, exc_info=True)
            return
        self.publish(reps)

    def poll_once(self, timeout_ms: int = 50) -> int:
        """Handle up to BATCH waiting messages (waiting ``timeout_ms`` for the first):
        their heartbeats are recorded in one transaction, their events stored in
        another (one commit each per batch, not per message), then acked."""
        events: list[tuple[bytes, Event]] = []
        heartbeats: list[Heartbeat] = []
        n = 0
        if self.router.poll(timeout_ms, zmq.POLLIN):
            while n < BATCH:
                try:
                    msg = self.router.recv_multipart(flags=zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                n += 1
                try:
                    self._handle(msg, events, heartbeats)
                except Exception as exc:   # never let one message take the server down
                    self._reject("internal-error", f"{exc!r}", exc_info=True)
        if heartbeats:
            self._record_heartbeats(heartbeats)
        if events:
            self._store_and_ack(events)
        return n

    def check_keys(self) -> None:
        """Apply enrolment/revocation (CURVE only; costs nothing between polls).
        If a key that has delivered messages was revoked, every established
        connection is cut (ZeroMQ cannot close just one); enrolled nodes reconnect
        and resend, the revoked key's new handshake is refused."""
        if self.security is None or not self.security.tick():
            return
        gone = {k: n for k, n in self._peer_keys.items() if self.identity_for(k) is None}
        if not gone:
            return
        for k in gone:
            del self._peer_keys[k]
        try:
            drop_connections(self.router, self.bound)
        except zmq.ZMQError as exc:
            log.error("could not cut the connections of revoked node(s) %s: %s; their messages are "
                      "still dropped", ", ".join(sorted(gone.values())), exc)
            return
        self.counters["connections_cut"] += 1
        log.warning("revoked node(s) %s were connected: cut all connections (enrolled nodes reconnect)",
                    ", ".join(sorted(gone.values())))

    def publish(self, reports: list[ShotReport]) -> None:
        """Publish located shots (topic ``shot``), then the candidates for review
        the engine decided with them (topic ``candidate``)."""
        for rep in reports:
            self.reports.append(rep)
            try:
                self.pub.send_multipart([b"shot", json.dumps(rep.to_json()).encode()], flags=zmq.NOBLOCK)
            except zmq.ZMQError as exc:
                self._rlog.warn("publish-failed", str(exc))
            if self.on_shot is not None:
                self.on_shot(rep)
        for cand in self.engine.take_candidates():
            self.candidates.append(cand)
            log.info("candidate %s for review (not a shot): %.6f, %.6f at %s, %d nodes, %.3g expected chance "
                     "alignments; `earwitness review list` shows it", cand.candidate_id, cand.lat, cand.lon,
                     ns_to_iso(cand.t_utc_ns), len(cand.nodes), cand.chance)
            try:
                self.pub.send_multipart([b"candidate", json.dumps(cand.to_json()).encode()], flags=zmq.NOBLOCK)
            except zmq.ZMQError as exc:
                self._rlog.warn("publish-failed", str(exc))

    def finish(self) -> list[ShotReport]:
        """Decide everything pending (end of a simulation) and publish it."""
        reps = self.engine.finish()
        self.publish(reps)
        return reps

    def stats(self) -> dict[str, int]:
        """Counters of this server, its engine and its security layer, plus
        ``reject_<reason>`` for every reject reason seen."""
        out = dict(self.counters)
        out.update({f"engine_{k}": v for k, v in self.engine.counters.items()})
        if self.security is not None:
            out.update(self.security.counters)
        out.update({f"reject_{k}": v for k, v in self.rejects.items()})
        return out

    def close(self) -> None:
        """Close the sockets. The engine and its store belong to whoever made
        them (``earwitness server``: :func:`server.main.close_server`)."""
        for sock in self._sockets:
            sock.close(linger=0)

    # ---------------------------------------------------------- internals
    def _reject(self, reason: str, detail: str, exc_info: bool = False) -> None:
        self.counters["rejected"] += 1
        self.rejects[reason] = self.rejects.get(reason, 0) + 1
        self._rlog.warn(reason, detail, logging.ERROR if exc_info else logging.WARNING, exc_info)

    def _handle(self, msg: list, events: list, heartbeats: list) -> None:
        self.counters["received"] += 1
        rid = msg[0].bytes
        who = rid[:64].decode("utf-8", "replace")
        expected = None
        if self.identity_for is not None:
            # Before looking at the content: is the sender's key enrolled NOW?
            uid = frame_user_id(msg[-1])
            expected = self.identity_for(uid) if uid else None
            if expected is None:
                self._reject("unknown-key", f"message from a key that is not enrolled ({uid!r}); dropped")
                return
            self._peer_keys[uid] = expected
        if len(msg) != 3:
            self._reject("malformed", f"from {who!r}: {len(msg) - 1} frames, expected 2 (header, body)")
            return
        try:
            m = decode([f.bytes for f in msg[1:]])
        except ProtocolError as exc:
            self._reject(classify(exc), f"from {who!r}: {exc}")
            return
        except Exception as exc:  # a decoder bug: the message is still refused
            self._reject("malformed", f"from {who!r}: the decoder failed ({exc!r}); please report this")
            return
        node = getattr(m, "node_id", None)
        if node != (expected if expected is not None else who) or rid != node.encode():
            self._reject("identity-mismatch",
                         f"message claims node {node!r} but came from {expected or who!r} "
                         f"(routing id {who!r})")
            return
        if isinstance(m, Event):
            reason = self._implausible(m.t_utc_ns)
            if reason:
                self._reject("implausible-event", f"{m.node_id} seq {m.seq}: {reason}")
                return
            events.append((rid, m))
        elif isinstance(m, Heartbeat):
            reason = self._implausible(m.t_utc_ns)
            if reason:
                self._reject("implausible-heartbeat", f"{m.node_id}: {reason}")
                return
            last = self._last_hb.get(m.node_id)
            if last is not None and m.t_utc_ns <= last:
                self._reject("stale-heartbeat", f"{m.node_id}: heartbeat of {m.t_utc_ns} is not newer "
                                                f"than the last one ({last}): replayed or clock stepped back")
                return
            self._last_hb[m.node_id] = m.t_utc_ns
            self.counters["heartbeats"] += 1
            heartbeats.append(m)
        else:
            self._reject("unexpected-type", f"{type(m).__name__} from {who!r}: nodes do not send those")

    def _implausible(self, t_utc_ns: int) -> str:
        skew = self.cfg.max_clock_skew_s
        if skew > 0 and abs(t_utc_ns - time.time_ns()) > skew * 1e9:
            return (f"time {t_utc_ns} is more than {skew:.0f} s from the server clock "
                    "(node clock wrong, or a replay)")
        return ""

    def _record_heartbeats(self, heartbeats: list[Heartbeat]) -> None:
        store = self.engine.store
        try:
            with store.transaction() if store is not None else nullcontext():
                for hb in heartbeats:
                    self.engine.ingest_heartbeat(hb)
        except Exception as exc:   # a full disk must not stop the server (a node's next one will do)
            self.counters["store_failed"] += 1
            self._rlog.warn("store-failed", f"{len(heartbeats)} heartbeat(s) not recorded: {exc}", logging.ERROR)

    def _store_and_ack(self, events: list[tuple[bytes, Event]]) -> None:
        try:
            statuses = self.engine.ingest_batch([e for _, e in events])
        except Exception as exc:  # a full disk or a broken database: do not ack, keep serving
            self.counters["store_failed"] += len(events)
            self._rlog.warn("store-failed", f"could not store {len(events)} event(s) ({exc}); not "
                                            "acknowledging them, the nodes will resend", logging.ERROR)
            return
        by_node: dict[bytes, list[int]] = {}
        for (rid, ev), status in zip(events, statuses):
            if status == "new":
                self.counters["events_new"] += 1
            elif status == "duplicate":
                self.counters["duplicates"] += 1
            else:
                self.counters["conflicts"] += 1
                self._rlog.warn("conflict", f"{ev.node_id} seq {ev.seq}: differs from the event stored "
                                            "under that number; kept the stored one, acked (node reused a "
                                            "sequence number, or a forgery)")
            by_node.setdefault(rid, []).append(ev.seq)
        for rid, seqs in by_node.items():
            node = rid.decode("utf-8", "replace")
            for i in range(0, len(seqs), MAX_ACK_SEQS):
                part = seqs[i:i + MAX_ACK_SEQS]
                try:
                    self.router.send_multipart([rid, _ACK_HEADER, _ack_body(node, part)], flags=zmq.NOBLOCK)
                    self.counters["acked"] += len(part)
                except zmq.ZMQError as exc:   # node gone or its queue full: it will resend
                    self._rlog.warn("ack-failed", f"{node}: {exc}")


#: The Ack header frame, and its body built directly (one per node per batch: the
#: general encoder's validation would cost as much as storing the event). The
#: values come from events that passed decode(); tests/test_net.py checks the
#: result against encode(Ack(...)).
_ACK_HEADER = encode(Ack(node_id="x", seqs=()))[0]


def _ack_body(node_id: str, seqs: list[int]) -> bytes:
    return msgpack.packb({"node_id": node_id, "seqs": seqs}, use_bin_type=True)
