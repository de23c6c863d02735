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
