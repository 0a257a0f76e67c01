"""Where to audition a prompt: the loudest window of the part (a quiet stretch would tell nothing)."""

from __future__ import annotations

import numpy as np
import soundfile as sf

from bridge.audio.source import READ_BLOCK, SourceInfo, read_block

HOP_SECONDS = 0.1  # the window may start on any 100 ms step: enough for choosing where to listen


def loudest_window(info: SourceInfo, start_frame: int, frames: int, seconds: float,
                   from_start: bool = False) -> tuple[int, int]:
    """(start_frame, frames) of the `seconds`-long window of the part with the most energy (all channels),
    or the part's first `seconds` when `from_start`; the whole part when it is not longer than that."""
    window = min(frames, max(1, round(seconds * info.samplerate)))
    if window >= frames or from_start:
        return start_frame, window
    hop = max(1, round(HOP_SECONDS * info.samplerate))
    energy: list[float] = []  # per hop-long slice of the part
    with sf.SoundFile(str(info.path)) as f:
        f.seek(start_frame)
        left = frames
        carry = np.zeros((0, info.channels), np.float32)
        while left > 0:
            block = read_block(f, min(READ_BLOCK, left), "float32")
            if len(block) == 0:
                break
            left -= len(block)
            data = np.concatenate((carry, block)) if len(carry) else block
            whole = len(data) // hop * hop
            slices = data[:whole].reshape(-1, hop, info.channels)
            energy.extend(np.square(slices, dtype=np.float64).sum(axis=(1, 2)).tolist())
            carry = data[whole:]
    per_window = max(1, window // hop)
    if len(energy) <= per_window:
        return start_frame, window
    sums = np.convolve(np.asarray(energy), np.ones(per_window), mode="valid")
    best = int(np.argmax(sums))  # the first of equally loud windows: silence keeps the part's start
    offset = min(best * hop, frames - window)
    return start_frame + offset, window
