"""Typed, frozen configuration for each process, loaded from TOML.

Each process gets exactly one config object (``NodeConfig`` or ``ServerConfig``)
and passes it (or its sections) down; nothing reads globals. Unknown keys, wrong
types and out-of-range values are errors naming the file, the key and the fix.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal


class ConfigError(ValueError):
    """A configuration file or value that cannot be used. The text says how to fix it."""


# ------------------------------------------------------------------ node side
@dataclass(frozen=True)
class Position:
    """A WGS84 position: degrees, degrees, metres above the ellipsoid."""

    lat: float
    lon: float
    alt: float = 0.0


@dataclass(frozen=True)
class AudioConfig:
    """Where the node's audio comes from.

    ``source``: ``"sounddevice"`` (a real microphone through PortAudio),
    ``"wav"`` (a recording, for replay) or ``"sim"`` (the simulation's adapter).
    ``device``: PortAudio device name or index; prefer ALSA ``hw:``/``plughw:``
    names over ``default`` (the PulseAudio plugin gives no timestamps).
    """

    source: Literal["sounddevice", "wav", "sim"] = "sounddevice"
    device: str | None = None
    sample_rate: int = 48_000
    channels: int = 1
    blocksize: int = 480
    #: Which input channel carries the microphone (0-based).
    mic_channel: int = 0
    wav_path: str | None = None
    #: UTC of the WAV's first sample (ISO-8601), for ``source = "wav"``.
    wav_start_utc: str | None = None
    queue_blocks: int = 2000


@dataclass(frozen=True)
class TimebaseConfig:
    """How sample indices become UTC.

    ``mode``: ``"system"`` (chrony-disciplined system clock + robust fit of callback
    times), ``"pps-audio"`` (GPS PPS wired into input channel ``pps_channel``),
    ``"fixed"`` (a recording's known start time) or ``"simulated"``.
    """

    mode: Literal["system", "pps-audio", "fixed", "simulated"] = "system"
    pps_channel: int = 1
    fit_window_s: float = 60.0
    #: Constant ADC/USB latency to subtract (s), if measured for this hardware.
    latency_s: float = 0.0


@dataclass(frozen=True)
class DetectorConfig:
    """The onset detector (see node/detector.py for what each value does)."""

    band_hz: tuple[float, float] = (300.0, 5000.0)
    sta_s: float = 0.002
    lta_s: float = 0.5
    trigger_ratio: float = 12.0
    release_ratio: float = 3.0
    refractory_s: float = 0.030
    pick_window_s: float = 0.010
    snippet_pre_s: float = 0.005
    snippet_post_s: float = 0.025
    #: Absolute floor: STA below this (dBFS, band-passed) never triggers.
    min_level_dbfs: float = -70.0
    #: First-arrival look-back (s, 0: off): a trigger is often set off by a
    #: louder later path (reflection, diffraction round a corner) or raised LTA
    #: after a loud sound; the pick moves to the earliest clear rise above the
    #: local noise within this long before the trigger (see node/detector.py).
    lookback_s: float = 0.025


@dataclass(frozen=True)
class PublisherConfig:
    #: Resend an unacknowledged event after this long (s). Short enough to recover
    #: quickly from a lost message, long enough not to flood a slow server.
    resend_s: float = 10.0
    max_unacked: int = 100_000
    heartbeat_s: float = 5.0
    #: For ``active_s`` after the node reports an event, heartbeats every
    #: ``active_heartbeat_s`` instead: a heartbeat carries the node's watermark,
    #: and the server decides a shot only once every node's watermark has passed
    #: it — so this is what lets a shot be located within a second or two, not a
    #: whole ``heartbeat_s`` later. Quiet nodes stay at ``heartbeat_s``.
    active_heartbeat_s: float = 0.5
    active_s: float = 10.0
    #: A heartbeat carries the node's whole health status this often (s), and
    #: at once whenever a state in it changes (a flag, a text such as a
    #: problem, a value appearing or going missing); the others carry an empty
    #: status, "unchanged" (docs/protocol.md): the status is most of a
    #: heartbeat's bytes, which a node on a mobile data plan pays for. Its levels
    #: and counters are then up to this old at the server. 0: every heartbeat.
    status_s: float = 60.0
    #: ZeroMQ's own keep-alive from the node (s): a ping this often, answered by
    #: the server; a link silent for 3 × this is taken as dead and reconnected
    #: (a server that lost power, a NAT that dropped the mapping), its unacked
    #: events resent from the outbox. With the pongs, about 40 B/s over CURVE at
    #: 2 s: raise it on a metered link if noticing a dead link later is fine.
    link_ping_s: float = 2.0


@dataclass(frozen=True)
class GpsConfig:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 2947
    survey_s: float = 600.0
    move_alert_m: float = 25.0


@dataclass(frozen=True)
class SecurityConfig:
    """The node's CURVE keys (Z85 text), as printed by `earwitness keys enroll`.
    Without them the node talks plaintext, which the server accepts only when it
    is configured with ``allow_plaintext``."""

    server_public_key: str | None = None
    public_key: str | None = None
    secret_key: str | None = None


@dataclass(frozen=True)
class NodeConfig:
    id: str
    server: str = "tcp://127.0.0.1:5555"
    #: Surveyed position; overrides the GPS survey-in when set.
    position: Position | None = None
    audio: AudioConfig = field(default_factory=AudioConfig)
    timebase: TimebaseConfig = field(default_factory=TimebaseConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    publisher: PublisherConfig = field(default_factory=PublisherConfig)
    gps: GpsConfig = field(default_factory=GpsConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    #: The persistent outbox of unacknowledged events (SQLite).
    outbox_path: str = "earwitness-outbox.sqlite"
    outbox_max_items: int = 100_000


# ---------------------------------------------------------------- server side
@dataclass(frozen=True)
class AssociationConfig:
    """Grouping events from many nodes into shots (server/association.py)."""

    min_nodes: int = 4
    #: Of the nodes no further from a shot than the furthest node that heard it
    #: (and within ``hearing_range_m``), at least this fraction must have heard it.
    min_fraction: float = 0.5
    hearing_range_m: float = 2000.0
    #: Largest acceptable expected number of chance alignments of unrelated
    #: sounds as good as a candidate shot (see server/association.py). It is a
    #: rate per searched arrival: a busy network searches thousands an hour.
    max_chance: float = 1e-4
    #: A line-up that would be a shot but for ``max_chance`` — found among the
    #: arrivals the association put aside, with at most this expected number of
    #: chance alignments — is reported as an *unconfirmed candidate* for an
    #: analyst to review (stored, published on its own topic; never a shot, never
    #: part of an incident). 0.1: timing gives 10:1 against coincidence. 0: off.
    review_max_chance: float = 0.1
    #: An arrival belongs to a shot if its residual is within ``tolerance_sigmas``
    #: times the typical timing error (the events' own σ combined with the
    #: solver's ``model_sigma_s``), and never less than ``tolerance_s``.
    tolerance_sigmas: float = 4.0
    tolerance_s: float = 0.0005
    #: How long after the network's watermark passes an event it may wait (s).
    latency_s: float = 0.5
    #: Coarse search grid (m); a fine grid an eighth of it refines its best cells.
    grid_step_m: float = 20.0
    margin_m: float = 500.0
    #: Give up waiting for a silent node after this many wall seconds.
    stale_node_s: float = 30.0
    #: After a shot's core is found, a node not in it may still contribute its
    #: arrival nearest the prediction within this (s); the robust solver then
    #: decides from the data's own residual scale whether it stays (0: off).
    extend_tolerance_s: float = 0.02


@dataclass(frozen=True)
class SolverConfig:
    #: Assumed source height above the ground (m), in 2-D mode.
    source_height_m: float = 1.5
    #: Typical height of the nodes' microphones above the ground (m): the ground
    #: is taken to be this far below the nodes' median altitude.
    node_height_m: float = 5.0
    #: "2d": height fixed at ``source_height_m`` above the ground; "3d": height
    #: free; "auto": 3-D with a prior (± ``height_sigma_m``) around that height, so
    #: the height is solved only where nearby nodes resolve it.
    mode: Literal["2d", "3d", "auto"] = "auto"
    height_sigma_m: float = 3.0
    #: Prior 1-σ timing error added to every event's own (s): models node position
    #: and propagation errors.
    model_sigma_s: float = 0.0005
    refine_xcorr: bool = True
    #: Fit the speed of sound as well when a shot has at least this many arrivals
    #: (0: never). Its prior is the configured temperature ± ``temperature_sigma_c``
    #: (± ``unknown_temperature_sigma_c`` when no temperature is configured).
    fit_speed_min_nodes: int = 6
    temperature_sigma_c: float = 2.0
    unknown_temperature_sigma_c: float = 12.0
    #: Fit the horizontal wind (east, north) as well when a shot has at least
    #: this many arrivals (0: never), with a prior 0 ± ``wind_sigma_mps``; the
    #: network's recent shots sharpen that prior (the wind is the same for all).
    fit_wind_min_nodes: int = 8
    wind_sigma_mps: float = 4.0
    #: A shot located without fitting the wind (too few arrivals, and no
    #: network wind learnt yet) assumes still air; its reported radius includes
    #: the error an unknown wind of this 1-σ (m/s, per component) causes — about
    #: the wind × the travel time to its nodes. 0: leave it out (the radius then
    #: covers timing errors only). The same holds for the speed of sound when it
    #: is not fitted (± the configured temperature's uncertainty).
    unfitted_wind_mps: float = 2.0


@dataclass(frozen=True)
class IncidentConfig:
    """Rounds within ``gap_s`` of each other and ``radius_m`` apart are one incident."""

    gap_s: float = 4.0
    radius_m: float = 40.0


@dataclass(frozen=True)
class ServerConfig:
    bind: str = "tcp://127.0.0.1:5555"
    publish: str = "tcp://127.0.0.1:5556"
    database: str = "earwitness.sqlite"
    temperature_c: float | None = None
    #: Reject events whose time is further than this from the server's clock (s);
    #: 0 disables the check (simulation and replay).
    max_clock_skew_s: float = 3600.0
    #: Key directory made by `earwitness keys init-server` (CURVE encryption and
    #: the node allow-list). Without it the server refuses to start unless
    #: ``allow_plaintext`` is set — for a local simulation or a lab only.
    keys_dir: str | None = None
    allow_plaintext: bool = False
    #: Node ids the server expects: until each has reported (or
    #: ``association.stale_node_s`` has passed since start), no shot is decided,
    #: so a node that starts late still contributes. Empty: only nodes heard from.
    expected_nodes: tuple[str, ...] = ()
    association: AssociationConfig = field(default_factory=AssociationConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    incidents: IncidentConfig = field(default_factory=IncidentConfig)


# ------------------------------------------------------------------ loading
def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(a, value, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{where}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return from_dict(tp, value, where)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported config type {tp!r}")


def from_dict(cls: type, data: dict, where: str = "") -> Any:
    """Build the frozen dataclass ``cls`` from a plain dict, strictly."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(
            f"{where or cls.__name__}: unknown key(s) {', '.join(sorted(unknown))}; "
            f"allowed: {', '.join(sorted(names))}"
        )
    kwargs = {}
    for f in dataclasses.fields(cls):
        key = f"{where}.{f.name}" if where else f.name
        if f.name in data:
            kwargs[f.name] = _convert(hints[f.name], data[f.name], key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{key}: required but missing")
    return cls(**kwargs)


def _load(path: str | Path, cls: type, section: str) -> Any:
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"config file {p} does not exist; copy examples/{section}.toml and edit it") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    flat = dict(raw.pop(section, {}))
    flat.update(raw)
    try:
        return from_dict(cls, flat)
    except ConfigError as exc:
        raise ConfigError(f"{p}: {exc}") from None


def load_node_config(path: str | Path) -> NodeConfig:
    """Node config: a ``[node]`` table (id, server, position) plus the sections
    ``[audio]``, ``[timebase]``, ``[detector]``, ``[publisher]``, ``[gps]``."""
    return _load(path, NodeConfig, "node")


def load_server_config(path: str | Path) -> ServerConfig:
    """Server config: a ``[server]`` table plus ``[association]``, ``[solver]``, ``[incidents]``."""
    return _load(path, ServerConfig, "server")
