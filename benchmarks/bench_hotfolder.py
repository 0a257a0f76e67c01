"""Hot-folder benchmark: detection latency and premature pickups.

    python benchmarks/bench_hotfolder.py [--files 50] [--slow-writes 200] [--settle 1.0] [--json out.json]

1. Detection latency (last byte written -> job submitted), median and p95 over `--files` files, for the
   native observer and the polling observer. Each file is rendered DAW-style (placeholder header, audio
   in chunks, header patched last). Goal: native median <= settle window + 0.3 s.
2. Premature pickups over `--slow-writes` slow writes: writers with random stalls (some longer than the
   settle window) and headers that stay at zero or lag behind the audio until the end. A pickup is
   premature when the job is submitted before the writer finished or with other bytes than the final
   file. Goal: 0.
The sink records the submit time and the file's hash; it stands in for the engine (the lead switches
it to the real one). Exit status 1 if a goal is missed.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import random
import statistics
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

try:
    import bridge  # noqa: F401
except ModuleNotFoundError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import soundfile as sf
from _common import NullSink, report

from bridge import __version__
from bridge.common.request import SeparationRequest
from bridge.hotfolder.watcher import HotFolder, HotFolderWatcher

LATENCY_MARGIN = 0.3  # goal: native median <= settle + this


class TimingSink(NullSink):
    """A JobSink that records when each source was submitted and what it held then."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.submitted: dict[str, list[tuple[float, str]]] = {}

    def submit(self, request: SeparationRequest) -> str:
        at = time.monotonic()
        digest = hashlib.sha256(request.source.read_bytes()).hexdigest()
        with self.lock:
            self.submitted.setdefault(request.source.name, []).append((at, digest))
            return f"job-{sum(len(v) for v in self.submitted.values())}"

    def preset_names(self) -> list[str]:
        return ["vocals"]

    def count(self) -> int:
        with self.lock:
            return sum(len(v) for v in self.submitted.values())


