"""Benchmark the conform stage alone: a 10-minute stereo 44.1 kHz/24-bit source (the common case: the
service's 48 kHz result is resampled to it).

Makes the source and a fake service result (mono 48 kHz float WAV, or MP3 with --mp3) block by block in
a temporary folder, then runs `conform` in a child process pinned to ONE CPU core: one warm-up run, then
`--repeats` timed runs (fresh outputs each time). Prints the median real-time factor with its min–max
and the child's peak RSS (before/after). Each run's time is the whole `conform` call: alignment, both
resamplings, projection, quantising, writing both stems (closed: libsndfile's close fsyncs them) and
reading their lengths back. Goal: >= 250x real time (median).

The stereo projection's share is printed apart: the CPU time of its calls (`MaskProjector.process` and
`flush`, timed on the thread that makes them) in the same runs, and the real-time factor of the rest.

    python benchmarks/bench_conform.py [--minutes 10] [--rate 44100] [--repeats 5] [--mp3] [--bwf]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np
import soundfile as sf
import soxr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import report, spread  # noqa: E402

BLOCK = 48_000 * 10


def peak_rss_mb() -> float:
    """This process's own peak RSS (VmHWM). Not ru_maxrss: Linux carries a parent's peak into its child's
    ru_maxrss across exec, so a child started by a bigger parent would report the parent's."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):  # not Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / (1024 if sys.platform == "darwin" else 1)


def make_files(folder: Path, minutes: float, rate: int, mp3: bool, bwf: bool) -> tuple[Path, Path, Path]:
    """Source = a 'target' part (left-leaning tones + clicks) + a 'residual' part (stereo noise)."""
    frames = round(minutes * 60 * rate)
    source = folder / "source.wav"
    ext = "mp3" if mp3 else "wav"
    target, residual = folder / f"svc.target.{ext}", folder / f"svc.residual.{ext}"
    rng = np.random.default_rng(7)
    svc_args = {"format": "MP3"} if mp3 else {"subtype": "FLOAT"}
    with (
        sf.SoundFile(str(source), "w", rate, 2, "PCM_24") as src,
        sf.SoundFile(str(target), "w", 48_000, 1, **svc_args) as tgt,
        sf.SoundFile(str(residual), "w", 48_000, 1, **svc_args) as res,
    ):
        # the service works at 48 kHz: other source rates go through soxr like the real result would
        to_service = [
            soxr.ResampleStream(rate, 48_000, 1, dtype="float64") if rate != 48_000 else None for _ in range(2)
        ]
        for start in range(0, frames, BLOCK):
            n = min(BLOCK, frames - start)
            t = (np.arange(start, start + n) / rate)[:, None]
            part_t = 0.3 * np.sin(2 * np.pi * 330 * t) * np.array([[0.9, 0.3]])
            part_t[rng.random(n) < 2e-4] += 0.4
            part_r = rng.uniform(-0.15, 0.15, (n, 2))
            src.write(part_t + part_r)
            last = start + n >= frames
            for stream, part, out in zip(to_service, (part_t, part_r), (tgt, res), strict=True):
                mono = part.mean(axis=1)
                out.write(stream.resample_chunk(mono, last=last) if stream is not None else mono)
    if bwf:
        from bridge.audio import bwf as bwf_chunks

        bext = bytearray(602)
        bext[:14] = b"bench session "
        bwf_chunks.append_chunks(source, bwf_chunks.with_time_reference(bytes(bext), 3600 * rate), b"<BWFXML/>")
    return source, target, residual


