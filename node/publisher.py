"""The node's link to the server: the only node module that owns a socket.

One ZeroMQ DEALER socket (routing id = node id) connected to the server's ROUTER.
Events go through the persistent :class:`~node.outbox.Outbox` first and are sent,
and re-sent every ``resend_s``, until the server acks them (at-least-once; the
server deduplicates by node id + sequence number). Heartbeats are sent directly
and never queued: a stale heartbeat is worth nothing.

ZeroMQ loses what is in flight when the server dies (see docs/protocol.md), which
is why nothing leaves the outbox before its ack.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import zmq

from common.config import PublisherConfig
from common.protocol import MAX_FRAME_BYTES, Ack, Event, Heartbeat, ProtocolError, decode, encode

log = logging.getLogger("earwitness.node.publisher")


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
        s.setsockopt(zmq.HEARTBEAT_IVL, 2_000)
        s.setsockopt(zmq.HEARTBEAT_TIMEOUT, 6_000)
        s.setsockopt(zmq.IMMEDIATE, 1)           # do not queue into a connection not yet up
        if curve is not None:
            s.curve_publickey = curve.public_key.encode()
            s.curve_secretkey = curve.secret_key.encode()
            s.curve_serverkey = curve.server_public_key.encode()
        s.connect(endpoint)
        self._sock = s
        self.stats = {"sent": 0, "resent": 0, "acked": 0, "send_blocked": 0, "bad_replies": 0}
        self._last_ack_ns = 0

    # --------------------------------------------------------------- API
    def submit(self, ev: Event) -> None:
        """Persist an event in the outbox; :meth:`pump` sends it."""
        self.outbox.put(ev.seq, encode(ev), priority=1)

    def heartbeat(self, hb: Heartbeat) -> bool:
        """Send a heartbeat now if the link can take it; False if it was dropped."""
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
        now_s = time.monotonic() if now_s is None else now_s
        for seq, frames in self.outbox.due(now_s, self.cfg.resend_s, 500):
            try:
                self._sock.send_multipart(frames, flags=zmq.NOBLOCK)
                self.stats["sent"] += 1
            except zmq.Again:
                self.stats["send_blocked"] += 1
                break
        return acked

    @property
    def unacked(self) -> int:
        return len(self.outbox)

    @property
    def last_ack_ns(self) -> int:
        """Wall time of the last ack (0: none yet): the link is up if recent."""
        return self._last_ack_ns

    def close(self) -> None:
        self._sock.close(linger=0)

    # ---------------------------------------------------------- internals
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
                acked += self.outbox.ack(msg.seqs)
                self._last_ack_ns = time.time_ns()
        self.stats["acked"] += acked
        return acked
