"""Benchmark the one-shot command: `sam-bridge separate --local` on a 3-minute stereo 44.1 kHz/24-bit file.

Measured: the client's overhead, the WHOLE command's wall time (interpreter start, imports, the in-process
stand-in's start, probing and hashing the source, upload, download, conform, writing the stems and the
manifest) minus the service's own time (the manifest's `service` stage: submit until the result is
ready, which against fal is the model's time).

Floor, measured in the same run, interleaved: a new interpreter's bare `import numpy, soundfile, soxr,
httpx` + a plain httpx upload of the same bytes to a local service (fal's CDN flow: token, then the raw
bytes) + the download of the two mono 48 kHz results + one soxr pass of each (48 kHz -> the source's rate,
decoding included) + writing both stems (stereo 24-bit WAV at the source's rate and length).

Goal: overhead <= 1.2x the floor (medians of `--repeats` >= 5, min-max of the run-by-run ratios). Also
printed: the command's peak RSS (goal <= 250 MB), and the ratio without the stereo projection (the part of
conform that turns the mono result into the source's stereo image, which no floor client does): its CPU
time measured here on the same audio (the same blocks the command feeds it, timed on its own thread),
once per repeat, taken out of the overhead.

    python benchmarks/bench_oneshot.py [--minutes 3] [--repeats 5] [--keep]
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

import httpx
import numpy as np
import soundfile as sf
import soxr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import ratio_spread, report, spread  # noqa: E402

RATE = 44_100
SERVICE_RATE = 48_000
BLOCK = RATE * 10


def make_source(path: Path, minutes: float) -> None:
    """Stereo 24-bit: tones, clicks and noise, written block by block."""
    frames = round(minutes * 60 * RATE)
    rng = np.random.default_rng(11)
    with sf.SoundFile(str(path), "w", RATE, 2, "PCM_24") as out:
        for start in range(0, frames, BLOCK):
            n = min(BLOCK, frames - start)
            t = (np.arange(start, start + n) / RATE)[:, None]
            block = 0.25 * np.sin(2 * np.pi * np.array([[110.0, 165.0]]) * t)
            block += rng.uniform(-0.1, 0.1, (n, 2))
            block[rng.random(n) < 3e-4] += 0.5
            out.write(block)


def make_service_result(path: Path, seconds: float) -> None:
    """A mono 48 kHz float WAV as long as the source: what the service returns (twice)."""
    frames = round(seconds * SERVICE_RATE)
    rng = np.random.default_rng(12)
    with sf.SoundFile(str(path), "w", SERVICE_RATE, 1, "FLOAT") as out:
        for start in range(0, frames, SERVICE_RATE * 10):
            out.write(rng.uniform(-0.3, 0.3, min(SERVICE_RATE * 10, frames - start)).astype(np.float32))


# `python -m bridge` that, on its way out, writes its own peak RSS (VmHWM: this process's memory only) to
# stderr. The kernel's ru_maxrss of a child would not do: Linux carries the parent's peak into it across
# exec, and this script holds the floor's decoded audio by the later runs.
_REPORT_PEAK = """
import atexit, sys
def _peak():
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                sys.stderr.write("PEAK_RSS_KB " + line.split()[1] + "\\n")
    except OSError:
        pass
