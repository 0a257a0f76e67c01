"""A long file to a URL the service can use, against `sam-bridge local-service`: ours vs the official client.

    python benchmarks/bench_upload.py [--minutes 60] [--runs 5] [--uplink-mbit 20] [--json out.json]

1. Makes a stereo 48 kHz/24-bit WAV block by block (60 min = 989 MiB: above 100 MiB, so both clients go
   multipart: 10 MiB parts, up to 10 at once).
2. Starts the stand-in (strict mode) in a subprocess, so its work never shares a GIL with a client: a
   fresh one with an empty file store for every upload (none pays for freeing another's files).
3. `--runs` times, interleaved (the order rotates; each upload starts after `sync`, so none pays for
   writing back the one before), three uploads to the same stand-in, each by a client in a fresh child
   process of its own (its own GIL and heap, fresh connections for both clients, its CPU its own):
   - "ours, same bytes": `FalStorage.upload` of the stereo file as is;
   - "official": `fal_client.SyncClient.upload_file` of the stereo file as is (fal-client from the test
     extra, its module constants pointed at the stand-in): what a user of the official client sends;
   - "ours, as the pipeline sends it to fal": `send_upload` (shrink on, 24-bit), the part's mono 48 kHz
     FLAC encoded while it is sent (multipart, 10 MiB parts).
   Each upload's size is checked at its URL.
Per upload: wall = in the child, from making the client to the URL (the CDN token, the initiate, every
part's PUT, the completion and the stand-in's joining of the parts; not the interpreter's start and
imports, which a user pays once per process, not per upload); CPU = the child's process time over that call (all
its threads); and the stand-in's CPU over it (shared by both clients: on 2 cores it is most of the noise).
Two figures, both against the official client's upload of the stereo file in the same runs:
(1) transport, same bytes: ours vs official moving the very same file: wall (the headline), and each
    client's own CPU;
(2) what a user waits for, from the stereo source file to a URL the service can use: ours including the
    encoding (which the loopback link cannot hide: bytes cost almost nothing here), vs the official client's
    upload of the source as is. Over a real uplink the bytes dominate: the report adds, COMPUTED from the
    measured sizes and encode times, what each would take at `--uplink-mbit` (ours: the larger of its
    measured time and its bytes at that rate, since it encodes while sending; official: its bytes at that rate).
`sync` and the size checks stay outside the clocks; the load average is read before every upload.
Goal (issue 17): median ours / median official <= 1.0. Exit status 0 once the run completed. Needs free
disk for about 3x the file.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    BENCH_KEY,
    MB,
    LocalServiceProcess,
    python_env,
    ratio_spread,
    report,
    spread,
    table,
    write_test_audio,
)

GOAL = 1.0
NAMES = ("ours", "official", "ours_mono")
MULTIPART_THRESHOLD = 100 * MB  # both clients' (fal-client's MULTIPART_THRESHOLD)


def child(name: str, url: str, source: Path, work: Path) -> None:
    """One upload by one client in this fresh process: prints {url, bytes, wall, cpu} as one JSON line.
    The clock includes making the client: each pays its own setup (ours its HTTP client, once per
    FalClient; the official one a token client and a CDN client in every `upload_file`)."""
    upload: Callable[[], tuple[str, int]]
    if name == "official":
        import fal_client
        import fal_client.client as official

        official.REST_URL, official.CDN_URL, official.QUEUE_URL_FORMAT = url, url, f"{url}/"
        upload = lambda: (fal_client.SyncClient(key=BENCH_KEY).upload_file(source), source.stat().st_size)  # noqa: E731
    else:
        from bridge.audio.source import probe_source
        from bridge.engine.upload_stage import send_upload
        from bridge.fal.auth import ApiKey
        from bridge.fal.client import FalClient

        def client() -> FalClient:
            return FalClient(ApiKey(BENCH_KEY), queue_url=url, rest_url=url, data_uri_limit=0)

        if name == "ours":
            upload = lambda: (client().storage.upload(source, "audio/wav"), source.stat().st_size)  # noqa: E731
        else:
            info = probe_source(source)

            def upload() -> tuple[str, int]:
                sent, record = send_upload(client().storage, info, 0, info.frames, work, shrink=True, bits=24)
                return sent, int(record["bytes"])
    cpu, started = time.process_time(), time.perf_counter()
    at, size = upload()
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    print(json.dumps({"url": at, "bytes": size, "wall": wall, "cpu": cpu}), flush=True)


def run_upload(name: str, url: str, source: Path, work: Path, service: psutil.Process) -> dict[str, Any]:
    """`name`'s upload in a child process, after `sync`; its figures, the stand-in's CPU and the load."""
    os.sync()  # the previous upload's (or the source's) dirty pages are not this one's to write back
    load = os.getloadavg()[0]
    before = service.cpu_times()
    proc = subprocess.run([sys.executable, __file__, "--child", name, url, str(source), str(work)],
                          capture_output=True, text=True, env=python_env(), check=False)
    after = service.cpu_times()
    if proc.returncode != 0:
        raise SystemExit(f"the {name} upload failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    if int(httpx.head(result["url"], timeout=60).headers.get("content-length", -1)) != result["bytes"]:
        raise SystemExit(f"the upload at {result['url']} does not have the file's {result['bytes']} bytes")
    result["service_cpu"] = (after.user + after.system) - (before.user + before.system)
    result["load"] = load
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--uplink-mbit", type=float, default=20.0, help="for the computed figure only")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", nargs=4, metavar=("NAME", "URL", "SOURCE", "WORK"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        name, url, source, work = args.child
        child(name, url, Path(source), Path(work))
        return 0

    root = Path(tempfile.mkdtemp(prefix="sam-bridge-bench-upload-"))
    try:
        source = root / "long.wav"
        print(f"writing {args.minutes:g} min stereo 48 kHz/24-bit ...", flush=True)
        write_test_audio(source, args.minutes * 60)
        size = source.stat().st_size
        if size <= MULTIPART_THRESHOLD:
            print(f"note: {size / MB:.0f} MiB is under the 100 MiB multipart threshold", flush=True)
        work = root / "work"
        work.mkdir()
        results: dict[str, list[dict[str, Any]]] = {name: [] for name in NAMES}
        for run in range(1, args.runs + 1):
            order = NAMES[run % 3:] + NAMES[:run % 3]  # none always goes first
            for name in order:
                results[name].append(upload_to_fresh_stand_in(name, root, source, work))
            print(f"run {run}: " + ", ".join(
                f"{n} {results[n][-1]['wall']:.2f} s (CPU {results[n][-1]['cpu']:.2f} s, stand-in "
                f"{results[n][-1]['service_cpu']:.2f} s)" for n in NAMES)
                + f"; load {min(results[n][-1]['load'] for n in NAMES):.1f}-"
                  f"{max(results[n][-1]['load'] for n in NAMES):.1f}", flush=True)
        summary(args, size, results)
        return 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


def upload_to_fresh_stand_in(name: str, root: Path, source: Path, work: Path) -> dict[str, Any]:
    """`run_upload` against a stand-in of its own with an empty file store, removed after: with one
    stand-in for all, its 4 GiB bound deleted earlier uploads (~1 GiB each) in the middle of whichever
    upload crossed it, and that one paid the kernel's cost of freeing them."""
    folder = root / "service"
    service = LocalServiceProcess(folder, root / "service.log")
    try:
        url = service.start()
        assert service.proc is not None
        return run_upload(name, url, source, work, psutil.Process(service.proc.pid))
    finally:
        service.stop()
        shutil.rmtree(folder, ignore_errors=True)


