"""What the REAPER script makes REAPER's UI thread wait for, against the 100 ms floor (issue #24).

- before: a project with presets of its own made the script run `python -m bridge presets list --json
  --project <folder>` with ExecProcess before showing its menu: the UI froze for a Python start.
- now: the script reads the list the daemon keeps for that project (`project-presets/<key>.json`).
- one defer cycle of a session following 20 requests (status files read, progress window drawn).

The Lua runs on the stand-in host (tests/daw/fake_reaper.lua) under lua5.4 (without it the benchmark says
so in its one row); times inside Lua are CPU time (os.clock), the process start is wall time. Medians of 7
runs, with min–max. The floor is a fixed budget, 100 ms: what a UI freeze may cost before a user feels it;
"now" is also set against "before" (the whole `python -m bridge presets list` process: interpreter start,
imports, reading the presets, JSON out) measured in the same run.

    python benchmarks/bench_reaper_ui.py [--runs 7]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import report, spread  # noqa: E402

from tests.daw.harness import SEPARATE_SCRIPT, ReaperHost, write_heartbeat, write_status  # noqa: E402

RUNS = 7
FLOOR_MS = 100.0


def summary(name: str, values_ms: list[float]) -> None:
    print(f"{name:<58} median {statistics.median(values_ms):8.2f} ms   (min {min(values_ms):.2f} – "
          f"max {max(values_ms):.2f}; floor {FLOOR_MS:.0f} ms)")


def row(figure: str, values_ms: list[float], before_ms: list[float] | None = None,
        goal: str = f"<= {FLOOR_MS:.0f} ms") -> dict[str, str]:
    floor = f"budget {FLOOR_MS:.0f} ms"
    if before_ms is not None:
        floor += f"; peer, before (ExecProcess of `presets list`): {spread(before_ms, unit=' ms')}"
    return {"figure": figure, "measured": spread(values_ms, unit=" ms"), "floor": floor,
            "ratio": f"{statistics.median(values_ms) / FLOOR_MS:.3g} of the budget", "goal": goal}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=RUNS)
    args = parser.parse_args()
    if shutil.which("lua5.4") is None:
        print("lua5.4 is not installed: nothing to measure", file=sys.stderr)
        report("bench_reaper_ui", [{"figure": "REAPER script UI waits", "measured": "skipped: lua5.4 not installed"}])
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        state, project = root / "state", root / "Song"
        (project / "sam-bridge" / "presets").mkdir(parents=True)
        (project / "sam-bridge" / "presets" / "room.yaml").write_text("name: Room tone\nprompt: room hum\n")
        requests = state / "requests"
        requests.mkdir(parents=True)
        (state / "daemon.json").write_text(json.dumps({"pid": 1, "requests_dir": str(requests)}))
        (state / "presets.json").write_text(json.dumps({"presets": [{"name": "piano"}]}))
        write_heartbeat(state, age=-3600)

        before = []
        for _ in range(args.runs):
            started = time.perf_counter()
            subprocess.run([sys.executable, "-X", "utf8", "-m", "bridge", "presets", "list", "--json", "--project",
                            str(project)], capture_output=True, check=True, cwd=ROOT)
            before.append((time.perf_counter() - started) * 1000)
        summary("before: ExecProcess(presets list --project) per menu", before)

        from bridge.presets.library import PresetLibrary, default_search_path
        from bridge.presets.project_lists import ProjectPresetLists

        items = [{"position": float(i * 5), "length": 4.0, "selected": True, "guid": f"{{I{i}}}",
                  "take": {"name": f"take {i}", "file": str(root / "a.wav"), "source_length": 30.0}}
                 for i in range(20)]
        (root / "a.wav").write_bytes(b"")
        scenario = {"os": "linux-x86_64", "project_file": str(project / "Song.rpp"),
                    "tracks": [{"name": "T", "items": items}], "answers": {"menu": [1]}}
        host = ReaperHost(scenario, root, {"SAM_BRIDGE_STATE_DIR": str(state)})
        try:
            host.run(SEPARATE_SCRIPT)  # leaves the .want for the daemon
            shared = PresetLibrary(default_search_path(config_dir=root / "no-config"), quiet=True)
            ProjectPresetLists(shared, state / "project-presets").refresh()
            host.tick(n=1)  # the menu, then 20 requests sent
            code = f"""
            local H = require("sam_bridge_reaper")
            local info = assert(H.find_daemon())
            local t = os.clock()
            for _ = 1, 100 do assert(H.presets_for(info, {json.dumps(str(project))})) end
            return (os.clock() - t) * 1000 / 100
            """
            now = [host.send(cmd="eval", code=code)["value"] for _ in range(args.runs)]
            summary("now: reading the daemon's project list per menu", now)
            for i, name in enumerate(sorted(p.stem for p in requests.glob("*.json"))):
                write_status(requests, name, state="running", progress=0.1 + i / 100, message="on fal")
            cycles = []
            for _ in range(args.runs):
                started = time.perf_counter()
                host.tick(n=10)
                cycles.append((time.perf_counter() - started) * 1000 / 10)
            summary("one defer cycle following 20 requests (incl. driver IPC)", cycles)
        finally:
            host.close()
    report("bench_reaper_ui", [
        row("before: ExecProcess(`presets list --project`) per menu, whole process (wall)", before,
            goal="- (the old way)"),
        row("now: reading the daemon's project preset list per menu (Lua CPU time)", now, before),
        row("one defer cycle following 20 requests, driver IPC included (wall)", cycles)])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
