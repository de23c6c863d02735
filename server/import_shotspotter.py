"""Convert ShotSpotter's public Pittsburgh live-fire data into recording sets.

Source: github.com/ShotSpotter/research.accuracy-of-gunshot-location (CC BY 4.0;
Calhoun et al., arXiv:2108.07377). Layout: ``<root>/FPn/test_NNN/test_NNN.*``
(see the data's README.upstream.md). One recording set per test; see
docs/recording-set.md for the format and for the choices documented here:

* Coordinates: the data's metres x/y/z (arbitrary origin per firing position) are
  taken as East/North/Up of :data:`NOMINAL_FRAME` (lat 40.4406, lon -79.9959,
  alt 0 m) and mapped to WGS84 through it. The mapping is rigid, so every 3-D
  distance is preserved exactly; the absolute positions are NOT the real ones.
* Sensor positions: the per-pulse ``allpulses`` location (a long-term GPS
  average) is preferred: the node gets the component-wise median of its pulses'
  locations in that test and ``position_sigma_m`` = median ``location_error``.
  A sensor with audio but no pulse in the test falls back to the single GPS fix
  in its audio ``.json`` (several metres of scatter; ``position_sigma_m`` null).
* Temperature: ``weather.json``'s value, except 0 °C with zero wind speed, which
  the data uses for "unknown" → null. Wind: null when its speed is 0.
* Picks: every pulse in ``allpulses.json`` becomes an arrival (echoes and
  unrelated pulses included; exact duplicate records are dropped once).
* Truth (benchmarks only): the survey point, one entry per labelled shot of
  ``nlos-tuples.json`` with an emission-time estimate (:func:`estimate_emission_ns`),
  plus one untimed entry for rounds fired but not labelled.

The audio is never copied: nodes point at the original WAV files.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np

from common.acoustics import DEFAULT_TEMPERATURE_C, speed_of_sound
from common.geodesy import LocalFrame
from common.recording_set import (
    RecordingSet,
    RecordingSetError,
    SetArrival,
    SetNode,
    TruthShot,
    Wind,
    write_set,
)
from common.timefmt import NS_PER_S, iso_to_ns
from server.shotspotter_wavs import set_from_wavs

#: The data's x/y/z are East/North/Up metres of this frame (a nominal point in
#: Pittsburgh; the real origin was anonymised and differs per firing position).
NOMINAL_FRAME = LocalFrame(40.4406, -79.9959, 0.0)

Mode = Literal["picks", "audio", "both"]
MODES: tuple[str, ...] = ("picks", "audio", "both")

ATTRIBUTION = (
    "Data: ShotSpotter, Inc. / Pittsburgh Bureau of Police live-fire test 2018-12-18, CC BY 4.0 "
    "(github.com/ShotSpotter/research.accuracy-of-gunshot-location; Calhoun et al., arXiv:2108.07377). "
    "Positions mapped from the data's anonymised x/y/z through a nominal origin: not the real locations."
)


class ShotSpotterError(ValueError):
    """The source folder cannot be converted. The text names the file and what is wrong."""


@dataclass(frozen=True, eq=False)
class LabelledShot:
    """One shot of ``nlos-tuples.json`` with its labelled arrivals, one per sensor.

    When a sensor has several labelled pulses for the shot, only its earliest (the
    direct path) is kept here; the others are listed in ``later_pulse_ids``.
    ``receivers_enu``: (n, 3) m in :data:`NOMINAL_FRAME` (= the data's x/y/z);
    ``t_arrival_ns``: (n,) int64 UTC ns. ``t_emission_ns`` and ``emission_mad_s``:
    see :func:`estimate_emission_ns` (None without any labelled pulse present).
    """

    shot_index: int
    pulse_ids: tuple[str, ...]
    node_ids: tuple[str, ...]
    receivers_enu: np.ndarray
    t_arrival_ns: np.ndarray
    t_emission_ns: int | None
    emission_mad_s: float | None
    later_pulse_ids: tuple[str, ...]


@dataclass(frozen=True, eq=False)
class ShotSpotterTest:
    """One converted test: the recording set plus scoring-only facts.

    ``survey_enu``: (3,) m, the surveyed shooter position in :data:`NOMINAL_FRAME`
    (its z is from a phone GPS and off by tens of metres). ``c_mps``: the speed of
    sound used for the emission-time estimates; ``c_source`` says whether it came
    from the recorded temperature or was fitted to the labelled arrivals because
    the temperature is unknown. ``missing_pulse_ids``: labelled ids absent from
    ``allpulses.json``. ``duplicate_pulse_records``: exact duplicates dropped.
    """

    firing_position: str
    name: str
    test_dir: Path
    num_rounds: int
    firearm: str
    survey_enu: np.ndarray
    c_mps: float
    c_source: Literal["temperature", "fitted", "default"]
    shots: tuple[LabelledShot, ...]
    missing_pulse_ids: tuple[str, ...]
    duplicate_pulse_records: int
    recording_set: RecordingSet


# ------------------------------------------------------------------ pure helpers
def estimate_emission_ns(source_enu: np.ndarray, receivers_enu: np.ndarray,
                         t_arrival_ns: np.ndarray, c_mps: float) -> tuple[int, float]:
    """Emission time of a shot at ``source_enu`` from its arrivals (for scoring only).

    Per arrival: ``t_arrival − horizontal distance / c``; returns (median of those
    in UTC ns, their median absolute deviation in s). Horizontal distance because
    the surveyed height is unreliable. ``receivers_enu``: (n, 3) m; ``t_arrival_ns``: (n,).
    """
    r = np.asarray(receivers_enu, dtype=float)
    t = np.asarray(t_arrival_ns, dtype=np.int64)
    if r.ndim != 2 or r.shape[1] != 3 or len(r) != len(t) or len(t) == 0:
        raise ValueError(f"need (n, 3) receivers and (n,) times with n >= 1, got {r.shape} and {t.shape}")
    s = np.asarray(source_enu, dtype=float)
    dist = np.hypot(r[:, 0] - s[0], r[:, 1] - s[1])
    t_ref = int(t.min())
    em_s = (t - t_ref) / NS_PER_S - dist / float(c_mps)
    med = float(np.median(em_s))
    mad = float(np.median(np.abs(em_s - med)))
    return t_ref + int(round(med * NS_PER_S)), mad


def fit_speed_of_sound(source_enu: np.ndarray,
                       shots: Sequence[tuple[np.ndarray, np.ndarray]]) -> float | None:
    """Apparent speed of sound (m/s) from arrivals of shots at a known point (scoring only).

    Per shot the Theil–Sen slope of arrival time against horizontal distance; the
    median over shots, inverted. ``shots``: sequence of (receivers (n, 3) m,
    t_arrival_ns (n,)). None when no shot has 3+ arrivals or the fit is implausible
    (outside 300..370 m/s).
    """
    from scipy.stats import theilslopes

    s = np.asarray(source_enu, dtype=float)
    slopes = []
    for receivers, t_ns in shots:
        r = np.asarray(receivers, dtype=float)
        t = np.asarray(t_ns, dtype=np.int64)
        if len(t) < 3:
            continue
        dist = np.hypot(r[:, 0] - s[0], r[:, 1] - s[1])
        if np.ptp(dist) < 1.0:
            continue
        slopes.append(theilslopes((t - t.min()) / NS_PER_S, dist)[0])
    if not slopes:
        return None
    slope = float(np.median(slopes))
    if slope <= 0:
        return None
    c = 1.0 / slope
    return c if 300.0 <= c <= 370.0 else None


# ------------------------------------------------------------------ file access
def _read_json(path: Path) -> Any:
    """The JSON value in ``path``; a :class:`ShotSpotterError` naming the file
    and what is wrong when it is missing, unreadable, not UTF-8 or not JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ShotSpotterError(f"{path}: missing; a ShotSpotter test folder needs this file") from None
    except IsADirectoryError:
        raise ShotSpotterError(f"{path}: a directory, not a JSON file; a ShotSpotter test folder needs this "
                               "file") from None
    except OSError as e:
        raise ShotSpotterError(f"{path}: cannot read it ({e.strerror or e}); check its permissions") from None
    except UnicodeDecodeError as e:
        raise ShotSpotterError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); is it the data's JSON "
                               "file, or was it damaged or re-encoded?") from None
    except json.JSONDecodeError as e:
        raise ShotSpotterError(f"{path}: not valid JSON: {e.msg} (line {e.lineno})") from None


