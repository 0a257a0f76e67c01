"""Run every benchmark, one after another, and print one Markdown table of their figures.

Each benchmark prints a `BENCH-RESULT {json}` line (see `_common.report`); this collects them, with the
date and the machine, into the table the README's Benchmarks section quotes. `--tiny` runs each in a tiny
configuration (seconds, not minutes: the figures mean nothing, it only shows every benchmark still runs);
`--only NAME` runs some of them.

    python benchmarks/run_all.py [--tiny] [--only bench_conform --only bench_upload_size] [--markdown out.md]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULT_PREFIX = "BENCH-RESULT "

# name: (arguments for a full run, arguments for a tiny run)
BENCHMARKS: dict[str, tuple[list[str], list[str]]] = {
    "bench_startup": ([], ["--runs", "2"]),
    "bench_upload_size": ([], ["--seconds", "3", "--runs", "2"]),
    "bench_conform": ([], ["--minutes", "0.1", "--repeats", "2"]),
    "bench_oneshot": ([], ["--minutes", "0.05", "--repeats", "2"]),
    "bench_long": ([], ["--minutes", "0.3"]),
    "bench_daemon": ([], ["--jobs", "4", "--seconds", "1", "--job-time", "0.2", "--concurrency", "2"]),
    "bench_osc": ([], ["--messages", "20", "--flood", "100"]),
    "bench_hotfolder": ([], ["--files", "2", "--slow-writes", "2", "--parallel", "2", "--settle", "0.3"]),
    "bench_upload": ([], ["--minutes", "0.05", "--runs", "2"]),
    "bench_upload_stream": ([], ["--minutes", "0.05", "--runs", "2"]),
    "bench_quality": ([], ["--seconds", "5", "--runs", "2"]),
    "bench_quality_flags": ([], []),
    "bench_rate_limiter": ([], ["--runs", "1"]),
    "bench_projection": ([], ["--seconds", "3", "--repeats", "1"]),
    "bench_reaper_ui": ([], ["--runs", "2"]),
    "bench_team": ([], ["--jobs", "4", "--service-time", "0.2", "--repeats", "1", "--daemons", "1,2",
                        "--claim-files", "20"]),
}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    system = f"{platform.system()} {platform.release()}"
    return f"{cpu}, {os.cpu_count()} cores, {system}, Python {platform.python_version()}"


def run(name: str, tiny: bool) -> tuple[int, list[dict[str, str]], str]:
    """(exit status, the benchmark's rows, its stderr's tail)."""
    full, small = BENCHMARKS[name]
    proc = subprocess.run([sys.executable, str(HERE / f"{name}.py"), *(small if tiny else full)],
                          capture_output=True, text=True, cwd=HERE.parent, check=False)
    rows: list[dict[str, str]] = []
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            rows.extend(json.loads(line[len(RESULT_PREFIX):])["rows"])
    return proc.returncode, rows, proc.stderr[-2000:]


def markdown(results: dict[str, tuple[int, list[dict[str, str]], str]], tiny: bool) -> str:
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"Measured {when} on {machine()}{' (tiny configuration: figures meaningless)' if tiny else ''}.",
             "Medians of the runs, (min–max) across them; a ratio is measured / floor or peer of the same runs.",
             "", "| benchmark | figure | measured | floor or peer | ratio | goal |", "|---|---|---|---|---|---|"]
    for name, (status, rows, _stderr) in results.items():
        if not rows:
            lines.append(f"| `{name}` | did not report (exit status {status}) | - | - | - | - |")
        for row in rows:
            cells = [row[key].replace("|", "\\|") for key in ("figure", "measured", "floor", "ratio", "goal")]
            lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="each benchmark in a tiny configuration")
    parser.add_argument("--only", action="append", choices=sorted(BENCHMARKS), help="run just this one (repeatable)")
    parser.add_argument("--markdown", type=Path, help="also write the table here")
    args = parser.parse_args()
    results = {}
    for name in args.only or list(BENCHMARKS):
        print(f"running {name}…", file=sys.stderr, flush=True)
        results[name] = run(name, args.tiny)
        status, rows, stderr = results[name]
        if not rows:
            print(f"{name} failed (exit status {status}):\n{stderr}", file=sys.stderr)
    table = markdown(results, args.tiny)
    print(table)
    if args.markdown:
        args.markdown.write_text(table + "\n", encoding="utf-8")
    return 0 if all(rows for _status, rows, _stderr in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
