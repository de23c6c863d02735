"""The node's link to the server: the only node module that owns a socket.

One ZeroMQ DEALER socket (routing id = node id) connected to the server's ROUTER.
Events go through the persistent :class:`~node.outbox.Outbox` first and are sent,
and re-sent every ``resend_s``, until the server acks them (at-least-once; the
server deduplicates by node id + sequence number). Heartbeats are sent directly
and never queued: a stale heartbeat is worth nothing.

ZeroMQ loses what is in flight when the server dies (see docs/protocol.md), which
is why nothing leaves the outbox before its ack.

With ``curve`` (:class:`CurveClientKeys`, from the node config's ``[security]``
section written by ``earwitness keys enroll``) the link is CURVE-encrypted and
authenticated; without it, plaintext (accepted only by a server configured with
``allow_plaintext``).

A full disk (:class:`~node.outbox.OutboxFullError` from ``put``) does not lose
the event while the process lives: it is kept in a bounded in-memory spill
(``SPILL_MAX``), sent and resent from there, moved into the outbox when space
returns, and counted (:meth:`Publisher.status`, for the heartbeat).

Measured with libzmq 4.3.5: after the server REFUSES a handshake (key not enrolled
yet, revoked, or CURVE/plaintext mismatch) ZeroMQ does not reconnect by itself, so
a node enrolled a minute after it started would never get in. The publisher
watches its socket's handshake events and reconnects after a refusal, backing off
from ``AUTH_RETRY_FIRST_S`` to ``AUTH_RETRY_MAX_S``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass

import msgpack
import zmq
from zmq.utils.monitor import recv_monitor_message

from common.config import PublisherConfig
from common.protocol import MAX_FRAME_BYTES, MIN_UTC_NS, Ack, Event, Heartbeat, ProtocolError, decode, encode
from node.outbox import OutboxFullError

log = logging.getLogger("earwitness.node.publisher")

#: Most events kept in memory while the outbox's disk is full (oldest dropped first).
SPILL_MAX = 10_000
FULL_LOG_EVERY_S = 60.0
#: How long an unacked event may hold back this node's heartbeat watermark (s).
HOLD_MAX_S = 120.0
AUTH_RETRY_FIRST_S = 1.0
AUTH_RETRY_MAX_S = 60.0
_HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                     | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)


@dataclass(frozen=True)
class CurveClientKeys:
    """Z85 keys for an encrypted, authenticated link (see `earwitness keys enroll`)."""

    public_key: str
    secret_key: str
    server_public_key: str


class Publisher:
    def __init__(self, node_id: str, endpoint: str, outbox, cfg: PublisherConfig, *,
                 ctx: zmq.Context | None = None, curve: CurveClientKeys | None = None) -> None:
        self.node_id = node_id
        self.endpoint = endpoint
        self.outbox = outbox
        self.cfg = cfg
        self._ctx = ctx or zmq.Context.instance()
        s = self._ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.ROUTING_ID, node_id.encode())
        s.setsockopt(zmq.LINGER, 0)              # the outbox, not ZeroMQ, keeps unsent events
        s.setsockopt(zmq.SNDHWM, 10_000)
        s.setsockopt(zmq.RCVHWM, 10_000)
        s.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES)
        s.setsockopt(zmq.RECONNECT_IVL, 100)
        s.setsockopt(zmq.RECONNECT_IVL_MAX, 5_000)
        ping_ms = max(100, int(round(cfg.link_ping_s * 1000)))
        s.setsockopt(zmq.HEARTBEAT_IVL, ping_ms)
        s.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3 * ping_ms)
        s.setsockopt(zmq.IMMEDIATE, 1)           # do not queue into a connection not yet up
        if curve is not None:
            s.curve_publickey = curve.public_key.encode()
            s.curve_secretkey = curve.secret_key.encode()
            s.curve_serverkey = curve.server_public_key.encode()
        self._mon = s.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | _HANDSHAKE_FAILED)
        s.connect(endpoint)
        self._sock = s
        self._curve = curve is not None
        self._retry_at: float | None = None
        self._retry_s = AUTH_RETRY_FIRST_S
        self._refused = False
        self.stats = {"sent": 0, "resent": 0, "acked": 0, "send_blocked": 0, "bad_replies": 0,
                      "outbox_full": 0, "spill_dropped": 0, "handshakes_refused": 0}
        self._last_ack_ns = 0
        self._submitted = True          # the outbox may hold events from before a restart
        self._next_due_s = 0.0
        # seq → [frames, last sent (monotonic s) or None]: events the outbox could not take
        self._spill: OrderedDict[int, list] = OrderedDict()
        self._full_logged = -1e18
        # seq → (onset time UTC ns, monotonic s when queued) of every event not yet
        # acked: heartbeats never promise a watermark past one of them (heartbeat()).
        self._unacked_t: dict[int, tuple[int, float]] = {}
        self._prime_unacked_times()

    # --------------------------------------------------------------- API
    def submit(self, ev: Event) -> bool:
        """Persist an event in the outbox; :meth:`pump` sends it. If the disk is full
        the event is kept in memory instead (sent all the same, counted, moved to
        the outbox when space returns) and False is returned."""
        frames = encode(ev)
        self._unacked_t[ev.seq] = (ev.t_utc_ns, time.monotonic())
        try:
            self.outbox.put(ev.seq, frames, priority=1)
            self._submitted = True
            return True
        except OutboxFullError as exc:
            self.stats["outbox_full"] += 1
            self._spill[ev.seq] = [frames, None]
            while len(self._spill) > SPILL_MAX:
                self._spill.popitem(last=False)
                self.stats["spill_dropped"] += 1
            if time.monotonic() - self._full_logged >= FULL_LOG_EVERY_S:
                self._full_logged = time.monotonic()
                log.error("%s; keeping %d event(s) in memory until there is space (lost if the node "
                          "restarts first)", exc, len(self._spill))
            return False

    def status(self) -> dict[str, int]:
        """Link health for the heartbeat: ``link_outbox_full`` (events the outbox
        refused: disk full), ``link_spilled`` (events held in memory now),
        ``link_spill_dropped`` (spilled events dropped for lack of memory: lost)."""
        return {"link_outbox_full": self.stats["outbox_full"], "link_spilled": len(self._spill),
                "link_spill_dropped": self.stats["spill_dropped"],
                "link_handshakes_refused": self.stats["handshakes_refused"]}

    def heartbeat(self, hb: Heartbeat) -> bool:
        """Send a heartbeat now if the link can take it; False if it was dropped.

        Its ``stream_utc_ns`` (the promise "no event before this will come") is
        lowered to just before the oldest event not yet acked: heartbeats are sent
        directly and can overtake a backlog (after a partition, a server restart),
        and a server that believed the promise would decide those events' shots
        without them. An event unacked for more than ``HOLD_MAX_S`` no longer holds
        it back (the server would have given up waiting for it anyway, and an event
        the server keeps refusing must not stall the whole network's decisions)."""
        oldest = self._oldest_unacked_t()
        if oldest is not None and hb.stream_utc_ns >= oldest:
            hb = dataclasses.replace(hb, stream_utc_ns=max(MIN_UTC_NS, oldest - 1))
        try:
            self._sock.send_multipart(encode(hb), flags=zmq.NOBLOCK)
            return True
        except zmq.Again:
            self.stats["send_blocked"] += 1
            return False

    def pump(self, timeout_ms: int = 0, now_s: float | None = None) -> int:
        """Receive acks (waiting up to ``timeout_ms`` for the first) and send what
        is due from the outbox. Returns the number of events acked."""
        acked = self._receive(timeout_ms)
        self._watch_link()
        now_s = time.monotonic() if now_s is None else now_s
        if self._spill:
            self._pump_spill(now_s)
        # Ask the outbox (a database query) only when something new was put in
        # or a resend may be due: this runs every few milliseconds.
        if not (self._submitted or now_s >= self._next_due_s):
            return acked
        self._submitted = False
        self._next_due_s = now_s + min(1.0, self.cfg.resend_s / 2)
        for seq, frames in self.outbox.due(now_s, self.cfg.resend_s, 500):
            try:
                self._sock.send_multipart(frames, flags=zmq.NOBLOCK)
                self.stats["sent"] += 1
            except zmq.Again:
                self.stats["send_blocked"] += 1
                self._submitted = True          # try again at the next pump
                break
        return acked

    def _pump_spill(self, now_s: float) -> None:
        """Move spilled events into the outbox while it takes them; send the rest."""
        while self._spill:
            seq, (frames, _) = next(iter(self._spill.items()))
            try:
                self.outbox.put(seq, frames, priority=1)
            except OutboxFullError:
                break                   # still full: try again at the next pump
            except ValueError:          # already in the outbox (cannot happen; be safe)
                pass
            del self._spill[seq]
        for seq, item in self._spill.items():
            frames, sent = item
            if sent is not None and now_s - sent < self.cfg.resend_s:
                continue
            try:
                self._sock.send_multipart(frames, flags=zmq.NOBLOCK)
                item[1] = now_s
                self.stats["sent"] += 1
            except zmq.Again:
                self.stats["send_blocked"] += 1
                break

    @property
    def unacked(self) -> int:
        return len(self.outbox) + len(self._spill)

    @property
    def last_ack_ns(self) -> int:
        """Wall time of the last ack (0: none yet): the link is up if recent."""
        return self._last_ack_ns

    def close(self) -> None:
        try:
            self._sock.disable_monitor()
        except zmq.ZMQError:
            pass
        self._mon.close(linger=0)
        self._sock.close(linger=0)

    def _watch_link(self) -> None:
        """Handshake outcomes: after a refusal, reconnect later (see module docstring)."""
        while self._mon.poll(0):
            try:
                event = recv_monitor_message(self._mon, flags=zmq.NOBLOCK)["event"]
            except (zmq.Again, ValueError):
                break
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                if self._refused:
                    log.info("the server at %s accepted this node again", self.endpoint)
                self._refused = False
                self._retry_at = None
                self._retry_s = AUTH_RETRY_FIRST_S
            elif event & _HANDSHAKE_FAILED:
                self.stats["handshakes_refused"] += 1
                if not self._refused:
                    if not self._curve:
                        why = "the server requires CURVE: add the [security] keys from `earwitness keys enroll`"
                    elif event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                        why = "this node's key is not enrolled or was revoked (`earwitness keys list` on the server)"
                    else:
                        # a server that cannot open the client's hello closes the connection
                        # without a reason, as does anything else between the two
                        why = ("the connection was dropped during the handshake: server_public_key is not "
                               "the server's (the public key in its key directory's server.key), or "
                               "something between this node and the server (a proxy, a firewall) closes "
                               "connections")
                    log.error("the server at %s refused the connection: %s; retrying with back-off",
                              self.endpoint, why)
                self._refused = True
                if self._retry_at is None:
                    self._retry_at = time.monotonic() + self._retry_s
                    self._retry_s = min(AUTH_RETRY_MAX_S, self._retry_s * 2)
        if self._retry_at is not None and time.monotonic() >= self._retry_at:
            self._retry_at = None
            try:
                self._sock.disconnect(self.endpoint)
            except zmq.ZMQError:
                pass
            self._sock.connect(self.endpoint)

    # ---------------------------------------------------------- internals
    def _prime_unacked_times(self) -> None:
        """Onset times of the events a previous process left in the outbox. Reads
        them through ``due`` with a "last sent" mark far in the past, so they are
        still due at once for (re)sending."""
        n = len(self.outbox)
        if not n:
            return
        for seq, frames in self.outbox.due(-1e18, 0.0, n):
            try:
                t = msgpack.unpackb(frames[1], raw=False).get("t_utc_ns")
            except Exception:  # not an event (or unreadable): it does not hold the watermark
                continue
            if isinstance(t, int):
                self._unacked_t[seq] = (t, time.monotonic())

    def _oldest_unacked_t(self) -> int | None:
        if not self._unacked_t:
            return None
        # The bounded outbox drops its oldest events when full: forget as many of
        # the oldest seqs, or a dropped event would hold the watermark forever.
        excess = len(self._unacked_t) - self.unacked
        if excess > 0:
            for s in sorted(self._unacked_t)[:excess]:
                del self._unacked_t[s]
        since = time.monotonic() - HOLD_MAX_S
        return min((t for t, queued in self._unacked_t.values() if queued >= since), default=None)

    def _receive(self, timeout_ms: int) -> int:
        acked = 0
        wait = timeout_ms
        while self._sock.poll(wait, zmq.POLLIN):
            wait = 0
            frames = self._sock.recv_multipart(flags=zmq.NOBLOCK)
            try:
                msg = decode(frames)
            except ProtocolError as exc:
                self.stats["bad_replies"] += 1
                log.warning("ignoring a malformed reply from the server: %s", exc)
                continue
            if isinstance(msg, Ack):
                for s in msg.seqs:
                    self._unacked_t.pop(s, None)
                    if self._spill.pop(s, None) is not None:
                        acked += 1
                try:
                    acked += self.outbox.ack(msg.seqs)
                except OutboxFullError as exc:   # cannot even log the deletion: resent, deduplicated
                    log.warning("%s", exc)
                self._last_ack_ns = time.time_ns()
        self.stats["acked"] += acked
        return acked
