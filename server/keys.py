"""CURVE key tooling: the server key pair, the node allow-list, enrolment, revocation.

Key directory layout (``--dir``, default ``/etc/earwitness/keys``)::

    KEYDIR/                     0700
      server.key                the server's public certificate (give it to nodes)
      server.key_secret         the server's public + SECRET key, 0600
      nodes/                    0700  the allow-list: the directory the ZAP handler loads
        <node_id>.key           one public certificate per enrolled node
      revoked/                  0700  certificates taken out of the allow-list
        <node_id>.key           the latest revoked key of that node
        <node_id>@<utc_ns>.key  older revocations of the same id (kept for the record)

Certificates use pyzmq's text format (``zmq.auth.load_certificate`` reads them) with
extra metadata lines ``node-id``, ``created-utc-ns`` and, once revoked,
``revoked-utc-ns``. The server never stores a node's secret key: :func:`enroll`
returns it once (in :class:`Enrolment`) for the operator to install on the node.

Everything above :func:`make_authenticator` is pure file handling (no sockets).
The authenticator helpers, :class:`KeydirWatcher` and :class:`AllowList` are what the
server's ingest uses so that enrolment and revocation take effect without a restart.

Important facts about libzmq 4.3.5 (checked by tests/test_keys.py):

* A ``curve_server`` socket with **no** ZAP handler running accepts **any** client
  key pair. Start the authenticator before the socket binds.
* Revocation stops new handshakes only: an already-established connection of a
  revoked key keeps delivering. Drop its frames with :meth:`AllowList.is_allowed`
  on each frame's ``User-Id``, and/or cut every established connection with
  :func:`drop_connections` (enrolled nodes reconnect; the first message each sends
  after the cut is lost and resent from its outbox).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import zmq
from zmq.auth.thread import ThreadAuthenticator

from common.config import is_valid_key
from common.protocol import NODE_ID_RE

DEFAULT_KEYDIR = "/etc/earwitness/keys"
SERVER_PUBLIC = "server.key"
SERVER_SECRET = "server.key_secret"
NODES_DIR = "nodes"
REVOKED_DIR = "revoked"

_ENDPOINT_RE = re.compile(r"^(tcp|ipc)://\S+$")
_LINE_RE = re.compile(r'^([A-Za-z0-9_-]+)\s*=\s*"([^"]*)"\s*$')


class KeyToolError(RuntimeError):
    """A key operation that cannot be done. The text says what is wrong and how to fix it."""


@dataclass(frozen=True)
class ServerKeys:
    """The server's CURVE key pair (Z85 text) and where it is stored."""

    public_key: str
    secret_key: str = field(repr=False)
    public_path: Path
    secret_path: Path


@dataclass(frozen=True)
class NodeKey:
    """One node certificate found in the key directory."""

    node_id: str
    public_key: str
    status: Literal["enrolled", "revoked"]
    created_utc_ns: int | None
    revoked_utc_ns: int | None
    path: Path


@dataclass(frozen=True)
class Enrolment:
    """A freshly enrolled node: its key pair and the config snippet to install on it.

    ``config_toml`` holds the node's SECRET key: deliver it to the node over a secure
    channel; the server keeps only ``public_key``.
    """

    node_id: str
    public_key: str
    secret_key: str = field(repr=False)
    server_public_key: str
    server_endpoint: str
    config_toml: str = field(repr=False)
    public_path: Path


# ------------------------------------------------------------ file helpers
def _ensure_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, text: str, mode: int, *, overwrite: bool) -> None:
    """Write ``text`` to ``path`` atomically with permission ``mode``.

    With ``overwrite=False`` an existing ``path`` is never replaced (hard link, which
    fails if the name exists) and FileExistsError is raised.
    """
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError as exc:      # name the destination, not the temporary file
                raise FileExistsError(exc.errno, exc.strerror, str(path)) from None
            os.unlink(tmp)
        _fsync_dir(path.parent)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _cert_text(kind: str, public_key: str, secret_key: str | None, meta: dict[str, str]) -> str:
    lines = [
        f"#   ****  Generated by earwitness keys on {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}  ****",
        f"#   ZeroMQ CURVE {kind} Certificate",
    ]
    if secret_key:
        lines.append("#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions.")
    lines += ["", "metadata"]
    lines += [f'    {k} = "{v}"' for k, v in meta.items()]
    lines += ["curve", f'    public-key = "{public_key}"']
    if secret_key:
        lines.append(f'    secret-key = "{secret_key}"')
    return "\n".join(lines) + "\n"


