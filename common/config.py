"""Typed, frozen configuration for each process, loaded from TOML.

Each process gets exactly one config object (``NodeConfig`` or ``ServerConfig``)
and passes it (or its sections) down; nothing reads globals. Unknown keys, wrong
types and out-of-range values are errors naming the file, the key, the bad value
and what is allowed. The ranges are checked when a config is constructed
(``__post_init__``), so a config built in code, or changed with
``dataclasses.replace``, is checked as well as one loaded from TOML.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from common.protocol import MAX_SNIPPET_SAMPLES, NODE_ID_RE
from common.timefmt import iso_to_ns


class ConfigError(ValueError):
    """A configuration file or value that cannot be used. The text says how to fix it."""


# ------------------------------------------------------------- range checks
class _FieldError(ConfigError):
    """An out-of-range value of one field (``key``, relative to the config that
    holds it). :func:`from_dict` puts the table in front of the key; for a config
    built in code the text starts with the class name."""

    def __init__(self, owner: object, key: str, detail: str) -> None:
        super().__init__(f"{type(owner).__name__}.{key}: {detail}")
        self.key = key
        self.detail = detail


def _num(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def _need(owner: object, key: str, *, gt: float | None = None, ge: float | None = None,
          lt: float | None = None, le: float | None = None, note: str = "") -> None:
    """Raise a :class:`_FieldError` unless field ``key`` of ``owner`` lies in
    the range the bounds give; ``note`` is added to the message (a unit, what 0
    means, how to fix it)."""
    v = getattr(owner, key)
    if v is None:
        return
    if ((gt is None or v > gt) and (ge is None or v >= ge)
            and (lt is None or v < lt) and (le is None or v <= le)):
        return
    if ge is not None and le is not None:
        allowed = f"in [{_num(ge)}, {_num(le)}]"
    else:
        allowed = " and ".join(f"{op} {_num(b)}" for op, b in ((">", gt), (">=", ge), ("<", lt), ("<=", le))
                               if b is not None)
    raise _FieldError(owner, key, f"{v!r} is out of range; it must be {allowed}{note}")


def _check_endpoint(owner: object, key: str) -> None:
    """A ZeroMQ endpoint: ``tcp://HOST:PORT`` (PORT 1..65535, or ``*`` or 0: any
    free port, for binding) or another transport's ``SCHEME://ADDRESS``."""
    v = getattr(owner, key)
    scheme, sep, address = v.partition("://")
    if not sep or not scheme or not address:
        raise _FieldError(owner, key, f"{v!r} is not a ZeroMQ endpoint; write it as tcp://HOST:PORT, "
                                      "e.g. \"tcp://127.0.0.1:5555\"")
    if scheme == "tcp":
        host, colon, port = address.rpartition(":")
        if not colon or not host or not (port == "*" or (port.isdigit() and 0 <= int(port) <= 65535)):
            raise _FieldError(owner, key, f"{v!r}: a tcp endpoint needs HOST:PORT with PORT in [1, 65535] "
                                          "(or * or 0 for any free port), e.g. \"tcp://127.0.0.1:5555\"")


def _check_node_id(owner: object, key: str, value: object) -> None:
    """A node id as the protocol allows it (``common.protocol.NODE_ID_RE``)."""
    if not isinstance(value, str) or not NODE_ID_RE.match(value):
        raise _FieldError(owner, key, f"{value!r} is not a valid node id; use 1-64 letters, digits, '.', '_' "
                                      "or '-', starting with a letter or digit (e.g. \"north-01\")")


