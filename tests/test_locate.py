"""The offline locator: picks and WAVs through the server's pipeline."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from common.acoustics import speed_of_sound
from common.config import DetectorConfig
from common.geodesy import LocalFrame
from common.recording_set import RecordingSet, SetArrival, SetNode, write_set
from node.wav_source import write_wav
from server.locate import locate, locate_set, main, pick_events, timing_note

from conftest import shared_data

FRAME = LocalFrame(40.44, -79.99, 250.0)
T0 = 1_700_000_000 * 10**9


def _nodes_enu(n: int = 8, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.column_stack([rng.uniform(-500, 500, (n, 2)), rng.uniform(4, 8, n)])


def _set_nodes(enu: np.ndarray, **kw) -> list[SetNode]:
    lat, lon, alt = FRAME.to_wgs84(enu)
    return [SetNode(id=f"n{i}", lat=float(lat[i]), lon=float(lon[i]), alt=float(alt[i]), **kw.get(i, {}))
            for i in range(len(enu))]


def _picks(enu: np.ndarray, sources: list[tuple[np.ndarray, float]], c: float, rng, sigma=1e-4) -> list[SetArrival]:
    out = []
    for p, te in sources:
        for i, r in enumerate(enu):
            t = te + np.linalg.norm(r - p) / c + rng.normal(0, sigma)
            out.append(SetArrival(node=f"n{i}", t_utc_ns=T0 + int(round(t * 1e9))))
    return out


def _one_shot_set(n_nodes: int, node_seed: int, rng_seed: int) -> RecordingSet:
    """``n_nodes`` nodes' picks (0.1 ms noise) of one shot at (30, -20, 1.5) m, at 10 °C."""
    rng = np.random.default_rng(rng_seed)
    enu = _nodes_enu(n_nodes, seed=node_seed)
    return RecordingSet(path=None, temperature_c=10.0, nodes=tuple(_set_nodes(enu)),
                        arrivals=tuple(_picks(enu, [(np.array([30.0, -20.0, 1.5]), 1.0)], speed_of_sound(10.0), rng)))


def test_pick_events_drops_a_pulse_reported_twice():
    enu = _nodes_enu(4)
    rs = RecordingSet(path=None, temperature_c=15.0, nodes=tuple(_set_nodes(enu)),
                      arrivals=(SetArrival("n0", T0), SetArrival("n0", T0), SetArrival("n0", T0 + 300_000),
                                SetArrival("n0", T0 + 2_000_000), SetArrival("n1", T0)))
    evs = pick_events(rs)
    assert [(e.node_id, e.t_utc_ns - T0) for e in evs] == [("n0", 0), ("n1", 0), ("n0", 2_000_000)]
    assert [e.seq for e in evs] == [0, 1, 2]


def test_picks_mode_locates_rounds_among_echoes_and_stray_pulses():
    rng = np.random.default_rng(5)
    c = speed_of_sound(10.0)
    enu = _nodes_enu(10, seed=2)
    src = np.array([120.0, -60.0, 1.5])
    rounds = [(src, 1.0), (src, 1.6), (src, 2.3)]
    arrivals = _picks(enu, rounds, c, rng)
    for a in list(arrivals):                                   # an echo after a third of the arrivals
        if rng.random() < 0.3:
            arrivals.append(SetArrival(a.node, a.t_utc_ns + int(rng.uniform(0.03, 0.25) * 1e9)))
    for k in range(20):                                        # stray pulses
        arrivals.append(SetArrival(f"n{k % 10}", T0 + int(rng.uniform(0, 5) * 1e9)))
    rs = RecordingSet(path=None, temperature_c=10.0, nodes=tuple(_set_nodes(enu)),
                      arrivals=tuple(sorted(arrivals, key=lambda a: a.t_utc_ns)))
    reports = locate_set(rs, "picks")
    assert len(reports) == 3
    for r, (p, te) in zip(reports, rounds):
        xy = FRAME.to_enu(r.lat, r.lon, 0.0)[:2]
        assert np.linalg.norm(xy - p[:2]) < 1.0
        assert abs((r.t_utc_ns - T0) / 1e9 - te) < 0.005
        assert np.linalg.norm(xy - p[:2]) <= r.error_m
    assert len({r.incident for r in reports}) == 1 and [r.round for r in reports] == [1, 2, 3]


