"""WAV files as audio: a flat reader and writer, and an :class:`~node.audio.AudioSource` for replay.

``read_wav`` checks the RIFF chunk structure itself (so a broken, truncated or
non-WAV file gets a one-line :class:`WavError` naming the file and the problem) and
then lets ``scipy.io.wavfile`` decode the samples. Extra RIFF chunks (``LIST``,
``bext``, ShotSpotter's ``smj0`` metadata, …) are skipped.

Supported encodings: integer PCM of any depth scipy reads (8-bit unsigned, 16, 24 and
32-bit signed, including ``WAVE_FORMAT_EXTENSIBLE``) and IEEE float 32/64, at any
sample rate. The whole file is read into memory.
"""

from __future__ import annotations

import struct
import warnings
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np
import scipy.io.wavfile

from node.audio import AudioBlock, EndOfStream

_WAVE_FORMAT_PCM = 0x0001
_WAVE_FORMAT_IEEE_FLOAT = 0x0003
_WAVE_FORMAT_EXTENSIBLE = 0xFFFE


class WavError(ValueError):
    """A file that is not a usable WAV recording; the text names the file and the problem."""


@dataclass(frozen=True)
class WavInfo:
    """What a WAV header says: sample rate (Hz), channels, frames, bits per sample."""

    sample_rate_hz: int
    channels: int
    frames: int
    bits_per_sample: int
    is_float: bool


def _chunks(f: BinaryIO, file_size: int) -> Iterator[tuple[bytes, int, int]]:
    """The chunks after a RIFF header: (id, declared size, offset of the body);
    ``f`` is left at the body of the chunk just yielded."""
    pos = 12
    while pos + 8 <= file_size:
        f.seek(pos)
        cid, size = struct.unpack("<4sI", f.read(8))
        yield cid, size, pos + 8
        pos += 8 + size + (size & 1)


def read_chunk(path: str | Path, chunk_id: bytes) -> bytes | None:
    """The body of the first RIFF chunk ``chunk_id`` (4 bytes, e.g. ``b"smj0"``)
    of a WAV file whose structure checks out, or None when it has none.
    Raises :class:`WavError` as :func:`wav_info` does, and when the chunk is cut short."""
    p, info = _open_checked(path)
    if info is None:
        return None
    with open(p, "rb") as f:
        size_all = f.seek(0, 2)
        for cid, size, body in _chunks(f, size_all):
            if cid == chunk_id:
                raw = f.read(size)
                if len(raw) < size:
                    raise WavError(f"{p}: truncated: {chunk_id.decode('ascii', 'replace')!r} chunk declares "
                                   f"{size} bytes but only {len(raw)} are present")
                return raw
    return None