def _get(d: Any, key: str, path: Path, ctx: str = "") -> Any:
    if not isinstance(d, dict) or key not in d:
        raise ShotSpotterError(f"{path}: {ctx}{key}: missing")
    return d[key]


def _xyz(d: Any, path: Path, ctx: str) -> np.ndarray:
    loc = _get(d, "location" if "location" in d else "survey_location", path, ctx)
    try:
        return np.array([float(loc["x"]), float(loc["y"]), float(loc["z"])])
    except (KeyError, TypeError, ValueError):
        raise ShotSpotterError(f"{path}: {ctx}location: expected {{x, y, z}} numbers, got {loc!r}") from None


def _number(v: Any, path: Path, ctx: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ShotSpotterError(f"{path}: {ctx}: expected a number, got {v!r}")
    return float(v)


def _time(text: Any, path: Path, ctx: str) -> int:
    try:
        return iso_to_ns(str(text))
    except ValueError as e:
        raise ShotSpotterError(f"{path}: {ctx}: {e}") from None


def find_tests(src_dir: str | Path) -> list[Path]:
    """Test folders (holding ``<name>.survey.json``) under ``src_dir`` or ``src_dir`` itself, sorted."""
    src = Path(src_dir)
    if not src.is_dir():
        raise ShotSpotterError(f"{src}: not a directory; give the folder holding FP*/test_NNN/")
    found = [p.parent for p in src.rglob("*.survey.json") if p.name == f"{p.parent.name}.survey.json"]
    return sorted(found, key=lambda p: (p.parent.name, p.name))


def load_test(test_dir: str | Path, mode: Mode = "both") -> ShotSpotterTest:
    """Convert one ShotSpotter test folder into a :class:`ShotSpotterTest` in memory.

    ``mode``: ``"picks"`` (all pulse-reporting sensors + every pulse as an arrival),
    ``"audio"`` (only the sensors with WAVs, no arrivals) or ``"both"`` (the union:
    WAVs where available and all arrivals). Nothing is written.
    """
    if mode not in MODES:
        raise ShotSpotterError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    d = Path(test_dir).absolute()
    name = d.name
    survey_path = d / f"{name}.survey.json"
    survey = _read_json(survey_path)
    weather_path = d / f"{name}.weather.json"
    weather = _read_json(weather_path)
    pulses_path = d / f"{name}.allpulses.json"
    pulses_raw = _read_json(pulses_path)
    tuples_path = d / f"{name}.nlos-tuples.json"
    tuples = _read_json(tuples_path)
    if not isinstance(pulses_raw, list):
        raise ShotSpotterError(f"{pulses_path}: expected a JSON array of pulses")
    if not isinstance(tuples, list):
        raise ShotSpotterError(f"{tuples_path}: expected a JSON array of shots")

    fp = str(_get(survey, "firing_position", survey_path))
    num_rounds = _get(survey, "num_rounds", survey_path)
    if isinstance(num_rounds, bool) or not isinstance(num_rounds, int) or num_rounds < 1:
        raise ShotSpotterError(f"{survey_path}: num_rounds: {num_rounds!r} is not a positive integer")
    survey_enu = _xyz(survey, survey_path, "")

    # Weather: 0 °C with zero wind is the data's "unknown".
    temp, speed, direction = (_number(_get(weather, k, weather_path), weather_path, k)
                              for k in ("temperature", "speed", "direction"))
    temperature_c = None if (temp == 0.0 and speed == 0.0) else temp
    wind = Wind(speed_mps=speed, from_deg=direction) if speed > 0.0 else None

    # Pulses: drop exact duplicate records; a reused id with different content is an error.
    pulses: dict[str, dict] = {}
    duplicates = 0
    for i, p in enumerate(pulses_raw):
        uid = str(_get(p, "pulse_uuid", pulses_path, f"[{i}]."))
        if uid in pulses:
            if pulses[uid] != p:
                raise ShotSpotterError(f"{pulses_path}: [{i}].pulse_uuid: {uid} is reused by a different pulse")
            duplicates += 1
            continue
        pulses[uid] = p

    # Sensor positions from pulses: component-wise median per sensor in this test.
    per_sensor_xyz: dict[str, list[np.ndarray]] = {}
    per_sensor_err: dict[str, list[float]] = {}
    arrivals_raw = []
    for uid, p in pulses.items():
        serial = str(_get(p, "serial_number", pulses_path, f"{uid}."))
        per_sensor_xyz.setdefault(serial, []).append(_xyz(p, pulses_path, f"{uid}."))
        err = p.get("location_error")
        if isinstance(err, (int, float)) and not isinstance(err, bool):
            per_sensor_err.setdefault(serial, []).append(float(err))
        t_ns = _time(_get(p, "arrival_time_utc", pulses_path, f"{uid}."), pulses_path, f"{uid}.arrival_time_utc")
        snr = p.get("signal_to_noise_dB")
        arrivals_raw.append(SetArrival(node=serial, t_utc_ns=t_ns, id=uid,
                                       snr_db=float(snr) if isinstance(snr, (int, float)) else None))
    pulse_pos = {s: np.median(np.array(v), axis=0) for s, v in per_sensor_xyz.items()}
    pulse_sigma = {s: float(np.median(v)) for s, v in per_sensor_err.items()}

    # Audio sensors.
    audio: dict[str, tuple[Path, int, np.ndarray]] = {}
    for meta_path in sorted(d.glob(f"{name}.audio.*.json")):
        meta = _read_json(meta_path)
        serial = str(_get(meta, "serial_number", meta_path))
        wav = meta_path.with_suffix(".wav")
        if not wav.is_file():
            raise ShotSpotterError(f"{meta_path}: its audio {wav.name} is missing from the folder")
        start = _time(_get(meta, "timestamp", meta_path), meta_path, "timestamp")
        audio[serial] = (wav, start, _xyz(meta, meta_path, ""))

    if mode == "picks":
        node_ids = sorted(pulse_pos)
    elif mode == "audio":
        node_ids = sorted(audio)
    else:
        node_ids = sorted(set(pulse_pos) | set(audio))

    ids = list(node_ids)
    enu = np.array([pulse_pos[s] if s in pulse_pos else audio[s][2] for s in ids]).reshape(-1, 3)
    lat, lon, alt = NOMINAL_FRAME.to_wgs84(enu)
    nodes = []
    for k, s in enumerate(ids):
        with_wav = mode != "picks" and s in audio
        nodes.append(SetNode(
            id=s, lat=float(lat[k]), lon=float(lon[k]), alt=float(alt[k]),
            wav=audio[s][0] if with_wav else None,
            start_utc_ns=audio[s][1] if with_wav else None,
            position_sigma_m=pulse_sigma.get(s) if s in pulse_pos else None,
        ))
    node_pos = {s: enu[k] for k, s in enumerate(ids)}
    node_pos.update({s: v for s, v in pulse_pos.items() if s not in node_pos})

    # Labelled shots: earliest labelled pulse per sensor.
    missing: list[str] = []
    parsed = []
    for j, sh in enumerate(tuples):
        idx = _get(sh, "shot_index", tuples_path, f"[{j}].")
        if isinstance(idx, bool) or not isinstance(idx, int):
            raise ShotSpotterError(f"{tuples_path}: [{j}].shot_index: {idx!r} is not an integer")
        uids = [str(u) for u in _get(sh, "pulse_uuids", tuples_path, f"[{j}].")]
        present = [u for u in uids if u in pulses]
        missing.extend(u for u in uids if u not in pulses)
        first: dict[str, tuple[int, str]] = {}
        for u in present:
            a_t = _time(pulses[u]["arrival_time_utc"], pulses_path, f"{u}.arrival_time_utc")
            s = str(pulses[u]["serial_number"])
            if s not in first or a_t < first[s][0]:
                first[s] = (a_t, u)
        sensors = sorted(first, key=lambda s: first[s][0])
        kept = {first[s][1] for s in sensors}
        parsed.append((idx, present, sensors, first, tuple(u for u in present if u not in kept)))

    shot_arrays = [
        (np.array([node_pos[s] for s in sensors]).reshape(-1, 3),
         np.array([first[s][0] for s in sensors], dtype=np.int64))
        for _, _, sensors, first, _ in parsed
    ]
    c_source: Literal["temperature", "fitted", "default"]
    if temperature_c is not None:
        c_mps, c_source = speed_of_sound(temperature_c), "temperature"
    else:
        fitted = fit_speed_of_sound(survey_enu, shot_arrays)
        if fitted is not None:
            c_mps, c_source = fitted, "fitted"
        else:
            c_mps, c_source = speed_of_sound(DEFAULT_TEMPERATURE_C), "default"

    shots = []
    for (idx, present, sensors, first, later), (rx, tx) in zip(parsed, shot_arrays):
        if len(tx):
            t_em, mad = estimate_emission_ns(survey_enu, rx, tx, c_mps)
        else:
            t_em, mad = None, None
        shots.append(LabelledShot(
            shot_index=idx, pulse_ids=tuple(first[s][1] for s in sensors), node_ids=tuple(sensors),
            receivers_enu=rx, t_arrival_ns=tx, t_emission_ns=t_em, emission_mad_s=mad,
            later_pulse_ids=later,
        ))

    s_lat, s_lon, s_alt = NOMINAL_FRAME.to_wgs84(survey_enu)
    with_ids = mode != "audio"
    truth = [
        TruthShot(lat=float(s_lat), lon=float(s_lon), alt=float(s_alt), t_utc_ns=sh.t_emission_ns, rounds=1,
                  arrival_ids=tuple(present) if with_ids else ())
        for sh, (_, present, _, _, _) in zip(shots, parsed)
    ]
    if num_rounds > len(shots):
        truth.append(TruthShot(lat=float(s_lat), lon=float(s_lon), alt=float(s_alt), t_utc_ns=None,
                               rounds=num_rounds - len(shots)))

    arrivals = sorted(arrivals_raw, key=lambda a: (a.t_utc_ns, a.node)) if mode != "audio" else []
    desc = survey.get("description", "")
    try:
        rs = RecordingSet(
            path=None,
            temperature_c=temperature_c,
            nodes=tuple(nodes),
            arrivals=tuple(arrivals),
            truth=tuple(truth),
            wind=wind,
            description=f"ShotSpotter Pittsburgh {fp} {name}: {desc} {ATTRIBUTION}".strip(),
        )
    except RecordingSetError as e:
        raise ShotSpotterError(f"{d}: converted set is inconsistent: {e}") from None

    return ShotSpotterTest(
        firing_position=fp, name=name, test_dir=d, num_rounds=num_rounds,
        firearm=str(survey.get("firearm", "")), survey_enu=survey_enu,
        c_mps=float(c_mps), c_source=c_source, shots=tuple(shots),
        missing_pulse_ids=tuple(missing), duplicate_pulse_records=duplicates,
        recording_set=rs,
    )


# ------------------------------------------------------------------ command line
def _write(out_dir: str | Path, rs: RecordingSet, wav_paths: str) -> Path:
    """:func:`write_set`, with a write failure reported as one (ShotSpotterError)."""
    try:
        return write_set(out_dir, rs, wav_paths=wav_paths)
    except OSError as e:
        raise ShotSpotterError(f"cannot write the recording set under {out_dir} "
                               f"({e.filename or out_dir}: {e.strerror or e}); check that it is a "
                               "writable folder") from None


def main(argv: Sequence[str] | None = None) -> int:
    """``earwitness import-shotspotter SRC_DIR OUT_DIR [--mode picks|audio|both]``.

    Writes ``OUT_DIR/FPn/test_NNN/set.json`` for every test under ``SRC_DIR``; for
    a folder of ShotSpotter sensor WAVs (server/shotspotter_wavs.py), one
    ``OUT_DIR/set.json``.
    Returns the process exit status (0 ok, 2 on bad input).
    """
    ap = argparse.ArgumentParser(
        prog="earwitness import-shotspotter",
        description="Convert ShotSpotter's Pittsburgh live-fire data (FP*/test_NNN/), or a folder of "
                    "ShotSpotter sensor WAVs with their smj0 metadata, into recording sets.",
    )
    ap.add_argument("src_dir", help="folder holding FP*/test_NNN/ (or one FP or test folder), or sensor WAVs")
    ap.add_argument("out_dir", help="output folder; gets FPn/test_NNN/set.json")
    ap.add_argument("--mode", choices=MODES, default="both",
                    help="picks: pulse arrivals only; audio: WAV nodes only; both (default): one set with both")
    ap.add_argument("--wav-paths", choices=("relative", "absolute"), default="relative",
                    help="how set.json refers to the original WAVs (default: relative to the set)")
    args = ap.parse_args(argv)
    try:
        tests = find_tests(args.src_dir)
        if not tests and any(Path(args.src_dir).glob("*.wav")):
            # a folder of sensor WAVs carrying their own metadata: one set
            rs = set_from_wavs(args.src_dir)
            path = _write(args.out_dir, rs, args.wav_paths)
            print(f"{len(rs.nodes)} sensor WAV(s) -> {path}")
            print(f"locate it with: earwitness locate {path.parent} --model-sigma-ms 7   (the timing error "
                  "ShotSpotter's street sensors showed in Pittsburgh; locate assumes it when reading the WAVs "
                  "directly)")
            return 0
        if not tests:
            raise ShotSpotterError(f"{args.src_dir}: no test_NNN/test_NNN.survey.json found below it, and no "
                                   "ShotSpotter sensor WAVs in it")
        out = Path(args.out_dir)
        counts: dict[str, list[int]] = {}
        for test_dir in tests:
            t = load_test(test_dir, mode=args.mode)
            _write(out / t.firing_position / t.name, t.recording_set, args.wav_paths)
            c = counts.setdefault(t.firing_position, [0, 0, 0])
            c[0] += 1
            c[1] += t.num_rounds
            c[2] += len(t.recording_set.arrivals)
    except (ShotSpotterError, RecordingSetError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:      # reading the source folder (its files say so themselves)
        print(f"error: cannot read {e.filename or args.src_dir}: {e.strerror or e}", file=sys.stderr)
        return 2
    for fp, (n, rounds, arrivals) in sorted(counts.items()):
        print(f"{fp}: {n} tests, {rounds} rounds, {arrivals} arrivals -> {out / fp}")
    print(f"wrote {sum(c[0] for c in counts.values())} recording sets ({args.mode}) under {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
