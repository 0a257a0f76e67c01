"""Bytes uploaded to fal, and the time to make the upload file, against the floor: a mono 48 kHz 24-bit FLAC
of the same audio.

For each source container (WAV, AIFF, FLAC, CAF, RF64 at 44.1 kHz stereo 24-bit; WAV at 96 kHz stereo and
44.1 kHz 5.1; an MP3), `make_upload_file` is called as the pipeline calls it for fal (`shrink=True`), and
the file it returns is measured. The floor is made in the same run, with the same encoder (libsndfile's
FLAC), from the channels' mean resampled whole by soxr: what the service needs and nothing more. Also
printed: what the code before this change sent (a stereo FLAC at the source's rate) and the optional
16-bit upload. Goal: bytes <= 1.05x the floor; a lossy source sent as is when smaller.

    python benchmarks/bench_upload_size.py [--seconds 180] [--runs 5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
from _common import report, spread, write_test_audio

try:
    import bridge  # noqa: F401
except ModuleNotFoundError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bridge.audio.source import make_upload_file, probe_source

GOAL = 1.05
# name: (container, subtype, rate, channels, file extension)
SOURCES = {
    "WAV 44.1k stereo": ("WAV", "PCM_24", 44_100, 2, "wav"),
    "AIFF 44.1k stereo": ("AIFF", "PCM_24", 44_100, 2, "aiff"),
    "FLAC 44.1k stereo": ("FLAC", "PCM_24", 44_100, 2, "flac"),
    "CAF 44.1k stereo": ("CAF", "PCM_24", 44_100, 2, "caf"),
    "RF64 44.1k stereo": ("RF64", "PCM_24", 44_100, 2, "wav"),
    "WAV 96k stereo": ("WAV", "PCM_24", 96_000, 2, "wav"),
    "WAV 44.1k 5.1": ("WAV", "PCM_24", 44_100, 6, "wav"),
    "MP3 44.1k stereo": ("MP3", "MPEG_LAYER_III", 44_100, 2, "mp3"),
}


def make_source(folder: Path, name: str, seconds: float) -> Path:
    fmt, subtype, rate, channels, ext = SOURCES[name]
    plain = folder / f"plain-{rate}-{channels}.wav"
    if not plain.exists():
        write_test_audio(plain, seconds, rate, channels, "PCM_24")
    path = folder / f"{name.replace(' ', '_')}.{ext}"
    data, _ = sf.read(str(plain), dtype="float64")
    sf.write(str(path), data, rate, subtype=subtype, format=fmt)
    return path


def floor_bytes(source: Path, folder: Path, bits: int = 24) -> int:
    """A mono 48 kHz FLAC of the whole source, made in one go."""
    data, rate = sf.read(str(source), dtype="float64", always_2d=True)
    mono = data.mean(axis=1)
    if rate != 48_000:
        mono = soxr.resample(mono, rate, 48_000, quality="HQ")
    top = 1.0 - 2.0 ** (1 - bits)
    path = folder / "floor.flac"
    sf.write(str(path), np.clip(mono, -1.0, top), 48_000, subtype=f"PCM_{bits}")
    return path.stat().st_size


def head_bytes(source: Path, folder: Path) -> int:
    """What the code before this change sent for a PCM source: a stereo FLAC at the source's rate."""
    info = sf.info(str(source))
    if info.format == "MP3" or info.channels > 8:
        return source.stat().st_size
    path = folder / "head.flac"
    data, rate = sf.read(str(source), dtype="float64")
    sf.write(str(path), np.clip(data, -1.0, 1.0 - 2.0**-23), rate, subtype="PCM_24")
    return path.stat().st_size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=180.0, help="length of each source")
    parser.add_argument("--runs", type=int, default=5, help="timed makings of each upload file")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-upload-") as tmp:
        folder = Path(tmp)
        print(f"{'source':20} {'MiB sent':>8} {'floor MiB':>9} {'ratio':>6} {'before':>7} {'16-bit':>7}  make (s)")
        for name in SOURCES:
            source = make_source(folder, name, args.seconds)
            info = probe_source(source)
            times, sent = [], 0
            for run in range(args.runs):
                work = folder / f"work-{run}"
                began = time.perf_counter()
                upload, _ = make_upload_file(info, 0, info.frames, work, shrink=True)
                times.append(time.perf_counter() - began)
                sent = upload.stat().st_size
                if upload != source:
                    upload.unlink()
            sixteen, _ = make_upload_file(info, 0, info.frames, folder / "w16", shrink=True, bits=16)
            sixteen_bytes = sixteen.stat().st_size
            if sixteen != source:
                sixteen.unlink()
            floor = floor_bytes(source, folder)
            before = head_bytes(source, folder)
            ratio = sent / floor
            print(f"{name:20} {sent / 2**20:8.2f} {floor / 2**20:9.2f} {ratio:6.3f} {before / 2**20:7.2f} "
                  f"{sixteen_bytes / 2**20:7.2f}  {spread(times)}")
            rows.append({"figure": f"upload of {args.seconds:g} s {name} (MiB)",
                         "measured": f"{sent / 2**20:.2f} MiB; 16-bit {sixteen_bytes / 2**20:.2f} MiB; "
                                     f"made in {spread(times, unit=' s')}",
                         "floor": f"mono 48 kHz 24-bit FLAC {floor / 2**20:.2f} MiB (before: {before / 2**20:.2f} MiB)",
                         "ratio": f"{ratio:.3f}", "goal": f"<= {GOAL:g}" + (" (lossy: as is)" if info.lossy else "")})
            source.unlink()
    report("bench_upload_size", rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
