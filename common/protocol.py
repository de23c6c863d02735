"""The Earwitness wire protocol: messages ↔ ZeroMQ frames. Never touches a socket.

Every message is two frames (see ``docs/protocol.md``):

* frame 0, the header: msgpack ``["earwitness", <version int>, <type str>]``;
* frame 1, the body: a msgpack map whose keys are the message's field names.

``encode(msg) -> list[bytes]`` and ``decode(frames) -> Message``. ``decode`` checks
the magic, the version, the type, every field's type and range and every size limit,
and raises :class:`ProtocolError` (a ``ValueError``) with a readable reason for
anything else; it never raises anything but ``ProtocolError`` on bad input, and it
never evaluates code (no pickle, no msgpack ext types).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

import msgpack
import numpy as np

MAGIC = "earwitness"
VERSION = 1

#: Largest whole message accepted on a socket (also set as ZMQ_MAXMSGSIZE).
MAX_FRAME_BYTES = 256 * 1024
MAX_SNIPPET_SAMPLES = 48_000          # 1 s at 48 kHz; events carry ~30 ms
MAX_FEATURES = 32
MAX_STATUS_ITEMS = 128
MAX_ACK_SEQS = 4096
MAX_TEXT = 256
NODE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
#: 1990-01-01 .. 2200-01-01: anything outside is not a real UTC timestamp.
MIN_UTC_NS = 631_152_000 * 10**9
MAX_UTC_NS = 7_258_118_400 * 10**9
MAX_SEQ = 2**63 - 1
#: An event's timing uncertainty (1 σ, ns) is at most 1 s: a node that cannot
#: time an onset better says so with this, not with a larger figure.
MAX_SIGMA_NS = 1e9


class ProtocolError(ValueError):
    """A frame set that is not a valid Earwitness message. The text says why."""


@dataclass(frozen=True)
class Event:
    """One impulse heard by one node.

    ``t_utc_ns``: onset time (UTC ns) of the first arrival; ``sigma_ns``: its 1-σ
    timing uncertainty (timebase + pick). ``snippet``: int16 samples around the
    onset, sample 0 at ``snippet_t0_ns`` (UTC ns), scaled so that 32767 is
    ``snippet_full_scale`` (the node's digital full scale = 1.0). ``degraded`` is set
    when the node's timing is not GPS-locked. Position is the node's (WGS84).
    """

    node_id: str
    seq: int
    t_utc_ns: int
    sigma_ns: float
    sample_rate_hz: float
    peak_dbfs: float
    snr_db: float
    snippet_t0_ns: int
    snippet: np.ndarray = field(repr=False)
    lat: float
    lon: float
    alt: float
    features: Mapping[str, float] = field(default_factory=dict)
    snippet_full_scale: float = 1.0
    degraded: bool = False

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Event):
            return NotImplemented
        return all(
            np.array_equal(getattr(self, f.name), getattr(other, f.name)) if f.name == "snippet"
            else getattr(self, f.name) == getattr(other, f.name)
            for f in fields(self)
        )

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True)
class Heartbeat:
    """A node's periodic health report.

    ``stream_utc_ns``: UTC time up to which the node has analysed its audio — the
    server uses it as the node's watermark (no event earlier than this will come).
    ``status``: flat map of health values (see docs/protocol.md), scalars only.
    """

    node_id: str
    seq: int
    t_utc_ns: int
    stream_utc_ns: int
    lat: float
    lon: float
    alt: float
    version: str
    status: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Ack:
    """Server → node: these event sequence numbers are stored and need no resend."""

    node_id: str
    seqs: tuple[int, ...]


Message = Event | Heartbeat | Ack
_TYPES = {"event": Event, "heartbeat": Heartbeat, "ack": Ack}
_NAMES = {v: k for k, v in _TYPES.items()}
#: Each message type's field names, in declaration order (looked up per message).
_FIELDS = {k: tuple(f.name for f in fields(v)) for k, v in _TYPES.items()}
_FIELD_SET = {k: frozenset(v) for k, v in _FIELDS.items()}


# ---------------------------------------------------------------- encoding
def encode(msg: Message) -> list[bytes]:
    """Message → [header, body] frames. Raises ProtocolError on an invalid message."""
    kind = _NAMES.get(type(msg))
    if kind is None:
        raise ProtocolError(f"cannot encode {type(msg).__name__}: not a protocol message")
    body: dict[str, Any] = {}
    for f in fields(msg):
        v = getattr(msg, f.name)
        if f.name == "snippet":
            arr = np.asarray(v)
            if arr.dtype != np.int16 or arr.ndim != 1:
                raise ProtocolError("Event.snippet must be a 1-D int16 array")
            v = arr.astype("<i2", copy=False).tobytes()
        elif isinstance(v, tuple):
            v = list(v)
        elif isinstance(v, Mapping):
            v = dict(v)
        body[f.name] = v
    _validate(kind, body)  # refuse to send what the peer would refuse
    try:
        return [
            msgpack.packb([MAGIC, VERSION, kind], use_bin_type=True),
            msgpack.packb(body, use_bin_type=True),
        ]
    except (TypeError, ValueError, OverflowError) as exc:
        raise ProtocolError(f"cannot encode {kind}: {exc}") from None


# ---------------------------------------------------------------- decoding
def _unpack(data: bytes, what: str) -> Any:
    try:
        return msgpack.unpackb(
            data, raw=False, strict_map_key=True, use_list=True,
            max_str_len=MAX_FRAME_BYTES, max_bin_len=MAX_FRAME_BYTES,
            max_array_len=MAX_ACK_SEQS, max_map_len=MAX_STATUS_ITEMS + 32, max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises many types for broken input
        raise ProtocolError(f"{what} is not valid msgpack ({type(exc).__name__}: {exc})") from None


def decode(frames: list[bytes] | tuple[bytes, ...]) -> Message:
    """[header, body] frames → Message, or ProtocolError saying what is wrong."""
    if not isinstance(frames, (list, tuple)) or len(frames) != 2:
        n = len(frames) if isinstance(frames, (list, tuple)) else "?"
        raise ProtocolError(f"expected 2 frames (header, body), got {n}")
    for i, fr in enumerate(frames):
        if not isinstance(fr, (bytes, bytearray, memoryview)):
            raise ProtocolError(f"frame {i} is {type(fr).__name__}, not bytes")
    total = sum(len(f) for f in frames)
    if total > MAX_FRAME_BYTES:
        raise ProtocolError(f"message is {total} bytes, over the {MAX_FRAME_BYTES}-byte limit")
    header = _unpack(bytes(frames[0]), "header frame")
    if not (isinstance(header, list) and len(header) == 3 and header[0] == MAGIC):
        raise ProtocolError("header frame is not [\"earwitness\", version, type]: not an Earwitness peer")
    _, version, kind = header
    if version != VERSION:
        raise ProtocolError(
            f"protocol version {version!r} is not supported (this build speaks {VERSION}); "
            "upgrade the older side"
        )
    if not isinstance(kind, str) or kind not in _TYPES:
        raise ProtocolError(f"unknown message type {kind!r} (known: {', '.join(_TYPES)})")
    body = _unpack(bytes(frames[1]), f"{kind} body")
    if not isinstance(body, dict):
        raise ProtocolError(f"{kind} body is {type(body).__name__}, not a map")
    _validate(kind, body)
    cls = _TYPES[kind]
    kw = {name: body[name] for name in _FIELDS[kind] if name in body}
    if cls is Event:
        kw["snippet"] = np.frombuffer(body["snippet"], dtype="<i2").astype(np.int16)
        kw["features"] = dict(body.get("features", {}))
    elif cls is Ack:
        kw["seqs"] = tuple(body["seqs"])
    return cls(**kw)


# ---------------------------------------------------------------- validation
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def _check(ok: bool, kind: str, name: str, why: str) -> None:
    if not ok:
        raise ProtocolError(f"{kind}.{name}: {why}")


def _common(kind: str, b: dict) -> None:
    nid = b.get("node_id")
    _check(isinstance(nid, str) and bool(NODE_ID_RE.match(nid)), kind, "node_id",
           "must be 1-64 characters of letters, digits, '.', '_' or '-'")


def _position(kind: str, b: dict) -> None:
    _check(_is_num(b.get("lat")) and -90 <= b["lat"] <= 90, kind, "lat", "must be a number in -90..90")
    _check(_is_num(b.get("lon")) and -180 <= b["lon"] <= 180, kind, "lon", "must be a number in -180..180")
    _check(_is_num(b.get("alt")) and -1000 <= b["alt"] <= 10000, kind, "alt", "must be metres in -1000..10000")


def _time(kind: str, b: dict, name: str) -> None:
    v = b.get(name)
    _check(_is_int(v) and MIN_UTC_NS <= v <= MAX_UTC_NS, kind, name,
           "must be integer UTC nanoseconds between 1990 and 2200")


def _seq(kind: str, b: dict) -> None:
    _check(_is_int(b.get("seq")) and 0 <= b["seq"] <= MAX_SEQ, kind, "seq", "must be an integer ≥ 0")


_NUM = (int, float)


def _event_ok(b: dict) -> bool:
    """True only if the full checks of an event body in :func:`_validate` would all
    pass (exact types, every range; NaN and ±inf fail the range tests). The
    common case, checked in one expression; anything else — also anything
    valid but unusual — goes through the detailed checks for the error text."""
    try:
        nid, snip, sr = b["node_id"], b["snippet"], b["sample_rate_hz"]
        t, t0 = b["t_utc_ns"], b["snippet_t0_ns"]
        fs, deg, feats = b.get("snippet_full_scale", 1.0), b.get("degraded", False), b.get("features", {})
        ok = (type(nid) is str and NODE_ID_RE.match(nid) is not None
              and type(b["seq"]) is int and 0 <= b["seq"] <= MAX_SEQ
              and type(b["lat"]) in _NUM and -90 <= b["lat"] <= 90
              and type(b["lon"]) in _NUM and -180 <= b["lon"] <= 180
              and type(b["alt"]) in _NUM and -1000 <= b["alt"] <= 10000
              and type(t) is int and MIN_UTC_NS <= t <= MAX_UTC_NS
              and type(t0) is int and MIN_UTC_NS <= t0 <= MAX_UTC_NS
              and type(b["sigma_ns"]) in _NUM and 0 <= b["sigma_ns"] <= MAX_SIGMA_NS
              and type(sr) in _NUM and 1000 <= sr <= 400_000
              and type(b["peak_dbfs"]) in _NUM and -400 <= b["peak_dbfs"] <= 100
              and type(b["snr_db"]) in _NUM and -100 <= b["snr_db"] <= 400
              and type(fs) in _NUM and 0 < fs <= 1e6
              and type(deg) is bool
              and type(snip) is bytes and len(snip) % 2 == 0 and 2 <= len(snip) <= 2 * MAX_SNIPPET_SAMPLES
              and t0 - 1e6 <= t <= t0 + (len(snip) // 2) / sr * 1e9 + 1e6
              and type(feats) is dict and len(feats) <= MAX_FEATURES)
        if ok and feats:
            ok = all(type(k) is str and len(k) <= 32 and type(v) in _NUM and math.isfinite(v)
                     for k, v in feats.items())
        return bool(ok)
    except KeyError:
        return False


def _validate(kind: str, b: dict) -> None:
    extra = b.keys() - _FIELD_SET[kind]
    if extra:
        raise ProtocolError(f"{kind}: unknown field(s) {sorted(map(str, extra))}")
    if kind == "event" and _event_ok(b):
        return
    _common(kind, b)
    if kind == "ack":
        seqs = b.get("seqs")
        _check(isinstance(seqs, list) and len(seqs) <= MAX_ACK_SEQS
               and all(_is_int(s) and 0 <= s <= MAX_SEQ for s in seqs),
               kind, "seqs", f"must be a list of at most {MAX_ACK_SEQS} integers ≥ 0")
        return
    _seq(kind, b)
    _position(kind, b)
    _time(kind, b, "t_utc_ns")
    if kind == "heartbeat":
        _time(kind, b, "stream_utc_ns")
        _check(isinstance(b.get("version"), str) and len(b["version"]) <= 64, kind, "version",
               "must be a string of at most 64 characters")
        st = b.get("status", {})
        _check(isinstance(st, dict) and len(st) <= MAX_STATUS_ITEMS, kind, "status",
               f"must be a map of at most {MAX_STATUS_ITEMS} items")
        for k, v in st.items():
            _check(isinstance(k, str) and len(k) <= 64, kind, "status", f"key {k!r} is not a short string")
            ok = v is None or isinstance(v, bool) or _is_int(v) or _is_num(v) or (
                isinstance(v, str) and len(v) <= MAX_TEXT)
            _check(ok, kind, f"status[{k}]", "must be null, a bool, a finite number or a short string")
        return
    # event
    _time(kind, b, "snippet_t0_ns")
    _check(_is_num(b.get("sigma_ns")) and 0 <= b["sigma_ns"] <= MAX_SIGMA_NS, kind, "sigma_ns",
           "must be a finite number of ns in 0..1e9")
    _check(_is_num(b.get("sample_rate_hz")) and 1000 <= b["sample_rate_hz"] <= 400_000, kind,
           "sample_rate_hz", "must be in 1000..400000")
    _check(_is_num(b.get("peak_dbfs")) and -400 <= b["peak_dbfs"] <= 100, kind, "peak_dbfs",
           "must be a finite dBFS value in -400..100")
    _check(_is_num(b.get("snr_db")) and -100 <= b["snr_db"] <= 400, kind, "snr_db",
           "must be a finite dB value in -100..400")
    fs = b.get("snippet_full_scale", 1.0)
    _check(_is_num(fs) and 0 < fs <= 1e6, kind, "snippet_full_scale", "must be a finite number > 0")
    _check(isinstance(b.get("degraded", False), bool), kind, "degraded", "must be a bool")
    snip = b.get("snippet")
    _check(isinstance(snip, (bytes, bytearray)) and len(snip) % 2 == 0
           and len(snip) // 2 <= MAX_SNIPPET_SAMPLES, kind, "snippet",
           f"must be little-endian int16 bytes of at most {MAX_SNIPPET_SAMPLES} samples")
    feats = b.get("features", {})
    _check(isinstance(feats, dict) and len(feats) <= MAX_FEATURES
           and all(isinstance(k, str) and len(k) <= 32 and _is_num(v) for k, v in feats.items()),
           kind, "features", f"must map at most {MAX_FEATURES} short names to finite numbers")
    # The onset must lie inside (or at the edge of) the snippet it came with.
    if len(snip) >= 2:
        span_ns = (len(snip) // 2) / b["sample_rate_hz"] * 1e9
        _check(b["snippet_t0_ns"] - 1e6 <= b["t_utc_ns"] <= b["snippet_t0_ns"] + span_ns + 1e6,
               kind, "t_utc_ns", "onset time lies outside its snippet")
