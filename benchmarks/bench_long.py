"""An hour-long source through `sam-bridge separate` against `sam-bridge local-service` (zero delay).

    /work/venv/bin/python benchmarks/bench_long.py [--minutes 60] [--keep] [--json out.json]

1. Makes a stereo 48 kHz/24-bit source block by block (it is never whole in RAM: 60 min = 1 GiB).
2. Runs `python -m bridge separate SOURCE --prompt bass --service-url URL --json` in a subprocess against
   a `sam-bridge local-service` subprocess: wall time, the pipeline's stages (manifest `timings`), the
   command's peak RSS (exact, from wait4; and sampled), peak disk use of the whole run.
3. Checks the stems: frame count, rate, channels and sample format equal the source's, and
   target + residual == source (to one 24-bit step) at a few places along the hour.
4. Fetches the service's results again and runs `bridge.audio.conform.conform` alone on them in a child
   process pinned to ONE core: the conform stage's real-time factor without the rest of the pipeline.
Goals (from the issue): command peak RSS <= 300 MB; conform >= 200x real time on one core.
Exit status 0 once the run completed (the table says whether a goal was met); 1 if a check failed.
Needs free disk for about 7x the source's size (source, upload, results, downloads, stems): 6.4 GiB for 60 min.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    BENCH_KEY,
    MB,
    ROOT,
    LocalServiceProcess,
    RssSampler,
    report,
    stopwatch,
    table,
    user_env,
    wait_with_rusage,
    write_test_audio,
)

RATE = 48_000
RSS_GOAL_MB = 300.0
RTF_GOAL = 200.0
CHECK_POINTS = (0.0, 0.5, 0.999)  # where along the source the null test reads a block
LSB_24 = 2.0**-23


def run_separate(root: Path, source: Path, service_url: str, out_dir: Path) -> dict[str, Any]:
    """The command as a user runs it; its summary, wall time, exact and sampled peak RSS, peak disk use."""
    command = [sys.executable, "-m", "bridge", "separate", str(source), "--prompt", "bass",
               "--service-url", service_url, "--output-dir", str(out_dir), "--json"]
    with open(root / "separate.log", "w", encoding="utf-8") as errors, stopwatch() as elapsed:
        proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=errors, text=True,
                                env=user_env(root / "user"))
        with RssSampler(proc.pid, interval=0.05, disk_folder=root, disk_interval=1.0) as sampler:
            assert proc.stdout is not None
            stdout = proc.stdout.read()
            usage = wait_with_rusage(proc)
    if usage.returncode != 0:
        raise SystemExit(f"separate failed ({usage.returncode}):\n{(root / 'separate.log').read_text()[-3000:]}")
    summary = json.loads(stdout)
    return {"wall": elapsed(), "summary": summary, "peak_rss": usage.peak_rss, "cpu": usage.cpu_seconds,
            "sampled_rss": sampler.peak_rss, "peak_disk": sampler.peak_disk,
            "manifest": json.loads(Path(summary["manifest"]).read_text(encoding="utf-8"))}


def check_stems(source: Path, stems: dict[str, str]) -> list[str]:
    """Problems with the stems: shape/format against the source, and the null test at a few places."""
    problems = []
    info = sf.info(str(source))
    for label, path in stems.items():
        stem = sf.info(path)
        if (stem.frames, stem.samplerate, stem.channels, stem.subtype) != (
                info.frames, info.samplerate, info.channels, info.subtype):
            problems.append(f"{label}: {stem.frames} frames, {stem.samplerate} Hz, {stem.channels} ch, "
                            f"{stem.subtype}; source {info.frames}, {info.samplerate}, {info.channels}, "
                            f"{info.subtype}")
    if problems:
        return problems
    block = min(info.frames, RATE)
    for where in CHECK_POINTS:
        start = int(where * (info.frames - block))
        src = sf.read(str(source), frames=block, start=start, always_2d=True)[0]
        target = sf.read(stems["target"], frames=block, start=start, always_2d=True)[0]
        residual = sf.read(stems["residual"], frames=block, start=start, always_2d=True)[0]
        error = float(np.max(np.abs(src - (target + residual))))
        if error > LSB_24:
            problems.append(f"target + residual differs from the source by {error:.2e} at frame {start}")
        # the prompt "bass" keeps the low tones: the target must carry more of this block than the residual
        if not np.sqrt(np.mean(target**2)) > np.sqrt(np.mean(residual**2)):
            problems.append(f"the target at frame {start} is quieter than the residual: not the low band")
    return problems


def fetch_results(service_url: str, request_id: str, folder: Path) -> tuple[Path, Path]:
    """Download the service's target and residual for `request_id` again (for conform alone)."""
    paths = []
    with httpx.Client(timeout=300, headers={"Authorization": f"Key {BENCH_KEY}"}) as http:
        result = http.get(f"{service_url}/fal-ai/sam-audio/requests/{request_id}").raise_for_status().json()
        for key in ("target", "residual"):
            dest = folder / f"svc.{key}.wav"
            with http.stream("GET", result[key]["url"]) as response, open(dest, "wb") as out:
                response.raise_for_status()
                for chunk in response.iter_bytes(1 << 20):
                    out.write(chunk)
            paths.append(dest)
    return paths[0], paths[1]


