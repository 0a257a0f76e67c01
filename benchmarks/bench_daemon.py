"""The daemon under load: many request files against a local service with a fixed per-job service time.

    /work/venv/bin/python benchmarks/bench_daemon.py [--jobs 100] [--seconds 10] [--job-time 2]
                                                      [--concurrency 4] [--json out.json]
                                                      [--profile daemon.svg]   (needs py-spy)

`sam-bridge local-service --job-time T --delay 0` and `sam-bridge run --concurrency C` run as two
subprocesses on 127.0.0.1. Each job gets its own source (stereo 48 kHz/24-bit, distinct audio, so
dedupe cannot reuse a result) and its own request file, all dropped at once. The clock runs from the
first request file to the last status file that says `done`.
  ideal = T x jobs / C (the service's time alone, C jobs at a time)
Goals (from the issue): actual within 10% of ideal; daemon peak RSS <= 150 MB. Also printed: daemon CPU
seconds per job, the mean time of each pipeline stage (from the manifests), and the service's own
counters (submits, most jobs running at once). Every stem's frame count is checked against its source.
Exit status 0 once the run completed (the figures say whether a goal was met); 1 if a job failed.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    BENCH_KEY,
    MB,
    DaemonProcess,
    LocalServiceProcess,
    RssSampler,
    cpu_seconds,
    report,
    status_of,
    table,
    tree_rss,
    write_request,
    write_test_audio,
)

RATE = 48_000
RATIO_GOAL = 1.10
RSS_GOAL_MB = 150.0
FINISHED = ("done", "failed", "cancelled")


def make_sources(folder: Path, jobs: int, seconds: float) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    sources = []
    for number in range(jobs):
        path = folder / f"take {number:03d}.wav"
        write_test_audio(path, seconds, RATE, 2, "PCM_24", seed=number, block_seconds=seconds)
        sources.append(path)
    return sources


def wait_all(requests: list[Path], timeout: float) -> dict[Path, dict[str, Any]]:
    """Statuses of every request once all are finished (or the timeout passed: the rest as last seen)."""
    deadline = time.monotonic() + timeout
    finished: dict[Path, dict[str, Any]] = {}
    while len(finished) < len(requests) and time.monotonic() < deadline:
        for request in requests:
            if request not in finished:
                status = status_of(request)
                if status.get("state") in FINISHED:
                    finished[request] = status
        time.sleep(0.1)
    return {request: finished.get(request) or status_of(request) for request in requests}


def check_stems(statuses: dict[Path, dict[str, Any]], sources: dict[Path, Path]) -> list[str]:
    """Problems: a job not done, or a stem whose length/rate/channels differ from its source."""
    problems = []
    for request, status in statuses.items():
        if status.get("state") != "done":
            problems.append(f"{request.name}: {status.get('state')} {status.get('error') or ''}".strip())
            continue
        source = sf.info(str(sources[request]))
        for label, path in status["stems"].items():
            stem = sf.info(path)
            if (stem.frames, stem.samplerate, stem.channels) != (source.frames, source.samplerate, source.channels):
                problems.append(f"{request.name}: {label} has {stem.frames} frames/{stem.samplerate} Hz/"
                                f"{stem.channels} ch; the source {source.frames}/{source.samplerate}/"
                                f"{source.channels}")
    return problems


def stage_means(statuses: dict[Path, dict[str, Any]]) -> dict[str, float]:
    per_stage: dict[str, list[float]] = {}
    for status in statuses.values():
        if status.get("manifest"):
            timings = json.loads(Path(status["manifest"]).read_text(encoding="utf-8")).get("timings", {})
            for stage, seconds in timings.items():
                per_stage.setdefault(stage, []).append(float(seconds))
    return {stage: statistics.mean(values) for stage, values in per_stage.items()}


def service_seconds(service_url: str, statuses: dict[Path, dict[str, Any]]) -> list[float]:
    """Each job's time at the service as the service itself reports it (`metrics.inference_time`)."""
    import httpx

    seconds = []
    with httpx.Client(timeout=10) as http:
        for status in statuses.values():
            if not status.get("manifest"):
                continue
            manifest = json.loads(Path(status["manifest"]).read_text(encoding="utf-8"))
            for step in manifest.get("steps", []):
                answer = http.get(f"{service_url}/fal-ai/sam-audio/requests/{step['request_id']}/status",
                                  headers={"Authorization": f"Key {BENCH_KEY}"}).json()
                inference = (answer.get("metrics") or {}).get("inference_time")
                if inference is not None:
                    seconds.append(float(inference))
    return seconds


