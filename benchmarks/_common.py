"""Helpers shared by the benchmarks that run sam-bridge as real processes.

- `RssSampler`: peak RSS of a process tree (psutil sampling) and peak disk use of a folder.
- `wait_with_rusage`: reap a child with `os.wait4` for its exact peak RSS and CPU time (Linux/macOS).
- `write_test_audio`: tones + clicks + noise, written block by block (an hour never sits in RAM).
- `LocalServiceProcess`, `DaemonProcess`: `sam-bridge local-service` and `sam-bridge run` as subprocesses
  on 127.0.0.1, with every per-user folder inside the benchmark's own temporary folder.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import psutil
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
BENCH_KEY = "bench-key-0123456789abcdef"  # what the daemon sends the local service; not a real key
MB = 2**20


# -- measuring ------------------------------------------------------------------------------------


def _tree(process: psutil.Process) -> list[psutil.Process]:
    try:
        return [process, *process.children(recursive=True)]
    except psutil.Error:
        return []


def tree_rss(process: psutil.Process) -> int:
    """Bytes resident in `process` and all its descendants right now (0 once it is gone)."""
    total = 0
    for member in _tree(process):
        with suppress(psutil.Error):  # exited between listing and reading
            total += member.memory_info().rss
    return total


def folder_bytes(folder: Path) -> int:
    """Disk blocks allocated under `folder` (what `du` counts), tolerant of files vanishing mid-walk."""
    total = 0
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            with suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


class RssSampler:
    """Samples a process tree's RSS (and optionally a folder's disk use) on a thread; keeps the peaks.

    Sampling can miss a spike shorter than `interval`; `wait_with_rusage` gives the exact peak of one
    process, so the benchmarks print both."""

    def __init__(self, pid: int, interval: float = 0.05, disk_folder: Path | None = None,
                 disk_interval: float = 1.0) -> None:
        self.process = psutil.Process(pid)
        self.interval, self.disk_folder, self.disk_interval = interval, disk_folder, disk_interval
        self.peak_rss = 0
        self.peak_disk = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def sample(self) -> None:
        self.peak_rss = max(self.peak_rss, tree_rss(self.process))
        self.samples += 1

    def _run(self) -> None:
        next_disk = 0.0
        while True:
            self.sample()
            if self.disk_folder is not None and time.monotonic() >= next_disk:
                self.peak_disk = max(self.peak_disk, folder_bytes(self.disk_folder))
                next_disk = time.monotonic() + self.disk_interval
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> RssSampler:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()


@dataclass(frozen=True)
class ChildUsage:
    returncode: int
    peak_rss: int  # bytes, the kernel's high-water mark for that one process
    cpu_seconds: float  # user + system


def wait_with_rusage(proc: subprocess.Popen[Any], timeout: float | None = None) -> ChildUsage:
    """Reap `proc` with wait4: its exact peak RSS and CPU time, which psutil cannot give after exit.

    Linux carries the parent's peak RSS into a child's ru_maxrss across exec, so this is never below this
    process's own peak: keep the parent small (the benchmarks write their inputs block by block)."""
    if timeout is not None:
        deadline = time.monotonic() + timeout
        while psutil.pid_exists(proc.pid) and psutil.Process(proc.pid).status() != psutil.STATUS_ZOMBIE:
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(proc.args, timeout)
            time.sleep(0.05)
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)  # so Popen does not try to reap it again
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return ChildUsage(proc.returncode, usage.ru_maxrss * scale, usage.ru_utime + usage.ru_stime)


def cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


@contextmanager
def stopwatch() -> Iterator[Callable[[], float]]:
    """`with stopwatch() as elapsed: ...; elapsed()` — seconds since the block began (frozen at its end)."""
    began = time.perf_counter()
    ended: list[float] = []
    yield lambda: (ended[0] if ended else time.perf_counter()) - began
    ended.append(time.perf_counter())


# -- test audio -----------------------------------------------------------------------------------


