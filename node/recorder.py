"""`earwitness node --record DIR`: keep the raw audio as a recording set.

The recorder is fed the same blocks the detector sees (in the pipeline thread,
never in the audio callback) and writes 16-bit PCM WAV files, one per session
piece of at most ``max_s`` seconds, each with its own ``set.json`` (see
docs/recording-set.md) so that ``earwitness locate`` can replay it.

If the disk fills (or any write fails), the recorder finishes what it has as
best it can, stops, and raises :class:`RecorderError`; the pipeline logs that
once and goes on detecting without it.
"""

from __future__ import annotations

import logging
import time
import wave
from pathlib import Path
from typing import Callable

from common.config import DetectorConfig, Position
from common.recording_set import RecordingSet, SetNode, write_set
from common.timefmt import ns_to_iso
from node.audio import AudioBlock
from node.wav_source import to_pcm16

log = logging.getLogger("earwitness.node.recorder")


class RecorderError(RuntimeError):
    """Recording failed (disk full, directory gone) and has stopped; the text says where and why."""


class Recorder:
    """Write blocks to ``DIR/<node>-<start>.wav`` and a matching ``set.json``.

    ``to_utc_ns``: the node's timebase (frame → UTC ns), read when a piece is
    closed so the start time is the best estimate the timebase has by then.
    ``channel``: the column of the blocks to keep (the microphone's).
    """

    def __init__(self, directory: str | Path, node_id: str, sample_rate: float, channel: int,
                 to_utc_ns: Callable[[float], int], position: Callable[[], Position | None],
                 max_s: float = 600.0, detector: DetectorConfig | None = None) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.node_id = node_id
        self.fs = int(sample_rate)
        self.channel = channel
        self.to_utc_ns = to_utc_ns
        self.position = position
        self.max_frames = int(max_s * sample_rate)
        #: the node's detector settings, written into each set.json for replay
        self.detector = detector
        self._wav: wave.Wave_write | None = None
        self._path: Path | None = None
        self._first = 0
        self._frames = 0
        self.pieces: list[Path] = []
        #: why recording stopped ("" while it runs)
        self.failed = ""

    def write(self, block: AudioBlock) -> None:
        """Append ``block``'s ``channel`` to the current piece (a gap in frames or
        ``max_s`` starts a new one). Raises :class:`RecorderError` when a write
        fails, after finishing the piece as far as the disk allows; every later
        call raises it again."""
        if self.failed:
            raise RecorderError(self.failed)
        try:
            if self._wav is not None and (block.first_frame != self._first + self._frames
                                          or self._frames >= self.max_frames):
                self.close_piece()
            if self._wav is None:
                self._open(block.first_frame)
            pcm = to_pcm16(block.samples[:, self.channel])
            assert self._wav is not None
            self._wav.writeframes(pcm.tobytes())
            self._frames += len(pcm)
        except OSError as exc:
            where = self._path or self.dir
            self.failed = f"cannot write {where}: {exc.strerror or exc}"
            self._abandon()
            raise RecorderError(self.failed) from None

    def _abandon(self) -> None:
        """After a failed write: finish the current piece if the disk still lets us
        (its header and set.json), else leave what is there."""
        try:
            self.close_piece()
        except OSError as exc:
            log.warning("recording %s could not be finished (%s); its WAV header may be wrong",
                        self._path.name if self._path else self.dir, exc.strerror or exc)

    def _open(self, first_frame: int) -> None:
        try:
            t_ns = self.to_utc_ns(first_frame)
        except RuntimeError:      # no timing yet (PPS not locked): the name only needs a rough time
            t_ns = time.time_ns()
        stamp = ns_to_iso(t_ns, 0).replace(":", "").replace("-", "")
        self._path = self.dir / f"{self.node_id}-{stamp}-{first_frame}.wav"
        w = wave.open(str(self._path), "wb")
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(self.fs)
        self._wav = w
        self._first = first_frame
        self._frames = 0

    def close_piece(self) -> Path | None:
        """Finish the current WAV and write its set.json (next to it, in a folder).
        None when no piece is open (also after a failure)."""
        if self._wav is None or self._path is None:
            return None
        wav, self._wav = self._wav, None
        wav.close()
        pos = self.position()
        if pos is None:
            log.warning("recording %s has no position (no GPS fix and none configured); "
                        "set.json uses 0, 0 — edit it before replaying", self._path.name)
            pos = Position(0.0, 0.0, 0.0)
        piece_dir = self._path.with_suffix("")
        piece_dir.mkdir(exist_ok=True)
        wav_path = piece_dir / self._path.name
        self._path.replace(wav_path)
        rs = RecordingSet(path=None, temperature_c=None, nodes=(SetNode(
            id=self.node_id, lat=pos.lat, lon=pos.lon, alt=pos.alt, wav=wav_path,
            start_utc_ns=self.to_utc_ns(self._first), detector=self.detector),))
        write_set(piece_dir, rs)
        self.pieces.append(piece_dir)
        return piece_dir