def _walk_riff(path: Path, f: BinaryIO, file_size: int) -> WavInfo | None:
    """Walk the RIFF chunks of the open file ``f``; raise WavError on any defect.

    Returns None for the rare RF64/RIFX variants, which scipy checks itself.
    """
    head = f.read(12)
    if len(head) < 12:
        raise WavError(f"{path}: not a WAV file: only {len(head)} bytes, shorter than a RIFF header")
    magic, _riff_size, form = struct.unpack("<4sI4s", head)
    if magic in (b"RF64", b"RIFX"):
        return None
    if magic != b"RIFF" or form != b"WAVE":
        raise WavError(
            f"{path}: not a WAV file (starts with {head[:4]!r}…{head[8:12]!r}, "
            "expected RIFF…WAVE)")
    fmt: tuple[int, int, int, int, int] | None = None
    data_size: int | None = None
    for cid, size, body in _chunks(f, file_size):
        if cid == b"fmt ":
            raw = f.read(min(size, 40))
            if size < 16 or len(raw) < 16:
                raise WavError(f"{path}: broken WAV: 'fmt ' chunk is {size} bytes, needs 16")
            tag, channels, rate, _byte_rate, block_align, bits = struct.unpack("<HHIIHH", raw[:16])
            if tag == _WAVE_FORMAT_EXTENSIBLE and len(raw) >= 26:
                tag = struct.unpack("<H", raw[24:26])[0]
            if tag not in (_WAVE_FORMAT_PCM, _WAVE_FORMAT_IEEE_FLOAT):
                raise WavError(
                    f"{path}: unsupported WAV encoding (format tag 0x{tag:04x}); "
                    "convert to PCM or float, e.g. sox in.wav -e signed -b 16 out.wav")
            if channels < 1 or rate < 1 or block_align < 1:
                raise WavError(
                    f"{path}: broken WAV header: {channels} channels, {rate} Hz, "
                    f"block align {block_align}")
            fmt = (tag, channels, rate, block_align, bits)
        elif cid == b"data":
            if fmt is None:
                raise WavError(f"{path}: broken WAV: 'data' chunk comes before the 'fmt ' chunk")
            present = file_size - body
            if size == 0 or size == 0xFFFFFFFF:
                raise WavError(
                    f"{path}: 'data' chunk size is {size:#x}: the header was never finalised "
                    "(recording interrupted?); repair it, e.g. with sox or ffmpeg")
            if size > present:
                raise WavError(
                    f"{path}: truncated: 'data' chunk declares {size} bytes but only "
                    f"{present} are present (file cut short?)")
            if size % fmt[3]:
                raise WavError(
                    f"{path}: broken WAV: 'data' chunk of {size} bytes is not a whole number "
                    f"of {fmt[3]}-byte frames")
            data_size = size
    if fmt is None:
        raise WavError(f"{path}: broken WAV: no 'fmt ' chunk")
    if data_size is None:
        raise WavError(f"{path}: broken WAV: no 'data' chunk (file cut short?)")
    tag, channels, rate, block_align, bits = fmt
    return WavInfo(sample_rate_hz=rate, channels=channels, frames=data_size // block_align,
                   bits_per_sample=bits, is_float=tag == _WAVE_FORMAT_IEEE_FLOAT)


def _open_checked(path: str | Path) -> tuple[Path, WavInfo | None]:
    p = Path(path)
    try:
        with open(p, "rb") as f:
            size = f.seek(0, 2)
            f.seek(0)
            return p, _walk_riff(p, f, size)
    except FileNotFoundError:
        raise WavError(f"{p}: WAV file does not exist") from None
    except IsADirectoryError:
        raise WavError(f"{p}: is a directory, not a WAV file") from None
    except OSError as exc:
        raise WavError(f"{p}: cannot read WAV file: {exc.strerror or exc}") from None


def wav_info(path: str | Path) -> WavInfo:
    """Check a WAV file's structure and return its header facts, without reading samples.

    Raises :class:`WavError` for a missing, non-WAV, truncated or broken file.
    """
    p, info = _open_checked(path)
    if info is None:  # RF64/RIFX: let scipy read it
        rate, x = _scipy_read(p)
        return WavInfo(sample_rate_hz=rate, channels=1 if x.ndim == 1 else x.shape[1],
                       frames=x.shape[0], bits_per_sample=8 * x.dtype.itemsize,
                       is_float=x.dtype.kind == "f")
    return info


def _scipy_read(p: Path) -> tuple[int, np.ndarray]:
    try:
        with warnings.catch_warnings():
            # "Chunk (non-data) not understood": extra chunks such as smj0 / LIST.
            warnings.simplefilter("ignore", scipy.io.wavfile.WavFileWarning)
            rate, x = scipy.io.wavfile.read(p, mmap=False)
    except (ValueError, struct.error, EOFError) as exc:
        raise WavError(f"{p}: cannot decode WAV: {exc}") from None
    return int(rate), x