def run_conform(folder: Path, repeats: int) -> dict[str, object]:
    """In the child: one core, conform `repeats` times (fresh outputs each time), report time and memory."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    from bridge.audio import conform as conform_module
    from bridge.audio.conform import ConformSpec, conform
    from bridge.audio.projection import MaskProjector
    from bridge.audio.source import probe_source

    projection = [0.0]  # CPU seconds inside the projector in the current run

    class TimedProjector(MaskProjector):
        def process(self, *args: Any, **kwargs: Any) -> Any:
            began = time.thread_time()
            try:
                return super().process(*args, **kwargs)
            finally:
                projection[0] += time.thread_time() - began

        def flush(self) -> Any:
            began = time.thread_time()
            try:
                return super().flush()
            finally:
                projection[0] += time.thread_time() - began

    conform_module.MaskProjector = TimedProjector  # type: ignore[attr-defined]  # conform makes it by this name

    info = probe_source(folder / "source.wav")
    ext = "mp3" if (folder / "svc.target.mp3").exists() else "wav"
    rss_before = _rss_mb()
    walls, cpus, projections = [], [], []
    for _ in range(repeats + 1):  # the first run warms the caches and is not counted
        outputs = folder / "out.target.wav", folder / "out.residual.wav"
        for path in outputs:
            path.unlink(missing_ok=True)
        projection[0] = 0.0
        began, cpu = time.perf_counter(), time.process_time()
        report = conform(
            ConformSpec(info, 0, info.frames),
            folder / f"svc.target.{ext}",
            folder / f"svc.residual.{ext}",
            *outputs,
        )
        walls.append(time.perf_counter() - began)
        cpus.append(time.process_time() - cpu)
        projections.append(projection[0])
    return {
        "audio_seconds": info.seconds,
        "walls": walls[1:],
        "cpus": cpus[1:],
        "projections": projections[1:],
        "rss_before_mb": rss_before,
        "peak_rss_mb": peak_rss_mb(),
        "offset": report.offset_samples,
        "null_dbfs": report.null_test_dbfs,
        "flags": ",".join(report.flags) or "-",
    }


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=44_100, help="source sample rate")
    parser.add_argument("--mp3", action="store_true", help="service result as MP3 instead of float WAV")
    parser.add_argument("--bwf", action="store_true", help="give the source bext/iXML (stems get them too)")
    parser.add_argument("--repeats", type=int, default=5, help="timed conform runs (after one warm-up)")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_conform(args.child, args.repeats)))
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-conform-") as tmp:
        folder = Path(tmp)
        began = time.perf_counter()
        make_files(folder, args.minutes, args.rate, args.mp3, args.bwf)
        made_in = time.perf_counter() - began
        print(f"made {args.minutes:g} min stereo {args.rate} Hz/24-bit source in {made_in:.1f} s")
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        child = subprocess.run(
            [sys.executable, __file__, "--child", str(folder), "--repeats", str(args.repeats)],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        if child.returncode:
            print(child.stderr, file=sys.stderr)
            return child.returncode
        result = json.loads(child.stdout.strip().splitlines()[-1])
    audio = result["audio_seconds"]
    speeds = [audio / wall for wall in result["walls"]]
    cpu_speeds = [audio / cpu for cpu in result["cpus"]]
    projections = result["projections"]
    rest_speeds = [audio / (cpu - proj) for cpu, proj in zip(result["cpus"], projections, strict=True)]
    rest_wall_speeds = [audio / (wall - proj) for wall, proj in zip(result["walls"], projections, strict=True)]
    share = median(proj / cpu for cpu, proj in zip(result["cpus"], projections, strict=True))
    print(f"conform, one core: {audio:.0f} s of stereo {args.rate} Hz/24-bit audio, {len(speeds)} runs after a "
          f"warm-up: {spread(speeds, unit='x')} real time (wall), {spread(cpu_speeds, unit='x')} in CPU time "
          "(goal >= 250x; alignment, resampling, projection and writing both stems, fsynced at close)")
    print(f"  of which the stereo projection: {spread(projections, unit=' s')} CPU ({share:.0%}); everything "
          f"else: {spread(rest_speeds, unit='x')} real time in CPU time, {spread(rest_wall_speeds, unit='x')} wall")
    print(
        f"memory: RSS {result['rss_before_mb']:.0f} MB before conform, peak {result['peak_rss_mb']:.0f} MB "
        f"(growth {result['peak_rss_mb'] - result['rss_before_mb']:.0f} MB)"
    )
    print(f"offset {result['offset']}, null test {result['null_dbfs']} dBFS, flags {result['flags']}")
    what = f"{args.minutes:g} min stereo {args.rate / 1000:g} kHz/24-bit"
    report("bench_conform", [
        {"figure": f"conform alone, one core, {what}{', MP3 result' if args.mp3 else ''}: real-time factor",
         "measured": spread(speeds, unit="x"), "floor": f"CPU time: {spread(cpu_speeds, unit='x')}",
         "goal": ">= 250x"},
        {"figure": "conform without the stereo projection (its CPU time taken out), same runs",
         "measured": spread(rest_wall_speeds, unit="x"), "floor": f"CPU time: {spread(rest_speeds, unit='x')}; "
         f"projection {spread(projections, unit=' s')} CPU, {share:.0%} of conform", "goal": "-"},
        {"figure": "conform: peak RSS growth", "measured": f"{result['peak_rss_mb'] - result['rss_before_mb']:.0f} MB",
         "goal": "bounded"},
    ])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
