"""The upload stage, encoded while sent vs encoded whole then sent, against `sam-bridge local-service`.

    python benchmarks/bench_upload_stream.py [--minutes 3 --minutes 60] [--runs 5] [--json out.json]

1. Makes each source: a 44.1 kHz stereo 24-bit WAV of tones, clicks and noise (dense: its mono 48 kHz
   24-bit FLAC is ~0.7 of the raw mono PCM), block by block.
2. Starts the stand-in (strict mode) in a subprocess; it notes the wall-clock time each upload body's first
   byte arrives (`/_local/stats` -> `upload_body_started`).
3. Runs the upload stage as the pipeline does for fal (`send_upload`, shrink on, 24-bit: the part's mono
   48 kHz FLAC) `--runs` times per source and path, interleaved (which goes first alternates), each after
   `sync` (outside the clocks) in a fresh child process so its peak RSS is its own: "streamed" (encoded
   while sent: the new path) and "serial" (the file encoded whole into the work folder, then uploaded: the
   old path, `stream=False`).
Figures per source: time from the stage's start (in the child, before `send_upload`, after imports and
probing) to the first upload byte the stand-in received; the whole stage (encode + upload, to the URL);
the child's peak RSS; and that peak when the file store is slow (`--slow-runs`, the longest source: every
part's answer held 3 s, so ten parts wait unsent, the bound). Also, once, what the first part costs: the
time the encoder takes for its first block and for its first 10 MiB (decoding, mixing, resampling and
FLAC-encoding), and decoding alone of as much source. Goals (issue 20): first byte <= 0.3 s whatever the
length; peak RSS <= 300 MB for 60 min. The machine is shared (2 cores): wall times include others' load;
the serial path in the same runs is the peer.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    BENCH_KEY,
    MB,
    ROOT,
    LocalServiceProcess,
    python_env,
    ratio_spread,
    report,
    spread,
    table,
    write_test_audio,
)

FIRST_BYTE_GOAL = 0.3
RSS_GOAL_MB = 300


def child(mode: str, url: str, source: Path, work: Path) -> None:
    """One upload stage in this (fresh) process; prints its timings as JSON."""
    sys.path.insert(0, str(ROOT))
    from bridge.audio.source import probe_source
    from bridge.engine.upload_stage import send_upload
    from bridge.fal.auth import ApiKey
    from bridge.fal.client import FalClient

    info = probe_source(source)
    # data_uri_limit 0: even a tiny run's file goes to the file store (3 min and more do anyway)
    with FalClient(ApiKey(BENCH_KEY), queue_url=url, rest_url=url, data_uri_limit=0) as client:
        began = time.time()
        cpu = time.process_time()
        uploaded, record = send_upload(client.storage, info, 0, info.frames, work, shrink=True, bits=24,
                                       stream=mode == "streamed")
        ended = time.time()
    print(json.dumps({"began": began, "ended": ended, "cpu": time.process_time() - cpu, "bytes": record["bytes"],
                      "url": uploaded, "max_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


def run_child(mode: str, url: str, source: Path, work: Path, service: LocalServiceProcess) -> dict[str, Any]:
    os.sync()  # the previous run's dirty pages (its upload, the stand-in's parts) are not this run's to write
    proc = subprocess.run([sys.executable, __file__, "--child", mode, "--url", url, "--source", str(source),
                           "--work", str(work)], capture_output=True, text=True, env=python_env(), check=False)
    if proc.returncode != 0:
        raise SystemExit(f"the {mode} upload failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    arrivals = [at for at in service.stats()["upload_body_started"] if at >= result["began"]]
    result["first_byte"] = min(arrivals) - result["began"]
    result["total"] = result["ended"] - result["began"]
    return result


def first_part_costs(source: Path, total_bytes: int, part: int = 10 * MB) -> dict[str, float]:
    """Where the first part's time goes: seconds until the encoder passes on its first block and its first
    `part` bytes, and, over the source audio those bytes hold (by the whole file's bytes per frame),
    decoding alone and decoding + mixing + resampling (`service_mix`); FLAC is the rest."""
    sys.path.insert(0, str(ROOT))
    import soundfile as sf

    from bridge.audio.source import READ_BLOCK, probe_source, read_block, service_mix
    from bridge.audio.upload_stream import encode_upload

    class Enough(Exception):
        pass

    info = probe_source(source)
    marks: dict[str, float] = {}
    size = 0
    started = time.perf_counter()

    def emit(data: bytes) -> None:
        nonlocal size
        size += len(data)
        marks.setdefault("first_block", time.perf_counter() - started)
        if size >= part:
            raise Enough

    with contextlib.suppress(Enough):
        encode_upload(info, 0, info.frames, "PCM_24", emit)
    marks["first_part"] = time.perf_counter() - started
    frames = min(info.frames, round(info.frames * min(size, part) / total_bytes))
    started = time.perf_counter()
    with sf.SoundFile(str(source)) as src:
        for _position in range(0, frames, READ_BLOCK):
            read_block(src, READ_BLOCK, "float64")
    marks["decode"] = time.perf_counter() - started
    started = time.perf_counter()
    for _block in service_mix(info, 0, frames, 24):
        pass
    marks["mix_resample"] = time.perf_counter() - started - marks["decode"]
    marks["flac"] = marks["first_part"] - marks["decode"] - marks["mix_resample"]
    marks["audio_seconds"] = frames / info.samplerate
    return marks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, action="append")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--slow-runs", type=int, default=3, help="runs of the longest source to a slow store")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", choices=["streamed", "serial"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--source", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.url, args.source, args.work)
        return 0
    minutes = args.minutes or [3.0, 60.0]
    root = Path(tempfile.mkdtemp(prefix="sam-bridge-bench-upload-stream-"))
    service = LocalServiceProcess(root / "service", root / "service.log")
    rows: list[dict[str, str]] = []
    printed: list[tuple[str, str, str]] = []
    out: dict[str, Any] = {}
    try:
        url = service.start()
        for length in minutes:
            source = root / f"take-{length:g}min.wav"
            print(f"writing {length:g} min stereo 44.1 kHz/24-bit ...", flush=True)
            write_test_audio(source, length * 60, rate=44_100)
            results: dict[str, list[dict[str, Any]]] = {"streamed": [], "serial": []}
            for run in range(1, args.runs + 1):
                order = ["streamed", "serial"] if run % 2 else ["serial", "streamed"]
                for mode in order:
                    work = root / f"work-{mode}-{run}"
                    results[mode].append(run_child(mode, url, source, work, service))
                    shutil.rmtree(work, ignore_errors=True)
                print(f"{length:g} min run {run}: " + ", ".join(
                    f"{m} first byte {results[m][-1]['first_byte']:.3f} s, all {results[m][-1]['total']:.2f} s, "
                    f"peak {results[m][-1]['max_rss'] / MB:.0f} MiB" for m in ("streamed", "serial")), flush=True)
            sizes = {r["bytes"] for rs in results.values() for r in rs}
            costs = first_part_costs(source, max(sizes))
            out[f"{length:g}"] = {"results": results, "first_part": costs}
            label = f"{length:g} min 44.1 kHz stereo 24-bit WAV -> mono 48 kHz 24-bit FLAC ({max(sizes) / MB:.0f} MiB)"
            first = [r["first_byte"] for r in results["streamed"]]
            first_serial = [r["first_byte"] for r in results["serial"]]
            total = [r["total"] for r in results["streamed"]]
            total_serial = [r["total"] for r in results["serial"]]
            rss = [r["max_rss"] / 1e6 for r in results["streamed"]]
            rss_serial = [r["max_rss"] / 1e6 for r in results["serial"]]
            goal_first = "met" if statistics.median(first) <= FIRST_BYTE_GOAL else "MISSED"
            rows += [
                {"figure": f"{label}: upload stage start to first byte at the stand-in, encoded while sent, "
                           f"{args.runs} runs", "measured": spread(first, unit=" s"),
                 "floor": f"encoded whole, then sent (the old path), same runs: {spread(first_serial, unit=' s')}",
                 "ratio": ratio_spread(first, first_serial), "goal": f"<= {FIRST_BYTE_GOAL} s {goal_first}"},
                {"figure": f"{label}: whole stage (encode + upload to the URL), encoded while sent",
                 "measured": spread(total, unit=" s"),
                 "floor": f"encoded whole, then sent: {spread(total_serial, unit=' s')}",
                 "ratio": ratio_spread(total, total_serial), "goal": "-"},
                {"figure": f"{label}: peak RSS of the uploading process, encoded while sent",
                 "measured": spread(rss, unit=" MB"),
                 "floor": f"encoded whole, then sent: {spread(rss_serial, unit=' MB')}",
                 "ratio": ratio_spread(rss, rss_serial),
                 "goal": f"<= {RSS_GOAL_MB} MB {'met' if max(rss) <= RSS_GOAL_MB else 'MISSED'}"},
            ]
            printed += [(f"{length:g} min: first byte, streamed / serial", spread(first, unit=" s"),
                         spread(first_serial, unit=" s")),
                        (f"{length:g} min: whole stage, streamed / serial", spread(total, unit=" s"),
                         spread(total_serial, unit=" s")),
                        (f"{length:g} min: peak RSS, streamed / serial", spread(rss, unit=" MB"),
                         spread(rss_serial, unit=" MB")),
                        (f"{length:g} min: CPU time of the stage, streamed / serial",
                         spread([r["cpu"] for r in results["streamed"]], unit=" s"),
                         spread([r["cpu"] for r in results["serial"]], unit=" s")),
                        (f"{length:g} min: encoder to its first block / first 10 MiB "
                         f"({costs['audio_seconds']:.0f} s of audio)",
                         f"{costs['first_block']:.3f} s / {costs['first_part']:.3f} s",
                         f"decode {costs['decode']:.3f} s, mix+resample {costs['mix_resample']:.3f} s, "
                         f"FLAC {costs['flac']:.3f} s")]
        if args.slow_runs:  # a slow link: every part answered 3 s late, so the encoder waits with 10 unsent
            length = max(minutes)
            source = root / f"take-{length:g}min.wav"
            httpx.post(f"{url}/_local/faults", json={"action": "stall", "kind": "multipart", "seconds": 3.0,
                                                     "times": 100_000}, timeout=10).raise_for_status()
            slow = [run_child("streamed", url, source, root / f"work-slow-{run}", service)
                    for run in range(args.slow_runs)]
            httpx.post(f"{url}/_local/faults", json={"action": "clear"}, timeout=10).raise_for_status()
            out["slow"] = slow
            rss = [r["max_rss"] / 1e6 for r in slow]
            rows.append({"figure": f"{length:g} min, encoded while sent to a slow file store (each part answered 3 s "
                                   f"after its last byte: the encoder waits with 10 parts unsent), peak RSS, "
                                   f"{args.slow_runs} runs",
                         "measured": spread(rss, unit=" MB"), "floor": "-", "ratio": "-",
                         "goal": f"<= {RSS_GOAL_MB} MB {'met' if max(rss) <= RSS_GOAL_MB else 'MISSED'}"})
            printed.append((f"{length:g} min: peak RSS, streamed to a slow file store",
                            spread(rss, unit=" MB"), f"stage {spread([r['total'] for r in slow], unit=' s')}"))
        print(table(printed))
        if args.json:
            args.json.write_text(json.dumps(out))
        report("bench_upload_stream", rows)
        return 0
    finally:
        service.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