def wav_bytes(seconds: float, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    data = (rng.uniform(-0.5, 0.5, size=(int(seconds * 48000), 2)) * 32767).astype(np.int16)
    buffer = io.BytesIO()
    sf.write(buffer, data, 48000, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def render(path: Path, data: bytes, chunks: int, gap: Callable[[int], float], header: str = "zeros") -> float:
    """Write like a DAW; return time.monotonic() right after the last byte (the patched header)."""
    data_at = data.index(b"data") + 8
    body = data[data_at:]
    step = -(-len(body) // chunks)

    def header_for(body_bytes: int) -> bytes:
        head = bytearray(data[:data_at])
        head[4:8] = struct.pack("<I", data_at - 8 + body_bytes)
        head[data_at - 4 : data_at] = struct.pack("<I", body_bytes)
        return bytes(head)

    with open(path, "wb") as handle:
        handle.write(header_for(0))
        for index in range(chunks):
            handle.write(body[index * step : (index + 1) * step])
            if header == "lagging" and index % 4 == 1:
                handle.seek(0)
                handle.write(header_for(min(len(body), (index + 1) * step)))
                handle.seek(0, os.SEEK_END)
            handle.flush()
            time.sleep(gap(index))
        handle.seek(0)
        handle.write(data[:data_at])
        handle.flush()
        done = time.monotonic()
    return done


def wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def measure_latency(root: Path, files: int, settle: float, polling: bool) -> dict[str, float]:
    folder = root / ("polling" if polling else "native")
    folder.mkdir()
    sink = TimingSink()
    hot = HotFolder(folder, preset="vocals", polling=polling, settle_seconds=settle)
    watcher = HotFolderWatcher(sink, [hot], instance_id=f"bench-{polling}", rescan_interval=3600)
    watcher.start()
    finished: dict[str, float] = {}
    try:
        for index in range(files):
            name = f"take {index:03}.wav"
            finished[name] = render(folder / name, wav_bytes(0.5, index), chunks=5, gap=lambda _: 0.02)
        wait_for(lambda: sink.count() >= files, timeout=settle + 30)
    finally:
        watcher.stop()
    latencies = sorted(
        sink.submitted[name][0][0] - end for name, end in finished.items() if name in sink.submitted
    )
    return {
        "files": files,
        "detected": len(latencies),
        "median_s": statistics.median(latencies) if latencies else float("nan"),
        "p95_s": latencies[max(0, int(len(latencies) * 0.95) - 1)] if latencies else float("nan"),
        "max_s": latencies[-1] if latencies else float("nan"),
    }


def measure_premature(root: Path, writes: int, settle: float, parallel: int) -> dict[str, float]:
    folder = root / "slow"
    folder.mkdir()
    sink = TimingSink()
    watcher = HotFolderWatcher(sink, [HotFolder(folder, preset="vocals", settle_seconds=settle)],
                               instance_id="bench-slow", rescan_interval=1.0)
    watcher.start()
    results: dict[str, tuple[float, str]] = {}
    lock = threading.Lock()

    def slow_write(index: int) -> None:
        rng = random.Random(index)
        data = wav_bytes(1.0, 1000 + index)
        # Never stall right after a lagging header was made to match the audio: a file that is valid
        # and quiet for longer than the settle window cannot be told from a finished one (see README).
        stall_at = rng.choice([i for i in range(2, 10) if i % 4 != 1])
        stall = rng.uniform(1.2, 2.5) * settle  # longer than the settle window: only the header saves us
        name = f"slow {index:03}.wav"
        header = "zeros" if index % 2 else "lagging"
        end = render(folder / name, data, chunks=12,
                     gap=lambda i: stall if i == stall_at else rng.uniform(0.0, 0.6) * settle, header=header)
        with lock:
            results[name] = (end, hashlib.sha256(data).hexdigest())

    try:
        with ThreadPoolExecutor(parallel) as pool:
            list(pool.map(slow_write, range(writes)))
        wait_for(lambda: sink.count() >= writes, timeout=settle + 30)
        time.sleep(settle + 0.5)  # let any second pickup show
    finally:
        watcher.stop()
    premature = duplicates = missed = 0
    for name, (end, digest) in results.items():
        picks = sink.submitted.get(name, [])
        missed += not picks
        duplicates += max(0, len(picks) - 1)
        premature += sum(1 for at, got in picks if at < end or got != digest)
    errors = len(list(folder.glob("*.error.txt")))  # a half-written file judged broken is a miss too
    return {"writes": writes, "premature": premature, "duplicates": duplicates, "missed": missed,
            "error_files": errors}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=50)
    parser.add_argument("--slow-writes", type=int, default=200)
    parser.add_argument("--parallel", type=int, default=20, help="slow writers at once")
    parser.add_argument("--settle", type=float, default=1.0, help="settle window, seconds")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench-hot-") as temp:
        root = Path(temp)
        native = measure_latency(root, args.files, args.settle, polling=False)
        polling = measure_latency(root, args.files, args.settle, polling=True)
        slow = measure_premature(root, args.slow_writes, args.settle, args.parallel)
    goal = args.settle + LATENCY_MARGIN
    print(f"sam-bridge {__version__} hot-folder benchmark, settle window {args.settle:.2f} s, "
          f"{os.cpu_count()} CPUs")
    for label, row in (("native", native), ("polling", polling)):
        print(f"  {label:<8} latency: median {row['median_s']:.3f} s  p95 {row['p95_s']:.3f} s  "
              f"max {row['max_s']:.3f} s  ({row['detected']}/{row['files']} detected)")
    print(f"  slow writes: {slow['premature']} premature, {slow['duplicates']} duplicate, "
          f"{slow['missed']} missed, {slow['error_files']} error files, of {slow['writes']}")
    ok = (native["median_s"] <= goal and native["detected"] == native["files"]
          and polling["detected"] == polling["files"] and slow["premature"] == 0
          and slow["duplicates"] == 0 and slow["missed"] == 0 and slow["error_files"] == 0)
    verdict = "met" if ok else "MISSED"
    print(f"  goals (native median <= {goal:.2f} s, 0 premature/duplicate/missed/errors): {verdict}")
    report("bench_hotfolder", [
        *({"figure": f"hot folder ({label}), last byte written -> job submitted, {row['files']} files",
           "measured": f"{row['median_s']:.3f} s (p95 {row['p95_s']:.3f}, max {row['max_s']:.3f})",
           "floor": f"settle window {args.settle:g} s",
           "goal": f"median <= {goal:.2f} s" if label == "native" else "all detected"}
          for label, row in (("native", native), ("polling", polling))),
        {"figure": f"hot folder, {slow['writes']} slow writes", "measured": f"{slow['premature']} premature, "
         f"{slow['duplicates']} duplicate, {slow['missed']} missed", "goal": "0"},
    ])
    if args.json:
        args.json.write_text(json.dumps({"settle_s": args.settle, "native": native, "polling": polling,
                                         "slow_writes": slow, "goals_met": ok}, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
