"""The accuracy benchmark's world tables: false and extra shots are separate
columns, each under its own heading."""

from __future__ import annotations

from benchmarks.bench_accuracy import WORLD_HEAD, World, WorldResult, summarize_worlds, world_rows


def test_world_rows_show_false_and_extra_shots_apart_under_their_headings():
    results = [WorldResult(World("w", 1), total=10, located=9, false_shots=1, errors_m=(1.0,) * 9,
                           incidents_true=2, incidents_found=2, wall_s=1.0, extra_shots=2, radii_m=(2.0,) * 9),
               WorldResult(World("w", 2), total=10, located=10, false_shots=0, errors_m=(0.5,) * 10,
                           incidents_true=2, incidents_found=2, wall_s=1.0, extra_shots=1, radii_m=(0.4,) * 10)]
    s = summarize_worlds(results)
    assert (s["rounds"], s["located"], s["false"], s["extra"]) == (20, 19, 1, 3)
    row = dict(zip(WORLD_HEAD, world_rows("w", results), strict=True))
    assert (row["rounds"], row["located"], row["false"], row["extra"]) == ("20", "19", "1", "3")
    assert row["in 95 % radius"] == "47 %"       # 9 of 19 errors inside their radius


def test_a_world_decided_as_live_is_scored_like_one_decided_at_once():
    """``--live-step``: the Engine fed as a live server is (events in watermark
    steps, every node's heartbeat); a small quiet world gives every round either
    way, and a step that is not positive is refused."""
    import pytest

    from benchmarks.bench_accuracy import main, run_world

    world = World("small", 3, nodes=6, shots=2, burst_rounds=3)
    once, live = run_world(world), run_world(world, live_step_s=0.5)
    assert once.total == live.total > 0
    assert live.located == once.located == once.total and live.false_shots == live.extra_shots == 0
    with pytest.raises(SystemExit):
        main(["--parts", "bursts", "--live-step", "0"])
