"""The node registry reports each change of a node's health once."""

from server.registry import NodeRegistry

S = 10**9


def test_new_stale_back_degraded_and_problems():
    reg = NodeRegistry(stale_s=30)
    assert [c.kind for c in reg.heartbeat("n1", {}, 0)] == ["new"]
    assert reg.heartbeat("n1", {}, 5 * S) == []                     # nothing new: no line
    assert reg.check(20 * S) == []
    (stale,) = reg.check(40 * S)
    assert stale.kind == "stale" and stale.warning and "no heartbeat for 35 s" in stale.text
    assert reg.check(50 * S) == []                                   # said once
    assert [c.kind for c in reg.heartbeat("n1", {}, 60 * S)] == ["back"]
    ch = reg.heartbeat("n1", {"timing_degraded": True, "timing_detail": "PPS lost 12 s ago"}, 61 * S)
    assert [c.kind for c in ch] == ["degraded"] and "PPS lost" in ch[0].text
    ch = reg.heartbeat("n1", {"timing_degraded": True, "timing_detail": "PPS lost 13 s ago",
                              "audio_problem": "no input device 'hw:1,0'"}, 62 * S)
    assert [c.kind for c in ch] == ["problem"] and "hw:1,0" in ch[0].text
    ch = reg.heartbeat("n1", {"timing_degraded": False, "audio_problem": ""}, 63 * S)
    assert sorted(c.kind for c in ch) == ["healthy", "problem-cleared"]
    assert reg.summary() == {"nodes": 1, "stale": 0, "degraded": 0}


def test_every_problem_field_is_reported_and_timing_detail_only_with_degraded():
    """Each of PROBLEM_FIELDS gives one line when it appears and one when it
    clears; ``timing_detail`` (it changes every heartbeat) is not one of them:
    it is shown in the timing-degraded line only."""
    from server.registry import PROBLEM_FIELDS

    reg = NodeRegistry(stale_s=30)
    reg.heartbeat("n1", {}, 0)
    for i, k in enumerate(PROBLEM_FIELDS, 1):
        ch = reg.heartbeat("n1", {k: "broken"}, i * S)
        assert [c.kind for c in ch] == ["problem"] and f"{k.replace('_', ' ')}: broken" in ch[0].text
        ch = reg.heartbeat("n1", {}, i * S + 1)
        assert [c.kind for c in ch] == ["problem-cleared"]
    assert "timing_detail" not in PROBLEM_FIELDS
    ch = reg.heartbeat("n1", {"timing_degraded": True, "timing_detail": "PPS lost for 1.0 s"}, 10 * S)
    assert [c.kind for c in ch] == ["degraded"] and "PPS lost for 1.0 s" in ch[0].text
    assert reg.heartbeat("n1", {"timing_degraded": True, "timing_detail": "PPS lost for 2.0 s"}, 11 * S) == []
