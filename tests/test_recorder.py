"""`earwitness node --record`: raw audio kept as recording sets that locate reads back."""

from __future__ import annotations

import numpy as np

from common.config import Position
from common.recording_set import load_set
from node.audio import AudioBlock
from node.recorder import Recorder
from node.timebase import FixedTimebase
from node.wav_source import read_wav

T0 = 1_764_000_000 * 10**9


def test_recorder_writes_replayable_sets(tmp_path):
    tb = FixedTimebase(T0, 12_000)
    rec = Recorder(tmp_path, "pole-7", 12_000, 0, tb.to_utc_ns, lambda: Position(40.1, -79.9, 250.0), max_s=1.0)
    rng = np.random.default_rng(0)
    x = rng.uniform(-0.5, 0.5, 12_000 * 3).astype(np.float32)
    for i in range(0, x.size, 1200):
        rec.write(AudioBlock(samples=x[i:i + 1200, None], first_frame=i))
    # a gap (lost frames) starts a new piece
    rec.write(AudioBlock(samples=x[:1200, None], first_frame=x.size + 5000))
    rec.close_piece()
    assert len(rec.pieces) == 4
    rs = load_set(rec.pieces[1])
    (node,) = rs.nodes
    assert node.id == "pole-7" and abs(node.lat - 40.1) < 1e-9
    assert node.start_utc_ns == T0 + 10**9            # the second piece starts 1 s in
    assert node.detector is None                      # not told the node's detector settings
    y, fs = read_wav(node.wav)
    assert fs == 12_000 and y.shape == (12_000, 1)
    assert np.max(np.abs(y[:, 0] - x[12_000:24_000])) < 1 / 32767 + 1e-6
    assert load_set(rec.pieces[3]).nodes[0].start_utc_ns == tb.to_utc_ns(x.size + 5000)


def test_recorded_sets_carry_the_nodes_detector_settings(tmp_path):
    """A replay of the recording detects onsets as the node did (docs/recording-set.md)."""
    from common.config import DetectorConfig

    det = DetectorConfig(band_hz=(400.0, 3000.0), trigger_ratio=8.0)
    tb = FixedTimebase(T0, 12_000)
    rec = Recorder(tmp_path, "pole-7", 12_000, 0, tb.to_utc_ns, lambda: Position(40.1, -79.9, 250.0),
                   detector=det)
    rec.write(AudioBlock(samples=np.zeros((1200, 1), dtype=np.float32), first_frame=0))
    (node,) = load_set(rec.close_piece()).nodes
    assert node.detector == det
