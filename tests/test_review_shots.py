"""A shot's published JSON names the shot (``"shot"``: the store's id), so an
analyst can give `earwitness review shot ID` the right id; `review list --shots`
lists the shots (server/reports.py, server/review.py, docs/protocol.md §6)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from common.config import ServerConfig
from server.engine import Engine
from server.reports import ShotReport
from server.review import main
from server.store import Store
from tests.test_store import T0, node_grid, shot_events


def _db_with_a_burst_and_a_shot(tmp_path) -> tuple[str, list[ShotReport]]:
    """Three rounds of one burst (incident 1, shots 1-3), then one shot 60 s
    later at another place (incident 2, shot 4): shot ids and incident ids differ."""
    path = tmp_path / "db.sqlite"
    st = Store(path)
    eng = Engine(ServerConfig(database=str(path), temperature_c=20.0, allow_plaintext=True), st)
    nodes = node_grid(6)
    seqs: dict[str, int] = {}
    burst = [shot_events(nodes, np.array([150.0, 100.0, 1.5]), T0 + k * 500_000_000, seqs) for k in range(3)]
    later = shot_events(nodes, np.array([500.0, 300.0, 1.5]), T0 + 60 * 10**9, seqs)
    eng.ingest_batch(sorted(sum(burst, []) + later, key=lambda e: e.t_utc_ns))
    reports = eng.finish()
    st.close()
    return str(path), reports


def test_published_shot_json_carries_the_shot_id_not_only_the_incident(tmp_path):
    _, reports = _db_with_a_burst_and_a_shot(tmp_path)
    docs = [r.to_json() for r in reports]
    assert [(d["shot"], d["incident"], d["round"]) for d in docs] == [(1, 1, 1), (2, 1, 2), (3, 1, 3), (4, 2, 1)]
    assert all(d["shot"] == r.shot_id for d, r in zip(docs, reports))
    assert list(docs[0])[:3] == ["shot", "incident", "round"]
    # `earwitness locate` keeps no database: no id, and its JSON has no "shot" key
    assert "shot" not in dataclasses.replace(reports[0], shot_id=None).to_json()


def test_review_shot_takes_the_published_id(tmp_path, capsys):
    """The verdict lands on the shot whose JSON was read, not on the one whose
    id happens to equal its incident number."""
    db, reports = _db_with_a_burst_and_a_shot(tmp_path)
    published = reports[3].to_json()                 # incident 2 ... but shot 4
    assert main(["shot", str(published["shot"]), "false-alarm", "--by", "bob", "--note", "fireworks",
                 "--db", db]) == 0
    assert f"shot {published['shot']}: false-alarm by bob" in capsys.readouterr().out
    st = Store(db)
    try:
        (r,) = st.reviews("shots")
        (shot,) = [s for s in st.shots() if s.shot_id == r.ref_id]
        assert (shot.incident, shot.round, shot.t_utc_ns) == (2, 1, reports[3].t_utc_ns)
        assert st.verify().ok
    finally:
        st.close()


def test_review_list_shots_lists_them_with_their_ids_and_verdicts(tmp_path, capsys):
    db, reports = _db_with_a_burst_and_a_shot(tmp_path)
    assert main(["list", "--shots", "--db", db, "--json"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["shot"] for x in lines] == [1, 2, 3, 4] and all(x["verdict"] is None for x in lines)
    assert lines[3] == {**reports[3].to_json(), "verdict": None}          # as published, plus the verdict
    assert main(["shot", "2", "confirmed", "--by", "alice", "--db", db]) == 0
    capsys.readouterr()
    assert main(["list", "--shots", "--db", db, "--json"]) == 0
    assert [json.loads(x)["shot"] for x in capsys.readouterr().out.splitlines()] == [1, 3, 4]
    assert main(["list", "--shots", "--all", "--db", db]) == 0
    out = capsys.readouterr()
    table = out.out.splitlines()
    assert table[0].split()[:3] == ["shot", "inc", "rnd"]
    assert table[2].split()[:3] == ["2", "1", "2"] and "confirmed" in table[2]
    assert "4 shot(s)" in out.err
    assert main(["list", "--db", db, "--json"]) == 0                  # the candidates: none here
    assert capsys.readouterr().out == ""


def test_review_shot_help_says_where_the_id_comes_from(capsys):
    with pytest.raises(SystemExit):
        main(["shot", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert '"shot" in the published JSON' in text and "list --shots" in text
