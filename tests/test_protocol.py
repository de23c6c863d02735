"""Wire protocol: round trips, version/type checks, malformed frames never crash."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from common.protocol import (MAX_FRAME_BYTES, MAX_SNIPPET_SAMPLES, Ack, Event, Heartbeat, ProtocolError,
                             decode, encode)

T = 1_764_000_000 * 10**9


def event(**kw) -> Event:
    base = dict(node_id="node-07", seq=42, t_utc_ns=T + 5_000_000, sigma_ns=20_000.0, sample_rate_hz=48_000.0,
                peak_dbfs=-12.5, snr_db=31.0, snippet_t0_ns=T, snippet=np.arange(-700, 740, dtype=np.int16),
                lat=40.44, lon=-79.99, alt=262.0, features={"rise_ms": 0.2, "centroid_hz": 1800.0})
    base.update(kw)
    return Event(**base)


def test_event_round_trip():
    ev = event()
    frames = encode(ev)
    assert len(frames) == 2 and all(isinstance(f, bytes) for f in frames)
    back = decode(frames)
    assert back == ev
    assert back.snippet.dtype == np.int16


def test_heartbeat_and_ack_round_trip():
    hb = Heartbeat(node_id="n1", seq=3, t_utc_ns=T, stream_utc_ns=T - 10**9, lat=1.0, lon=2.0, alt=3.0,
                   version="0.1.0", status={"gps_fix": 3, "cpu_temp_c": 51.5, "timing_mode": "system",
                                            "degraded": False, "disk_free_bytes": None})
    assert decode(encode(hb)) == hb
    ack = Ack(node_id="n1", seqs=(1, 2, 99))
    assert decode(encode(ack)) == ack


def _frames(kind="event", version=1, **body_over):
    frames = encode(event())
    body = msgpack.unpackb(frames[1], raw=False)
    body.update(body_over)
    return [msgpack.packb(["earwitness", version, kind]), msgpack.packb(body, use_bin_type=True)]


@pytest.mark.parametrize("frames, words", [
    ([b"only one"], "expected 2 frames"),
    ([b"\xc1", b""], "not valid msgpack"),
    ([msgpack.packb(["other", 1, "event"]), b"\x80"], "not an Earwitness peer"),
    ([msgpack.packb(["earwitness", 9, "event"]), b"\x80"], "version 9 is not supported"),
    ([msgpack.packb(["earwitness", 1, "launch"]), b"\x80"], "unknown message type"),
    ([msgpack.packb(["earwitness", 1, "event"]), msgpack.packb([1, 2])], "not a map"),
])
def test_malformed_frames_are_rejected_with_a_reason(frames, words):
    with pytest.raises(ProtocolError, match=words):
        decode(frames)


@pytest.mark.parametrize("field, value, words", [
    ("t_utc_ns", float("nan"), "t_utc_ns"),
    ("t_utc_ns", 5, "between 1990 and 2200"),
    ("sigma_ns", float("inf"), "sigma_ns"),
    ("peak_dbfs", float("nan"), "peak_dbfs"),
    ("node_id", "../../etc/passwd", "node_id"),
    ("node_id", "x" * 200, "node_id"),
    ("seq", -1, "seq"),
    ("seq", True, "seq"),
    ("lat", 91.0, "lat"),
    ("snippet", b"\x00" * 3, "snippet"),
    ("features", {"a": "text"}, "features"),
    ("evil", 1, "unknown field"),
    ("t_utc_ns", T + 10**12, "outside its snippet"),
])
def test_impossible_values_are_rejected(field, value, words):
    with pytest.raises(ProtocolError, match=words):
        decode(_frames(**{field: value}))


def test_oversized_message_and_snippet_are_rejected():
    with pytest.raises(ProtocolError, match="over the"):
        decode([b"x" * 10, b"y" * MAX_FRAME_BYTES])
    with pytest.raises(ProtocolError, match="snippet"):
        encode(event(snippet=np.zeros(MAX_SNIPPET_SAMPLES + 1, dtype=np.int16), t_utc_ns=T))


def test_encode_refuses_invalid_messages():
    with pytest.raises(ProtocolError):
        encode(event(sigma_ns=float("nan")))
    with pytest.raises(ProtocolError):
        encode(event(snippet=np.zeros(10, dtype=np.float32)))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=300), min_size=0, max_size=4))
def test_random_frames_never_raise_anything_but_protocol_error(frames):
    try:
        decode(frames)
    except ProtocolError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["node_id", "seq", "t_utc_ns", "sigma_ns", "snippet", "lat", "features",
                                        "snippet_t0_ns", "sample_rate_hz", "degraded", "status", "seqs"]),
                       st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1), st.floats(), st.text(max_size=20),
                                 st.binary(max_size=20), st.lists(st.integers(-2**63, 2**64 - 1), max_size=3),
                                 st.dictionaries(st.text(max_size=5), st.floats(), max_size=3)),
                       max_size=12),
       st.sampled_from(["event", "heartbeat", "ack"]))
def test_mutated_bodies_never_raise_anything_but_protocol_error(body, kind):
    frames = _frames(kind=kind)
    base = msgpack.unpackb(frames[1], raw=False)
    base.update(body)
    try:
        decode([frames[0], msgpack.packb(base, use_bin_type=True)])
    except ProtocolError:
        pass


_WEIRD = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1), st.floats(), st.text(max_size=70),
                   st.binary(max_size=4000), st.just(bytearray(b"\x00\x01")), st.floats(-1e10, 1e10),
                   st.integers(T - 10**10, T + 10**10),
                   st.dictionaries(st.one_of(st.text(max_size=40), st.integers()),
                                   st.one_of(st.floats(), st.integers(), st.booleans()), max_size=40))


@settings(max_examples=600, deadline=None)
@given(st.dictionaries(st.sampled_from(["node_id", "seq", "t_utc_ns", "sigma_ns", "sample_rate_hz", "peak_dbfs",
                                        "snr_db", "snippet_t0_ns", "snippet", "snippet_full_scale", "degraded",
                                        "features", "lat", "lon", "alt"]), _WEIRD, max_size=4),
       st.lists(st.sampled_from(["snippet_full_scale", "degraded", "features", "lat"]), max_size=2))
def test_event_fast_path_accepts_only_what_the_full_checks_accept(changes, removed):
    """decode() checks the common event shape in one expression; it must never
    let through anything the detailed field-by-field checks refuse."""
    import common.protocol as P
    body = msgpack.unpackb(encode(event())[1], raw=False)
    body.update(changes)
    for k in removed:
        body.pop(k, None)
    if not P._event_ok(body):
        return
    fast = P._event_ok
    try:
        P._event_ok = lambda b: False
        P._validate("event", body)      # raises ProtocolError if the fast path was wrong
    finally:
        P._event_ok = fast


def test_event_fast_path_takes_valid_events():
    import common.protocol as P
    body = msgpack.unpackb(encode(event())[1], raw=False)
    assert P._event_ok(body)
    assert not P._event_ok({**body, "lat": float("nan")})
    assert not P._event_ok({**body, "seq": True})
    assert not P._event_ok({**body, "t_utc_ns": body["snippet_t0_ns"] + 10**9})