def _parse_cert(path: Path) -> dict[str, str]:
    """All ``key = "value"`` lines of a certificate; KeyToolError if it has no valid public key."""
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyToolError(f"cannot read certificate {path}: {exc}") from None
    values: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _LINE_RE.match(line)
        if m:
            values[m.group(1)] = m.group(2)
    pub = values.get("public-key", "")
    if not is_valid_key(pub):
        raise KeyToolError(f"{path}: no valid Z85 public-key line; remove or regenerate this file")
    if "secret-key" in values and not is_valid_key(values["secret-key"]):
        raise KeyToolError(f"{path}: secret-key is not a 40-character Z85 key")
    return values


def _int_or_none(v: str | None) -> int | None:
    try:
        return int(v) if v is not None else None
    except ValueError:
        return None


def _check_node_id(node_id: str) -> None:
    if not isinstance(node_id, str) or not NODE_ID_RE.match(node_id):
        raise KeyToolError(
            f"bad node id {node_id!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )


def _keydir(keydir: str | os.PathLike) -> Path:
    return Path(keydir)


# ---------------------------------------------------------------- server key
def init_server(keydir: str | os.PathLike, *, force: bool = False) -> ServerKeys:
    """Create the key directory and the server's key pair.

    Refuses (KeyToolError) if a server key exists, unless ``force=True``: a new
    server key invalidates every node's ``server_public_key``, so each node's config
    must then be updated. Enrolled node keys are kept.
    """
    d = _keydir(keydir)
    _ensure_dir(d)
    _ensure_dir(d / NODES_DIR)
    _ensure_dir(d / REVOKED_DIR)
    pub_path, sec_path = d / SERVER_PUBLIC, d / SERVER_SECRET
    if (pub_path.exists() or sec_path.exists()) and not force:
        raise KeyToolError(
            f"a server key already exists in {d}; nodes are configured with its public key. "
            "Use --force to replace it (every node's config must then be updated)"
        )
    pub, sec = (k.decode("ascii") for k in zmq.curve_keypair())
    meta = {"created-utc-ns": str(time.time_ns())}
    _write_file(sec_path, _cert_text("**Secret**", pub, sec, meta), 0o600, overwrite=True)
    _write_file(pub_path, _cert_text("Public", pub, None, meta), 0o644, overwrite=True)
    return ServerKeys(public_key=pub, secret_key=sec, public_path=pub_path, secret_path=sec_path)


def load_server_keys(keydir: str | os.PathLike) -> ServerKeys:
    """The server key pair from ``KEYDIR/server.key_secret`` (KeyToolError if missing).

    The ingest sets ``sock.curve_secretkey``/``curve_publickey`` from it (as bytes,
    ``.encode("ascii")``) and ``sock.curve_server = True`` before binding.
    """
    d = _keydir(keydir)
    sec_path = d / SERVER_SECRET
    if not sec_path.exists():
        raise KeyToolError(
            f"no server key in {d}: run `earwitness keys init-server --dir {d}` first")
    values = _parse_cert(sec_path)
    if "secret-key" not in values:
        raise KeyToolError(f"{sec_path} holds no secret-key; regenerate with init-server --force")
    return ServerKeys(public_key=values["public-key"], secret_key=values["secret-key"],
                      public_path=d / SERVER_PUBLIC, secret_path=sec_path)


# ---------------------------------------------------------------- node keys
def _toml_str(s: str) -> str:
    out = ['"']
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def node_config_snippet(node_id: str, server_endpoint: str, server_public_key: str,
                        public_key: str, secret_key: str) -> str:
    """The TOML a node needs to talk to this server: ``[node]`` id/server + ``[security]``."""
    return (
        f"# Earwitness node credentials for {node_id!s}.\n"
        "# Contains this node's SECRET key: keep the file mode 0600 and do not share it.\n"
        "[node]\n"
        f"id = {_toml_str(node_id)}\n"
        f"server = {_toml_str(server_endpoint)}\n"
        "\n"
        "[security]\n"
        f"server_public_key = {_toml_str(server_public_key)}\n"
        f"public_key = {_toml_str(public_key)}\n"
        f"secret_key = {_toml_str(secret_key)}\n"
    )


def enroll(keydir: str | os.PathLike, node_id: str, server_endpoint: str, *,
           out: str | os.PathLike | None = None) -> Enrolment:
    """Create a key pair for ``node_id`` and put its public key in the allow-list.

    ``out``: also write the node's config snippet (with its SECRET key) to this
    file, mode 0600, never replacing an existing file. It is written before the
    node is allow-listed, so if it cannot be written nothing is enrolled (and if
    the allow-list cannot be written, the file is removed again): the node is
    never enrolled with a secret key that was not delivered.

    Errors (KeyToolError): bad node id, bad endpoint, no server key, node already
    enrolled (revoke it first to issue a new key), ``out`` exists or cannot be
    written. A node id that was revoked earlier may be enrolled again; it gets a
    new key pair.
    """
    _check_node_id(node_id)
    if not isinstance(server_endpoint, str) or not _ENDPOINT_RE.match(server_endpoint):
        raise KeyToolError(
            f"bad server endpoint {server_endpoint!r}: give the address nodes connect to, "
            "e.g. tcp://server.example.org:5555")
    d = _keydir(keydir)
    server = load_server_keys(d)
    _ensure_dir(d / NODES_DIR)
    _ensure_dir(d / REVOKED_DIR)
    path = d / NODES_DIR / f"{node_id}.key"
    if path.exists():
        raise KeyToolError(
            f"node {node_id} is already enrolled ({path}); to issue a new key run "
            f"`earwitness keys revoke {node_id} --dir {d}` first")
    out_path = None if out is None else Path(out).absolute()
    out_exists = (f"{out_path} exists; give --out a file name that does not exist yet "
                  f"(it is never overwritten). Node {node_id} was not enrolled")
    if out_path is not None:
        if out_path.exists() or out_path.is_symlink():
            raise KeyToolError(out_exists)
        if not out_path.parent.is_dir():
            raise KeyToolError(f"cannot write {out_path}: directory {out_path.parent} does not exist; "
                               f"create it or choose another file. Node {node_id} was not enrolled")
    pub, sec = (k.decode("ascii") for k in zmq.curve_keypair())
    config_toml = node_config_snippet(node_id, server_endpoint, server.public_key, pub, sec)
    if out_path is not None:
        try:
            _write_file(out_path, config_toml, 0o600, overwrite=False)
        except FileExistsError:         # (created since the check above)
            raise KeyToolError(out_exists) from None
        except OSError as exc:
            raise KeyToolError(f"cannot write {out_path} ({exc.strerror or exc}); choose another file. "
                               f"Node {node_id} was not enrolled") from None
    meta = {"node-id": node_id, "created-utc-ns": str(time.time_ns())}
    try:
        _write_file(path, _cert_text("Public", pub, None, meta), 0o644, overwrite=False)
    except BaseException as exc:
        if out_path is not None:      # its key was never allow-listed: do not leave it about
            out_path.unlink(missing_ok=True)
        if isinstance(exc, FileExistsError):
            raise KeyToolError(f"node {node_id} was enrolled concurrently ({path})") from None
        raise
    return Enrolment(
        node_id=node_id, public_key=pub, secret_key=sec, server_public_key=server.public_key,
        server_endpoint=server_endpoint, config_toml=config_toml, public_path=path,
    )


def _node_key(path: Path, status: Literal["enrolled", "revoked"],
              values: dict[str, str] | None = None) -> NodeKey:
    values = _parse_cert(path) if values is None else values
    stem = path.name[: -len(".key")]
    node_id = stem.split("@", 1)[0]
    return NodeKey(node_id=node_id, public_key=values["public-key"], status=status,
                   created_utc_ns=_int_or_none(values.get("created-utc-ns")),
                   revoked_utc_ns=_int_or_none(values.get("revoked-utc-ns")), path=path)


def _scan(d: Path, status: Literal["enrolled", "revoked"]) -> tuple[list[NodeKey], list[str]]:
    """Valid keys and one-line problems for the ``*.key`` files of one directory."""
    keys: list[NodeKey] = []
    problems: list[str] = []
    if not d.is_dir():
        return keys, problems
    for path in sorted(d.glob("*.key")):
        stem = path.name[: -len(".key")]
        nid = stem.split("@", 1)[0] if status == "revoked" else stem
        if not NODE_ID_RE.match(nid):
            problems.append(f"{path}: file name is not <node_id>.key; rename or remove it")
            continue
        try:
            values = _parse_cert(path)
        except KeyToolError as exc:
            problems.append(str(exc))
            continue
        k = _node_key(path, status, values)
        meta_id = values.get("node-id")
        if meta_id is not None and meta_id != nid:
            problems.append(f"{path}: node-id {meta_id!r} inside does not match the file name")
            continue
        keys.append(k)
    return keys, problems


def list_nodes(keydir: str | os.PathLike) -> list[NodeKey]:
    """Every enrolled and revoked node key, sorted by node id, enrolled first.

    Raises KeyToolError naming the file if any certificate is malformed.
    """
    d = _keydir(keydir)
    if not d.is_dir():
        raise KeyToolError(f"no key directory {d}: run `earwitness keys init-server --dir {d}` first")
    enrolled, p1 = _scan(d / NODES_DIR, "enrolled")
    revoked, p2 = _scan(d / REVOKED_DIR, "revoked")
    if p1 or p2:
        raise KeyToolError("; ".join(p1 + p2))
    order = {"enrolled": 0, "revoked": 1}
    return sorted(enrolled + revoked,
                  key=lambda k: (k.node_id, order[k.status], -(k.revoked_utc_ns or 0)))


def revoke(keydir: str | os.PathLike, node_id: str) -> NodeKey:
    """Move ``node_id``'s key from the allow-list to ``revoked/``; returns the revoked key.

    Takes effect for new connections once the authenticator reloads (see
    :func:`reload`), and for frames on established connections through
    :class:`AllowList`. An earlier revoked key of the same id is kept as
    ``revoked/<node_id>@<its revoked_utc_ns>.key``.
    """
    _check_node_id(node_id)
    d = _keydir(keydir)
    src = d / NODES_DIR / f"{node_id}.key"
    if not src.exists():
        known = ", ".join(k.node_id for k in _scan(d / NODES_DIR, "enrolled")[0]) or "none"
        raise KeyToolError(f"unknown node {node_id!r}: not enrolled in {d} (enrolled: {known})")
    values = _parse_cert(src)
    _ensure_dir(d / REVOKED_DIR)
    dst = d / REVOKED_DIR / f"{node_id}.key"
    if dst.exists():
        old = _parse_cert(dst)
        stamp = old.get("revoked-utc-ns") or str(time.time_ns())
        os.replace(dst, d / REVOKED_DIR / f"{node_id}@{stamp}.key")
    meta = {"node-id": node_id, "created-utc-ns": values.get("created-utc-ns", ""),
            "revoked-utc-ns": str(time.time_ns())}
    _write_file(dst, _cert_text("Public (REVOKED)", values["public-key"], None, meta), 0o644,
                overwrite=True)
    os.unlink(src)
    _fsync_dir(src.parent)
    return _node_key(dst, "revoked")


def node_id_for_public_key(keydir: str | os.PathLike, public_key_z85: str | bytes) -> str | None:
    """The id of the ENROLLED node with this public key, or None (unknown or revoked)."""
    if isinstance(public_key_z85, bytes):
        public_key_z85 = public_key_z85.decode("ascii", "replace")
    for k in _scan(_keydir(keydir) / NODES_DIR, "enrolled")[0]:
        if k.public_key == public_key_z85:
            return k.node_id
    return None


# ------------------------------------------------------------ live server side
def make_authenticator(ctx: zmq.Context, keydir: str | os.PathLike) -> ThreadAuthenticator:
    """Start a ZAP handler on ``ctx`` that admits only the allow-listed node keys.

    Call it BEFORE binding the ``curve_server`` socket (without a ZAP handler libzmq
    admits any client key). One authenticator per context. Stop it with
    ``auth.stop()`` before ``ctx.term()``. Raises KeyToolError (and starts nothing)
    if the allow-list directory is missing or contains malformed files.
    """
    d = _keydir(keydir)
    if not (d / NODES_DIR).is_dir():
        raise KeyToolError(
            f"no allow-list directory {d / NODES_DIR}: run `earwitness keys init-server --dir {d}` first")
    auth = ThreadAuthenticator(ctx)
    auth.start()
    try:
        reload(auth, d)
    except BaseException:
        auth.stop()
        raise
    return auth


def reload(auth: ThreadAuthenticator, keydir: str | os.PathLike) -> int:
    """Re-read the allow-list into ``auth`` (``configure_curve``); returns how many keys.

    pyzmq's ``configure_curve`` logs and KEEPS THE OLD LIST if any ``*.key`` file
    is unreadable, which would keep a revoked key alive. So the files are checked
    first; if some are malformed, the valid keys are installed without them (fail
    closed for the bad files) and KeyToolError names the bad files.
    """
    d = _keydir(keydir) / NODES_DIR
    keys, problems = _scan(d, "enrolled")
    if not problems:
        auth.configure_curve(domain="*", location=str(d))
        return len(keys)
    auth.allow_any = False
    auth.certs["*"] = {k.public_key.encode("ascii"): True for k in keys}
    raise KeyToolError(
        f"allow-list reloaded with {len(keys)} key(s); ignored: " + "; ".join(problems))


class KeydirWatcher:
    """Tells whether the allow-list or revocation list changed since the last call.

    Compares a listing of ``nodes/`` and ``revoked/`` (name, size, mtime, inode):
    catches files added, removed, moved and rewritten, whatever the file system's
    directory-mtime granularity. Costs two directory listings per call.
    """

    def __init__(self, keydir: str | os.PathLike) -> None:
        self._dir = _keydir(keydir)
        self._sig = self._signature()

    def _signature(self) -> tuple:
        sig = []
        for sub in (NODES_DIR, REVOKED_DIR):
            try:
                entries = sorted(os.scandir(self._dir / sub), key=lambda e: e.name)
            except OSError:
                sig.append((sub, None))
                continue
            for e in entries:
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue
                sig.append((sub, e.name, st.st_size, st.st_mtime_ns, st.st_ino))
        return tuple(sig)

    def changed(self) -> bool:
        """True once after each change of the key directory (first call: since __init__)."""
        sig = self._signature()
        if sig != self._sig:
            self._sig = sig
            return True
        return False


def frame_user_id(frame: zmq.Frame) -> str | None:
    """The ZAP ``User-Id`` of a received frame (the client's Z85 public key with the
    authenticator from :func:`make_authenticator`), or None if it has none (no ZAP
    handler ran for that connection)."""
    try:
        uid = frame.get("User-Id")
    except zmq.ZMQError:
        return None
    return uid if isinstance(uid, str) and uid else None


class AllowList:
    """The enrolled node keys, for checking each received frame's ``User-Id``.

    Established connections survive revocation (CURVE authenticates only at the
    handshake), so the ingest drops frames whose ``User-Id`` is not allowed *now*.
    With ``refresh_s`` set, a lookup re-reads the key directory if it changed and
    ``refresh_s`` seconds have passed since the last check; ``refresh_s=None`` leaves
    refreshing to explicit :meth:`refresh` calls. Malformed files are ignored (their
    keys are not allowed) and listed in :attr:`problems`.
    """

    def __init__(self, keydir: str | os.PathLike, *, refresh_s: float | None = 1.0) -> None:
        self._dir = _keydir(keydir)
        self._refresh_s = refresh_s
        self._watcher = KeydirWatcher(self._dir)
        self._last_check = time.monotonic()
        self._by_key: dict[str, str] = {}
        self.problems: tuple[str, ...] = ()
        self.reload()

    def reload(self) -> None:
        """Re-read ``nodes/`` now."""
        keys, problems = _scan(self._dir / NODES_DIR, "enrolled")
        by_key: dict[str, str] = {}
        dupes = set()
        for k in keys:
            if k.public_key in by_key:
                dupes.add(k.public_key)
                problems.append(f"{k.path}: same public key as node {by_key[k.public_key]}; "
                                "both refused until one is removed")
            by_key[k.public_key] = k.node_id
        for pk in dupes:
            del by_key[pk]
        self._by_key = by_key  # one reference swap: safe for readers in other threads
        self.problems = tuple(problems)

    def refresh(self) -> bool:
        """Reload if the key directory changed; True if it did."""
        self._last_check = time.monotonic()
        if self._watcher.changed():
            self.reload()
            return True
        return False

    def _maybe_refresh(self) -> None:
        if self._refresh_s is not None and time.monotonic() - self._last_check >= self._refresh_s:
            self.refresh()

    def node_id(self, user_id: str | bytes | None) -> str | None:
        """The enrolled node id for a Z85 public key / ``User-Id``, else None."""
        if user_id is None:
            return None
        if isinstance(user_id, bytes):
            user_id = user_id.decode("ascii", "replace")
        self._maybe_refresh()
        return self._by_key.get(user_id)

    def is_allowed(self, user_id: str | bytes | None) -> bool:
        """True if ``user_id`` is the public key of a currently enrolled node."""
        return self.node_id(user_id) is not None

    def __len__(self) -> int:
        return len(self._by_key)


def drop_connections(sock: zmq.Socket, endpoint: str, *, timeout_s: float = 2.0) -> None:
    """Cut every connection accepted on ``endpoint`` by unbinding and binding again.

    Measured with libzmq 4.3.5: ``unbind`` detaches the established sessions of that
    endpoint at once, so nothing more from them reaches the socket; but their TCP
    connections are only closed when the peer next sends (ZMTP heartbeats do not
    trigger it), and THAT MESSAGE IS LOST. The peer then reconnects and handshakes
    again, so a revoked key is refused by ZAP and an enrolled node carries on
    (resending the lost message from its outbox). ``unbind`` completes
    asynchronously, so ``bind`` is retried on EADDRINUSE until ``timeout_s``.
    ``endpoint`` must be the concrete address (``sock.last_endpoint`` after a
    wildcard bind).
    """
    sock.unbind(endpoint)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            sock.bind(endpoint)
            return
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EADDRINUSE or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


# --------------------------------------------------------------------- CLI
def _fmt_ns(ns: int | None) -> str:
    if ns is None:
        return "-"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ns / 1e9))