def conform_alone(folder: Path) -> dict[str, Any]:
    """bench_conform's child: conform once, pinned to one core, in a fresh process (its own RSS)."""
    child = subprocess.run([sys.executable, str(Path(__file__).with_name("bench_conform.py")), "--child",
                            str(folder), "--repeats", "1"], capture_output=True, text=True, check=False,
                           env=user_env(folder / "user", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1"))
    if child.returncode:
        raise SystemExit(f"conform alone failed:\n{child.stderr[-3000:]}")
    return dict(json.loads(child.stdout.strip().splitlines()[-1]))


def run(root: Path, minutes: float) -> dict[str, Any]:
    source = root / "Session Take.wav"
    with stopwatch() as made_in:
        frames = write_test_audio(source, minutes * 60, RATE, 2, "PCM_24", seed=1)
    print(f"made {minutes:g} min stereo {RATE} Hz/24-bit source ({source.stat().st_size / MB:.0f} MB) "
          f"in {made_in():.1f} s", flush=True)
    results: dict[str, Any] = {"minutes": minutes, "source_frames": frames, "source_mb": source.stat().st_size / MB,
                               "make_source_s": made_in()}
    service = LocalServiceProcess(root / "service", root / "service.log", delay=0.0, job_time=0.0, concurrency=1)
    with service:
        separated = run_separate(root, source, service.url, root / "stems")
        print(f"separate done in {separated['wall']:.1f} s; checking the stems", flush=True)
        results["problems"] = check_stems(source, separated["summary"]["stems"])
        for stem in separated["summary"]["stems"].values():
            Path(stem).unlink()  # room for the conform-alone run's own stems
        alone_dir = root / "alone"
        alone_dir.mkdir()
        (alone_dir / "source.wav").symlink_to(source)
        fetch_results(service.url, separated["summary"]["request_ids"][0], alone_dir)
    assert service.usage is not None
    print("conforming alone on one core", flush=True)
    alone = conform_alone(alone_dir)
    timings = separated["manifest"]["timings"]
    seconds = frames / RATE
    results.update({
        "command_wall_s": separated["wall"],
        "timings_s": timings,
        "command_peak_rss_mb": separated["peak_rss"] / MB,
        "command_sampled_rss_mb": separated["sampled_rss"] / MB,
        "command_cpu_s": separated["cpu"],
        "service_peak_rss_mb": service.usage.peak_rss / MB,
        "peak_disk_gb": separated["peak_disk"] / 2**30,
        "conform_rtf_pipeline": seconds / float(timings["conform"]),
        "conform_rtf_alone_wall": seconds / min(alone["walls"]),
        "conform_rtf_alone_cpu": seconds / min(alone["cpus"]),
        "conform_alone_peak_rss_mb": alone["peak_rss_mb"],
        "alignment": separated["manifest"]["steps"][0]["alignment"],
        "null_test": separated["manifest"]["steps"][0]["null_test"],
        "null_test_dbfs": separated["manifest"]["steps"][0]["null_test_dbfs"],
    })
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--tmp", type=Path, help="folder for the run's files (default: the system temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the run's folder and print where it is")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-long-", dir=args.tmp))
    try:
        results = run(root, args.minutes)
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    timings = results["timings_s"]
    stages = ", ".join(f"{k} {v:.1f}" for k, v in timings.items() if k != "total")
    rss = max(results["command_peak_rss_mb"], results["command_sampled_rss_mb"])
    rtf = results["conform_rtf_alone_wall"]
    align = results["alignment"] or {}
    null_test = results["null_test_dbfs"]  # None: exact or not finite, which results["null_test"] says
    print(table([
        ("source", f"{results['minutes']:g} min stereo 48 kHz/24-bit, {results['source_mb']:.0f} MB", ""),
        ("command wall time", f"{results['command_wall_s']:.1f} s", ""),
        ("pipeline total (manifest)", f"{float(timings['total']):.1f} s", ""),
        ("command peak RSS (exact / sampled)",
         f"{results['command_peak_rss_mb']:.0f} / {results['command_sampled_rss_mb']:.0f} MB",
         f"<= {RSS_GOAL_MB:.0f} MB" + ("  MET" if rss <= RSS_GOAL_MB else "  MISSED")),
        ("conform alone, one core", f"{rtf:.0f}x real time (CPU time: {results['conform_rtf_alone_cpu']:.0f}x)",
         f">= {RTF_GOAL:.0f}x" + ("  MET" if rtf >= RTF_GOAL else "  MISSED")),
        ("conform in the pipeline (2 shared cores)", f"{results['conform_rtf_pipeline']:.0f}x real time", ""),
        ("conform alone peak RSS", f"{results['conform_alone_peak_rss_mb']:.0f} MB", ""),
        ("command CPU time", f"{results['command_cpu_s']:.1f} s", ""),
        ("local service peak RSS", f"{results['service_peak_rss_mb']:.0f} MB", "(not the bridge)"),
        ("peak disk use of the run", f"{results['peak_disk_gb']:.1f} GiB", ""),
        ("alignment found", f"offset {align.get('offset_samples')}, drift {align.get('drift_samples')}, "
         f"correlation {align.get('correlation')}", ""),
        ("null test (manifest)", results["null_test"] if null_test is None else f"{null_test} dBFS", ""),
        ("stems vs source", "OK" if not results["problems"] else f"{len(results['problems'])} problem(s)", ""),
    ]))
    print(f"pipeline stages (s): {stages}")
    report("bench_long", [
        {"figure": f"`separate`, {results['minutes']:g} min stereo 48 kHz/24-bit (one run): peak RSS",
         "measured": f"{rss:.0f} MB", "floor": f"wall {results['command_wall_s']:.1f} s",
         "goal": f"<= {RSS_GOAL_MB:.0f} MB"},
        {"figure": "conform alone, one core, same file (one run)", "measured": f"{rtf:.0f}x real time",
         "floor": f"CPU time: {results['conform_rtf_alone_cpu']:.0f}x", "goal": f">= {RTF_GOAL:.0f}x"},
    ])
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    for problem in results["problems"]:
        print(f"problem: {problem}", file=sys.stderr)
    return 1 if results["problems"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
