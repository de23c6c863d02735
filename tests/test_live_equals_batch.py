"""A live server and ``earwitness locate`` decide the same shots.

Live, events come in over time and the server decides what the network's
watermark allows; offline, ``locate`` hands the engine every event and decides
at the end. The association looks ahead of the arrival it decides (a burst's
later rounds are evidence for a round) and a put-aside arrival may still be
taken by a later seed, so the live server waits for both
(``Associator.wait_ns``). Checked on real recordings: ShotSpotter's Pittsburgh
FP3/test_051 (round k at one sensor lines up with round k + 1 at the others)
and FP2/test_026 (a sensor hears a reflection louder than the direct sound),
through our detector, replayed as live (``locate(..., live_step_s=...)``: the
nodes' heartbeats move the watermark every so many seconds of audio).

This is not a guarantee for every recording: the association is greedy (the
best candidate among those ready is formed first, and what it learns from a
shot changes the next search), so the steps in which a live server decides
can still change a few rounds (docs/architecture.md, "Watermark")."""

from __future__ import annotations

import dataclasses

import pytest

from conftest import shared_data
from server.import_shotspotter import load_test
from server.locate import locate, replay_config


def _shots(rs, sigma_ms, live_step_s):
    r = locate(rs, "audio", cfg=replay_config(sigma_ms), workers=1, live_step_s=live_step_s)
    return sorted((x.t_utc_ns, round(x.lat, 7), round(x.lon, 7), x.nodes) for x in r.reports)


@pytest.mark.slow
@pytest.mark.parametrize("fp,name", [("FP3", "test_051"), ("FP2", "test_026")])
@pytest.mark.parametrize("sigma_ms", [None, 7.0])
def test_replayed_as_live_the_engine_decides_what_it_decides_at_once(fp, name, sigma_ms):
    """Without the look-ahead, in 0.1 s steps at 7.0 ms, test_051 gave two
    false shots (a line-up decided before the rounds that outrank it had come)
    and test_026 one round more than ``locate``."""
    rs = load_test(shared_data("pittsburgh", "PittsburghPA_DQV_2018-12-18", fp, name)).recording_set
    rs = dataclasses.replace(rs, truth=(), arrivals=())
    batch = _shots(rs, sigma_ms, None)
    for step in (0.1, 0.5, 1.3):
        assert _shots(rs, sigma_ms, step) == batch, step


def test_a_live_step_must_be_positive():
    from common.recording_set import RecordingSet, RecordingSetError, SetNode

    rs = RecordingSet(None, 15.0, (SetNode("n1", 40.44, -79.99, 250.0),))
    with pytest.raises(RecordingSetError, match="must be > 0"):
        locate(rs, "picks", live_step_s=0.0)
