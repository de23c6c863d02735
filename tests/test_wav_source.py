"""WAV reading (every encoding, real field files, broken files) and WavSource replay."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import scipy.io.wavfile

from node.audio import AudioSource, EndOfStream
from node.wav_source import WavError, WavSource, read_wav, wav_info

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _tone(n: int, channels: int, seed: int = 0) -> np.ndarray:
    """(n, channels) float64 test signal within ±0.9."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)[:, None]
    x = 0.6 * np.sin(2 * np.pi * t * (0.01 + 0.003 * np.arange(channels)))
    x = x + 0.1 * rng.standard_normal((n, channels))
    return np.clip(x, -0.9, 0.9)


def _pcm24_bytes(x: np.ndarray) -> bytes:
    """(n, ch) float → little-endian 24-bit PCM frames (full scale 2**23)."""
    q = np.round(x * 2 ** 23).astype(np.int32).reshape(-1)
    b = q.astype("<i4").view(np.uint8).reshape(-1, 4)[:, :3]
    return b.tobytes()


def _riff(fmt_tag: int, channels: int, rate: int, bits: int, data: bytes,
          extra: list[tuple[bytes, bytes]] = (), extensible: bool = False) -> bytes:
    block = channels * bits // 8
    if extensible:
        fmt = struct.pack("<HHIIHH", 0xFFFE, channels, rate, rate * block, block, bits)
        fmt += struct.pack("<HHI", 22, bits, 0) + struct.pack("<H", fmt_tag)
        fmt += b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"  # KSDATAFORMAT GUID tail
    else:
        fmt = struct.pack("<HHIIHH", fmt_tag, channels, rate, rate * block, block, bits)
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt
    chunks += b"data" + struct.pack("<I", len(data)) + data + (b"\0" if len(data) % 2 else b"")
    for cid, body in extra:
        chunks += cid + struct.pack("<I", len(body)) + body + (b"\0" if len(body) % 2 else b"")
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks


@pytest.mark.parametrize("dtype,scale,tol", [
    (np.int16, 2 ** 15, 0.5 / 2 ** 15),
    (np.int32, 2 ** 31, 1e-7),
    (np.float32, None, 1e-7),
    (np.float64, None, 1e-7),
    (np.uint8, 2 ** 7, 0.5 / 2 ** 7),
])
@pytest.mark.parametrize("rate", [12_000, 48_000])
def test_round_trip_scipy_written(tmp_path, dtype, scale, tol, rate):
    x = _tone(1000, 2)
    if dtype == np.uint8:
        stored = np.round(x * scale + 128).astype(np.uint8)
    elif scale is not None:
        stored = np.round(x * scale).astype(dtype)
    else:
        stored = x.astype(dtype)
    p = tmp_path / "t.wav"
    scipy.io.wavfile.write(p, rate, stored)
    y, fs = read_wav(p)
    assert fs == rate
    assert y.dtype == np.float32 and y.shape == (1000, 2)
    np.testing.assert_allclose(y, x, atol=tol * 1.01)
    info = wav_info(p)
    assert (info.sample_rate_hz, info.channels, info.frames) == (rate, 2, 1000)


@pytest.mark.parametrize("extensible", [False, True])
def test_round_trip_24bit(tmp_path, extensible):
    x = _tone(777, 3, seed=2)
    p = tmp_path / "p24.wav"
    p.write_bytes(_riff(1, 3, 48_000, 24, _pcm24_bytes(x), extensible=extensible))
    y, fs = read_wav(p)
    assert fs == 48_000 and y.shape == (777, 3)
    np.testing.assert_allclose(y, x, atol=0.5 / 2 ** 23 + 1e-7)
    assert wav_info(p).bits_per_sample == 24


def test_mono_is_2d_and_extra_chunks_are_skipped(tmp_path):
    x = _tone(501, 1, seed=3)  # odd frame count → odd data size, padded
    q = np.round(x * 32768).astype("<i2").tobytes()
    p = tmp_path / "meta.wav"
    p.write_bytes(_riff(1, 1, 12_000, 16, q, extra=[(b"smj0", b"x" * 609), (b"LIST", b"INFOabcd")]))
    y, fs = read_wav(p)
    assert fs == 12_000 and y.shape == (501, 1)
    np.testing.assert_allclose(y, x, atol=0.5 / 32768 + 1e-7)


def _pittsburgh_wav() -> Path:
    folder = DATA / "pittsburgh" / "PittsburghPA_DQV_2018-12-18" / "FP1" / "test_001"
    files = sorted(folder.glob("*.wav")) if folder.is_dir() else []
    if not files:
        pytest.skip(f"shared data not found: {folder} (see /work/shared/data/README.md)")
    return files[0]