def test_audio_mode_at_12_khz_with_digital_silence_padding(tmp_path):
    """Six 12 kHz recordings (as exported: padded with exact zeros) of two
    gunshots in a simulated town, through the node detector and the server."""
    from sim.render import NodeRenderer
    from sim.world import make_scenario, make_town

    fs = 12_000
    town = make_town(6, 800.0, seed=3)
    scen = make_scenario(town, 2, seed=3, burst=False, local_sounds=False, gap_s=(1.0, 1.5))
    lat, lon, alt = town.node_wgs84()
    nodes = []
    pad = int(0.7 * fs)
    for i in range(town.n_nodes):
        x = NodeRenderer(scen, town, i, fs, seed=3).render_all()
        x = np.concatenate([np.zeros(pad), x, np.zeros(pad)])
        path = tmp_path / f"{town.node_ids[i]}.wav"
        write_wav(path, x, fs)
        nodes.append(SetNode(id=town.node_ids[i], lat=float(lat[i]), lon=float(lon[i]), alt=float(alt[i]),
                             wav=path, start_utc_ns=scen.start_utc_ns - int(pad / fs * 1e9)))
    rs = RecordingSet(path=None, temperature_c=scen.temperature_c, nodes=tuple(nodes))
    reports = locate_set(rs, "audio", workers=1)
    gun = [t for t in scen.truth if t.kind == "gunshot"]
    assert len(reports) == len(gun) == 2
    for r, t in zip(reports, gun):
        xy = town.frame.to_enu(r.lat, r.lon, 0.0)[:2]
        assert np.linalg.norm(xy - np.array(t.pos_enu[:2])) < 3.0
        assert abs(r.t_utc_ns - t.t_emit_utc_ns) < 5_000_000


def test_pittsburgh_picks_one_test():
    """ShotSpotter's Pittsburgh test 022 (FP2, one round, ~16 pulses): located
    within 15 m of the survey, nothing else."""
    from benchmarks.scoring import score_test
    from server.import_shotspotter import load_test

    folder = shared_data("pittsburgh", "PittsburghPA_DQV_2018-12-18", "FP2", "test_022")
    t = load_test(folder, mode="picks")
    import dataclasses

    blind = dataclasses.replace(t.recording_set, truth=())
    reports = locate_set(blind, "picks")
    s = score_test(t.recording_set.truth, reports)
    assert s.located == 1 and s.false_shots == 0 and s.extra_shots == 0
    assert s.errors_m[0] < 15.0


def test_audio_mode_needs_wavs():
    from common.recording_set import RecordingSetError

    rs = RecordingSet(path=None, temperature_c=None, nodes=tuple(_set_nodes(_nodes_enu(4))))
    with pytest.raises(RecordingSetError, match="no node has a wav"):
        locate_set(rs, "audio")


def test_a_network_with_worse_timing_than_assumed_is_told():
    """Picks 4 ms off (node positions metres off): the shots are still located
    (ten nodes, plenty of spare arrivals), and the result says what model
    timing error they showed, so the operator can set --model-sigma-ms; with
    0.1 ms picks there is nothing to tell."""
    rng = np.random.default_rng(3)
    c = speed_of_sound(10.0)
    enu = _nodes_enu(10, seed=2)
    rounds = [(np.array([rng.uniform(-300, 300), rng.uniform(-300, 300), 1.5]), 1.0 + 2.5 * k) for k in range(5)]
    nodes = tuple(_set_nodes(enu))
    noisy = RecordingSet(path=None, temperature_c=10.0, nodes=nodes,
                         arrivals=tuple(sorted(_picks(enu, rounds, c, rng, sigma=4e-3), key=lambda a: a.t_utc_ns)))
    result = locate(noisy, "picks")
    assert len(result.reports) == 5 and result.model_sigma_s == 5e-4
    assert 2.5e-3 < result.learnt_model_sigma_s < 6e-3
    note = timing_note(result)
    assert note and f"--model-sigma-ms {result.learnt_model_sigma_s * 1e3:.1f}" in note
    clean = RecordingSet(path=None, temperature_c=10.0, nodes=nodes,
                         arrivals=tuple(sorted(_picks(enu, rounds, c, rng), key=lambda a: a.t_utc_ns)))
    result = locate(clean, "picks")
    assert len(result.reports) == 5 and timing_note(result) is None


