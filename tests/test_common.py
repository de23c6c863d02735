"""Geodesy, acoustics, time formats and config loading."""

from __future__ import annotations

import numpy as np
import pytest

from common.acoustics import air_absorption_db_per_m, speed_of_sound
from common.config import ConfigError, NodeConfig, ServerConfig, from_dict, load_node_config, load_server_config
from common.geodesy import LocalFrame
from common.timefmt import iso_to_ns, ns_to_iso
from tests.conftest import PROJECT


def test_enu_round_trip_and_scale():
    f = LocalFrame(40.4406, -79.9959, 250.0)
    enu = f.to_enu([40.4406, 40.4496, 40.4406], [-79.9959, -79.9959, -79.9841], [250.0, 250.0, 250.0])
    assert np.allclose(enu[0], 0, atol=1e-6)
    assert abs(enu[1, 1] - 999.6) < 1.0          # 0.009° of latitude ≈ 1 km north
    assert abs(enu[2, 0] - 1000.0) < 5.0         # 0.0118° of longitude at 40.44° ≈ 1 km east
    lat, lon, alt = f.to_wgs84(enu)
    assert np.allclose(lat, [40.4406, 40.4496, 40.4406], atol=1e-10)
    assert np.allclose(alt, 250.0, atol=1e-6)


def test_speed_of_sound():
    assert abs(speed_of_sound(20.0, 0.0) - 343.2) < 0.1
    assert abs(speed_of_sound(0.0, 0.0) - 331.3) < 1e-9
    assert speed_of_sound(None) == speed_of_sound(15.0)
    with pytest.raises(ValueError, match="units"):
        speed_of_sound(300.0)


def test_air_absorption_matches_iso_9613_table():
    # ISO 9613-1 at 20 °C, 50 % RH: 1 kHz ≈ 4.7 dB/km, 4 kHz ≈ 29 dB/km
    a = air_absorption_db_per_m(np.array([1000.0, 4000.0]), 20.0, 50.0)
    assert abs(a[0] * 1000 - 4.7) < 0.5 and abs(a[1] * 1000 - 29.0) < 3.0


def test_iso_times():
    t = iso_to_ns("2018-12-19T00:49:26.000123456Z")
    assert ns_to_iso(t, 9) == "2018-12-19T00:49:26.000123456Z"
    assert iso_to_ns("2018-12-19T01:49:26+01:00") == iso_to_ns("2018-12-19T00:49:26Z")
    with pytest.raises(ValueError, match="ISO-8601"):
        iso_to_ns("yesterday")


def test_config_is_strict_and_frozen():
    cfg = from_dict(NodeConfig, {"id": "n1", "detector": {"band_hz": [200, 4000]}})
    assert cfg.detector.band_hz == (200.0, 4000.0)
    with pytest.raises(Exception):
        cfg.id = "other"
    with pytest.raises(ConfigError, match="unknown key"):
        from_dict(NodeConfig, {"id": "n1", "audio": {"rate": 1}})
    with pytest.raises(ConfigError, match="expected a number"):
        from_dict(ServerConfig, {"temperature_c": "warm"})
    with pytest.raises(ConfigError, match="required"):
        from_dict(NodeConfig, {})


def test_example_configs_load(tmp_path):
    node = load_node_config(PROJECT / "examples" / "node.toml")
    assert node.id and node.audio.sample_rate == 48_000
    server = load_server_config(PROJECT / "examples" / "server.toml")
    assert server.bind.startswith("tcp://")
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nbind = 5\n")
    with pytest.raises(ConfigError, match="bad.toml"):
        load_server_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_server_config(tmp_path / "missing.toml")
