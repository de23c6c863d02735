"""Out-of-range config values are errors naming the file, the table.key, the bad
value and what is allowed (common/config.py); the values that mean "off" pass;
configs built in code are checked too; every config the project ships loads."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import zmq

from common.config import (AudioConfig, ConfigError, DetectorConfig, NodeConfig, Position, PublisherConfig,
                           ServerConfig, from_dict, load_node_config, load_server_config)
from common.protocol import NODE_ID_RE

PROJECT = Path(__file__).resolve().parents[1]
KEY = zmq.curve_keypair()[0].decode()          # a valid Z85 CURVE key


def _node_toml(tmp_path: Path, text: str, node: str = "") -> Path:
    """A node config: ``[node]`` with id n1 (unless ``node`` gives one) and the
    ``node`` lines, then ``text``."""
    p = tmp_path / "node.toml"
    head = node if node.startswith("id =") else f'id = "n1"\n{node}'
    p.write_text(f"[node]\n{head}\n{text}\n", encoding="utf-8")
    return p


def _server_toml(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "server.toml"
    p.write_text(text + "\n", encoding="utf-8")
    return p


def _error(load, path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: "), msg                   # names the file
    return msg


# (extra [node] lines, other tables, the key, the bad value as shown, what is allowed)
NODE_CASES = [
    ('id = "bad id!"', "", "node.id", "'bad id!'", "letters, digits"),
    ("", "[audio]\nsample_rate = -5", "audio.sample_rate", "-5", "> 0"),
    ("", "[audio]\nchannels = 0", "audio.channels", "0", ">= 1"),
    ("", "[audio]\nchannels = 2\nmic_channel = 2", "audio.mic_channel", "2", "< 2"),
    ("", "[audio]\nmic_channel = -1", "audio.mic_channel", "-1", ">= 0"),
    ("", "[audio]\nblocksize = -480", "audio.blocksize", "-480", ">= 0"),
    ("", "[audio]\nqueue_blocks = 0", "audio.queue_blocks", "0", ">= 1"),
    ("", '[audio]\nwav_start_utc = "yesterday"', "audio.wav_start_utc", "'yesterday'", "ISO-8601"),
    ("", "[node.position]\nlat = 95.0\nlon = 0.0", "node.position.lat", "95.0", "in [-90, 90]"),
    ("", "[node.position]\nlat = 40.4\nlon = -279.9", "node.position.lon", "-279.9", "in [-180, 180]"),
    ("", "[node.position]\nlat = nan\nlon = 0.0", "node.position.lat", "nan", "finite"),
    ("", "[timebase]\nfit_window_s = 0.0", "timebase.fit_window_s", "0.0", "> 0"),
    ("", "[timebase]\npps_channel = -1", "timebase.pps_channel", "-1", ">= 0"),
    ("", "[detector]\nband_hz = [5000.0, 300.0]", "detector.band_hz", "[5000.0, 300.0]", "0 < low < high"),
    ("", "[detector]\nsta_s = 0.0", "detector.sta_s", "0.0", "> 0"),
    ("", "[detector]\nlta_s = 0.001", "detector.lta_s", "0.001", "longer than sta_s"),
    ("", "[detector]\ntrigger_ratio = 0.5", "detector.trigger_ratio", "0.5", "> 1"),
    ("", "[detector]\nrelease_ratio = 20.0", "detector.release_ratio", "20.0", "< 12"),
    ("", "[detector]\nsnippet_post_s = 0.0", "detector.snippet_post_s", "0.0", "> 0"),
    ("", "[detector]\nmin_level_dbfs = 70.0", "detector.min_level_dbfs", "70.0", "<= 0"),
    ("", "[detector]\nlookback_s = -0.01", "detector.lookback_s", "-0.01", ">= 0"),
    ("", "[detector]\nrefractory_s = inf", "detector.refractory_s", "inf", "finite"),
    ("", "[audio]\nsample_rate = 400", "detector.band_hz", "[300.0, 5000.0]", "below 0.45"),
    ("", "[detector]\nsnippet_post_s = 2.0", "detector.snippet_post_s", "96240 samples", "1 to 48000"),
    ("", "[publisher]\nheartbeat_s = 0.0", "publisher.heartbeat_s", "0.0", "> 0"),
    ("", "[publisher]\nresend_s = -1.0", "publisher.resend_s", "-1.0", "> 0"),
    ("", "[publisher]\nstatus_s = -60.0", "publisher.status_s", "-60.0", ">= 0"),
    ("", "[publisher]\nlink_ping_s = 0.0", "publisher.link_ping_s", "0.0", "> 0"),
    ("", "[gps]\nport = 70000", "gps.port", "70000", "in [1, 65535]"),
    ("", "[gps]\nmove_alert_m = 0.0", "gps.move_alert_m", "0.0", "> 0"),
    ("", "[gps]\nsurvey_s = -1.0", "gps.survey_s", "-1.0", ">= 0"),
    ('server = "localhost:5555"', "", "node.server", "'localhost:5555'", "tcp://HOST:PORT"),
    ('server = "tcp://10.0.0.1:99999"', "", "node.server", "'tcp://10.0.0.1:99999'", "[1, 65535]"),
    ("outbox_max_items = 0", "", "node.outbox_max_items", "0", ">= 1"),
    ("", f'[security]\nserver_public_key = "{KEY[:-1]}"', "security.server_public_key", repr(KEY[:-1]),
     "40-character Z85"),
    ("", '[audio]\nchannels = 2\n[timebase]\nmode = "pps-audio"\npps_channel = 0',
     "timebase.pps_channel", "0", "own input channels"),
]


@pytest.mark.parametrize("node, text, key, shown, allowed", NODE_CASES, ids=[c[2] + ":" + c[3] for c in NODE_CASES])
def test_an_out_of_range_node_value_is_an_error_naming_file_key_value_and_range(tmp_path, node, text, key, shown,
                                                                                allowed):
    msg = _error(load_node_config, _node_toml(tmp_path, text, node))
    assert f": {key}: " in msg and shown in msg and allowed in msg, msg


SERVER_CASES = [
    ("[association]\nmin_nodes = 2", "association.min_nodes", "2", ">= 3"),
    ("[association]\nmin_fraction = 1.5", "association.min_fraction", "1.5", "in [0, 1]"),
    ("[association]\nhearing_range_m = 0.0", "association.hearing_range_m", "0.0", "> 0"),
    ("[association]\nmax_chance = 0.0", "association.max_chance", "0.0", "> 0"),
    ("[association]\nreview_max_chance = -0.1", "association.review_max_chance", "-0.1", ">= 0"),
    ("[association]\ngrid_step_m = 0.0", "association.grid_step_m", "0.0", "> 0"),
    ("[association]\nstale_node_s = -5.0", "association.stale_node_s", "-5.0", ">= 0"),
    ("[solver]\nheight_sigma_m = 0.0", "solver.height_sigma_m", "0.0", "> 0"),
    ("[solver]\nmodel_sigma_s = -0.001", "solver.model_sigma_s", "-0.001", ">= 0"),
    ("[solver]\nwind_sigma_mps = 0.0", "solver.wind_sigma_mps", "0.0", "> 0"),
    ("[solver]\nwind_max_age_s = -1.0", "solver.wind_max_age_s", "-1.0", ">= 0"),
    ("[solver]\nfit_speed_min_nodes = -1", "solver.fit_speed_min_nodes", "-1", ">= 0"),
    ("[incidents]\ngap_s = -1.0", "incidents.gap_s", "-1.0", ">= 0"),
    ("[server]\ntemperature_c = 150.0", "server.temperature_c", "150.0", "in [-60, 70]"),
    ("[server]\nmax_clock_skew_s = -1.0", "server.max_clock_skew_s", "-1.0", ">= 0"),
    ('[server]\nbind = "tcp://0.0.0.0:70000"', "server.bind", "'tcp://0.0.0.0:70000'", "[1, 65535]"),
    ('[server]\npublish = "5556"', "server.publish", "'5556'", "tcp://HOST:PORT"),
    ('[server]\nexpected_nodes = ["north-01", "north 02"]', "server.expected_nodes[1]", "'north 02'",
     "letters, digits"),
]


@pytest.mark.parametrize("text, key, shown, allowed", SERVER_CASES, ids=[c[1] + ":" + c[2] for c in SERVER_CASES])
def test_an_out_of_range_server_value_is_an_error_naming_file_key_value_and_range(tmp_path, text, key, shown,
                                                                                  allowed):
    msg = _error(load_server_config, _server_toml(tmp_path, text))
    assert f": {key}: " in msg and shown in msg and allowed in msg, msg


def test_node_ids_follow_the_protocols_rule(tmp_path):
    """The loader accepts exactly the ids the protocol does: a node whose id
    passed the loader must not be refused by its first heartbeat."""
    p = tmp_path / "node.toml"
    for good in ("n1", "north-01", "pole_7.b", "A" * 64):
        assert NODE_ID_RE.match(good)
        p.write_text(f'[node]\nid = "{good}"\n', encoding="utf-8")
        assert load_node_config(p).id == good
    for bad in ("", "-n1", ".hidden", "a/b", "bad id!", "A" * 65, "nød"):
        assert not NODE_ID_RE.match(bad)
        p.write_text(f'[node]\nid = "{bad}"\n', encoding="utf-8")
        assert ": node.id: " in _error(load_node_config, p)


@pytest.mark.parametrize("node, text", [
    ("", "[detector]\nlookback_s = 0.0\nrefractory_s = 0.0\nsnippet_pre_s = 0.0\nmin_level_dbfs = 0.0"),
    ("", "[publisher]\nstatus_s = 0.0\nactive_s = 0.0"),
    ("", "[audio]\nblocksize = 0"),
    ("", "[gps]\nsurvey_s = 0.0\nenabled = false"),
    ("", "[timebase]\nlatency_s = -0.002"),
    ("", '[audio]\nsource = "wav"\nwav_path = "x.wav"\nmic_channel = 1\nsample_rate = 400'),
    ("", "[node.position]\nlat = -90.0\nlon = 180.0\nalt = -30.0"),
    ('server = "tcp://[::1]:5555"', ""),
])
def test_values_that_mean_off_or_are_merely_unusual_load(tmp_path, node, text):
    """0 means "off" / "every time" / "PortAudio chooses" where the field's
    comment says so; a WAV replay's channels and rate are the file's own (the
    node checks mic_channel against it when it opens the file)."""
    load_node_config(_node_toml(tmp_path, text, node))


def test_server_values_that_mean_off_load(tmp_path):
    cfg = load_server_config(_server_toml(tmp_path, "\n".join([
        "[server]", "max_clock_skew_s = 0.0", "temperature_c = -40.0", 'bind = "tcp://*:5555"',
        'publish = "tcp://127.0.0.1:0"',
        "[association]", "review_max_chance = 0.0", "extend_tolerance_s = 0.0", "stale_node_s = 0.0",
        "tolerance_s = 0.0", "latency_s = 0.0", "margin_m = 0.0", "min_fraction = 0.0",
        "[solver]", "fit_speed_min_nodes = 0", "fit_wind_min_nodes = 0", "unfitted_wind_mps = 0.0",
        "model_sigma_s = 0.0", "wind_max_age_s = 0.0",
        "[incidents]", "gap_s = 0.0", "radius_m = 0.0"])))
    assert cfg.association.review_max_chance == 0.0 and cfg.solver.fit_speed_min_nodes == 0
    assert cfg.solver.wind_max_age_s == 0.0


def test_configs_built_in_code_are_checked_too():
    with pytest.raises(ConfigError, match=r"^AudioConfig\.channels: 0 is out of range; it must be >= 1"):
        AudioConfig(channels=0)
    with pytest.raises(ConfigError, match=r"^Position\.lon: 200"):
        Position(40.0, 200.0)
    with pytest.raises(ConfigError, match=r"^ServerConfig\.temperature_c: 200"):
        dataclasses.replace(ServerConfig(), temperature_c=200.0)
    with pytest.raises(ConfigError, match=r"^NodeConfig\.id: 'a b'"):
        NodeConfig(id="a b")
    with pytest.raises(ConfigError, match=r"^DetectorConfig\.band_hz"):
        DetectorConfig(band_hz=(0.0, 4000.0))
    with pytest.raises(ConfigError, match=r"^PublisherConfig\.resend_s: nan is not a finite number"):
        PublisherConfig(resend_s=float("nan"))
    # from_dict names the key with its table, as the loader's type errors do
    with pytest.raises(ConfigError, match=r"^audio\.channels: 0 is out of range"):
        from_dict(NodeConfig, {"id": "n1", "audio": {"channels": 0}})


def test_a_secret_key_is_never_echoed(tmp_path):
    secret = "not-a-key-but-secret"
    msg = _error(load_node_config, _node_toml(tmp_path, f'[security]\nsecret_key = "{secret}"'))
    assert ": security.secret_key: " in msg and "20-character" in msg and secret not in msg
    cfg = load_node_config(_node_toml(tmp_path, f'[security]\nserver_public_key = "{KEY}"\n'
                                                f'public_key = "{KEY}"\nsecret_key = "{KEY}"'))
    assert cfg.security.secret_key == KEY


def test_max_unacked_was_removed_and_says_what_to_use(tmp_path):
    msg = _error(load_node_config, _node_toml(tmp_path, "[publisher]\nmax_unacked = 100000"))
    assert ": publisher.max_unacked: was removed" in msg and "outbox_max_items" in msg
    assert "max_unacked" not in {f.name for f in dataclasses.fields(PublisherConfig)}
    msg = _error(load_node_config, _node_toml(tmp_path, "[publisher]\nmax_unackd = 1"))
    assert "unknown key(s) max_unackd" in msg                  # other unknown keys: as before


def test_a_section_that_is_not_a_table_is_an_error(tmp_path):
    msg = _error(load_node_config, _server_toml(tmp_path, 'node = "n1"'))
    assert "node must be a table" in msg


def test_every_shipped_example_loads():
    paths = sorted((PROJECT / "examples").glob("*.toml"))
    assert {p.stem for p in paths} >= {"node", "server"}
    for p in paths:
        (load_node_config if p.stem.startswith("node") else load_server_config)(p)
        assert "max_unacked" not in p.read_text(encoding="utf-8")


def _doc_toml_blocks() -> list[tuple[str, str]]:
    out = []
    for doc in [PROJECT / "README.md", *sorted((PROJECT / "docs").glob("*.md"))]:
        for block in re.findall(r"```toml\n(.*?)```", doc.read_text(encoding="utf-8"), flags=re.S):
            out.append((doc.name, block))
    return out


def test_every_config_in_the_docs_loads(tmp_path):
    """The TOML the docs show (placeholder keys "…" filled in) is a valid config."""
    blocks = _doc_toml_blocks()
    assert len(blocks) >= 3
    for i, (name, block) in enumerate(blocks):
        p = tmp_path / f"{i}.toml"
        p.write_text(block.replace('"…"', f'"{KEY}"'), encoding="utf-8")
        if re.search(r"^\[node\]", block, flags=re.M):
            load_node_config(p)
        elif re.search(r"^\[server\]", block, flags=re.M):
            load_server_config(p)
        else:
            pytest.fail(f"{name}: a TOML block that is neither a node nor a server config:\n{block}")