def write_test_audio(path: Path, seconds: float, rate: int = 48_000, channels: int = 2,
                     subtype: str = "PCM_24", seed: int = 0, block_seconds: float = 10.0) -> int:
    """Tones, clicks and noise (distinct per `seed`), block by block; returns the frame count."""
    frames = round(seconds * rate)
    block = max(1, round(block_seconds * rate))
    rng = np.random.default_rng(seed)
    pitches = 55.0 * 2 ** (np.arange(channels) / 12 + seed % 24 / 12)  # a different chord per seed
    pan = np.linspace(1.0, 0.6, channels)
    with sf.SoundFile(str(path), "w", rate, channels, subtype) as out:
        for start in range(0, frames, block):
            n = min(block, frames - start)
            t = (np.arange(start, start + n) / rate)[:, None]
            data = 0.25 * np.sin(2 * np.pi * pitches[None, :] * t) * pan
            data += rng.uniform(-0.08, 0.08, (n, channels))
            data[rng.random(n) < 2e-4] += 0.4  # clicks: transients for the alignment to find
            out.write(np.clip(data, -1.0, 1.0))
    return frames


# -- processes ------------------------------------------------------------------------------------


def python_env(**extra: str) -> dict[str, str]:
    """The environment for a child `python -m bridge …`: this checkout importable, output unbuffered, and
    no FAL_KEY (a real key never goes anywhere from a benchmark)."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")]))
    env = {name: value for name, value in os.environ.items() if name != "FAL_KEY"}
    return {**env, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1", **extra}


USER_FOLDERS = ("home", "state", "config", "hot", "tmp")


def user_env(root: Path, **extra: str) -> dict[str, str]:
    """`python_env` with every per-user folder sam-bridge touches (and TMPDIR) made under `root`, so a run
    never reads the real user's config or presets and its disk use can be measured in one place."""
    dirs = {name: root / name for name in USER_FOLDERS}
    for folder in dirs.values():
        folder.mkdir(parents=True, exist_ok=True)
    return python_env(
        HOME=str(dirs["home"]), SAM_BRIDGE_STATE_DIR=str(dirs["state"]),
        SAM_BRIDGE_CONFIG=str(dirs["config"] / "config.yaml"), SAM_BRIDGE_HOT_DIR=str(dirs["hot"]),
        XDG_CONFIG_HOME=str(dirs["config"]), TMPDIR=str(dirs["tmp"]), **extra,
    )


def stop_process(proc: subprocess.Popen[Any], timeout: float = 30.0) -> ChildUsage:
    """SIGTERM, wait (SIGKILL past `timeout`), reap with rusage."""
    if proc.poll() is not None:
        return ChildUsage(proc.returncode, 0, 0.0)
    proc.send_signal(signal.SIGTERM)
    try:
        return wait_with_rusage(proc, timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return wait_with_rusage(proc)


class LocalServiceProcess:
    """`sam-bridge local-service` on 127.0.0.1, any free port; its files under `tmpdir`."""

    def __init__(self, tmpdir: Path, log_file: Path, *, job_time: float = 0.0, delay: float = 0.0,
                 concurrency: int = 2) -> None:
        self.tmpdir, self.log_file = tmpdir, log_file
        self.args = ["--job-time", str(job_time), "--delay", str(delay), "--concurrency", str(concurrency)]
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.usage: ChildUsage | None = None

    def start(self, timeout: float = 30.0) -> str:
        self.tmpdir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_file, "w", encoding="utf-8")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bridge", "local-service", "--port", "0", *self.args],
            stdout=subprocess.PIPE, stderr=self._log, text=True, cwd=ROOT,
            env=python_env(TMPDIR=str(self.tmpdir)),
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            if line.startswith("local fal service on "):
                self.url = line.split(" on ", 1)[1].strip()
                return self.url
        self.stop()
        raise RuntimeError(f"the local service did not start; see {self.log_file}")

    def stats(self) -> dict[str, Any]:
        import httpx

        return dict(httpx.get(f"{self.url}/_local/stats", timeout=10).json())

    def stop(self) -> None:
        if self.proc is not None and self.usage is None:
            self.usage = stop_process(self.proc)
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self._log.close()

    def __enter__(self) -> LocalServiceProcess:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()


