"""A long file to a URL the service can use, against `sam-bridge local-service`: ours vs the official client.

    python benchmarks/bench_upload.py [--minutes 60] [--runs 5] [--uplink-mbit 20] [--json out.json]

1. Makes a stereo 48 kHz/24-bit WAV block by block (60 min = 989 MiB: above 100 MiB, so both clients go
   multipart: 10 MiB parts, up to 10 at once).
2. Starts the stand-in (strict mode) in a subprocess, so its work never shares this process's GIL.
3. `--runs` times, interleaved (the order rotates; each upload starts after `sync`, so none pays for
   writing back the one before), three uploads to the same stand-in:
   - "ours, same bytes": `FalStorage.upload` of the stereo file as is;
   - "official": `fal_client.SyncClient.upload_file` of the stereo file as is (fal-client from the test
     extra, its module constants pointed at the stand-in): what a user of the official client sends;
   - "ours, as the pipeline sends it to fal": `send_upload` (shrink on, 24-bit), the part's mono 48 kHz
     FLAC encoded while it is sent (multipart, 10 MiB parts).
   Each upload's size is checked at its URL.
Two figures, both against the official client's upload of the stereo file in the same runs:
(1) transport, same bytes: ours vs official moving the very same file (opening and reading it, the
    initiate call, every part's PUT and the completion, and the stand-in's writing and joining of the parts);
(2) what a user waits for, from the stereo source file to a URL the service can use: ours including the
    encoding (which the loopback link cannot hide: bytes cost almost nothing here), vs the official client's
    upload of the source as is. Over a real uplink the bytes dominate: the report adds, COMPUTED from the
    measured sizes and encode times, what each would take at `--uplink-mbit` (ours: the larger of its
    measured time and its bytes at that rate, since it encodes while sending; official: its bytes at that rate).
`sync` and the size checks stay outside the clocks. Goal (issue 17): median ours / median official <= 1.0.
Exit status 0 once the run completed. Needs free disk for about 3x the file.
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

from bridge.audio.source import probe_source
from bridge.engine.upload_stage import send_upload
from bridge.fal.auth import ApiKey
from bridge.fal.client import FalClient

GOAL = 1.0


def uploaded_size(url: str) -> int:
    return int(httpx.head(url, timeout=60).headers.get("content-length", -1))


def timed(upload: Callable[[], tuple[str, int]]) -> tuple[float, int]:
    os.sync()  # the previous upload's (or the source's) dirty pages are not this one's to write back
    started = time.perf_counter()
    url, size = upload()
    seconds = time.perf_counter() - started
    if uploaded_size(url) != size:
        raise SystemExit(f"the upload at {url} does not have the file's {size} bytes")
    return seconds, size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--uplink-mbit", type=float, default=20.0, help="for the computed figure only")
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
        work = root / "work"
        info = probe_source(source)
        times: dict[str, list[float]] = {"ours": [], "official": [], "ours_mono": []}
        sizes: dict[str, int] = {}

        def ours_mono() -> tuple[str, int]:
            url, record = send_upload(ours.storage, info, 0, info.frames, work, shrink=True, bits=24)
            return url, int(record["bytes"])

        try:
            uploads: dict[str, Callable[[], tuple[str, int]]] = {
                "ours": lambda: (ours.storage.upload(source, "audio/wav"), size),
                "official": lambda: (theirs.upload_file(source), size),
                "ours_mono": ours_mono,
            }
            names = list(uploads)
            for run in range(1, args.runs + 1):
                order = names[run % 3:] + names[:run % 3]  # none always goes first
                for name in order:
                    seconds, sizes[name] = timed(uploads[name])
                    times[name].append(seconds)
                print(f"run {run}: " + ", ".join(f"{n} {times[n][-1]:.2f} s" for n in names), flush=True)
        finally:
            ours.close()
            theirs._client.close()
        medians = {name: statistics.median(values) for name, values in times.items()}
        ratio = medians["ours"] / medians["official"]
        user_ratio = medians["ours_mono"] / medians["official"]
        rate = args.uplink_mbit * 1e6 / 8
        at_uplink = {"ours_mono": max(medians["ours_mono"], sizes["ours_mono"] / rate),
                     "official": sizes["official"] / rate}
        uplink_ratio = at_uplink["ours_mono"] / at_uplink["official"]
        rows = [(name, f"median {medians[name]:.2f} s (min {min(v):.2f}, max {max(v):.2f}; "
                       f"{sizes[name] / MB:.0f} MiB)", "") for name, v in times.items()]
        rows.append(("(1) same bytes: ours / official", f"{ratio:.3f}",
                     f"<= {GOAL} {'met' if ratio <= GOAL else 'MISSED'}"))
        rows.append(("(2) source to URL: ours mono FLAC / official stereo WAV, loopback", f"{user_ratio:.3f}",
                     f"<= {GOAL} {'met' if user_ratio <= GOAL else 'MISSED'}"))
        rows.append((f"(2) COMPUTED at a {args.uplink_mbit:g} Mbit/s uplink", f"{at_uplink['ours_mono']:.0f} s vs "
                     f"{at_uplink['official']:.0f} s = {uplink_ratio:.3f}", "computed, not measured"))
        print(f"\n{args.minutes:g} min stereo 48 kHz/24-bit WAV, {size / MB:.0f} MiB, {args.runs} runs each, "
              "interleaved")
        print(table(rows))
        if args.json:
            args.json.write_text(json.dumps({"bytes": sizes, "times": times, "medians": medians, "ratio": ratio,
                                             "user_ratio": user_ratio, "at_uplink": at_uplink}))
        multipart = "multipart, 10 MiB parts" if size > official.MULTIPART_THRESHOLD else "one PUT: under 100 MiB"
        peer = f"official fal-client `upload_file` of the stereo file as is: {spread(times['official'], unit=' s')}"
        report("bench_upload", [
            {"figure": f"(1) transport, same bytes: {args.minutes:g} min stereo 48 kHz/24-bit WAV "
                       f"({size / MB:.0f} MiB, {multipart}), ours (`FalStorage.upload`), {args.runs} runs interleaved",
             "measured": spread(times["ours"], unit=" s"), "floor": peer,
             "ratio": ratio_spread(times["ours"], times["official"]), "goal": f"<= {GOAL:g}"},
            {"figure": f"(2) what a user waits for, stereo source to a URL the service can use, over loopback: "
                       f"ours = its mono 48 kHz 24-bit FLAC encoded while sent ({sizes['ours_mono'] / MB:.0f} MiB; "
                       "the encoding included)",
             "measured": spread(times["ours_mono"], unit=" s"), "floor": peer,
             "ratio": ratio_spread(times["ours_mono"], times["official"]), "goal": f"<= {GOAL:g}"},
            {"figure": f"(2) the same, COMPUTED for a {args.uplink_mbit:g} Mbit/s uplink from the measured sizes "
                       "and times (ours: max(its time, its bytes at that rate); official: its bytes at that rate)",
             "measured": f"{at_uplink['ours_mono']:.0f} s", "floor": f"official {at_uplink['official']:.0f} s",
             "ratio": f"{uplink_ratio:.2f}", "goal": f"<= {GOAL:g} (computed, not measured)"},
        ])
        return 0
    finally:
        service.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