def summary(args: argparse.Namespace, size: int, results: dict[str, list[dict[str, Any]]]) -> None:
    def values(name: str, key: str) -> list[float]:
        return [float(r[key]) for r in results[name]]

    times = {name: values(name, "wall") for name in NAMES}
    cpus = {name: values(name, "cpu") for name in NAMES}
    served = {name: values(name, "service_cpu") for name in NAMES}
    sizes = {name: int(results[name][-1]["bytes"]) for name in NAMES}
    loads = [load for name in NAMES for load in values(name, "load")]
    load_text = f"load average (1 min) {min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} cores"
    medians = {name: statistics.median(v) for name, v in times.items()}
    ratio = medians["ours"] / medians["official"]
    cpu_ratio = statistics.median(cpus["ours"]) / statistics.median(cpus["official"])
    user_ratio = medians["ours_mono"] / medians["official"]
    rate = args.uplink_mbit * 1e6 / 8
    at_uplink = {"ours_mono": max(medians["ours_mono"], sizes["ours_mono"] / rate),
                 "official": sizes["official"] / rate}
    uplink_ratio = at_uplink["ours_mono"] / at_uplink["official"]
    rows = [(name, f"wall {spread(times[name], unit=' s')}; CPU {spread(cpus[name], unit=' s')}; "
                   f"stand-in CPU {spread(served[name], unit=' s')}; {sizes[name] / MB:.0f} MiB", "")
            for name in NAMES]
    rows.append(("(1) same bytes: ours / official, wall", f"{ratio:.3f}",
                 f"<= {GOAL} {'met' if ratio <= GOAL else 'MISSED'}"))
    rows.append(("(1) same bytes: ours / official, client CPU", f"{cpu_ratio:.3f}", ""))
    rows.append(("(2) source to URL: ours mono FLAC / official stereo WAV, loopback", f"{user_ratio:.3f}",
                 f"<= {GOAL} {'met' if user_ratio <= GOAL else 'MISSED'}"))
    rows.append((f"(2) COMPUTED at a {args.uplink_mbit:g} Mbit/s uplink", f"{at_uplink['ours_mono']:.0f} s vs "
                 f"{at_uplink['official']:.0f} s = {uplink_ratio:.3f}", "computed, not measured"))
    print(f"\n{args.minutes:g} min stereo 48 kHz/24-bit WAV, {size / MB:.0f} MiB, {args.runs} runs each, "
          f"interleaved; {load_text}")
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps({"bytes": sizes, "results": results, "medians": medians, "ratio": ratio,
                                         "cpu_ratio": cpu_ratio, "user_ratio": user_ratio,
                                         "at_uplink": at_uplink}))
    multipart = "multipart, 10 MiB parts" if size > MULTIPART_THRESHOLD else "one POST: under 100 MiB"
    peer = f"official fal-client `upload_file` of the stereo file as is: {spread(times['official'], unit=' s')}"
    report("bench_upload", [
        {"figure": f"(1) transport, same bytes: {args.minutes:g} min stereo 48 kHz/24-bit WAV "
                   f"({size / MB:.0f} MiB, {multipart}), ours (`FalStorage.upload`), wall, {args.runs} runs "
                   f"interleaved, each client in a fresh process; {load_text}",
         "measured": spread(times["ours"], unit=" s"), "floor": peer,
         "ratio": ratio_spread(times["ours"], times["official"]), "goal": f"<= {GOAL:g}"},
        {"figure": "(1) the same uploads: each client's own CPU (its process, all threads, over the upload "
                   f"call); the stand-in's CPU per upload: ours {spread(served['ours'], unit=' s')}, official "
                   f"{spread(served['official'], unit=' s')}",
         "measured": spread(cpus["ours"], unit=" s"),
         "floor": f"official {spread(cpus['official'], unit=' s')}",
         "ratio": ratio_spread(cpus["ours"], cpus["official"]), "goal": "- (second figure)"},
        {"figure": f"(2) what a user waits for, stereo source to a URL the service can use, over loopback: "
                   f"ours = its mono 48 kHz 24-bit FLAC encoded while sent ({sizes['ours_mono'] / MB:.0f} MiB; "
                   "the encoding included)",
         "measured": f"{spread(times['ours_mono'], unit=' s')} (CPU {spread(cpus['ours_mono'], unit=' s')})",
         "floor": peer, "ratio": ratio_spread(times["ours_mono"], times["official"]), "goal": f"<= {GOAL:g}"},
        {"figure": f"(2) the same, COMPUTED for a {args.uplink_mbit:g} Mbit/s uplink from the measured sizes "
                   "and times (ours: max(its time, its bytes at that rate); official: its bytes at that rate)",
         "measured": f"{at_uplink['ours_mono']:.0f} s", "floor": f"official {at_uplink['official']:.0f} s",
         "ratio": f"{uplink_ratio:.2f}", "goal": f"<= {GOAL:g} (computed, not measured)"},
    ])


if __name__ == "__main__":
    sys.exit(main())