def start_profiler(pid: int, out: Path) -> subprocess.Popen[bytes]:
    """py-spy (pip install py-spy) sampling the daemon: a flame graph (.svg) or collapsed stacks (.txt)."""
    fmt = "raw" if out.suffix == ".txt" else "flamegraph"
    return subprocess.Popen(["py-spy", "record", "--pid", str(pid), "--output", str(out), "--format", fmt,
                             "--rate", "200", "--threads", "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    began = time.perf_counter()
    sources = make_sources(root / "sources", args.jobs, args.seconds)
    print(f"made {args.jobs} sources of {args.seconds:g} s stereo {RATE} Hz/24-bit in "
          f"{time.perf_counter() - began:.1f} s", flush=True)
    service_concurrency = args.service_concurrency or args.concurrency
    ideal = args.job_time * args.jobs / min(args.concurrency, service_concurrency)
    with (
        LocalServiceProcess(root / "service-tmp", root / "service.log", job_time=args.job_time, delay=0.0,
                            concurrency=service_concurrency) as service,
        DaemonProcess(root / "daemon", service.url, args.concurrency) as daemon,
    ):
        assert daemon.proc is not None
        pid = daemon.proc.pid
        time.sleep(1.0)  # let start-up work (preset scan, imports) settle before the CPU baseline
        cpu_before = cpu_seconds(pid)
        idle_rss = tree_rss(psutil.Process(pid))
        profiler = start_profiler(pid, args.profile) if args.profile else None
        with RssSampler(pid, interval=0.05) as sampler:
            wall_start = time.time()
            requests: dict[Path, Path] = {}
            for number, source in enumerate(sources):
                request = write_request(daemon.requests_dir, f"take{number:03d}",
                                        {"source": str(source), "prompt": "bass", "tag": f"bench-{number}"})
                requests[request] = source
            statuses = wait_all(list(requests), timeout=ideal * 4 + 120)
            # the status file's mtime is when the daemon wrote `done`: no polling granularity in the figure
            last_done = max((request.with_name(request.stem + ".status.json").stat().st_mtime
                             for request in requests), default=wall_start)
        cpu_used = cpu_seconds(pid) - cpu_before
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
            profiler.wait(60)
        counters = service.stats()
        at_service = service_seconds(service.url, statuses)
        daemon.stop()
    assert daemon.usage is not None
    actual = last_done - wall_start
    slots = min(args.concurrency, service_concurrency)
    service_mean = statistics.mean(at_service) if at_service else 0.0
    return {
        "jobs": args.jobs,
        "audio_seconds": args.seconds,
        "concurrency": args.concurrency,
        "service_concurrency": service_concurrency,
        "job_time": args.job_time,
        "ideal_s": round(ideal, 2),
        "actual_s": round(actual, 2),
        "ratio": round(actual / ideal, 3) if ideal else None,
        "service_s_per_job_measured": round(service_mean, 3),
        "ideal_with_measured_service_s": round(service_mean * args.jobs / slots, 2),
        "service_slots_busy": round(sum(at_service) / (slots * actual), 3) if actual > 0 else None,
        "daemon_idle_rss_mb": round(idle_rss / MB, 1),
        "daemon_peak_rss_sampled_mb": round(sampler.peak_rss / MB, 1),
        "daemon_peak_rss_exact_mb": round(daemon.usage.peak_rss / MB, 1),
        "daemon_cpu_s_per_job": round(cpu_used / args.jobs, 4),
        "daemon_cpu_s_total_incl_startup": round(daemon.usage.cpu_seconds, 2),
        "stage_means_s": {k: round(v, 3) for k, v in stage_means(statuses).items()},
        "service": {k: counters[k] for k in ("submits", "max_running", "completed", "failed")},
        "problems": check_stems(statuses, requests),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each source")
    parser.add_argument("--job-time", type=float, default=2.0, help="the service's fixed seconds per job")
    parser.add_argument("--concurrency", type=int, default=4, help="the daemon's jobs in flight")
    parser.add_argument("--service-concurrency", type=int, help="the service's jobs at once (default: same)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--profile", type=Path, help="py-spy the daemon into this .svg (or .txt: collapsed)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-daemon-") as tmp:
        results = run(Path(tmp), args)
    ratio = results["ratio"]
    rss = max(results["daemon_peak_rss_exact_mb"], results["daemon_peak_rss_sampled_mb"])
    stages = ", ".join(f"{k} {v:.2f}" for k, v in results["stage_means_s"].items())
    measured_ideal = results["ideal_with_measured_service_s"]
    print(table([
        ("jobs", f"{results['jobs']} x {results['audio_seconds']:g} s stereo 48 kHz/24-bit", ""),
        ("concurrency (daemon / service)", f"{results['concurrency']} / {results['service_concurrency']}", ""),
        ("service time per job (--job-time)", f"{results['job_time']:g} s", ""),
        ("ideal = job time x jobs / concurrency", f"{results['ideal_s']:.1f} s", ""),
        ("actual (first request -> last done)", f"{results['actual_s']:.1f} s", ""),
        ("ratio actual / ideal", f"{ratio:.3f}" if ratio else "-",
         f"<= {RATIO_GOAL:.2f}" + ("  MET" if ratio and ratio <= RATIO_GOAL else "  MISSED")),
        ("daemon peak RSS (exact / sampled)",
         f"{results['daemon_peak_rss_exact_mb']:.0f} / {results['daemon_peak_rss_sampled_mb']:.0f} MB",
         f"<= {RSS_GOAL_MB:.0f} MB" + ("  MET" if rss <= RSS_GOAL_MB else "  MISSED")),
        ("daemon CPU per job", f"{results['daemon_cpu_s_per_job']:.3f} s", ""),
        ("daemon idle RSS (before the first request)", f"{results['daemon_idle_rss_mb']:.0f} MB", ""),
        ("service time per job as the service measured it", f"{results['service_s_per_job_measured']:.2f} s",
         "(the stand-in's own work adds to --job-time)"),
        ("actual / ideal with that measured time",
         f"{results['actual_s'] / measured_ideal:.3f}" if measured_ideal else "-", ""),
        ("service slots busy", f"{100 * (results['service_slots_busy'] or 0):.0f} %", ""),
        ("service: submits / most jobs running", f"{results['service']['submits']} / "
         f"{results['service']['max_running']}", ""),
    ]))
    print(f"mean pipeline stages per job (s): {stages}")
    report("bench_daemon", [
        {"figure": f"daemon, {results['jobs']} requests x {results['audio_seconds']:g} s, "
                   f"{results['job_time']:g} s service time, concurrency {results['concurrency']} (one run)",
         "measured": f"{results['actual_s']:.1f} s", "floor": f"ideal {results['ideal_s']:.1f} s",
         "ratio": f"{ratio:.3f}" if ratio else "-", "goal": f"<= {RATIO_GOAL:.2f}"},
        {"figure": "daemon peak RSS", "measured": f"{rss:.0f} MB", "goal": f"<= {RSS_GOAL_MB:.0f} MB"},
    ])
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    for problem in results["problems"][:10]:
        print(f"problem: {problem}", file=sys.stderr)
    return 1 if results["problems"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
