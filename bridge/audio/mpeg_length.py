"""The exact length of an MPEG audio file (MP3, MP2), in frames.

libsndfile reads an MPEG file's length from its Xing/Info (LAME) or VBRI header; without one it guesses
from the file size and the first frame's bitrate, and the guess can be hundreds of samples off (a CBR MP3
written with `-write_xing 0`: 134,062 said, 133,632 decoded). A job sized on the guess was paid for and
then failed at conform as "ended earlier than expected", and every retry paid again. Without a header the
file is decoded once to count (about 270× real time) and the count kept per file version.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import soundfile as sf

_LENGTH_TAGS = (b"Xing", b"Info", b"VBRI")  # frame-count headers in the first MPEG frame
_FIRST_FRAME_BYTES = 4096  # a first frame is at most 2881 bytes (MPEG-1 layer III, 320 kbit/s, 32 kHz)
_counted: dict[tuple[str, int, int, int], int] = {}  # (path, inode, size, mtime) -> decoded frames
_counted_lock = threading.Lock()


def has_length_header(path: Path) -> bool:
    """Whether the first MPEG frame (after an ID3v2 tag, which may hold cover art) carries a frame count."""
    with open(path, "rb") as handle:
        head = handle.read(10)
        start = 0
        if head[:3] == b"ID3" and len(head) == 10:  # ID3v2: a 10-byte header, then a syncsafe size
            size = (head[6] & 0x7F) << 21 | (head[7] & 0x7F) << 14 | (head[8] & 0x7F) << 7 | head[9] & 0x7F
            start = 10 + size + (10 if head[5] & 0x10 else 0)  # the footer flag adds 10 more
        handle.seek(start)
        frame = handle.read(_FIRST_FRAME_BYTES)
    return any(tag in frame for tag in _LENGTH_TAGS)


def exact_frames(path: Path, said: int) -> int:
    """`said` (libsndfile's figure) when the file states its length, else the frames decoding gives."""
    if has_length_header(path):
        return said
    status = os.stat(path)
    version = (str(path), status.st_ino, status.st_size, status.st_mtime_ns)
    with _counted_lock:
        if version in _counted:
            return _counted[version]
    frames = 0
    with sf.SoundFile(str(path)) as audio:
        while block := len(audio.read(1 << 16, dtype="float32")):
            frames += block
    with _counted_lock:
        _counted[version] = frames
    return frames
