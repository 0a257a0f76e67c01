"""The exact length of an MPEG audio file (MP3, MP2), in frames.

libsndfile reads an MPEG file's length from its Xing/Info (LAME) or VBRI header; without one it guesses
from the file size and the first frame's bitrate, and the guess can be hundreds of samples off (a CBR MP3
written with `-write_xing 0`: 134,062 said, 133,632 decoded). A job sized on the guess was paid for and
then failed at conform as "ended earlier than expected", and every retry paid again. Without a header that
counts the frames, the file is decoded once to count (about 270× real time) and the count kept per file
version.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path

import soundfile as sf

_SEARCH_BYTES = 64 * 1024  # where the first frame must start (after an ID3v2 tag): junk before it is rare
_KEPT = 256  # file versions whose decoded length is remembered
_counted: OrderedDict[tuple[str, int, int, int], int] = OrderedDict()  # (path, inode, size, mtime) -> frames
_counted_lock = threading.Lock()


def _id3v2_end(head: bytes) -> int:
    """Where the audio starts after an ID3v2 tag (which may hold cover art): 0 without one."""
    if head[:3] != b"ID3" or len(head) < 10:
        return 0
    size = (head[6] & 0x7F) << 21 | (head[7] & 0x7F) << 14 | (head[8] & 0x7F) << 7 | head[9] & 0x7F
    return 10 + size + (10 if head[5] & 0x10 else 0)  # the footer flag adds 10 more


def _first_frame(data: bytes) -> int | None:
    """Offset of the first plausible MPEG audio frame header in `data`."""
    for at in range(len(data) - 4):
        b1, b2 = data[at + 1], data[at + 2]
        if (data[at] == 0xFF and b1 & 0xE0 == 0xE0 and (b1 >> 3) & 3 != 1 and (b1 >> 1) & 3 != 0
                and b2 >> 4 != 0xF and (b2 >> 2) & 3 != 3):
            return at
    return None


def counts_frames(data: bytes) -> bool:
    """Whether the first frame in `data` carries a frame count: a Xing/Info tag (Layer III) at its place after
    the side information, with its frames flag set, or a VBRI tag 32 bytes after the header. A tag name met
    elsewhere (in the audio bits) proves nothing."""
    at = _first_frame(data)
    if at is None:
        return False
    b1, b3 = data[at + 1], data[at + 3]
    mpeg1, layer3, mono = (b1 >> 3) & 3 == 3, (b1 >> 1) & 3 == 1, (b3 >> 6) & 3 == 3
    if data[at + 36 : at + 40] == b"VBRI":
        return True
    if not layer3:
        return False
    side = (17 if mono else 32) if mpeg1 else (9 if mono else 17)
    for start in (at + 4 + side, at + 6 + side):  # + 2: a CRC after the header
        if data[start : start + 4] in (b"Xing", b"Info"):
            flags = int.from_bytes(data[start + 4 : start + 8], "big")
            return bool(flags & 1)
    return False


def exact_frames(path: Path, said: int) -> int:
    """`said` (libsndfile's figure) when the file states its length, else the frames decoding gives."""
    with open(path, "rb") as handle:
        start = _id3v2_end(handle.read(10))
        handle.seek(start)
        if counts_frames(handle.read(_SEARCH_BYTES)):
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
        while len(_counted) > _KEPT:
            _counted.popitem(last=False)
    return frames
