"""Recording sets: synchronised recordings and/or arrival picks from several nodes.

A recording set is the offline locator's input (see docs/recording-set.md): a
directory holding ``set.json`` (or that file itself) which lists nodes with their
WGS84 positions, optionally each node's WAV file and the UTC time of its first
sample, optionally arrival picks (``arrivals``), and optionally a ``truth`` block
used only by benchmarks.

All times are integer UTC nanoseconds (``*_utc_ns``, see :mod:`common.timefmt`);
in JSON they are ISO-8601 strings. :func:`load_set` checks everything and raises
:class:`RecordingSetError` with a one-line message naming the file and the field;
:func:`write_set` writes a set that :func:`load_set` reads back unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from common.config import ConfigError, DetectorConfig, from_dict
from common.timefmt import iso_to_ns, ns_to_iso

SET_FILENAME = "set.json"


class RecordingSetError(ValueError):
    """A recording set that cannot be used. The text names the file, the field and the fix."""


# ------------------------------------------------------------------ data types
@dataclass(frozen=True)
class SetNode:
    """One node (sensor) of a recording set.

    ``lat``/``lon`` in degrees and ``alt`` in metres above the WGS84 ellipsoid.
    ``wav``: absolute path of the node's recording, or None for a picks-only node.
    ``start_utc_ns``: UTC of the WAV's first sample (required with ``wav``).
    ``position_sigma_m``: 1-sigma uncertainty of the position, if known.
    ``detector``: the onset detector settings the node ran with when it
    recorded the WAV (``earwitness node --record`` writes them), if known;
    ``earwitness locate`` detects with them.
    """

    id: str
    lat: float
    lon: float
    alt: float
    wav: Path | None = None
    start_utc_ns: int | None = None
    position_sigma_m: float | None = None
    detector: DetectorConfig | None = None


@dataclass(frozen=True)
class SetArrival:
    """One arrival pick: a pulse heard by ``node`` at ``t_utc_ns``.

    ``snr_db``: the picker's signal-to-noise ratio, if known. ``id``: a unique
    label (e.g. the source data's pulse id), if any; the truth block refers to it.
    """

    node: str
    t_utc_ns: int
    snr_db: float | None = None
    id: str | None = None


@dataclass(frozen=True)
class Wind:
    """Wind at the time of the recordings: speed (m/s), direction it blows FROM (° from north)."""

    speed_mps: float
    from_deg: float


@dataclass(frozen=True)
class TruthShot:
    """Ground truth for benchmarks only (a locator must not read it).

    One entry stands for ``rounds`` rounds fired at (``lat``, ``lon``, ``alt``).
    ``t_utc_ns``: emission time if known (then normally ``rounds == 1``), else None.
    ``alt`` may be None when unknown. ``arrival_ids``: ids of the set's arrivals
    labelled as this shot's pulses, if labels exist.
    """

    lat: float
    lon: float
    alt: float | None
    t_utc_ns: int | None
    rounds: int = 1
    arrival_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class RecordingSet:
    """A loaded (or built in memory) recording set.

    ``path``: the ``set.json`` it was loaded from or written to; None in memory.
    ``temperature_c``: air temperature (°C), None when unknown.
    Construction checks cross-references (duplicate node ids, arrivals for unknown
    nodes, ``start_utc_ns`` with ``wav``, truth arrival ids) and raises
    :class:`RecordingSetError`. Lists are stored as tuples.
    """

    path: Path | None
    temperature_c: float | None
    nodes: tuple[SetNode, ...]
    arrivals: tuple[SetArrival, ...] = ()
    truth: tuple[TruthShot, ...] = ()
    wind: Wind | None = None
    description: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "nodes", tuple(self.nodes))
        object.__setattr__(self, "arrivals", tuple(self.arrivals))
        object.__setattr__(self, "truth", tuple(self.truth))
        _check_consistency(self)

    def node(self, node_id: str) -> SetNode:
        """The node with id ``node_id`` (KeyError if absent)."""
        for n in self.nodes:
            if n.id == node_id:
                return n
        raise KeyError(node_id)

    @property
    def rounds_fired(self) -> int:
        """Total rounds in the truth block (0 without truth)."""
        return sum(s.rounds for s in self.truth)


def _where(rs_path: Path | None) -> str:
    return str(rs_path) if rs_path is not None else "recording set"


def _check_consistency(rs: RecordingSet) -> None:
    where = _where(rs.path)
    if not rs.nodes:
        raise RecordingSetError(f"{where}: nodes: the set has no nodes; list at least one node")
    if rs.temperature_c is not None and not -60.0 <= rs.temperature_c <= 70.0:
        raise RecordingSetError(
            f"{where}: temperature_c: {rs.temperature_c} is outside -60..70 °C; give °C or null if unknown"
        )
    seen: set[str] = set()
    for i, n in enumerate(rs.nodes):
        if not isinstance(n.id, str) or not n.id:
            raise RecordingSetError(f"{where}: nodes[{i}].id: must be a non-empty string")
        if n.id in seen:
            raise RecordingSetError(f"{where}: nodes[{i}].id: duplicate node id {n.id!r}; ids must be unique")
        seen.add(n.id)
        _check_latlon(where, f"nodes[{i}]", n.lat, n.lon)
        if not math.isfinite(n.alt):
            raise RecordingSetError(f"{where}: nodes[{i}].alt: {n.alt} is not a finite number of metres")
        if n.wav is not None and n.start_utc_ns is None:
            raise RecordingSetError(
                f"{where}: nodes[{i}].start_utc: node {n.id!r} has a wav but no start_utc; "
                "give the UTC time of the WAV's first sample"
            )
        if n.wav is None and n.start_utc_ns is not None:
            raise RecordingSetError(
                f"{where}: nodes[{i}].start_utc: node {n.id!r} has start_utc but no wav; "
                "remove start_utc or add the wav"
            )
        if n.position_sigma_m is not None and not (math.isfinite(n.position_sigma_m) and n.position_sigma_m >= 0):
            raise RecordingSetError(
                f"{where}: nodes[{i}].position_sigma_m: {n.position_sigma_m} must be a finite number >= 0"
            )
    arrival_ids: set[str] = set()
    for i, a in enumerate(rs.arrivals):
        if a.node not in seen:
            raise RecordingSetError(
                f"{where}: arrivals[{i}].node: unknown node {a.node!r}; add it to nodes or fix the id"
            )
        if a.id is not None:
            if a.id in arrival_ids:
                raise RecordingSetError(f"{where}: arrivals[{i}].id: duplicate arrival id {a.id!r}")
            arrival_ids.add(a.id)
    for i, s in enumerate(rs.truth):
        _check_latlon(where, f"truth.shots[{i}]", s.lat, s.lon)
        if isinstance(s.rounds, bool) or not isinstance(s.rounds, int) or s.rounds < 1:
            raise RecordingSetError(f"{where}: truth.shots[{i}].rounds: {s.rounds!r} must be an integer >= 1")
        for aid in s.arrival_ids:
            if aid not in arrival_ids:
                raise RecordingSetError(
                    f"{where}: truth.shots[{i}].arrival_ids: {aid!r} is not the id of any arrival in the set"
                )


def _check_latlon(where: str, ctx: str, lat: float, lon: float) -> None:
    if not (math.isfinite(lat) and -90.0 <= lat <= 90.0):
        raise RecordingSetError(f"{where}: {ctx}.lat: {lat} is outside -90..90 degrees")
    if not (math.isfinite(lon) and -180.0 <= lon <= 180.0):
        raise RecordingSetError(f"{where}: {ctx}.lon: {lon} is outside -180..180 degrees")


# ------------------------------------------------------------------ loading
_TOP_KEYS = {"temperature_c", "nodes", "arrivals", "truth", "wind", "description"}
_NODE_KEYS = {"id", "lat", "lon", "alt", "wav", "start_utc", "position_sigma_m", "detector"}
_ARRIVAL_KEYS = {"node", "time_utc", "snr_db", "id"}
_WIND_KEYS = {"speed_mps", "from_deg"}
_TRUTH_KEYS = {"shots"}
_SHOT_KEYS = {"lat", "lon", "alt", "time_utc", "rounds", "arrival_ids"}


class _Reader:
    """Typed field access that names the file and the field in every error."""

    def __init__(self, file: Path) -> None:
        self.file = file

    def fail(self, ctx: str, msg: str) -> RecordingSetError:
        return RecordingSetError(f"{self.file}: {ctx}: {msg}")

    def obj(self, value: Any, ctx: str, allowed: set[str]) -> dict:
        if not isinstance(value, dict):
            raise self.fail(ctx, f"expected a JSON object, got {type(value).__name__}")
        unknown = sorted(set(value) - allowed)
        if unknown:
            raise self.fail(ctx, f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
        return value

    def array(self, value: Any, ctx: str) -> list:
        if not isinstance(value, list):
            raise self.fail(ctx, f"expected a JSON array, got {type(value).__name__}")
        return value

    def required(self, d: dict, key: str, ctx: str) -> Any:
        if key not in d or d[key] is None:
            raise self.fail(f"{ctx}.{key}" if ctx else key, "missing; this field is required")
        return d[key]

    def number(self, value: Any, ctx: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(ctx, f"expected a number, got {value!r}")
        if not math.isfinite(value):
            raise self.fail(ctx, f"{value!r} is not finite")
        return float(value)

    def opt_number(self, d: dict, key: str, ctx: str) -> float | None:
        v = d.get(key)
        return None if v is None else self.number(v, f"{ctx}.{key}" if ctx else key)

    def string(self, value: Any, ctx: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(ctx, f"expected a non-empty string, got {value!r}")
        return value

    def time(self, value: Any, ctx: str) -> int:
        s = self.string(value, ctx)
        try:
            return iso_to_ns(s)
        except ValueError as e:
            raise self.fail(ctx, str(e)) from None


def _or_empty(d: dict, key: str) -> Any:
    """``d[key]``, or an empty list when the key is absent or null."""
    v = d.get(key)
    return [] if v is None else v


def _set_file(path: str | os.PathLike) -> Path:
    p = Path(path)
    if p.is_dir():
        p = p / SET_FILENAME
        if not p.is_file():
            raise RecordingSetError(f"{p}: no {SET_FILENAME} in this directory; point at a recording set")
    elif not p.is_file():
        raise RecordingSetError(f"{p}: no such file or directory; point at a recording-set directory or its set.json")
    return p


def load_set(path: str | os.PathLike) -> RecordingSet:
    """Load and check a recording set from a directory holding ``set.json`` or that file.

    Relative ``wav`` paths are taken relative to the directory of ``set.json`` and
    returned absolute (normalised, symlinks not resolved); each WAV must exist.
    Raises :class:`RecordingSetError` naming the file and the field on any problem.
    """
    file = _set_file(path).absolute()
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise RecordingSetError(f"{file}: not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})") from None
    except UnicodeDecodeError as e:
        raise RecordingSetError(f"{file}: not a {SET_FILENAME}: not UTF-8 text ({e.reason} at byte {e.start}); "
                                "point at a recording set (docs/recording-set.md)") from None
    except OSError as e:
        raise RecordingSetError(f"{file}: cannot read: {e}") from None
    r = _Reader(file)
    top = r.obj(raw, "top level", _TOP_KEYS)

    temperature_c = r.opt_number(top, "temperature_c", "")
    description = top.get("description")
    if description is not None and not isinstance(description, str):
        raise r.fail("description", f"expected a string, got {description!r}")

    wind = None
    if top.get("wind") is not None:
        w = r.obj(top["wind"], "wind", _WIND_KEYS)
        wind = Wind(
            speed_mps=r.number(r.required(w, "speed_mps", "wind"), "wind.speed_mps"),
            from_deg=r.number(r.required(w, "from_deg", "wind"), "wind.from_deg"),
        )

    nodes = []
    for i, nd in enumerate(r.array(r.required(top, "nodes", ""), "nodes")):
        ctx = f"nodes[{i}]"
        nd = r.obj(nd, ctx, _NODE_KEYS)
        wav = None
        if nd.get("wav") is not None:
            rel = r.string(nd["wav"], f"{ctx}.wav")
            wav = Path(os.path.normpath(file.parent / rel))
            if not wav.is_file():
                raise r.fail(f"{ctx}.wav", f"{rel!r} does not exist (looked for {wav}); fix the path")
        start = None
        if nd.get("start_utc") is not None:
            start = r.time(nd["start_utc"], f"{ctx}.start_utc")
        detector = None
        if nd.get("detector") is not None:
            if not isinstance(nd["detector"], dict):
                raise r.fail(f"{ctx}.detector", f"expected a JSON object (a node config's [detector] keys), "
                                                f"got {type(nd['detector']).__name__}")
            try:
                detector = from_dict(DetectorConfig, nd["detector"], f"{ctx}.detector")
            except ConfigError as exc:
                raise RecordingSetError(f"{file}: {exc}") from None
        nodes.append(SetNode(
            id=r.string(r.required(nd, "id", ctx), f"{ctx}.id"),
            lat=r.number(r.required(nd, "lat", ctx), f"{ctx}.lat"),
            lon=r.number(r.required(nd, "lon", ctx), f"{ctx}.lon"),
            alt=r.number(r.required(nd, "alt", ctx), f"{ctx}.alt"),
            wav=wav,
            start_utc_ns=start,
            position_sigma_m=r.opt_number(nd, "position_sigma_m", ctx),
            detector=detector,
        ))

    arrivals = []
    for i, a in enumerate(r.array(_or_empty(top, "arrivals"), "arrivals")):
        ctx = f"arrivals[{i}]"
        a = r.obj(a, ctx, _ARRIVAL_KEYS)
        aid = a.get("id")
        arrivals.append(SetArrival(
            node=r.string(r.required(a, "node", ctx), f"{ctx}.node"),
            t_utc_ns=r.time(r.required(a, "time_utc", ctx), f"{ctx}.time_utc"),
            snr_db=r.opt_number(a, "snr_db", ctx),
            id=None if aid is None else r.string(aid, f"{ctx}.id"),
        ))

    truth = []
    if top.get("truth") is not None:
        tr = r.obj(top["truth"], "truth", _TRUTH_KEYS)
        for i, s in enumerate(r.array(_or_empty(tr, "shots"), "truth.shots")):
            ctx = f"truth.shots[{i}]"
            s = r.obj(s, ctx, _SHOT_KEYS)
            rounds = s.get("rounds", 1)
            if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
                raise r.fail(f"{ctx}.rounds", f"{rounds!r} must be an integer >= 1")
            ids = r.array(_or_empty(s, "arrival_ids"), f"{ctx}.arrival_ids")
            truth.append(TruthShot(
                lat=r.number(r.required(s, "lat", ctx), f"{ctx}.lat"),
                lon=r.number(r.required(s, "lon", ctx), f"{ctx}.lon"),
                alt=r.opt_number(s, "alt", ctx),
                t_utc_ns=None if s.get("time_utc") is None else r.time(s["time_utc"], f"{ctx}.time_utc"),
                rounds=rounds,
                arrival_ids=tuple(r.string(x, f"{ctx}.arrival_ids[{j}]") for j, x in enumerate(ids)),
            ))

    return RecordingSet(
        path=file,
        temperature_c=temperature_c,
        nodes=tuple(nodes),
        arrivals=tuple(arrivals),
        truth=tuple(truth),
        wind=wind,
        description=description,
    )


# ------------------------------------------------------------------ writing
def set_to_json(rs: RecordingSet, directory: str | os.PathLike,
                wav_paths: Literal["relative", "absolute"] = "relative") -> dict:
    """The JSON object for ``rs`` as it would be written into ``directory``.

    Times are written with 9 fractional digits so that a write→load round trip is
    exact. ``wav_paths="relative"`` writes WAV paths relative to ``directory``.
    """
    if wav_paths not in ("relative", "absolute"):
        raise ValueError(f"wav_paths must be 'relative' or 'absolute', not {wav_paths!r}")
    base = Path(directory).absolute()
    out: dict[str, Any] = {}
    if rs.description is not None:
        out["description"] = rs.description
    out["temperature_c"] = rs.temperature_c
    if rs.wind is not None:
        out["wind"] = {"speed_mps": rs.wind.speed_mps, "from_deg": rs.wind.from_deg}
    nodes = []
    for n in rs.nodes:
        d: dict[str, Any] = {"id": n.id, "lat": n.lat, "lon": n.lon, "alt": n.alt}
        if n.wav is not None:
            wav = Path(n.wav).absolute()
            d["wav"] = os.path.relpath(wav, base) if wav_paths == "relative" else str(wav)
            d["start_utc"] = ns_to_iso(n.start_utc_ns, digits=9)
        if n.position_sigma_m is not None:
            d["position_sigma_m"] = n.position_sigma_m
        if n.detector is not None:
            d["detector"] = {k: list(v) if isinstance(v, tuple) else v
                             for k, v in dataclasses.asdict(n.detector).items()}
        nodes.append(d)
    out["nodes"] = nodes
    if rs.arrivals:
        arr = []
        for a in rs.arrivals:
            d = {"node": a.node, "time_utc": ns_to_iso(a.t_utc_ns, digits=9)}
            if a.snr_db is not None:
                d["snr_db"] = a.snr_db
            if a.id is not None:
                d["id"] = a.id
            arr.append(d)
        out["arrivals"] = arr
    if rs.truth:
        shots = []
        for s in rs.truth:
            d = {"lat": s.lat, "lon": s.lon, "alt": s.alt,
                 "time_utc": None if s.t_utc_ns is None else ns_to_iso(s.t_utc_ns, digits=9),
                 "rounds": s.rounds}
            if s.arrival_ids:
                d["arrival_ids"] = list(s.arrival_ids)
            shots.append(d)
        out["truth"] = {"shots": shots}
    return out


def write_set(directory: str | os.PathLike, rs: RecordingSet,
              wav_paths: Literal["relative", "absolute"] = "relative") -> Path:
    """Write ``rs`` as ``directory/set.json`` (creating ``directory``); return that path.

    WAV files are referenced, never copied. :func:`load_set` on the result gives
    back ``rs`` with ``path`` set to the written file.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    out = directory / SET_FILENAME
    text = json.dumps(set_to_json(rs, directory, wav_paths), indent=1, ensure_ascii=False)
    out.write_text(text + "\n", encoding="utf-8")
    return out.absolute()
