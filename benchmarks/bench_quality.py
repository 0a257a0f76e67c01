"""What measuring the quality flags costs inside conform: the QualityMeter alone on 2 minutes of 48 kHz
audio fed in conform's blocks, against its peer in the same run, one conform of a stereo 48 kHz/24-bit
source of the same length (which now includes the meter: alignment, projection, the meter, quantising
and writing both stems). Medians of 5 (min–max), real-time factors; the ratio is the meter's share of
conform.

    python benchmarks/bench_quality.py [--seconds 120] [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
from _common import ratio_spread, report, spread

from bridge.audio.conform import ConformSpec, conform
from bridge.audio.quality import QualityMeter
from bridge.audio.source import probe_source

RATE = 48_000
BLOCK = 1 << 16


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    n = round(args.seconds * RATE)
    rng = np.random.default_rng(1)
    mono = (0.2 * rng.standard_normal(n)).astype(np.float32)
    target = (0.5 * mono).astype(np.float32)
    meter_times, conform_times = [], []
    with tempfile.TemporaryDirectory() as work:
        folder = Path(work)
        sf.write(str(folder / "src.wav"), np.stack([mono, 0.8 * mono], axis=1), RATE, subtype="PCM_24")
        sf.write(str(folder / "t.wav"), 0.9 * target, RATE, subtype="FLOAT")
        sf.write(str(folder / "r.wav"), 0.9 * mono - 0.9 * target, RATE, subtype="FLOAT")
        info = probe_source(folder / "src.wav")
        for run in range(args.runs):
            began = time.perf_counter()
            meter = QualityMeter(RATE)
            for start in range(0, n, BLOCK):
                meter.feed(mono[start:start + BLOCK], target[start:start + BLOCK],
                           mono[start:start + BLOCK] - target[start:start + BLOCK])
            meter.report()
            meter_times.append(time.perf_counter() - began)
            began = time.perf_counter()
            conform(ConformSpec(source=info, start_frame=0, frames=info.frames), folder / "t.wav", folder / "r.wav",
                    folder / f"T{run}.wav", folder / f"R{run}.wav")
            conform_times.append(time.perf_counter() - began)
    for name, times in (("quality meter", meter_times), ("conform (with meter)", conform_times)):
        median = statistics.median(times)
        print(f"{name:<22} median {median:.3f} s ({min(times):.3f}–{max(times):.3f}), "
              f"{args.seconds / median:.0f}x real time")
    print(f"meter share of conform: {statistics.median(meter_times) / statistics.median(conform_times):.0%}")
    speed = [args.seconds / t for t in meter_times]
    report("bench_quality", [{
        "figure": f"quality meter alone, {args.seconds:g} s of 48 kHz in conform's blocks ({args.runs} runs)",
        "measured": f"{spread(meter_times, unit=' s')}; {spread(speed, unit='x')} real time",
        "floor": "peer: one whole conform of a stereo 48 kHz/24-bit source of that length, meter included: "
                 f"{spread(conform_times, unit=' s')}",
        "ratio": ratio_spread(meter_times, conform_times), "goal": "none set (issue #23): the share is the figure"}])
    return 0


if __name__ == "__main__":
    sys.exit(main())
