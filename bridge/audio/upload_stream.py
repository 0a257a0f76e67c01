"""The upload FLAC encoded while it is sent: the same part's mono 48 kHz mix `make_upload_file` writes, passed
on front to back in blocks, so the first bytes can leave long before the last audio is encoded.

libsndfile writes a FLAC from front to back and, at close, seeks back to fill in STREAMINFO: the total
samples, the MD5 of the audio and the smallest/largest frame sizes. Bytes already sent cannot be patched, so
those late writes are dropped. The FLAC format gives each of them an "unknown" value (0), which is what
libsndfile wrote first; the total samples is known beforehand (soxr's streamed output length is exact, see
`service_frames`) and is written into the header before it leaves, so every reader knows the length (a FLAC
without it reads as endless in libsndfile). The audio frames are byte for byte those of the whole-file
encode; `encode_upload` checks the sample count it announced and raises `AnnouncedLengthWrong` otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import soundfile as sf

from bridge.audio.source import PCM_BITS, SERVICE_RATE, SourceInfo, service_mix

log = logging.getLogger(__name__)

Emit = Callable[[bytes], None]

# STREAMINFO: "fLaC", a 4-byte block header (type 0, length 34), then 34 bytes; the 36-bit total samples
# field ends at byte 26 (after 20 bits of rate, 3 of channels, 5 of bits per sample).
_STREAMINFO_END = 42
_FIELDS = slice(18, 26)
_TOTAL_MASK = (1 << 36) - 1


class AnnouncedLengthWrong(RuntimeError):
    """The streamed FLAC holds a different number of samples than its header announced (never seen: the
    caller then sends the whole-file encode instead)."""


def service_frames(samplerate: int, frames: int) -> int:
    """How many 48 kHz samples `service_mix` yields for `frames` at `samplerate` (and the one sample written
    when that is none): soxr's streamed output is the input length times the ratio, rounded half up."""
    count = frames if samplerate == SERVICE_RATE else (2 * frames * SERVICE_RATE + samplerate) // (2 * samplerate)
    return max(count, 1)


def flac_size_bound(samples: int, subtype: str) -> int:
    """No mono FLAC of `samples` is larger: each frame at worst verbatim, plus its headers and the file's."""
    raw = samples * PCM_BITS[subtype] // 8
    return raw + (samples // 1024 + 1) * 32 + (64 << 10)


class _ForwardSink:
    """A file object for libsndfile that passes its writes on in order and drops the late STREAMINFO patches."""

    def __init__(self, emit: Emit, total_samples: int) -> None:
        self._emit = emit
        self._total = total_samples
        self._pending = bytearray()
        self._end = 0  # bytes written in order so far
        self._pos = 0
        self._header_done = False
        self.dropped: list[tuple[int, int]] = []  # (offset, length) of the patches libsndfile tried at close

    def write(self, data: bytes) -> int:
        size = len(data)
        if self._pos < self._end:  # a patch of bytes already passed on (STREAMINFO, at close)
            if self._pos + size > self._end:
                raise OSError("the FLAC writer rewrote past the bytes already sent")
            self.dropped.append((self._pos, size))
        else:
            self._pending += data
            self._end += size
        self._pos += size
        return size

    def seek(self, offset: int, whence: int = 0) -> int:
        self._pos = offset if whence == 0 else (self._pos + offset if whence == 1 else self._end + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def read(self, size: int = -1) -> bytes:
        return b""  # libsndfile never reads back what it writes

    def flush(self) -> None:
        """Pass on what was written since the last flush (the header once its total samples is set)."""
        if not self._pending:
            return
        if not self._header_done:
            if len(self._pending) < _STREAMINFO_END:
                return
            self._announce_total()
            self._header_done = True
        chunk = bytes(self._pending)
        self._pending.clear()
        self._emit(chunk)

    def _announce_total(self) -> None:
        header = self._pending
        if header[:4] != b"fLaC" or header[4] & 0x7F != 0 or int.from_bytes(header[5:8], "big") != 34:
            raise OSError("the FLAC writer did not start with STREAMINFO")
        fields = int.from_bytes(header[_FIELDS], "big")
        header[_FIELDS] = ((fields & ~_TOTAL_MASK) | self._total).to_bytes(8, "big")


def encode_upload(info: SourceInfo, start_frame: int, frames: int, subtype: str, emit: Emit) -> int:
    """Pass the part's mono 48 kHz `subtype` FLAC to `emit`, front to back, one block at a time (a block of
    source audio is ~1.4 s); returns the samples written. Raises what `emit` raises (to stop it early)."""
    expected = service_frames(info.samplerate, frames)
    sink = _ForwardSink(emit, expected)
    written = 0
    with sf.SoundFile(sink, "w", SERVICE_RATE, 1, subtype, format="FLAC") as dst:
        for block in service_mix(info, start_frame, frames, PCM_BITS.get(subtype)):
            dst.write(block)
            written += len(block)
            sink.flush()
        if written == 0:  # as make_upload_file: an empty FLAC is no audio file
            dst.write(np.zeros(1, np.float32))
            written = 1
    sink.flush()
    if written != expected:
        raise AnnouncedLengthWrong(f"the streamed upload announced {expected} samples but holds {written}")
    log.debug("streamed upload of %s: %d samples, STREAMINFO patches dropped: %s", info.path.name, written,
              sink.dropped)
    return written
