"""The onset detector: accuracy on synthetic impulses, chunked == whole, edge cases."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from common.config import DetectorConfig
from node.detector import SILENCE_RUN, Detector, aic_pick, detect, silence_ends
from tests.conftest import friedlander

FS = 48_000


def _signal(seed: int, onsets: list[float], snr_db: float, n: int, noise_rms: float = 1e-3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, noise_rms, n)
    amp = noise_rms * 10 ** (snr_db / 20)      # peak amplitude over noise rms
    for on in onsets:
        x += friedlander(n, on, amp, FS)
    return x


@pytest.mark.parametrize("seed", range(6))
def test_onset_within_one_sample_at_20db_snr(seed):
    rng = np.random.default_rng(100 + seed)
    onsets = sorted(FS * (0.8 + 0.5 * k) + rng.uniform(0, 1) for k in range(6))
    x = _signal(seed, onsets, 20.0, int(FS * 4.0))
    found = detect(x, DetectorConfig(), FS)
    assert len(found) == len(onsets)
    errors = np.array([o.frame for o in found]) - np.array(onsets)
    assert np.max(np.abs(errors)) <= 1.0, errors


def test_nothing_in_pure_noise_and_silence():
    rng = np.random.default_rng(7)
    assert detect(rng.normal(0, 1e-3, FS * 5), DetectorConfig(), FS) == []
    assert detect(np.zeros(FS * 2), DetectorConfig(), FS) == []


def test_digital_silence_padding_does_not_trigger():
    """Recordings padded with exact zeros: noise starting after the padding is not an onset."""
    rng = np.random.default_rng(8)
    x = np.concatenate([np.zeros(FS), rng.normal(0, 1e-3, FS * 3), np.zeros(FS)])
    x[int(FS * 3.0):] += friedlander(x.size - int(FS * 3.0), 0.0, 0.05, FS)
    found = detect(x, DetectorConfig(), FS)
    assert [round(o.frame / FS, 2) for o in found] == [3.0]


def test_burst_at_15_rounds_per_second_gives_every_round():
    onsets = [FS * 1.0 + k * FS / 15 for k in range(10)]
    x = _signal(3, onsets, 30.0, FS * 3)
    found = detect(x, DetectorConfig(), FS)
    assert len(found) == 10


def test_snippet_and_features():
    x = _signal(4, [FS * 1.5 + 0.25], 30.0, FS * 3)
    (o,) = detect(x, DetectorConfig(), FS)
    cfg = DetectorConfig()
    assert o.snippet.dtype == np.int16
    assert o.snippet.size == round((cfg.snippet_pre_s + cfg.snippet_post_s) * FS)
    assert o.snippet_first_frame <= o.frame < o.snippet_first_frame + o.snippet.size
    assert o.snr_db > 10
    assert -40 < o.peak_dbfs < -20       # 10**(30/20) * 1e-3 = 0.0316 → −30 dBFS
    assert set(o.features) >= {"rise_ms", "duration_ms", "centroid_hz", "clipped_frac"}


def test_works_at_12_khz():
    fs = 12_000
    n = fs * 3
    rng = np.random.default_rng(5)
    x = rng.normal(0, 1e-3, n) + friedlander(n, fs * 1.3 + 0.4, 0.03, fs)
    (o,) = detect(x, DetectorConfig(), fs)
    assert abs(o.frame - (fs * 1.3 + 0.4)) <= 1.0


def test_aic_pick_finds_variance_change():
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(0, 1, 300), rng.normal(0, 20, 100)])
    assert abs(aic_pick(x) - 300) <= 2


_WHOLE = _signal(11, [FS * 0.9 + 0.3, FS * 1.7, FS * 1.8 + 0.6, FS * 2.95], 25.0, FS * 3)


def _chunked(x: np.ndarray, cuts: list[int]) -> list:
    """The onsets of ``x`` fed in chunks of the sizes ``cuts`` (then the rest), flushed."""
    det = Detector(DetectorConfig(), FS)
    got, i = [], 0
    for c in cuts:
        got += det.process(x[i:i + c])
        i += c
        if i >= x.size:
            break
    return got + det.process(x[i:]) + det.flush()


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=FS // 2), min_size=1, max_size=30))
def test_chunked_equals_whole(cuts):
    """Any chunking of the stream yields exactly the whole-signal onsets."""
    whole = detect(_WHOLE, DetectorConfig(), FS)
    got = _chunked(_WHOLE, cuts)
    assert len(got) == len(whole) == 4
    for a, b in zip(got, whole):
        assert a.frame == b.frame
        assert a.trigger_frame == b.trigger_frame
        assert a.snippet_first_frame == b.snippet_first_frame
        assert np.array_equal(a.snippet, b.snippet)
        assert a.features == b.features


@pytest.mark.parametrize(("fs", "first_snr", "late_snr"), [(12_000, 12, 40), (48_000, 6, 20)])
def test_pick_goes_back_to_a_weaker_first_arrival(fs, first_snr, late_snr):
    """Round a corner the first (diffracted) arrival can be too weak to trigger
    and a reflection 15 ms later sets the trigger off: the pick is the first
    arrival's onset (within ~2 samples), at either sample rate (white noise of the
    same sample σ is 6 dB weaker in band at 48 kHz, hence the amplitudes).
    Without the look-back it is the reflection's."""
    rng = np.random.default_rng(21)
    n = int(fs * 3.0)
    noise = 1e-3
    x = rng.normal(0.0, noise, n)
    first = fs * 1.5 + 0.3
    x += friedlander(n, first, first_snr * noise, fs)
    assert detect(x, DetectorConfig(), fs) == []                 # too weak to trigger alone
    x += friedlander(n, first + 0.015 * fs, late_snr * noise, fs)
    (o,) = detect(x, DetectorConfig(), fs)
    assert abs(o.frame - first) <= 2.0, (o.frame - first) / fs
    (late,) = detect(x, DetectorConfig(lookback_s=0.0), fs)
    assert late.frame - first > 0.010 * fs