def main(argv: Sequence[str] | None = None) -> int:
    """``earwitness keys init-server|enroll|list|revoke [--dir DIR]``; returns the exit code."""
    p = argparse.ArgumentParser(prog="earwitness keys",
                                description="Manage the CURVE keys of the server and its nodes.")
    sub = p.add_subparsers(dest="cmd", required=True)

    def add_dir(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--dir", default=DEFAULT_KEYDIR,
                        help=f"key directory (default {DEFAULT_KEYDIR})")

    sp = sub.add_parser("init-server", help="create the key directory and the server key pair")
    add_dir(sp)
    sp.add_argument("--force", action="store_true",
                    help="replace an existing server key (every node must be reconfigured)")
    sp = sub.add_parser("enroll", help="create a node key pair and allow-list it; prints its config")
    add_dir(sp)
    sp.add_argument("node_id")
    sp.add_argument("--server", required=True, metavar="ENDPOINT",
                    help="address the node connects to, e.g. tcp://server.example.org:5555")
    sp.add_argument("--out", metavar="FILE",
                    help="write the config snippet to FILE (mode 0600) instead of stdout")
    sp = sub.add_parser("list", help="list enrolled and revoked node keys")
    add_dir(sp)
    sp = sub.add_parser("revoke", help="remove a node from the allow-list")
    add_dir(sp)
    sp.add_argument("node_id")

    try:
        args = p.parse_args(list(argv) if argv is not None else None)
    except SystemExit as exc:  # argparse has printed the usage error
        return int(exc.code or 0)
    try:
        if args.cmd == "init-server":
            keys = init_server(args.dir, force=args.force)
            print(f"server key created in {args.dir}")
            print(f"server public key: {keys.public_key}")
        elif args.cmd == "enroll":
            e = enroll(args.dir, args.node_id, args.server, out=args.out or None)
            if args.out:
                print(f"enrolled {e.node_id}; config with its secret key written to {args.out}",
                      file=sys.stderr)
            else:
                sys.stdout.write(e.config_toml)
                print(f"enrolled {e.node_id}. The text above contains its SECRET key: install it "
                      "on the node (mode 0600) over a secure channel; it is not stored here.",
                      file=sys.stderr)
        elif args.cmd == "list":
            nodes = list_nodes(args.dir)
            if not nodes:
                print("no nodes enrolled")
            for k in nodes:
                print(f"{k.node_id:<24} {k.status:<8} {k.public_key}  created {_fmt_ns(k.created_utc_ns)}"
                      + (f"  revoked {_fmt_ns(k.revoked_utc_ns)}" if k.status == "revoked" else ""))
        elif args.cmd == "revoke":
            k = revoke(args.dir, args.node_id)
            print(f"revoked {k.node_id} ({k.public_key}); a running server applies it within "
                  "about a second")
    except KeyToolError as exc:
        print(f"earwitness keys {args.cmd}: {exc}", file=sys.stderr)
        return 1
    except FileExistsError as exc:
        print(f"earwitness keys {args.cmd}: {exc.filename} exists; it was not replaced",
              file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"earwitness keys {args.cmd}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
