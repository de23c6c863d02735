"""The server side of CURVE: authenticator, allow-list and key-directory watcher.

:func:`secure_server_options` builds everything the ingest needs to run
encrypted and authenticated (see docs/security.md):

* its own ZeroMQ context with a ZAP handler started BEFORE any socket binds
  (libzmq admits any client key on a ``curve_server`` socket without one);
* the server key pair from ``KEYDIR/server.key_secret``;
* an :class:`~server.keys.AllowList` of the enrolled node keys, which the ZAP
  handler consults for every handshake and the ingest for every message
  (``identity_for``: a message's ``User-Id`` → the node id it was enrolled as);
* a :class:`~server.keys.KeydirWatcher`: :meth:`ServerSecurity.tick` (called by the
  ingest loop) re-reads the key directory about once a second, so enrolment and
  revocation take effect without a restart.

Refused handshakes (unknown or revoked keys) are counted and logged at most once
per ``LOG_EVERY_S`` per key.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import zmq
import zmq.auth

from server import keys as K

log = logging.getLogger("earwitness.server.security")

#: How often the key directory is checked for changes (s).
POLL_S = 1.0
LOG_EVERY_S = 10.0


class _CurveCallback:
    """pyzmq credentials provider: admits a client key iff it is enrolled now.

    Runs in the authenticator's thread; the allow-list swaps its table by one
    reference assignment, so lookups need no lock. Denials are counted and logged
    (rate-limited per key)."""

    def __init__(self, sec: ServerSecurity) -> None:
        self._sec = sec
        self._lock = threading.Lock()
        self._last_log: dict[str, tuple[float, int]] = {}

    def callback(self, domain: str, key: bytes) -> bool:
        z = key.decode("ascii", "replace") if isinstance(key, bytes) else str(key)
        if self._sec.allow.node_id(z) is not None:
            self._sec.counters["handshakes_accepted"] += 1
            return True
        self._sec.counters["handshakes_refused"] += 1
        who = self._sec.revoked_ids.get(z)
        what = f"revoked node {who!r}" if who else "a key that is not enrolled"
        now = time.monotonic()
        with self._lock:
            last, n = self._last_log.get(z, (-1e18, 0))
            if now - last >= LOG_EVERY_S:
                more = f" ({n} more attempts since last report)" if n else ""
                log.warning("refused a connection from %s (public key %s)%s", what, z, more)
                self._last_log[z] = (now, 0)
                if len(self._last_log) > 10_000:      # bound memory under a key-spraying flood
                    self._last_log.clear()
            else:
                self._last_log[z] = (last, n + 1)
        return False


@dataclass
class ServerSecurity:
    """CURVE state of one server (see the module docstring). Build it with
    :func:`secure_server_options`; ``close()`` it after closing the server's sockets."""

    ctx: zmq.Context
    keydir: Path
    server_public_key: bytes
    server_secret_key: bytes = field(repr=False)
    auth: object = field(repr=False)
    allow: K.AllowList = field(repr=False)
    watcher: K.KeydirWatcher = field(repr=False)
    poll_s: float = POLL_S
    counters: dict = field(default_factory=lambda: {"handshakes_accepted": 0, "handshakes_refused": 0,
                                                     "keydir_reloads": 0})
    revoked_ids: dict = field(default_factory=dict)
    _next_poll: float = 0.0
    _owns_ctx: bool = True

    def identity_for(self, user_id: str | bytes | None) -> str | None:
        """The enrolled node id for a message's ``User-Id`` (Z85 public key), or None
        if that key is not (or no longer) allowed."""
        return self.allow.node_id(user_id)

    def tick(self, now: float | None = None) -> bool:
        """Re-read the key directory if ``poll_s`` has passed and it changed.
        True if the allow-list was reloaded (the caller then checks whether a
        connected key was revoked)."""
        now = time.monotonic() if now is None else now
        if now < self._next_poll:
            return False
        self._next_poll = now + self.poll_s
        if not self.watcher.changed():
            return False
        self.reload()
        return True

    def reload(self) -> None:
        """Re-read the allow-list and the revoked keys now."""
        self.allow.reload()
        for p in self.allow.problems:
            log.error("key directory: %s", p)
        try:
            K.reload(self.auth, self.keydir)
        except K.KeyToolError as exc:
            log.error("%s", exc)
        self.revoked_ids = _revoked_ids(self.keydir)
        self.counters["keydir_reloads"] += 1
        log.info("key directory reloaded: %d node key(s) enrolled", len(self.allow))

    def close(self) -> None:
        """Stop the authenticator and, if this object made the context, destroy it
        (closing any socket still open on it)."""
        try:
            self.auth.stop()
        finally:
            if self._owns_ctx:
                self.ctx.destroy(linger=0)


def _revoked_ids(keydir: Path) -> dict[str, str]:
    """Z85 public key → node id, for the keys in ``revoked/`` (for log lines)."""
    out: dict[str, str] = {}
    d = keydir / K.REVOKED_DIR
    if not d.is_dir():
        return out
    for p in d.glob("*.key"):
        try:
            public, _ = zmq.auth.load_certificate(p)
        except (OSError, ValueError):
            continue
        out[public.decode("ascii", "replace")] = p.name[: -len(".key")].split("@", 1)[0]
    return out


def secure_server_options(keys_dir: str | Path, *, ctx: zmq.Context | None = None,
                          poll_s: float = POLL_S) -> ServerSecurity:
    """Start CURVE for a server: a new context (unless ``ctx``) with the ZAP handler
    running, the server key pair and the allow-list. Raises
    :class:`server.keys.KeyToolError` (nothing left running) if the key directory
    or the server key is missing."""
    d = Path(keys_dir)
    server = K.load_server_keys(d)
    own = ctx is None
    ctx = zmq.Context() if ctx is None else ctx
    try:
        auth = K.make_authenticator(ctx, d)
    except BaseException:
        if own:
            ctx.term()
        raise
    try:
        sec = ServerSecurity(ctx=ctx, keydir=d, server_public_key=server.public_key.encode("ascii"),
                             server_secret_key=server.secret_key.encode("ascii"), auth=auth,
                             allow=K.AllowList(d, refresh_s=None), watcher=K.KeydirWatcher(d),
                             poll_s=poll_s, _owns_ctx=own)
        sec.revoked_ids = _revoked_ids(d)
        for p in sec.allow.problems:
            log.error("key directory: %s", p)
        # Every handshake asks the live allow-list (takes precedence over the
        # certificate table make_authenticator loaded).
        auth.configure_curve_callback(domain="*", credentials_provider=_CurveCallback(sec))
    except BaseException:
        auth.stop()
        if own:
            ctx.term()
        raise
    log.info("CURVE on: %d node key(s) enrolled in %s", len(sec.allow), d)
    return sec