@pytest.mark.parametrize("cut_s", [1.0, 1.0 - 1 / FS, 1.0 + 1 / FS, 0.5])
def test_a_chunk_starting_where_the_padding_ends_still_waits_out_the_warm_up(cut_s):
    """Exact zeros up to 1 s, then noise: an impulse 0.3 s into the noise is inside
    the LTA's warm-up (no trigger), one 1.5 s in is found, and a chunk boundary at,
    just before or after the padding's end changes nothing."""
    rng = np.random.default_rng(9)
    x = np.concatenate([np.zeros(FS), rng.normal(0, 1e-3, FS * 3)])
    for t in (1.3, 2.5):
        x[int(FS * t):] += friedlander(x.size - int(FS * t), 0.0, 0.05, FS)
    whole = detect(x, DetectorConfig(), FS)
    assert [round(o.frame / FS, 2) for o in whole] == [2.5]
    det = Detector(DetectorConfig(), FS)
    k = int(round(cut_s * FS))
    got = det.process(x[:k]) + det.process(x[k:]) + det.flush()
    assert [o.frame for o in got] == [o.frame for o in whole]


def _silence_ends_by_sample(x: np.ndarray, carried: int) -> tuple[list[int], int]:
    """silence_ends the slow way, one sample at a time."""
    run, ends = carried, []
    for i, v in enumerate(x):
        if v == 0.0:
            run += 1
            continue
        if run >= SILENCE_RUN:
            ends.append(i)
        run = 0
    return ends, run


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(min_value=1, max_value=3 * SILENCE_RUN)), max_size=12),
       st.integers(min_value=0, max_value=3 * SILENCE_RUN))
def test_silence_ends_match_a_sample_by_sample_count(runs, carried):
    """Digital silence is found from the zero samples alone: the same ends of
    every long zero run, and the same trailing count, as walking every sample —
    for runs shorter than, equal to and longer than SILENCE_RUN, at either end."""
    x = np.concatenate([np.zeros(n) if zero else np.full(n, 0.25) for zero, n in runs] or [np.zeros(0)])
    if x.size == 0:
        return
    ends, trailing = silence_ends(x, carried)
    assert (ends.tolist(), trailing) == _silence_ends_by_sample(x, carried)


# impulses, with digital silence (a dropout, padding) 60 ms after the second and
# 0.4 s after the third; the fourth comes 0.1 s after that silence, in its warm-up
_GAPPY = _signal(11, [FS * 0.9 + 0.3, FS * 1.7, FS * 2.8 + 0.6, FS * 3.3, FS * 4.95], 25.0, FS * 5)
_GAPPY[int(FS * 1.76):int(FS * 1.76) + 100] = 0.0
_GAPPY[int(FS * 3.2):int(FS * 3.2) + 2 * SILENCE_RUN] = 0.0


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=FS // 2), min_size=1, max_size=40))
def test_chunked_equals_whole_across_digital_silence(cuts):
    """Any chunking gives the whole signal's onsets also where runs of exact
    zeros follow an impulse in the same chunk: an impulse before a silence is
    kept, and what comes within the warm-up after it is not."""
    whole = detect(_GAPPY, DetectorConfig(), FS)
    assert [round(o.frame / FS, 2) for o in whole] == [0.9, 1.7, 2.8, 4.95]
    got = _chunked(_GAPPY, cuts)
    assert [(o.frame, o.trigger_frame) for o in got] == [(o.frame, o.trigger_frame) for o in whole]


@pytest.mark.parametrize(("fs", "first_snr", "late_snr"), [(12_000, 12, 40), (48_000, 6, 20)])
@pytest.mark.parametrize("lead_ms", [5.0, 15.0, 24.0, 40.0])
def test_an_onset_lies_at_most_max_lead_before_its_trigger(fs, first_snr, late_snr, lead_ms):
    """What a node's watermark allows for: a first arrival too weak to trigger,
    ``lead_ms`` before the sound that does (the look-back goes back to it, as in
    test_pick_goes_back_to_a_weaker_first_arrival), never puts the onset more
    than ``Detector.max_lead`` frames before the trigger — and does put it
    further back than the pick window alone."""
    det = Detector(DetectorConfig(), fs)
    back = []
    for seed in range(4):
        rng = np.random.default_rng([seed, int(lead_ms), fs])
        n = int(fs * 3.0)
        x = rng.normal(0.0, 1e-3, n)
        loud = fs * 1.5 + rng.uniform(0, 1)
        x += friedlander(n, loud - lead_ms * 1e-3 * fs, first_snr * 1e-3, fs)
        x += friedlander(n, loud, late_snr * 1e-3, fs)
        (o,) = detect(x, DetectorConfig(), fs)
        back.append(o.trigger_frame - o.frame)
    assert max(back) <= det.max_lead, (back, det.max_lead)
    if 10.0 < lead_ms < 25.0:              # the look-back's reach
        assert max(back) > det.pick_pre