def _to_float32(x: np.ndarray, path: Path) -> np.ndarray:
    """scipy's sample array → float32 full scale ±1.0 (integers are left-justified)."""
    if x.dtype == np.uint8:
        return ((x.astype(np.float32) - 128.0) / 128.0).astype(np.float32)
    if x.dtype.kind == "i":
        return (x.astype(np.float64) / float(2 ** (8 * x.dtype.itemsize - 1))).astype(np.float32)
    if x.dtype.kind == "f":
        return x.astype(np.float32)
    raise WavError(f"{path}: unsupported sample type {x.dtype}")


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Read a WAV file.

    Returns ``(samples, sample_rate_hz)``: samples (n, channels) float32, full scale
    ±1.0 (integer PCM divided by its full scale; float files as stored).
    Raises :class:`WavError` for a missing, non-WAV, truncated or broken file.
    """
    p, _info = _open_checked(path)
    rate, x = _scipy_read(p)
    if x.ndim == 1:
        x = x[:, None]
    return _to_float32(x, p), int(rate)


def to_pcm16(x: np.ndarray) -> np.ndarray:
    """Samples at full scale ±1.0 → little-endian int16 (rounded, clipped)."""
    return np.clip(np.round(np.asarray(x) * 32767.0), -32768, 32767).astype("<i2")


def write_wav(path: str | Path, x: np.ndarray, sample_rate_hz: int) -> Path:
    """Write mono samples ``x`` (n,) at full scale ±1.0 as a 16-bit PCM WAV."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(int(sample_rate_hz))
        w.writeframes(to_pcm16(x).tobytes())
    return Path(path)


class WavSource:
    """Replays a WAV file as :class:`~node.audio.AudioBlock` values.

    Like every :class:`~node.audio.AudioSource`, it delivers all the file's
    channels: blocks are (blocksize, ``channels``) float32 (the last one may be
    shorter) and the consumer picks its channels (``[audio] mic_channel`` for the
    detector, ``[timebase] pps_channel`` for a PPS timebase). ``sample_rate`` and
    ``channels`` are the file's, known once the header is checked. Blocks carry
    ``first_frame`` counted from the file's first sample and no real-time clock
    (``adc_time_s`` None, ``mono_ns`` = ``wall_ns`` = 0); after the last block
    ``read`` raises :class:`~node.audio.EndOfStream`. Reading is as fast as the
    consumer asks; use a ``fixed`` timebase with the file's start time.
    """

    def __init__(self, path: str | Path, blocksize: int = 480) -> None:
        """Check the file's header now (WavError if unusable); samples load in start()."""
        if blocksize < 1:
            raise ValueError(f"blocksize must be >= 1 frame, got {blocksize}")
        self.path = Path(path)
        self.blocksize = int(blocksize)
        self.info = wav_info(self.path)
        self.channels = int(self.info.channels)
        self.sample_rate = float(self.info.sample_rate_hz)
        self._samples: np.ndarray | None = None
        self._pos = 0
        self._state = "stopped"

    def start(self) -> None:
        """Load the samples (WavError if the file changed its rate or channel count
        since the header was checked)."""
        if self._samples is not None:
            return
        x, rate = read_wav(self.path)
        if x.shape[1] != self.channels or float(rate) != self.sample_rate:
            raise WavError(f"{self.path}: file changed: it now has {x.shape[1]} channel(s) at {rate} Hz, "
                           f"not {self.channels} at {self.sample_rate:g} Hz")
        self._samples = np.ascontiguousarray(x)
        self._pos = 0
        self._state = "running"

    def read(self, timeout_s: float = 0.0) -> AudioBlock | None:
        """The next block; EndOfStream after the last one. Never waits."""
        if self._samples is None:
            raise RuntimeError(f"WavSource({self.path}): call start() before read()")
        n = self._samples.shape[0]
        if self._pos >= n:
            self._state = "finished"
            raise EndOfStream(f"{self.path}: end of file after {n} frames")
        end = min(self._pos + self.blocksize, n)
        block = AudioBlock(samples=self._samples[self._pos:end], first_frame=self._pos)
        self._pos = end
        return block

    def stop(self) -> None:
        """Forget the loaded samples. Safe to call twice."""
        self._samples = None
        self._state = "stopped"

    def stats(self) -> dict:
        return {"xruns": 0, "dropped_blocks": 0, "device": str(self.path),
                "state": self._state, "frames": self._pos}