def test_real_pittsburgh_wav():
    p = _pittsburgh_wav()
    y, fs = read_wav(p)
    assert fs == 12_000
    assert y.shape[1] == 1 and 9 * fs <= y.shape[0] <= 11 * fs
    raw = scipy.io.wavfile.read(p)[1]
    assert raw.dtype == np.int16
    np.testing.assert_array_equal(y[:, 0], raw.astype(np.float32) / 32768)
    assert 0.001 < np.max(np.abs(y)) <= 1.0


def test_real_chicago_wav_with_smj0_chunk():
    folder = DATA / "chicago-incidents" / "examples"
    files = sorted(folder.glob("*/*.wav")) if folder.is_dir() else []
    if not files:
        pytest.skip(f"shared data not found: {folder}")
    for p in files:
        raw = p.read_bytes()
        assert b"smj0" in raw  # the custom RIFF chunk really is there
        y, fs = read_wav(p)
        assert fs == 12_000 and y.shape[1] == 1 and y.shape[0] > fs
        assert np.all(np.isfinite(y))


def test_wav_source_delivers_blocks_then_end_of_stream(tmp_path):
    x = _tone(1000, 2, seed=4).astype(np.float32)
    p = tmp_path / "s.wav"
    scipy.io.wavfile.write(p, 48_000, x)
    src = WavSource(p, blocksize=300)
    assert isinstance(src, AudioSource)
    assert src.sample_rate == 48_000.0 and src.channels == 2     # the file's rate and all its channels
    src.start()
    blocks = []
    with pytest.raises(EndOfStream):
        while True:
            blocks.append(src.read(0.0))
    assert [b.frames for b in blocks] == [300, 300, 300, 100]
    assert [b.first_frame for b in blocks] == [0, 300, 600, 900]
    assert all(b.samples.shape == (b.frames, 2) and b.samples.dtype == np.float32 for b in blocks)
    assert all(b.adc_time_s is None and b.wall_ns == 0 and not b.overflow for b in blocks)
    np.testing.assert_array_equal(np.concatenate([b.samples for b in blocks]), x)
    with pytest.raises(EndOfStream):
        src.read(0.0)
    st = src.stats()
    assert st["xruns"] == 0 and st["dropped_blocks"] == 0 and st["state"] == "finished"
    src.stop()
    src.stop()


def test_wav_source_on_real_file():
    p = _pittsburgh_wav()
    src = WavSource(p, blocksize=480)
    src.start()
    n = 0
    with pytest.raises(EndOfStream):
        while True:
            b = src.read(0.0)
            assert b.first_frame == n
            n += b.frames
    assert n == read_wav(p)[0].shape[0]


def test_node_wav_source_bad_mic_channel_is_a_config_error(tmp_path):
    """The node picks [audio] mic_channel from the blocks; one the file lacks is
    refused when the source is made, naming the key and the file."""
    from common.config import AudioConfig, ConfigError, NodeConfig
    from node.main import make_source

    p = tmp_path / "m.wav"
    scipy.io.wavfile.write(p, 12_000, np.zeros(10, np.int16))
    cfg = NodeConfig(id="n1", audio=AudioConfig(source="wav", wav_path=str(p), mic_channel=1))
    with pytest.raises(ConfigError, match=r"mic_channel = 1, but .*m\.wav has 1 channel\(s\)"):
        make_source(cfg)


# ------------------------------------------------------------------ broken files
def _good(tmp_path) -> bytes:
    p = tmp_path / "good.wav"
    scipy.io.wavfile.write(p, 12_000, np.round(_tone(400, 2) * 32767).astype(np.int16))
    return p.read_bytes()


@pytest.mark.parametrize("mutate,message", [
    (lambda d: d[:-101], "truncated: 'data' chunk declares 1600 bytes but only 1499"),
    (lambda d: d[:30], "no 'data' chunk|'fmt ' chunk is"),
    (lambda d: d[:8], "not a WAV file: only 8 bytes"),
    (lambda d: b"", "not a WAV file: only 0 bytes"),
    (lambda d: b"hello, this is plainly not audio" * 4, "not a WAV file"),
    (lambda d: b"RIFF" + d[4:8] + b"AVI " + d[12:], "not a WAV file"),
    (lambda d: d[:40] + struct.pack("<I", 0) + d[44:], "never finalised"),
    (lambda d: d[:40] + struct.pack("<I", 1601) + d[44:], "truncated|whole number"),
    (lambda d: d[:20] + struct.pack("<H", 0x55) + d[22:], "unsupported WAV encoding"),
])
def test_broken_files_raise_wav_error(tmp_path, mutate, message):
    p = tmp_path / "bad.wav"
    p.write_bytes(mutate(_good(tmp_path)))
    with pytest.raises(WavError, match=message) as exc:
        read_wav(p)
    assert str(p) in str(exc.value)
    assert "\n" not in str(exc.value)
    with pytest.raises(WavError):
        WavSource(p)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(WavError, match="does not exist"):
        read_wav(tmp_path / "nope.wav")
    with pytest.raises(WavError, match="directory"):
        read_wav(tmp_path)
    assert issubclass(WavError, ValueError)
