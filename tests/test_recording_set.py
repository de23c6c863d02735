"""Recording-set format: loader checks, round trip write → load."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from common.recording_set import (
    RecordingSet,
    RecordingSetError,
    SetArrival,
    SetNode,
    TruthShot,
    Wind,
    load_set,
    write_set,
)
from common.config import DetectorConfig
from common.timefmt import iso_to_ns
from node.wav_source import write_wav


def _wav(path: Path, seconds: float = 0.01, rate: int = 12_000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_wav(path, np.zeros(int(seconds * rate)), rate)


def _valid(tmp_path: Path) -> dict:
    _wav(tmp_path / "audio" / "a.wav")
    return {
        "description": "test set",
        "temperature_c": 12.5,
        "wind": {"speed_mps": 2.0, "from_deg": 270.0},
        "nodes": [
            {"id": "a", "lat": 40.44, "lon": -79.99, "alt": 250.0, "wav": "audio/a.wav",
             "start_utc": "2018-12-19T00:49:26.000000Z", "position_sigma_m": 0.5},
            {"id": "b", "lat": 40.45, "lon": -79.98, "alt": 260.0},
        ],
        "arrivals": [
            {"node": "a", "time_utc": "2018-12-19T00:49:27.467Z", "snr_db": 13.5, "id": "p1"},
            {"node": "b", "time_utc": "2018-12-19T00:49:27.701123456Z"},
        ],
        "truth": {"shots": [{"lat": 40.445, "lon": -79.985, "alt": None,
                             "time_utc": "2018-12-19T00:49:27.000Z", "rounds": 1, "arrival_ids": ["p1"]}]},
    }


def _write(tmp_path: Path, obj) -> Path:
    p = tmp_path / "set.json"
    p.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return p


def test_load_valid_set(tmp_path):
    _write(tmp_path, _valid(tmp_path))
    rs = load_set(tmp_path)
    assert rs.path == (tmp_path / "set.json").absolute()
    assert rs.temperature_c == 12.5
    assert rs.wind == Wind(2.0, 270.0)
    a, b = rs.nodes
    assert a.wav == (tmp_path / "audio" / "a.wav").absolute()
    assert a.start_utc_ns == iso_to_ns("2018-12-19T00:49:26Z")
    assert a.position_sigma_m == 0.5
    assert b.wav is None and b.start_utc_ns is None and b.position_sigma_m is None
    assert rs.arrivals[1].t_utc_ns == iso_to_ns("2018-12-19T00:49:27Z") + 701_123_456
    assert rs.arrivals[0].snr_db == 13.5 and rs.arrivals[0].id == "p1"
    assert rs.truth == (TruthShot(40.445, -79.985, None, iso_to_ns("2018-12-19T00:49:27Z"), 1, ("p1",)),)
    assert rs.rounds_fired == 1
    assert rs.node("b") is b
    # The file itself works as well as its directory.
    assert load_set(tmp_path / "set.json") == rs


def test_minimal_set_defaults(tmp_path):
    _write(tmp_path, {"nodes": [{"id": "x", "lat": 0, "lon": 0, "alt": 0}]})
    rs = load_set(tmp_path)
    assert rs.temperature_c is None and rs.arrivals == () and rs.truth == () and rs.wind is None


def test_round_trip(tmp_path):
    wav = _wav(tmp_path / "data" / "n1.wav").absolute()
    rs = RecordingSet(
        path=None,
        temperature_c=None,
        nodes=[SetNode("n1", 40.1234567890123, -79.98765432101234, 301.25, wav, 1_545_180_566_000_000_001, 0.03,
                       detector=DetectorConfig(band_hz=(250.0, 4000.0), trigger_ratio=9.5, lookback_s=0.0)),
               SetNode("n2", -33.5, 151.25, -12.0)],
        arrivals=[SetArrival("n1", 1_545_180_567_467_000_123, 4.33317, "u1"),
                  SetArrival("n2", 1_545_180_567_469_999_999)],
        truth=[TruthShot(40.12, -79.98, -81.5, 1_545_180_567_000_000_007, 1, ("u1",)),
               TruthShot(40.12, -79.98, None, None, 2)],
        wind=Wind(1.78816, 150.0),
        description="round trip ✓",
    )
    assert isinstance(rs.nodes, tuple) and isinstance(rs.truth, tuple)
    for mode in ("relative", "absolute"):
        out = write_set(tmp_path / "sets" / mode, rs, wav_paths=mode)
        back = load_set(out)
        assert back == dataclasses.replace(rs, path=out)
        stored = json.loads(out.read_text())["nodes"][0]["wav"]
        assert Path(stored).is_absolute() == (mode == "absolute")


def _mutations():
    def drop(key):
        return lambda d: d.pop(key)

    def set_(path, value):
        def f(d):
            obj = d
            for k in path[:-1]:
                obj = obj[k]
            obj[path[-1]] = value
        return f

    def del_(path):
        def f(d):
            obj = d
            for k in path[:-1]:
                obj = obj[k]
            del obj[path[-1]]
        return f

    return [
        ("missing nodes", drop("nodes"), "nodes"),
        ("empty nodes", set_(["nodes"], []), "nodes"),
        ("node without lat", del_(["nodes", 1, "lat"]), "nodes[1].lat"),
        ("arrival for unknown node", set_(["arrivals", 1, "node"], "zz"), "arrivals[1].node"),
        ("wav missing on disk", set_(["nodes", 0, "wav"], "audio/nope.wav"), "nodes[0].wav"),
        ("start_utc missing with wav", del_(["nodes", 0, "start_utc"]), "nodes[0].start_utc"),
        ("start_utc without wav", set_(["nodes", 1, "start_utc"], "2018-12-19T00:49:26Z"), "nodes[1].start_utc"),
        ("bad time format", set_(["arrivals", 0, "time_utc"], "19/12/2018 00:49"), "arrivals[0].time_utc"),
        ("bad start format", set_(["nodes", 0, "start_utc"], "yesterday"), "nodes[0].start_utc"),
        ("duplicate node ids", set_(["nodes", 1, "id"], "a"), "nodes[1].id"),
        ("lat out of range", set_(["nodes", 0, "lat"], 91.0), "nodes[0].lat"),
        ("lon out of range", set_(["nodes", 1, "lon"], -180.5), "nodes[1].lon"),
        ("lat not a number", set_(["nodes", 0, "lat"], "40.4"), "nodes[0].lat"),
        ("bool as number", set_(["nodes", 0, "alt"], True), "nodes[0].alt"),
        ("unknown key", set_(["nodes", 0, "elevation"], 3.0), "nodes[0]"),
        ("unknown top key", set_(["temprature_c"], 3.0), "top level"),
        ("temperature out of range", set_(["temperature_c"], 300.0), "temperature_c"),
        ("duplicate arrival ids", set_(["arrivals", 1, "id"], "p1"), "arrivals[1].id"),
        ("truth names unknown arrival", set_(["truth", "shots", 0, "arrival_ids"], ["p9"]),
         "truth.shots[0].arrival_ids"),
        ("truth rounds zero", set_(["truth", "shots", 0, "rounds"], 0), "truth.shots[0].rounds"),
        ("wind without speed", del_(["wind", "speed_mps"]), "wind.speed_mps"),
        ("nodes not a list", set_(["nodes"], {"id": "a"}), "nodes"),
        ("arrivals not a list", set_(["arrivals"], {}), "arrivals"),
        ("detector not an object", set_(["nodes", 0, "detector"], 12), "nodes[0].detector"),
        ("detector unknown key", set_(["nodes", 0, "detector"], {"trigger_ratioo": 5}), "nodes[0].detector"),
        ("detector wrong type", set_(["nodes", 0, "detector"], {"trigger_ratio": "high"}),
         "nodes[0].detector.trigger_ratio"),
    ]


@pytest.mark.parametrize("label,mutate,field", _mutations(), ids=[m[0] for m in _mutations()])
def test_load_errors_name_file_and_field(tmp_path, label, mutate, field):
    d = copy.deepcopy(_valid(tmp_path))
    mutate(d)
    p = _write(tmp_path, d)
    with pytest.raises(RecordingSetError) as ei:
        load_set(tmp_path)
    msg = str(ei.value)
    assert str(p.absolute()) in msg
    assert f"{field}:" in msg or f"{field}." in msg
    assert "\n" not in msg


def test_invalid_json_and_missing_file(tmp_path):
    _write(tmp_path, '{"nodes": [')
    with pytest.raises(RecordingSetError, match=r"set\.json: not valid JSON"):
        load_set(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RecordingSetError, match="no set.json"):
        load_set(empty)
    with pytest.raises(RecordingSetError, match="no such file"):
        load_set(tmp_path / "absent")


def test_in_memory_construction_is_checked():
    with pytest.raises(RecordingSetError, match="duplicate node id"):
        RecordingSet(None, None, (SetNode("a", 0, 0, 0), SetNode("a", 1, 1, 0)))
    with pytest.raises(RecordingSetError, match=r"arrivals\[0\]\.node: unknown node 'b'"):
        RecordingSet(None, None, (SetNode("a", 0, 0, 0),), (SetArrival("b", 0),))
    with pytest.raises(RecordingSetError, match="has a wav but no start_utc"):
        RecordingSet(None, None, (SetNode("a", 0, 0, 0, wav=Path("/x.wav")),))
    # Equality is by value and the lists become tuples.
    a = RecordingSet(None, 5.0, [SetNode("a", 0, 0, 0)])
    assert a == RecordingSet(None, 5.0, (SetNode("a", 0, 0, 0),))
