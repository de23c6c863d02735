"""The server's sockets: the only server module that owns any.

* ROUTER at ``ServerConfig.bind``: nodes' DEALERs send events and heartbeats;
  the server answers each batch of stored events with an Ack.
* PUB at ``ServerConfig.publish``: one JSON message per located shot, topic
  ``shot`` (see docs/protocol.md), for maps, dispatch tools and webhooks relays.

Every received frame set goes through :func:`common.protocol.decode`; anything
invalid is counted, logged (at most once per ``LOG_EVERY_S`` per reason) and
dropped — never stored, never acked, never a crash.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Callable

import zmq

from common.config import ServerConfig
from common.protocol import MAX_FRAME_BYTES, Ack, Event, Heartbeat, ProtocolError, decode, encode
from server.engine import Engine, ShotReport

log = logging.getLogger("earwitness.server")

LOG_EVERY_S = 10.0
#: Most messages handled between two association steps.
BATCH = 2000


class RateLimitedLog:
    """Log a reason at most once per ``every_s``, with how many were suppressed."""

    def __init__(self, every_s: float = LOG_EVERY_S) -> None:
        self.every_s = every_s
        self._last: dict[str, tuple[float, int]] = {}

    def warn(self, reason: str, detail: str) -> None:
        now = time.monotonic()
        last, n = self._last.get(reason, (-1e18, 0))
        if now - last >= self.every_s:
            more = f" ({n} more since last report)" if n else ""
            log.warning("%s: %s%s", reason, detail, more)
            self._last[reason] = (now, 0)
        else:
            self._last[reason] = (last, n + 1)


class IngestServer:
    """Receive, validate, store, ack; drive the engine; publish shots.

    ``identity_for``: maps a message's authenticated CURVE User-Id (Z85 public
    key) to the node id it was enrolled as (None: reject); when not given
    (plaintext mode, for local simulation) the routing id must equal the node id.
    ``on_shot``: called with every located shot (e.g. to print a JSON line).
    """

    def __init__(self, cfg: ServerConfig, engine: Engine, *, ctx: zmq.Context | None = None,
                 on_shot: Callable[[ShotReport], None] | None = None,
                 curve_secret_key: bytes | None = None,
                 identity_for: Callable[[str], str | None] | None = None) -> None:
        self.cfg = cfg
        self.engine = engine
        self.on_shot = on_shot
        self.identity_for = identity_for
        self._ctx = ctx or zmq.Context.instance()
        r = self._ctx.socket(zmq.ROUTER)
        r.setsockopt(zmq.LINGER, 0)
        r.setsockopt(zmq.ROUTER_MANDATORY, 1)
        r.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES + 1024)
        r.setsockopt(zmq.RCVHWM, 100_000)
        r.setsockopt(zmq.SNDHWM, 100_000)
        if curve_secret_key is not None:
            r.curve_server = True
            r.curve_secretkey = curve_secret_key
        r.bind(cfg.bind)
        self.router = r
        self.bound = r.getsockopt(zmq.LAST_ENDPOINT).decode()
        p = self._ctx.socket(zmq.PUB)
        p.setsockopt(zmq.LINGER, 0)
        p.bind(cfg.publish)
        self.pub = p
        self.pub_bound = p.getsockopt(zmq.LAST_ENDPOINT).decode()
        self.counters: dict[str, int] = {"received": 0, "rejected": 0, "acked": 0, "heartbeats": 0}
        self.rejects: dict[str, int] = {}
        self._rlog = RateLimitedLog()
        self.reports: list[ShotReport] = []

    # ------------------------------------------------------------- loop
    def run(self, stop: threading.Event, step_s: float = 0.05) -> None:
        """Serve until ``stop`` is set."""
        last_step = 0.0
        while not stop.is_set():
            self.poll_once(timeout_ms=int(step_s * 1000))
            now = time.monotonic()
            if now - last_step >= step_s:
                self.publish(self.engine.advance())
                last_step = now

    def poll_once(self, timeout_ms: int = 50) -> int:
        """Handle up to BATCH waiting messages (waiting ``timeout_ms`` for the first)."""
        events: list[tuple[bytes, Event]] = []
        n = 0
        if self.router.poll(timeout_ms, zmq.POLLIN):
            while n < BATCH:
                try:
                    msg = self.router.recv_multipart(flags=zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                n += 1
                self._handle(msg, events)
        if events:
            self._store_and_ack(events)
        return n

    def publish(self, reports: list[ShotReport]) -> None:
        for rep in reports:
            self.reports.append(rep)
            self.pub.send_multipart([b"shot", json.dumps(rep.to_json()).encode()])
            if self.on_shot is not None:
                self.on_shot(rep)

    def finish(self) -> list[ShotReport]:
        """Decide everything pending (end of a simulation) and publish it."""
        reps = self.engine.finish()
        self.publish(reps)
        return reps

    def close(self) -> None:
        self.router.close(linger=0)
        self.pub.close(linger=0)

    # ---------------------------------------------------------- internals
    def _reject(self, reason: str, detail: str) -> None:
        self.counters["rejected"] += 1
        self.rejects[reason] = self.rejects.get(reason, 0) + 1
        self._rlog.warn(reason, detail)

    def _handle(self, msg: list, events: list) -> None:
        self.counters["received"] += 1
        if len(msg) < 2:
            self._reject("malformed", "message without a routing id and body")
            return
        rid = msg[0].bytes
        try:
            frames = [f.bytes for f in msg[1:]]
            m = decode(frames)
        except ProtocolError as exc:
            self._reject("malformed", f"from {rid[:64]!r}: {exc}")
            return
        expected = rid.decode("utf-8", "replace")
        if self.identity_for is not None:
            user = msg[1].get("User-Id")
            enrolled = self.identity_for(user) if user else None
            if enrolled is None:
                self._reject("unknown-key", f"message from a key that is not enrolled ({user!r})")
                return
            expected = enrolled
        if getattr(m, "node_id", None) != expected:
            self._reject("identity-mismatch",
                         f"message claims node {getattr(m, 'node_id', '?')!r} but came from {expected!r}")
            return
        if isinstance(m, Event):
            reason = self._implausible(m)
            if reason:
                self._reject("implausible-event", f"{m.node_id} seq {m.seq}: {reason}")
                return
            events.append((rid, m))
        elif isinstance(m, Heartbeat):
            self.counters["heartbeats"] += 1
            self.engine.ingest_heartbeat(m)
        else:
            self._reject("unexpected-type", f"{type(m).__name__} is not sent to the server")

    def _implausible(self, ev: Event) -> str:
        skew = self.cfg.max_clock_skew_s
        if skew > 0 and abs(ev.t_utc_ns - time.time_ns()) > skew * 1e9:
            return f"onset time is more than {skew:.0f} s from the server clock (node clock wrong?)"
        return ""

    def _store_and_ack(self, events: list[tuple[bytes, Event]]) -> None:
        try:
            self.engine.ingest_events([e for _, e in events])
        except Exception as exc:  # a full disk or a broken database: do not ack, keep serving
            log.error("could not store %d events (%s); not acknowledging them, nodes will resend",
                      len(events), exc)
            return
        by_node: dict[bytes, list[int]] = {}
        for rid, ev in events:
            by_node.setdefault(rid, []).append(ev.seq)
        for rid, seqs in by_node.items():
            node = rid.decode("utf-8", "replace")
            try:
                self.router.send_multipart([rid] + encode(Ack(node_id=node, seqs=tuple(seqs))), flags=zmq.NOBLOCK)
                self.counters["acked"] += len(seqs)
            except (zmq.Again, zmq.ZMQError) as exc:
                self._rlog.warn("ack-failed", f"{node}: {exc}")
