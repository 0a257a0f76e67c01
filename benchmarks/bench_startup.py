"""Start-up: how long `sam-bridge --help`, `sam-bridge separate --help` and `sam-bridge status` take, whole
process, against a bare `python -c "import numpy, soundfile, soxr, httpx"` (the libraries any audio client
over HTTP loads) measured in the same run, interleaved. Goal: each <= 1.5x the bare import.

Each command runs as REAPER or a script runs it: a new interpreter through the installed `sam-bridge`
entry point (its own folders in a temporary home, so `status` reads an empty journal). Medians of
`--runs` (>= 5 by default), min-max beside them.

    python benchmarks/bench_startup.py [--runs 9]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ratio_spread, report, spread, user_env

GOAL = 1.5
BARE = [sys.executable, "-c", "import numpy, soundfile, soxr, httpx"]


def entry_point() -> list[str]:
    """The installed `sam-bridge` script of this interpreter's environment, else `python -m bridge`."""
    script = Path(sys.executable).with_name("sam-bridge")
    found = str(script) if script.exists() else shutil.which("sam-bridge")
    return [found] if found else [sys.executable, "-m", "bridge"]


def wall(command: list[str], env: dict[str, str]) -> float:
    began = time.perf_counter()
    subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - began


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    cli = entry_point()
    commands = {"sam-bridge --help": [*cli, "--help"], "sam-bridge separate --help": [*cli, "separate", "--help"],
                "sam-bridge status": [*cli, "status"]}
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        env = user_env(Path(tmp))
        for command in [BARE, *commands.values()]:  # warm the file cache: every run then reads the same way
            wall(command, env)
        bare: list[float] = []
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.runs):
            bare.append(wall(BARE, env))
            for name, command in commands.items():
                times[name].append(wall(command, env))
    print(f"bare import: {spread(bare, unit=' s')}")
    rows = []
    for name, values in times.items():
        print(f"{name}: {spread(values, unit=' s')}, ratio {ratio_spread(values, bare)}")
        rows.append({"figure": f"`{name}`, whole process", "measured": spread(values, unit=" s"),
                     "floor": f"bare import of numpy, soundfile, soxr, httpx: {spread(bare, unit=' s')}",
                     "ratio": ratio_spread(values, bare), "goal": f"<= {GOAL:g}"})
    report("bench_startup", rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
