"""ShotSpotter sensor recordings, as released for an incident, as a recording set.

ShotSpotter's sensor WAV files (e.g. those published with
github.com/ShotSpotter/research.source-location-shotspotter-audio, or released
in court records) carry their own metadata: a RIFF chunk ``smj0`` holding
zlib-compressed JSON with the sensor's serial number, its position
(``geolocation``: latitude, longitude, elevation) and the UTC time of the first
sample (``startTimeUTC``), plus the weather the system used. A folder of such
files is all :func:`set_from_wavs` needs to build a recording set, so
``earwitness locate FOLDER`` runs on it directly and anyone holding those files
can check where the shots came from.

Choices (see docs/recording-set.md):

* node id: ``serialNumber`` (the file name when it has none);
* ``alt``: ``geolocation.elevation`` as given. It may be above sea level rather
  than the WGS84 ellipsoid; the locator only uses height differences between
  the sensors, so a common offset changes nothing;
* ``start_utc``: ``startTimeUTC`` (millisecond resolution in the files seen);
* temperature: the mean of the files' ``weather.temperature`` in air, null when
  none gives one; wind: ``weather.speed`` (m/s; METAR knots converted) from
  ``weather.direction`` (degrees, where it blows from), when all files agree. It is
  the airport's wind, for information: the locator does not use it.
"""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

from common.recording_set import SET_FILENAME, RecordingSet, RecordingSetError, SetNode, Wind
from common.timefmt import iso_to_ns
from node.wav_source import WavError, read_chunk

#: The metadata chunk's id.
SMJ_CHUNK = b"smj0"


def read_smj(path: str | Path) -> dict:
    """The ``smj0`` metadata of a ShotSpotter WAV file, as a dict. Raises
    :class:`RecordingSetError` (naming the file and what is wrong) when the file
    is not a usable WAV or carries no readable ``smj0`` chunk."""
    try:
        raw = read_chunk(path, SMJ_CHUNK)
    except WavError as exc:
        raise RecordingSetError(str(exc)) from None
    if raw is None:
        raise RecordingSetError(f"{path}: no ShotSpotter 'smj0' metadata chunk in this WAV; without it the "
                                f"sensor's position and start time are unknown: write a {SET_FILENAME} "
                                "for the folder (docs/recording-set.md)")
    try:
        meta = json.loads(zlib.decompress(raw))
    except (zlib.error, ValueError) as exc:
        raise RecordingSetError(f"{path}: the 'smj0' metadata chunk is not zlib-compressed JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise RecordingSetError(f"{path}: the 'smj0' metadata is {type(meta).__name__}, expected a JSON object")
    return meta


def _node(path: Path, meta: dict) -> SetNode:
    def field(*keys: str) -> object:
        v: object = meta
        for k in keys:
            if not isinstance(v, dict) or k not in v:
                raise RecordingSetError(f"{path}: the 'smj0' metadata has no {'.'.join(keys)}")
            v = v[k]
        return v

    def number(*keys: str) -> float:
        v = field(*keys)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise RecordingSetError(f"{path}: 'smj0' {'.'.join(keys)} is {v!r}, expected a number")
        return float(v)

    start = field("startTimeUTC")
    try:
        start_ns = iso_to_ns(str(start))
    except ValueError as exc:
        raise RecordingSetError(f"{path}: 'smj0' startTimeUTC {start!r}: {exc}") from None
    serial = meta.get("serialNumber")
    return SetNode(id=serial if isinstance(serial, str) and serial else path.stem,
                   lat=number("geolocation", "latitude"), lon=number("geolocation", "longitude"),
                   alt=number("geolocation", "elevation"), wav=path.absolute(), start_utc_ns=start_ns)


def _weather(wavs: list[Path], metas: list[dict]) -> tuple[float | None, Wind | None]:
    """The mean air temperature of the files that give one, and the wind when
    every file gives the same. A ``weather`` that is there but is not an object,
    or a temperature, speed or direction that is there (not null) but is not a
    finite number, is a :class:`RecordingSetError` naming the file and field."""
    air: list[dict[str, float | None]] = []
    for path, m in zip(wavs, metas):
        w = m.get("weather")
        if w is None:
            continue
        if not isinstance(w, dict):
            raise RecordingSetError(f"{path}: 'smj0' weather is {w!r}, expected a JSON object (or none); "
                                    "fix or remove it in the file's metadata")
        if w.get("medium", "air") != "air":
            continue
        vals: dict[str, float | None] = {}
        for k in ("temperature", "speed", "direction"):
            v = w.get(k)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
                raise RecordingSetError(f"{path}: 'smj0' weather.{k} is {v!r}, expected a finite number "
                                        "(or null when not known)")
            vals[k] = None if v is None else float(v)
        air.append(vals)
    temps = [w["temperature"] for w in air if w["temperature"] is not None]
    winds = {(w["speed"], w["direction"]) for w in air}
    wind = None
    if len(winds) == 1 and len(air) == len(metas):
        speed, direction = next(iter(winds))
        if speed is not None and direction is not None:
            wind = Wind(speed_mps=speed, from_deg=direction)
    return (sum(temps) / len(temps) if temps else None), wind


def _recording_folders(d: Path, depth: int = 3) -> list[Path]:
    """Folders below ``d`` (at most ``depth`` levels) holding a set.json or WAVs."""
    found: list[Path] = []
    for sub in sorted(p for p in d.iterdir() if p.is_dir()):
        if (sub / SET_FILENAME).is_file() or any(p.suffix.lower() == ".wav" for p in sub.iterdir()):
            found.append(sub)
        elif depth > 1:
            found.extend(_recording_folders(sub, depth - 1))
    return found


def set_from_wavs(folder: str | Path) -> RecordingSet:
    """A recording set of every ``*.wav`` in ``folder`` (not below it), each a
    ShotSpotter sensor recording carrying ``smj0`` metadata. Raises
    :class:`RecordingSetError` naming the file when one is not, or when two
    files come from the same sensor."""
    d = Path(folder)
    wavs = sorted(p for p in d.iterdir() if p.suffix.lower() == ".wav" and p.is_file()) if d.is_dir() else []
    if not wavs:
        below = _recording_folders(d) if d.is_dir() else []
        hint = (f"; below it, {', '.join(str(b.relative_to(d)) for b in below[:5])}"
                f"{', …' if len(below) > 5 else ''} hold recordings: point at one of them" if below else "")
        raise RecordingSetError(f"{d}: no {SET_FILENAME} and no WAV files in this folder; point at a "
                                f"recording set (docs/recording-set.md) or a folder of ShotSpotter WAVs{hint}")
    metas = [read_smj(p) for p in wavs]
    nodes = [_node(p, m) for p, m in zip(wavs, metas)]
    seen: dict[str, Path] = {}
    for n, p in zip(nodes, wavs):
        if n.id in seen:
            raise RecordingSetError(f"{p}: sensor {n.id} again (also {seen[n.id].name}); one recording per "
                                    "sensor: move the other into its own folder")
        seen[n.id] = p
    temperature_c, wind = _weather(wavs, metas)
    zones = sorted({str(m["zone"]["name"]) for m in metas
                    if isinstance(m.get("zone"), dict) and m["zone"].get("name")})
    return RecordingSet(path=None, temperature_c=temperature_c, nodes=tuple(nodes), wind=wind,
                        description=f"ShotSpotter sensor recordings in {d}"
                                    + (f" (zone {', '.join(zones)})" if zones else ""))
