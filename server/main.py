"""`earwitness server --config FILE`: the central server.

Prints one JSON line per located shot on stdout (for log shippers and scripts);
logs go to stderr (journald under systemd).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading

from common.config import ConfigError, ServerConfig, load_server_config


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="earwitness server", description="Run the central Earwitness server.")
    p.add_argument("--config", required=True, help="server TOML config (see examples/server.toml)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def make_server(cfg: ServerConfig, on_shot=None):
    """Store + engine + sockets (+ CURVE and the allow-list when keys_dir is set).

    Returns ``(server, security)``; ``security`` is None in plaintext mode, else a
    :class:`server.security.ServerSecurity`. The caller owns all three — the
    sockets, the security layer and the store (``server.engine.store``) — and
    closes them with :func:`close_server`. Raises ConfigError for a config that
    would run unprotected by accident, RuntimeError (incl. KeyToolError) for a
    missing key directory or database, and zmq.ZMQError for an address in use;
    on any error, whatever was opened (store, sockets, security) is closed again.
    """
    from server.engine import Engine
    from server.net import IngestServer
    from server.store import Store

    if cfg.keys_dir is None and not cfg.allow_plaintext:
        raise ConfigError(
            "no keys_dir: the server would accept unauthenticated, unencrypted nodes. Run "
            "`earwitness keys init-server --dir /etc/earwitness/keys` and set keys_dir, or set "
            "allow_plaintext = true for a local simulation or a lab")
    security = None
    if cfg.keys_dir is not None:
        from server.security import secure_server_options

        security = secure_server_options(cfg.keys_dir)   # ZAP handler runs before any bind
    store = None
    try:
        store = Store(cfg.database)
        engine = Engine(cfg, store)
        server = IngestServer(cfg, engine, on_shot=on_shot, security=security)
    except BaseException:
        if security is not None:
            security.close()
        if store is not None:
            store.close()
        raise
    if security is None:
        logging.getLogger("earwitness.server").warning(
            "plaintext mode: any node can connect and nothing is encrypted (allow_plaintext = true)")
    return server, security


def close_server(server, security) -> None:
    """Close what :func:`make_server` opened: the sockets, then the security
    layer, then the store (its close runs the final WAL checkpoint)."""
    try:
        server.close()
        if security is not None:
            security.close()
    finally:
        if server.engine.store is not None:
            server.engine.store.close()


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        cfg = load_server_config(args.config)
        server, security = make_server(cfg, on_shot=lambda r: print(json.dumps(r.to_json()), flush=True))
    except (ConfigError, RuntimeError, OSError) as exc:
        print(f"earwitness server: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # e.g. zmq.ZMQError: address in use
        print(f"earwitness server: cannot start: {exc}", file=sys.stderr)
        return 2
    log = logging.getLogger("earwitness.server")
    log.info("listening for nodes on %s (%s), publishing shots on %s, database %s",
             server.bound, "CURVE" if security is not None else "PLAINTEXT", server.pub_bound, cfg.database)
    pending = server.engine.assoc.pending
    review = server.engine.review.pending if server.engine.review is not None else 0
    if pending or review:
        log.info("resumed %d stored event(s) not yet decided, %d put aside awaiting the review search",
                 pending, review)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        server.run(stop)
    finally:
        close_server(server, security)
        log.info("stopped; counters: %s", server.stats())
    return 0