class _Checked:
    """Base of the config dataclasses: every float must be finite (TOML allows
    ``inf`` and ``nan``), then the class's own :meth:`_check` of its ranges."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            for i, x in enumerate(v if isinstance(v, tuple) else (v,)):
                if isinstance(x, float) and not math.isfinite(x):
                    key = f"{f.name}[{i}]" if isinstance(v, tuple) else f.name
                    raise _FieldError(self, key, f"{x!r} is not a finite number")
        self._check()

    def _check(self) -> None:
        """Raise a :class:`_FieldError` for a value out of range (none here)."""


#: A CURVE key as Z85 text: 40 characters of the Z85 alphabet.
_Z85_KEY_RE = re.compile(r"^[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}$")


def is_valid_key(key: str | bytes) -> bool:
    """True if ``key`` is a 40-character Z85 text encoding of a 32-byte CURVE key
    (the one definition, for the node's config and the server's key tool)."""
    from zmq.utils import z85

    if isinstance(key, bytes):
        try:
            key = key.decode("ascii")
        except UnicodeDecodeError:
            return False
    if not isinstance(key, str) or not _Z85_KEY_RE.match(key):
        return False
    try:
        return len(z85.decode(key)) == 32
    except Exception:  # z85.decode raises several types on bad text
        return False


# ------------------------------------------------------------------ node side
@dataclass(frozen=True)
class Position(_Checked):
    """A WGS84 position: degrees (-90..90), degrees (-180..180), metres above the ellipsoid."""

    lat: float
    lon: float
    alt: float = 0.0

    def _check(self) -> None:
        _need(self, "lat", ge=-90.0, le=90.0, note=" (degrees north; is it swapped with lon?)")
        _need(self, "lon", ge=-180.0, le=180.0, note=" (degrees east: west is negative)")


@dataclass(frozen=True)
class AudioConfig(_Checked):
    """Where the node's audio comes from.

    ``source``: ``"sounddevice"`` (a real microphone through PortAudio),
    ``"wav"`` (a recording, for replay) or ``"sim"`` (the simulation's adapter).
    ``device``: PortAudio device name or index; prefer ALSA ``hw:``/``plughw:``
    names over ``default`` (the PulseAudio plugin gives no timestamps).
    """

    source: Literal["sounddevice", "wav", "sim"] = "sounddevice"
    device: str | None = None
    #: Samples per second per channel (> 0).
    sample_rate: int = 48_000
    #: Input channels to open (>= 1).
    channels: int = 1
    #: Frames per audio callback (0: PortAudio chooses).
    blocksize: int = 480
    #: Which input channel carries the microphone (0-based, < ``channels``; for
    #: ``source = "wav"``, < the file's own channel count, checked when it is opened).
    mic_channel: int = 0
    wav_path: str | None = None
    #: UTC of the WAV's first sample (ISO-8601), for ``source = "wav"``.
    wav_start_utc: str | None = None
    #: Audio blocks the capture queue holds (>= 1).
    queue_blocks: int = 2000

    def _check(self) -> None:
        _need(self, "sample_rate", gt=0, note=" Hz")
        _need(self, "channels", ge=1)
        _need(self, "blocksize", ge=0, note=" frames (0: PortAudio chooses)")
        if self.source == "wav":        # the file has its own channels (node/main.py checks them)
            _need(self, "mic_channel", ge=0, note=" (0-based)")
        else:
            _need(self, "mic_channel", ge=0, lt=self.channels,
                  note=f" (0-based, below channels = {self.channels})")
        _need(self, "queue_blocks", ge=1)
        if self.wav_start_utc is not None:
            try:
                iso_to_ns(self.wav_start_utc)
            except ValueError:
                raise _FieldError(self, "wav_start_utc", f"{self.wav_start_utc!r} is not an ISO-8601 UTC time; "
                                  "write e.g. \"2024-05-01T12:00:00Z\"") from None


@dataclass(frozen=True)
class TimebaseConfig(_Checked):
    """How sample indices become UTC.

    ``mode``: ``"system"`` (chrony-disciplined system clock + robust fit of callback
    times), ``"pps-audio"`` (GPS PPS wired into input channel ``pps_channel``),
    ``"fixed"`` (a recording's known start time) or ``"simulated"``.
    """

    mode: Literal["system", "pps-audio", "fixed", "simulated"] = "system"
    #: Input channel (0-based) the PPS is wired into, for ``mode = "pps-audio"``.
    pps_channel: int = 1
    #: How much recent timing the clock fit uses (s, > 0).
    fit_window_s: float = 60.0
    #: Constant ADC/USB latency to subtract (s), if measured for this hardware;
    #: any sign (a calibration may also take out a delay of the PPS edge).
    latency_s: float = 0.0

    def _check(self) -> None:
        _need(self, "pps_channel", ge=0)
        _need(self, "fit_window_s", gt=0, note=" s")


@dataclass(frozen=True)
class DetectorConfig(_Checked):
    """The onset detector (see node/detector.py for what each value does).
    Times are in seconds; ``band_hz`` is (low, high) with 0 < low < high."""

    band_hz: tuple[float, float] = (300.0, 5000.0)
    sta_s: float = 0.002
    lta_s: float = 0.5
    trigger_ratio: float = 12.0
    release_ratio: float = 3.0
    refractory_s: float = 0.030
    pick_window_s: float = 0.010
    snippet_pre_s: float = 0.005
    snippet_post_s: float = 0.025
    #: Absolute floor: STA below this (dBFS, band-passed, <= 0) never triggers.
    min_level_dbfs: float = -70.0
    #: First-arrival look-back (s, 0: off): a trigger is often set off by a
    #: louder later path (reflection, diffraction round a corner) or raised LTA
    #: after a loud sound; the pick moves to the earliest clear rise above the
    #: local noise within this long before the trigger (see node/detector.py).
    lookback_s: float = 0.025

    def _check(self) -> None:
        lo, hi = self.band_hz
        if not 0 < lo < hi:
            raise _FieldError(self, "band_hz", f"{list(self.band_hz)!r} is not a band; give [low, high] Hz "
                                               "with 0 < low < high, e.g. [300.0, 5000.0]")
        _need(self, "sta_s", gt=0, note=" s")
        _need(self, "lta_s", gt=self.sta_s, note=f" s (longer than sta_s = {_num(self.sta_s)} s)")
        _need(self, "trigger_ratio", gt=1, note=" (STA/LTA)")
        _need(self, "release_ratio", gt=0, lt=self.trigger_ratio,
              note=f" (below trigger_ratio = {_num(self.trigger_ratio)})")
        _need(self, "refractory_s", ge=0, note=" s")
        _need(self, "pick_window_s", gt=0, note=" s")
        _need(self, "snippet_pre_s", ge=0, note=" s")
        _need(self, "snippet_post_s", gt=0, note=" s")
        _need(self, "min_level_dbfs", le=0, note=" dBFS (full scale is 0)")
        _need(self, "lookback_s", ge=0, note=" s (0: off)")


@dataclass(frozen=True)
class PublisherConfig(_Checked):
    """The node's link to the server. Periods are in seconds, > 0 unless said."""

    #: Resend an unacknowledged event after this long (s). Short enough to recover
    #: quickly from a lost message, long enough not to flood a slow server.
    #: (How many unacknowledged events are kept: ``NodeConfig.outbox_max_items``.)
    resend_s: float = 10.0
    heartbeat_s: float = 5.0
    #: For ``active_s`` after the node reports an event, heartbeats every
    #: ``active_heartbeat_s`` instead: a heartbeat carries the node's watermark,
    #: and the server decides a shot only once every node's watermark has passed
    #: it — so this is what lets a shot be located within a second or two, not a
    #: whole ``heartbeat_s`` later. Quiet nodes stay at ``heartbeat_s``.
    #: ``active_s`` 0: off (always ``heartbeat_s``).
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

    def _check(self) -> None:
        for key in ("resend_s", "heartbeat_s", "active_heartbeat_s", "link_ping_s"):
            _need(self, key, gt=0, note=" s")
        _need(self, "active_s", ge=0, note=" s (0: off)")
        _need(self, "status_s", ge=0, note=" s (0: every heartbeat)")


@dataclass(frozen=True)
class GpsConfig(_Checked):
    """gpsd's address, and the survey-in (node/survey.py)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 2947
    #: Average the fixes over this long (s) for the node's position (0: done
    #: as soon as there are enough fixes).
    survey_s: float = 600.0
    #: Alert when most recent fixes lie more than this far (m, > 0) from the
    #: position (node/survey.py).
    move_alert_m: float = 25.0

    def _check(self) -> None:
        _need(self, "port", ge=1, le=65535)
        _need(self, "survey_s", ge=0, note=" s")
        _need(self, "move_alert_m", gt=0, note=" m")


@dataclass(frozen=True)
class SecurityConfig(_Checked):
    """The node's CURVE keys (Z85 text, 40 characters each), as printed by
    `earwitness keys enroll`. Without them the node talks plaintext, which the
    server accepts only when it is configured with ``allow_plaintext``."""

    server_public_key: str | None = None
    public_key: str | None = None
    secret_key: str | None = None

    def _check(self) -> None:
        for k in ("server_public_key", "public_key", "secret_key"):
            v = getattr(self, k)
            if v is not None and not is_valid_key(v):
                shown = f"a {len(v)}-character value" if k == "secret_key" else repr(v)   # never echo a secret
                raise _FieldError(self, k, f"{shown} is not a 40-character Z85 CURVE key; paste it "
                                           "from `earwitness keys enroll`")


@dataclass(frozen=True)
class NodeConfig(_Checked):
    #: The node's name on the network: 1-64 letters, digits, '.', '_' or '-',
    #: starting with a letter or digit (``common.protocol.NODE_ID_RE``).
    id: str
    #: The server's ZeroMQ endpoint, ``tcp://HOST:PORT``.
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
    #: At most this many unacknowledged events (>= 1) are kept; when full, the
    #: oldest is dropped, and counted (node/outbox.py).
    outbox_max_items: int = 100_000

    def _check(self) -> None:
        _check_node_id(self, "id", self.id)
        _check_endpoint(self, "server")
        _need(self, "outbox_max_items", ge=1)
        if self.timebase.mode == "pps-audio" and self.timebase.pps_channel == self.audio.mic_channel:
            raise _FieldError(self, "timebase.pps_channel", f"{self.timebase.pps_channel} is also "
                              "audio.mic_channel: the PPS and the microphone need their own input channels")
        if self.audio.source == "wav":
            return                      # a WAV file has its own sample rate, known once it is opened
        fs = self.audio.sample_rate
        det = self.detector
        if det.band_hz[0] >= 0.45 * fs:
            # node/detector.py clips the upper edge to 0.45·fs; the lower one must stay below it
            raise _FieldError(self, "detector.band_hz", f"{list(det.band_hz)!r}: the lower edge must be below "
                              f"0.45 × audio.sample_rate = {_num(0.45 * fs)} Hz")
        snippet = round(det.snippet_pre_s * fs) + round(det.snippet_post_s * fs)
        if not 1 <= snippet <= MAX_SNIPPET_SAMPLES:
            raise _FieldError(self, "detector.snippet_post_s",
                              f"snippet_pre_s + snippet_post_s = {snippet} samples at {fs} Hz; events carry "
                              f"1 to {MAX_SNIPPET_SAMPLES} samples: shorten or lengthen them")


# ---------------------------------------------------------------- server side
@dataclass(frozen=True)
class AssociationConfig(_Checked):
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
    #: Give up waiting for a silent node after this many wall seconds (0: do not wait).
    stale_node_s: float = 30.0
    #: After a shot's core is found, a node not in it may still contribute its
    #: arrival nearest the prediction within this (s); the robust solver then
    #: decides from the data's own residual scale whether it stays (0: off).
    extend_tolerance_s: float = 0.02

    def _check(self) -> None:
        _need(self, "min_nodes", ge=3, note=" (fewer arrivals cannot locate a source)")
        _need(self, "min_fraction", ge=0.0, le=1.0)
        _need(self, "hearing_range_m", gt=0, note=" m")
        _need(self, "max_chance", gt=0)
        _need(self, "review_max_chance", ge=0, note=" (0: off)")
        _need(self, "tolerance_sigmas", gt=0)
        for key in ("tolerance_s", "latency_s", "stale_node_s"):
            _need(self, key, ge=0, note=" s")
        _need(self, "grid_step_m", gt=0, note=" m")
        _need(self, "margin_m", ge=0, note=" m")
        _need(self, "extend_tolerance_s", ge=0, note=" s (0: off)")


@dataclass(frozen=True)
class SolverConfig(_Checked):
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
    #: A shot's wind estimate counts for the shots within this long of it (s;
    #: 0: for ever). The wind at street level changes within the hour, and a
    #: network's shots can be days apart: an old estimate taken as the known
    #: wind would move the next shots, so it lapses and they start from still
    #: air (± ``unfitted_wind_mps``) again.
    wind_max_age_s: float = 1800.0
    #: A shot located without fitting the wind (too few arrivals, and no
    #: network wind learnt yet) assumes still air; its reported radius includes
    #: the error an unknown wind of this 1-σ (m/s, per component) causes — about
    #: the wind × the travel time to its nodes. 0: leave it out (the radius then
    #: covers timing errors only). The same holds for the speed of sound when it
    #: is not fitted (± the configured temperature's uncertainty).
    unfitted_wind_mps: float = 2.0

    def _check(self) -> None:
        _need(self, "height_sigma_m", gt=0, note=" m")
        _need(self, "model_sigma_s", ge=0, note=" s")
        _need(self, "fit_speed_min_nodes", ge=0, note=" (0: never)")
        _need(self, "fit_wind_min_nodes", ge=0, note=" (0: never)")
        _need(self, "temperature_sigma_c", gt=0, note=" °C")
        _need(self, "unknown_temperature_sigma_c", gt=0, note=" °C")
        _need(self, "wind_sigma_mps", gt=0, note=" m/s")
        _need(self, "wind_max_age_s", ge=0, note=" s (0: for ever)")
        _need(self, "unfitted_wind_mps", ge=0, note=" m/s (0: leave it out)")


@dataclass(frozen=True)
class IncidentConfig(_Checked):
    """Rounds within ``gap_s`` of each other and ``radius_m`` apart are one
    incident (both >= 0; 0: every round is its own incident)."""

    gap_s: float = 4.0
    radius_m: float = 40.0

    def _check(self) -> None:
        _need(self, "gap_s", ge=0, note=" s")
        _need(self, "radius_m", ge=0, note=" m")


@dataclass(frozen=True)
class ServerConfig(_Checked):
    #: ZeroMQ endpoints: where nodes connect, and the PUB feed (``tcp://HOST:PORT``).
    bind: str = "tcp://127.0.0.1:5555"
    publish: str = "tcp://127.0.0.1:5556"
    database: str = "earwitness.sqlite"
    #: Air temperature (°C, -60..70; None: unknown).
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

    def _check(self) -> None:
        _check_endpoint(self, "bind")
        _check_endpoint(self, "publish")
        _need(self, "temperature_c", ge=-60.0, le=70.0, note=" °C (or leave it out if unknown)")
        _need(self, "max_clock_skew_s", ge=0, note=" s (0: no check)")
        for i, node_id in enumerate(self.expected_nodes):
            _check_node_id(self, f"expected_nodes[{i}]", node_id)


# ------------------------------------------------------------------ loading
#: Keys that were removed, per config class: why, and what to use instead.
_REMOVED_KEYS: dict[tuple[type, str], str] = {
    (PublisherConfig, "max_unacked"):
        "was removed (it was never used); the node's outbox_max_items in the [node] table bounds "
        "the unacknowledged events kept: delete this line",
}


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


def _key_path(where: str, key: str, table: str, in_table: frozenset[str]) -> str:
    """How an error names ``key`` of the table ``where`` ("": the top level, whose
    keys in ``in_table`` came from the TOML table ``table``)."""
    if where:
        return f"{where}.{key}"
    return f"{table}.{key}" if key.split(".")[0].split("[")[0] in in_table else key


def from_dict(cls: type, data: dict, where: str = "", *, table: str = "",
              in_table: frozenset[str] = frozenset()) -> Any:
    """Build the frozen dataclass ``cls`` from a plain dict, strictly: an unknown
    key, a value of the wrong type or out of range is a :class:`ConfigError`
    naming the key as ``where.key`` (``where``: the table, "" at the top level;
    top-level keys in ``in_table`` are named ``table.key``), the bad value and
    what is allowed."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    for k in sorted(unknown):
        if (cls, k) in _REMOVED_KEYS:
            raise ConfigError(f"{_key_path(where, k, table, in_table)}: {_REMOVED_KEYS[cls, k]}")
    if unknown:
        raise ConfigError(
            f"{where or cls.__name__}: unknown key(s) {', '.join(sorted(unknown))}; "
            f"allowed: {', '.join(sorted(names))}"
        )
    kwargs = {}
    for f in dataclasses.fields(cls):
        key = _key_path(where, f.name, table, in_table)
        if f.name in data:
            kwargs[f.name] = _convert(hints[f.name], data[f.name], key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{key}: required but missing")
    try:
        return cls(**kwargs)
    except _FieldError as exc:             # a range check in __post_init__: name the key as above
        raise ConfigError(f"{_key_path(where, exc.key, table, in_table)}: {exc.detail}") from None


def _load(path: str | Path, cls: type, section: str) -> Any:
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"config file {p} does not exist; copy examples/{section}.toml and edit it") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    head = raw.pop(section, {})
    if not isinstance(head, dict):
        raise ConfigError(f"{p}: {section} must be a table ([{section}]), got {head!r}")
    flat = dict(head)
    flat.update(raw)
    try:
        return from_dict(cls, flat, table=section, in_table=frozenset(set(head) - set(raw)))
    except ConfigError as exc:
        raise ConfigError(f"{p}: {exc}") from None


def load_node_config(path: str | Path) -> NodeConfig:
    """Node config: a ``[node]`` table (id, server, outbox_path, outbox_max_items;
    ``[node.position]``) plus the sections ``[audio]``, ``[timebase]``,
    ``[detector]``, ``[publisher]``, ``[gps]``, ``[security]``. Raises
    :class:`ConfigError` naming the file and the key for anything wrong."""
    return _load(path, NodeConfig, "node")


def load_server_config(path: str | Path) -> ServerConfig:
    """Server config: a ``[server]`` table plus ``[association]``, ``[solver]``,
    ``[incidents]``. Raises :class:`ConfigError` naming the file and the key for
    anything wrong."""
    return _load(path, ServerConfig, "server")