def test_locate_command_prints_json_lines_and_the_timing_note(tmp_path, capsys):
    """`earwitness locate DIR --json`: one JSON line per round on stdout, the
    timing note on stderr; a missing set is a clear error with exit status 2."""
    import json

    _json_set(tmp_path)
    assert main([str(tmp_path / "set"), "--json"]) == 0
    out, err = capsys.readouterr()
    lines = [json.loads(x) for x in out.splitlines()]
    assert len(lines) == 5 and {"lat", "lon", "error_m", "residual_ms"} <= lines[0].keys()
    assert "--model-sigma-ms" in err
    assert main([str(tmp_path / "set"), "--json", "--model-sigma-ms", "4"]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 5 and "--model-sigma-ms" not in err
    assert main([str(tmp_path / "nowhere")]) == 2
    assert "earwitness locate:" in capsys.readouterr().err
    # out-of-range options are told by their own names, not the config field's
    for opt, value, says in (("--max-chance", "inf", "must be a finite number > 0"),
                             ("--max-chance", "0", "must be a finite number > 0"),
                             ("--model-sigma-ms", "nan", "must be a finite number of ms, >= 0"),
                             ("--model-sigma-ms", "-1", "must be a finite number of ms, >= 0")):
        assert main([str(tmp_path / "set"), opt, value]) == 2
        err = capsys.readouterr().err
        assert f"earwitness locate: {opt} {float(value)}: {says}" in err and "Config." not in err


def test_a_network_too_small_to_check_its_timing_is_told_so():
    """Four nodes, one shot: no spare arrivals to measure the network's timing
    error with, so the note says the assumption could not be checked."""
    result = locate(_one_shot_set(4, node_seed=2, rng_seed=6), "picks")
    assert result.learnt_model_sigma_s is None
    note = timing_note(result)
    assert note and "could not be checked" in note and "--model-sigma-ms" in note and "7.0 ms" in note
    # it says why: no shot of four nodes can have three arrivals beyond x, y, t0 and the height
    assert result.teaching_arrivals == 7 and result.nodes_analysed == 4
    assert "at least 7 nodes" in note and "only 4 of this set's nodes" in note
    # at a street network's σ already, the note does not point at that σ again
    note = timing_note(dataclasses.replace(result, model_sigma_s=7e-3))
    assert note and "could not be checked" in note and "Pittsburgh" not in note


def test_a_network_that_could_check_its_timing_but_had_too_few_shots_is_told_so():
    """Eight nodes but one shot: the network could teach its timing error, one
    shot is too few, and the note says so (not that the network is too small)."""
    result = locate(_one_shot_set(8, node_seed=3, rng_seed=7), "picks")
    assert len(result.reports) == 1 and result.learnt_model_sigma_s is None and result.nodes_analysed == 8
    note = timing_note(result)
    assert note and "1 located shot(s) were heard by at least 7 nodes" in note and "3 are needed" in note


def test_a_nodes_position_uncertainty_weighs_its_arrivals_and_widens_the_radius():
    """Nodes whose positions may be 3 m off: the shot is still located (their
    arrivals still count), and its reported radius grows accordingly."""
    rng = np.random.default_rng(3)
    c = speed_of_sound(15.0)
    enu = _nodes_enu(8, seed=4)
    src = np.array([60.0, 40.0, 1.5])
    arrivals = tuple(_picks(enu, [(src, 1.0)], c, rng))

    def run(sigma_m):
        nodes = tuple(dataclasses.replace(n, position_sigma_m=sigma_m) for n in _set_nodes(enu))
        return locate(RecordingSet(path=None, temperature_c=15.0, nodes=nodes, arrivals=arrivals), "picks")

    exact, unsure = run(None), run(3.0)
    assert len(exact.reports) == len(unsure.reports) == 1
    (a,), (b,) = exact.reports, unsure.reports
    for r in (a, b):
        assert np.linalg.norm(FRAME.to_enu(r.lat, r.lon, 0.0)[:2] - src[:2]) < 1.0
    assert len(b.nodes) == 8
    # 3 m along the ray is ~8.7 ms against 2 ms picks: the radius scales with it
    assert b.error_m > 3.0 * a.error_m


def test_locate_lists_candidates_for_review_on_request(tmp_path, capsys):
    """Four nodes, one shot: too little to vouch for a shot, so none is located;
    `--review` lists the line-up as candidate 1 where the shot was (JSON: a
    "candidate" line), and without it stderr says there is one to see."""
    import json

    src = np.array([30.0, -20.0, 1.5])                  # where _one_shot_set's shot is
    write_set(tmp_path / "set", _one_shot_set(4, node_seed=2, rng_seed=6))
    assert main([str(tmp_path / "set"), "--json"]) == 0
    out, err = capsys.readouterr()
    assert out == "" and "1 unconfirmed candidate(s) for review: see them with --review" in err
    assert main([str(tmp_path / "set"), "--json", "--review"]) == 0
    (line,) = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert line["candidate"] == 1 and len(line["nodes"]) == 4 and 1e-4 < line["chance"] <= 0.1
    xy = FRAME.to_enu(line["lat"], line["lon"], 0.0)[:2]
    assert np.hypot(*(xy - src[:2])) < 5.0
    assert main([str(tmp_path / "set"), "--review"]) == 0
    out = capsys.readouterr().out
    assert "unconfirmed candidates for review" in out and out.count("n0") == 1
    assert main([str(tmp_path / "set"), "--review", "--plot", str(tmp_path / "map.png")]) == 0
    assert (tmp_path / "map.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "map written to" in capsys.readouterr().err


def test_locate_tells_of_a_node_that_hears_every_shot_late(tmp_path, capsys):
    """Eight shots from eight places; node n3's picks are all 5 ms late (its
    clock). The shots are located; stderr names n3, once, and no other node.
    With 1 ms picks its arrivals stay in the shots, and the fits take up part
    of its offset: what is reported is what is left (a lower bound)."""
    rng = np.random.default_rng(8)
    c = speed_of_sound(10.0)
    enu = _nodes_enu(9, seed=3)
    rounds = [(np.array([rng.uniform(-300, 300), rng.uniform(-300, 300), 1.5]), 1.0 + 10.0 * k) for k in range(8)]
    arrivals = [dataclasses.replace(a, t_utc_ns=a.t_utc_ns + (5_000_000 if a.node == "n3" else 0))
                for a in _picks(enu, rounds, c, rng)]
    rs = RecordingSet(path=None, temperature_c=10.0, nodes=tuple(_set_nodes(enu)),
                      arrivals=tuple(sorted(arrivals, key=lambda a: a.t_utc_ns)))
    result = locate(rs, "picks")
    assert len(result.reports) == 8
    (off,) = result.nodes_off
    assert off.node_id == "n3" and 2.5 < off.median_ms <= 5.5
    write_set(tmp_path / "set", rs)
    assert main([str(tmp_path / "set")]) == 0
    err = capsys.readouterr().err
    assert err.count("hears shots") == 1 and "note: node n3 hears shots" in err and "late" in err


def _json_set(tmp_path):
    """Five rounds picked at 10 nodes with 4 ms of timing error (more than the default model's 0.5 ms)."""
    rng = np.random.default_rng(4)
    c = speed_of_sound(10.0)
    enu = _nodes_enu(10, seed=2)
    rounds = [(np.array([rng.uniform(-300, 300), rng.uniform(-300, 300), 1.5]), 1.0 + 2.5 * k) for k in range(5)]
    rs = RecordingSet(path=None, temperature_c=10.0, nodes=tuple(_set_nodes(enu)),
                      arrivals=tuple(sorted(_picks(enu, rounds, c, rng, sigma=4e-3), key=lambda a: a.t_utc_ns)))
    write_set(tmp_path / "set", rs)
    return tmp_path / "set"


def test_locate_replays_with_a_servers_config(tmp_path, capsys):
    """`--server-config`: the server's association and solver settings are the
    replay's; its database, sockets and keys are not touched."""
    import json

    path = _json_set(tmp_path)
    cfg = tmp_path / "server.toml"
    db = tmp_path / "not-created" / "earwitness.sqlite"
    cfg.write_text(f'[server]\ndatabase = "{db}"\nkeys_dir = "{tmp_path / "no-keys"}"\n'
                   '[solver]\nmodel_sigma_s = 0.004\n')
    assert main([str(path), "--json", "--server-config", str(cfg)]) == 0
    out, err = capsys.readouterr()
    assert len([json.loads(x) for x in out.splitlines()]) == 5
    assert "--model-sigma-ms" not in err                # the config's 4 ms, not the default 0.5 ms
    assert not db.parent.exists()
    # a server that needs more nodes than the set has locates nothing
    cfg.write_text('[association]\nmin_nodes = 11\n')
    assert main([str(path), "--json", "--server-config", str(cfg)]) == 0
    assert capsys.readouterr().out == ""
    # the command line still wins over the config
    cfg.write_text('[solver]\nmodel_sigma_s = 0.0001\n')
    assert main([str(path), "--json", "--server-config", str(cfg), "--model-sigma-ms", "4"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 5


def test_locate_detects_with_a_nodes_detector_settings(tmp_path, capsys):
    """`--node-config`: the WAVs go through the detector as that node has it set."""
    from sim.render import NodeRenderer
    from sim.world import make_scenario, make_town

    fs = 12_000
    town = make_town(6, 800.0, seed=3)
    scen = make_scenario(town, 2, seed=3, burst=False, local_sounds=False, gap_s=(1.0, 1.5))
    lat, lon, alt = town.node_wgs84()
    nodes = []
    for i in range(town.n_nodes):
        path = tmp_path / f"{town.node_ids[i]}.wav"
        write_wav(path, NodeRenderer(scen, town, i, fs, seed=3).render_all(), fs)
        nodes.append(SetNode(id=town.node_ids[i], lat=float(lat[i]), lon=float(lon[i]), alt=float(alt[i]),
                             wav=path, start_utc_ns=scen.start_utc_ns))
    write_set(tmp_path / "set", RecordingSet(path=None, temperature_c=scen.temperature_c, nodes=tuple(nodes)))
    node_toml = tmp_path / "node.toml"
    node_toml.write_text('[node]\nid = "node-01"\n')
    assert main([str(tmp_path / "set"), "--json", "--node-config", str(node_toml)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    # a node whose detector ignores everything below full scale hears nothing
    node_toml.write_text('[node]\nid = "node-01"\n[detector]\nmin_level_dbfs = 0.0\n')
    assert main([str(tmp_path / "set"), "--json", "--node-config", str(node_toml)]) == 0
    assert capsys.readouterr().out == ""
    # nodes that recorded with such settings (set.json says so) are replayed with them ...
    deaf = tuple(dataclasses.replace(n, detector=DetectorConfig(min_level_dbfs=0.0)) for n in nodes)
    write_set(tmp_path / "deaf", RecordingSet(path=None, temperature_c=scen.temperature_c, nodes=deaf))
    assert main([str(tmp_path / "deaf"), "--json"]) == 0
    assert capsys.readouterr().out == ""
    # ... unless --node-config says otherwise
    node_toml.write_text('[node]\nid = "node-01"\n')
    assert main([str(tmp_path / "deaf"), "--json", "--node-config", str(node_toml)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_locate_says_what_is_wrong_with_a_config(tmp_path, capsys):
    path = _json_set(tmp_path)
    assert main([str(path), "--server-config", str(tmp_path / "missing.toml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text('[association]\nmin_nodez = 5\n')
    assert main([str(path), "--server-config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "earwitness locate:" in err and "min_nodez" in err
    bad.write_text('[detector]\ntrigger_ratio = 5\n')          # a node config needs its id
    assert main([str(path), "--node-config", str(bad)]) == 2
    assert "id" in capsys.readouterr().err


def test_the_map_draws_the_nodes_that_gave_nothing_apart(tmp_path):
    """A set's nodes without audio (audio mode) are drawn hollow and grey, with
    their own legend entry; a flag list that does not match the nodes is refused."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from server.plot import MapShot, draw_map

    xy = np.array([[0.0, 0.0], [100.0, 0.0], [0.0, 100.0]])
    shots = [MapShot((20.0, 30.0), 5.0, 1, "1.1")]
    saved = {}
    real_close = plt.close

    def keep_legend(fig=None):
        fig = fig if fig is not None else plt.gcf()
        saved["labels"] = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
        real_close(fig)

    plt.close = keep_legend
    try:
        draw_map(tmp_path / "a.png", xy, ["a", "b", "c"], shots, analysed=[True, False, True])
        assert "nodes not analysed" in saved["labels"] and (tmp_path / "a.png").stat().st_size > 0
        draw_map(tmp_path / "b.png", xy, ["a", "b", "c"], shots)
        assert "nodes not analysed" not in saved["labels"]
    finally:
        plt.close = real_close
    with pytest.raises(ValueError, match="2 flags for 3 nodes"):
        draw_map(tmp_path / "c.png", xy, ["a", "b", "c"], shots, analysed=[True, False])