atexit.register(_peak)
sys.argv[0] = "sam-bridge"
from bridge.cli import entry  # as the installed script runs it, its ending included
entry()
"""


def run_command(source: Path, out_dir: Path) -> dict[str, Any]:
    """The command as a user runs it, in a child process; its wall time, peak RSS and JSON summary."""
    command = [sys.executable, "-c", _REPORT_PEAK, "separate", str(source), "--prompt", "piano playing",
               "--local", "--local-delay", "0", "--output-dir", str(out_dir), "--json"]
    began = time.perf_counter()
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - began
    if proc.returncode != 0:
        raise SystemExit(f"separate failed ({proc.returncode}):\n{stderr.decode(errors='replace')}")
    reported = [line.split()[1] for line in stderr.decode(errors="replace").splitlines()
                if line.startswith("PEAK_RSS_KB ")]
    # elsewhere (no /proc): the kernel's figure, an upper bound (see above)
    peak_kb = int(reported[-1]) if reported else resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    summary = json.loads(stdout)
    manifest = json.loads(Path(summary["manifest"]).read_text())
    return {"wall": wall, "peak_rss_mb": peak_kb / 1024, "summary": summary, "manifest": manifest}


def measure_floor(source: Path, results: list[Path], work: Path) -> dict[str, float]:
    """Upload `source`, download `results`, resample each: the least any client must do."""
    from bridge.local_service import LocalFalService

    with LocalFalService() as service, httpx.Client(timeout=120) as http:
        headers = {"Authorization": "Key bench"}
        token = http.post(f"{service.url}/storage/auth/token", params={"storage_type": "fal-cdn-v3"},
                          json={}, headers=headers).raise_for_status().json()
        cdn = {"Authorization": f"{token['token_type']} {token['token']}", "Content-Type": "audio/wav"}
        urls = []
        for result in results:  # setup, not timed: put the results where a download can fetch them
            with open(result, "rb") as body:
                urls.append(http.post(f"{token['base_url']}/files/upload", content=body,
                                      headers={**cdn, "X-Fal-File-Name": result.name}).json()["access_url"])

        began = time.perf_counter()
        with open(source, "rb") as body:
            http.post(f"{token['base_url']}/files/upload", content=body,
                      headers={**cdn, "X-Fal-File-Name": source.name}).raise_for_status()
        upload = time.perf_counter() - began

        began = time.perf_counter()
        downloaded = []
        for number, url in enumerate(urls):
            dest = work / f"floor-{number}.wav"
            with http.stream("GET", url) as response, open(dest, "wb") as out:
                for chunk in response.iter_bytes(1 << 20):
                    out.write(chunk)
            downloaded.append(dest)
        download = time.perf_counter() - began

    began = time.perf_counter()
    resampled = []
    for path in downloaded:
        mono, rate = sf.read(str(path), dtype="float32")
        resampled.append(soxr.resample(mono, rate, RATE))
    resample = time.perf_counter() - began

    began = time.perf_counter()
    for number, mono in enumerate(resampled):
        sf.write(str(work / f"floor-stem-{number}.wav"), np.column_stack((mono, mono)), RATE, subtype="PCM_24")
    stems = time.perf_counter() - began
    imports = bare_imports()
    return {"imports": imports, "upload": upload, "download": download, "resample": resample, "stems": stems,
            "total": imports + upload + download + resample + stems}


def measure_projection(source: Path, result: Path) -> float:
    """CPU seconds the stereo projection takes on this source, fed as conform feeds it."""
    from bridge.audio.conform import BLOCK
    from bridge.audio.projection import MaskProjector

    exact, rate = sf.read(str(source), dtype="float64")
    mono, result_rate = sf.read(str(result), dtype="float32")
    target = soxr.resample(mono, result_rate, rate)[: len(exact)]
    residual = np.zeros_like(target)
    projector = MaskProjector(exact.shape[1], rate)
    spent = 0.0
    for start in range(0, len(exact), BLOCK):
        stop = start + BLOCK
        began = time.thread_time()
        projector.process(target[start:stop], residual[start:stop], exact[start:stop])
        spent += time.thread_time() - began
    began = time.thread_time()
    projector.flush()
    return spent + time.thread_time() - began


def bare_imports() -> float:
    """A new interpreter importing the libraries any such client needs, start to exit."""
    began = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import numpy, soundfile, soxr, httpx"], check=True)
    return time.perf_counter() - began


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=5, help="runs of the command and of the floor")
    parser.add_argument("--keep", action="store_true", help="print the temp folder and keep it")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-oneshot-"))
    try:
        source = tmp / "Guitar 01.wav"
        make_source(source, args.minutes)
        results = [tmp / "service-target.wav", tmp / "service-residual.wav"]
        for result in results:
            make_service_result(result, args.minutes * 60)
        size_mb = source.stat().st_size / 2**20
        print(f"source: {args.minutes:g} min stereo {RATE} Hz/24-bit WAV, {size_mb:.1f} MB")

        runs, floors, projections = [], [], []
        for repeat in range(args.repeats):
            runs.append(run_command(source, tmp / f"out-{repeat}"))
            floors.append(measure_floor(source, results, tmp))
            projections.append(measure_projection(source, results[0]))
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            for path in sorted(tmp.rglob("*"), reverse=True):
                path.rmdir() if path.is_dir() else path.unlink()
            tmp.rmdir()

    walls = [run["wall"] for run in runs]
    services = [float(run["manifest"]["timings"].get("service", 0.0)) for run in runs]
    overheads = [wall - service for wall, service in zip(walls, services, strict=True)]
    totals = [f["total"] for f in floors]
    floor = {key: median(f[key] for f in floors) for key in floors[0]}
    stages = {key: median(float(run["manifest"]["timings"].get(key, 0.0)) for run in runs)
              for key in runs[0]["manifest"]["timings"]}
    outside = [wall - float(run["manifest"]["timings"]["total"]) for wall, run in zip(walls, runs, strict=True)]
    print(f"runs: {args.repeats} of each, interleaved; medians (min–max)")
    print(f"command wall time: {spread(walls, unit=' s')}; the service's own time: {spread(services, unit=' s')}")
    print(f"client overhead (wall - service): {spread(overheads, unit=' s')}  [pipeline stages: "
          + ", ".join(f"{k} {v:.2f}" for k, v in stages.items() if k not in ("total", "service"))
          + f"; outside the pipeline (start-up, imports, stand-in start, hash, manifest): "
          f"{spread(outside, unit=' s')}]")
    print(f"floor: {spread(totals, unit=' s')}  [" + ", ".join(f"{k} {v:.2f}" for k, v in floor.items()
                                                      if k != "total") + "]")
    print(f"ratio overhead / floor: {ratio_spread(overheads, totals)} (goal <= 1.2)")
    without = [overhead - projection for overhead, projection in zip(overheads, projections, strict=True)]
    print(f"the stereo projection alone: {spread(projections, unit=' s')} CPU; overhead without it: "
          f"{spread(without, unit=' s')}, ratio {ratio_spread(without, totals)}")
    peak = max(r["peak_rss_mb"] for r in runs)
    print(f"command peak RSS: {peak:.0f} MB (goal <= 250 MB; includes the in-process stand-in)")
    report("bench_oneshot", [
        {"figure": f"`separate --local`, {args.minutes:g} min stereo 44.1 kHz/24-bit: whole command wall - "
                   "service time",
         "measured": spread(overheads, unit=" s"),
         "floor": "bare imports + upload + 2 downloads + 2 soxr passes + writing 2 stems: "
                  + spread(totals, unit=" s"),
         "ratio": ratio_spread(overheads, totals), "goal": "<= 1.2"},
        {"figure": "the same without the stereo projection (its CPU time on the same audio taken out)",
         "measured": spread(without, unit=" s"), "floor": f"projection {spread(projections, unit=' s')} CPU",
         "ratio": ratio_spread(without, totals), "goal": "-"},
        {"figure": "`separate --local`: peak RSS of the command", "measured": f"{peak:.0f} MB (max of runs)",
         "goal": "<= 250 MB"},
    ])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
