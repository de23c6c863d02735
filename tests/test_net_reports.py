"""server/net.py: the shots and candidates an IngestServer keeps in memory for
the simulation are bounded: a live server's memory does not grow with them."""

from __future__ import annotations

import pytest

from common.config import ServerConfig
from server.engine import Engine
from server.net import KEEP_REPORTS, IngestServer
from server.reports import CandidateReport, ShotReport

T0 = 1_800_000_000_000_000_000


def _shot(i: int) -> ShotReport:
    return ShotReport(t_utc_ns=T0 + i, lat=40.44, lon=-79.99, alt=250.0, error_m=3.0, residual_ms=0.1,
                      nodes=("a", "b", "c", "d"), shot_id=i, incident=i, round=1)


def _cand(i: int) -> CandidateReport:
    return CandidateReport(t_utc_ns=T0 + i, lat=40.44, lon=-79.99, alt=250.0, error_m=30.0, residual_ms=1.0,
                           nodes=("a", "b", "c"), candidate_id=i, chance=0.1)


def _server(**kw) -> IngestServer:
    cfg = ServerConfig(bind="tcp://127.0.0.1:*", publish="tcp://127.0.0.1:*", database=":memory:",
                       temperature_c=20.0, allow_plaintext=True)
    return IngestServer(cfg, Engine(cfg, None), **kw)


def test_only_the_latest_reports_and_candidates_are_kept(monkeypatch):
    server = _server(keep_reports=3)
    try:
        published = []
        server.on_shot = published.append
        for k in range(3):
            batch = [_cand(10 * k + j) for j in range(2)]
            monkeypatch.setattr(server.engine, "take_candidates", lambda b=batch: b)
            server.publish([_shot(10 * k + j) for j in range(2)])
        assert len(published) == 6                                # every shot is still published
        assert [r.shot_id for r in server.reports] == [11, 20, 21]
        assert [c.candidate_id for c in server.candidates] == [11, 20, 21]
    finally:
        server.close()


def test_by_default_a_server_keeps_a_bounded_number():
    server = _server()
    try:
        assert server.reports.maxlen == KEEP_REPORTS and server.candidates.maxlen == KEEP_REPORTS
        server.publish([_shot(i) for i in range(KEEP_REPORTS + 5)])
        assert len(server.reports) == KEEP_REPORTS and server.reports[0].shot_id == 5
    finally:
        server.close()


@pytest.mark.parametrize("bad", [-1, 2.5, True, "10"])
def test_a_bad_keep_reports_is_refused_clearly(bad):
    with pytest.raises(ValueError, match="keep_reports must be a whole number"):
        _server(keep_reports=bad)
