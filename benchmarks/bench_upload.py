"""A long file through the multipart upload against `sam-bridge local-service`: ours vs the official client.

    python benchmarks/bench_upload.py [--minutes 60] [--runs 5] [--json out.json]

1. Makes a stereo 48 kHz/24-bit WAV block by block (60 min = 989 MiB: above 100 MiB, so both clients go
   multipart: 10 MiB parts, up to 10 at once).
2. Starts the stand-in (strict mode) in a subprocess, so its work never shares this process's GIL.
3. Uploads the file `--runs` times with each client, interleaved (which goes first alternates; each upload
   starts after `sync`, so none pays for writing back the one before): ours is
   `FalStorage.upload` (what the pipeline calls), the official one `fal_client.SyncClient.upload_file`
   (fal-client from the test extra, its module constants pointed at the stand-in). Each upload's size is
   checked at its URL.
The peer is the official client's upload of the same file to the same stand-in in the same runs: both
timings include opening and reading the file, the initiate call, every part's PUT and the completion
(and the stand-in's writing and joining of the parts), nothing else; `sync` and the size check stay
outside both clocks. Goal (from the issue): median ours / median official <= 1.0. Exit status 0 once the
run completed. Needs free disk for about 3x the file (the file, the stand-in's parts and the assembled
upload).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import fal_client
import fal_client.client as official
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import BENCH_KEY, MB, LocalServiceProcess, ratio_spread, report, spread, table, write_test_audio

from bridge.fal.auth import ApiKey
from bridge.fal.client import FalClient

GOAL = 1.0


def uploaded_size(url: str) -> int:
    return int(httpx.head(url, timeout=60).headers.get("content-length", -1))


def timed(upload: Callable[[], str], size: int) -> float:
    os.sync()  # the previous upload's (or the source's) dirty pages are not this one's to write back
    started = time.perf_counter()
    url = upload()
    seconds = time.perf_counter() - started
    if uploaded_size(url) != size:
        raise SystemExit(f"the upload at {url} does not have the file's {size} bytes")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="sam-bridge-bench-upload-"))
    service = LocalServiceProcess(root / "service", root / "service.log")
    try:
        source = root / "long.wav"
        print(f"writing {args.minutes:g} min stereo 48 kHz/24-bit ...", flush=True)
        write_test_audio(source, args.minutes * 60)
        size = source.stat().st_size
        if size <= official.MULTIPART_THRESHOLD:
            print(f"note: {size / MB:.0f} MiB is under the 100 MiB multipart threshold", flush=True)
        url = service.start()
        official.REST_URL, official.CDN_URL, official.QUEUE_URL_FORMAT = url, url, f"{url}/"
        theirs = fal_client.SyncClient(key=BENCH_KEY)
        ours = FalClient(ApiKey(BENCH_KEY), queue_url=url, rest_url=url, data_uri_limit=0)
        times: dict[str, list[float]] = {"ours": [], "official": []}
        try:
            uploads: dict[str, Callable[[], str]] = {
                "ours": lambda: ours.storage.upload(source, "audio/wav"),
                "official": lambda: theirs.upload_file(source),
            }
            for run in range(1, args.runs + 1):
                order = ["ours", "official"] if run % 2 else ["official", "ours"]  # neither always goes first
                for name in order:
                    times[name].append(timed(uploads[name], size))
                print(f"run {run}: ours {times['ours'][-1]:.2f} s, official {times['official'][-1]:.2f} s",
                      flush=True)
        finally:
            ours.close()
            theirs._client.close()
        medians = {name: statistics.median(values) for name, values in times.items()}
        ratio = medians["ours"] / medians["official"]
        rows = [(name, f"median {medians[name]:.2f} s (min {min(v):.2f}, max {max(v):.2f}; "
                       f"{size / MB / medians[name]:.0f} MiB/s)", "") for name, v in times.items()]
        rows.append(("ratio ours / official", f"{ratio:.3f}", f"<= {GOAL} {'met' if ratio <= GOAL else 'MISSED'}"))
        print(f"\n{args.minutes:g} min stereo 48 kHz/24-bit WAV, {size / MB:.0f} MiB, {args.runs} runs each, "
              "interleaved")
        print(table(rows))
        if args.json:
            args.json.write_text(json.dumps({"bytes": size, "times": times, "medians": medians, "ratio": ratio}))
        multipart = "multipart, 10 MiB parts" if size > official.MULTIPART_THRESHOLD else "one PUT: under 100 MiB"
        report("bench_upload", [{
            "figure": f"upload of {args.minutes:g} min stereo 48 kHz/24-bit WAV ({size / MB:.0f} MiB, {multipart}), "
                      f"ours (`FalStorage.upload`), {args.runs} runs interleaved",
            "measured": spread(times["ours"], unit=" s"),
            "floor": "official fal-client `upload_file`, same file, same stand-in: "
                     f"{spread(times['official'], unit=' s')}",
            "ratio": ratio_spread(times["ours"], times["official"]), "goal": f"<= {GOAL:g}"}])
        return 0
    finally:
        service.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