class DaemonProcess:
    """`sam-bridge run` with every per-user folder (state, config, hot folder, HOME) under `root`."""

    def __init__(self, root: Path, service_url: str, concurrency: int) -> None:
        self.root, self.service_url, self.concurrency = root, service_url, concurrency
        self.state_dir = root / "state"
        self.log_file = root / "daemon.log"
        self.proc: subprocess.Popen[str] | None = None
        self.info: dict[str, Any] = {}
        self.usage: ChildUsage | None = None

    @property
    def requests_dir(self) -> Path:
        return Path(str(self.info["requests_dir"]))

    def start(self, timeout: float = 60.0) -> dict[str, Any]:
        env = user_env(self.root, FAL_KEY=BENCH_KEY)
        self._log = open(self.log_file, "w", encoding="utf-8")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bridge", "run", "--service-url", self.service_url, "--osc-port", "0",
             "--concurrency", str(self.concurrency), "--no-hot-folder"],
            stdout=self._log, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env,
        )
        info_path = self.state_dir / "daemon.json"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._log.close()
                raise RuntimeError(f"the daemon exited early ({self.proc.returncode}); see {self.log_file}")
            try:
                info = json.loads(info_path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                info = {}
            if info.get("pid") == self.proc.pid:
                self.info = dict(info)
                return self.info
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the daemon did not start within {timeout:.0f} s; see {self.log_file}")

    def stop(self) -> None:
        if self.proc is not None and self.usage is None:
            self.usage = stop_process(self.proc)
            self._log.close()

    def __enter__(self) -> DaemonProcess:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()


def write_request(folder: Path, name: str, fields: dict[str, Any]) -> Path:
    """A request file, written whole then renamed into place (as a DAW script must)."""
    temp = folder / f".{name}.json.tmp"
    temp.write_text(json.dumps(fields), encoding="utf-8")
    final = folder / f"{name}.json"
    os.replace(temp, final)
    return final


def status_of(request_file: Path) -> dict[str, Any]:
    path = request_file.with_name(request_file.name[: -len(".json")] + ".status.json")
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return {}


def table(rows: list[tuple[str, str, str]]) -> str:
    """A three-column text table: figure, value, goal."""
    header = ("figure", "value", "goal")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(3)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
             for row in [header, tuple("-" * w for w in widths), *rows]]
    return "\n".join(lines)


class NullSink:
    """The engine's interface doing nothing: benchmarks that time a way in alone subclass it and override
    `submit` (and what else they need)."""

    def submit(self, request: Any) -> str:
        raise NotImplementedError

    def cancel(self, job_id: str) -> bool:
        return False

    def get(self, job_id: str) -> Any:
        return None

    def jobs(self, active_only: bool = False) -> list[Any]:
        return []

    def subscribe(self, listener: Callable[[Any], None]) -> Callable[[], None]:
        return lambda: None

    def preset_names(self, project_dir: Path | None = None, include_broken: bool = False) -> list[str]:
        return []


# -- reporting ------------------------------------------------------------------------------------

RESULT_PREFIX = "BENCH-RESULT "  # one line per benchmark run, read by run_all.py


def spread(values: list[float], digits: int = 3, unit: str = "") -> str:
    """'median (min–max)' of repeated measurements, e.g. '0.41 s (0.38–0.47)'."""
    if not values:
        return "-"
    ordered = sorted(values)
    middle = statistics.median(ordered)
    return f"{middle:.{digits}g}{unit} ({ordered[0]:.{digits}g}–{ordered[-1]:.{digits}g})"


def ratio_spread(measured: list[float], floor: list[float]) -> str:
    """Ratio of the medians, and the range of run-by-run ratios (runs interleaved, paired by index)."""
    if not measured or not floor:
        return "-"
    pairs = [m / f for m, f in zip(measured, floor, strict=False) if f > 0]
    middle = statistics.median(measured) / statistics.median(floor)
    return f"{middle:.2f} ({min(pairs):.2f}–{max(pairs):.2f})" if pairs else f"{middle:.2f}"


def report(benchmark: str, rows: list[dict[str, str]]) -> None:
    """Print the benchmark's figures as one machine-readable line: run_all.py gathers them into one table.
    Each row: figure, measured, floor (what the floor or peer is, and its value), ratio, goal."""
    keys = ("figure", "measured", "floor", "ratio", "goal")
    print(RESULT_PREFIX + json.dumps({"benchmark": benchmark,
                                      "rows": [{key: row.get(key, "-") for key in keys} for row in rows]},
                                     ensure_ascii=False), flush=True)
