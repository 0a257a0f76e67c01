"""OSC benchmark: loopback round trips and a junk flood, against the real daemon and an instant sink.

    python benchmarks/bench_osc.py [--messages 1000] [--flood 20000] [--json results.json]

Two servers are measured, each in its own process (so the client's work does not share their GIL, and
the RSS measured is the server's own):
  engine        `sam-bridge run` (a real daemon: journal, job engine, request files, hot folder, OSC)
                against the built-in local fal service, run in this process with a job time so long
                that no job finishes during the run: every /sam/separate is a real job written to the
                journal and queued behind the in-flight limit.
  instant_sink  the OSC server alone with a sink that accepts at once: the cost of the OSC way in.
Goals (from the issue), checked on both:
  /sam/ping → /sam/pong          p99 <= 5 ms
  /sam/separate → /sam/accepted  p99 <= 20 ms
  20,000 junk datagrams          server alive, RSS growth <= 20 MB, /sam/ping answered after
Exit status 1 if a goal is missed, or if a job finished during the engine run (the figures would then
include finished-job traffic).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

try:
    import bridge  # noqa: F401
except ModuleNotFoundError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import psutil
import soundfile as sf
from _common import NullSink, report, spread
from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import OscMessageBuilder

from bridge import __version__
from bridge.common.request import SeparationRequest
from bridge.local_service import LocalFalService
from bridge.osc.server import OscServer, OscSettings

GOALS_MS = {"ping": 5.0, "separate": 20.0}
RSS_GOAL_MB = 20.0
BENCH_KEY = "bench-key-0123456789abcdef"
JOB_TIME = 24 * 3600.0  # seconds the local service takes per job: nothing finishes during the run
DAEMON_CONFIG = "osc:\n  rate_limit: 1000000000\n  rate_window: 1\n"  # the benchmark is one client
Server = tuple[tuple[str, int], psutil.Process]


class InstantSink(NullSink):
    """A JobSink that accepts every request at once and never emits events."""

    def __init__(self) -> None:
        self.count = 0

    def submit(self, request: SeparationRequest) -> str:
        self.count += 1
        return f"job-{self.count}"

    def preset_names(self, project_dir: Path | None = None, include_broken: bool = False) -> list[str]:
        return ["piano", "vocals", "drums"]


def serve(root: Path) -> None:
    """Child process: run the instant-sink server until stdin closes."""
    logging.basicConfig(level=logging.ERROR)  # the flood's (throttled) warnings are not the result
    settings = OscSettings(port=0, rate_limit=(10**9, 1.0), source_roots=(root,), output_roots=(root,))
    server = OscServer(InstantSink(), settings, __version__)
    server.start()
    print(server.address[1], flush=True)
    sys.stdin.read()
    server.stop()


@contextmanager
def instant_sink_server(root: Path) -> Iterator[Server]:
    child = subprocess.Popen([sys.executable, __file__, "--serve", str(root)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert child.stdout is not None and child.stdin is not None
    try:
        yield ("127.0.0.1", int(child.stdout.readline())), psutil.Process(child.pid)
    finally:
        child.stdin.close()
        child.wait(timeout=10)


@contextmanager
def daemon_server(root: Path, service_url: str) -> Iterator[Server]:
    """`sam-bridge run` as a child process with its own home, state, config and hot folders under root."""
    dirs = {name: root / name for name in ("home", "state", "config", "hot")}
    for folder in dirs.values():
        folder.mkdir(exist_ok=True)
    (dirs["config"] / "config.yaml").write_text(DAEMON_CONFIG, encoding="utf-8")
    env = {**os.environ, "HOME": str(dirs["home"]), "SAM_BRIDGE_STATE_DIR": str(dirs["state"]),
           "SAM_BRIDGE_CONFIG": str(dirs["config"] / "config.yaml"), "SAM_BRIDGE_HOT_DIR": str(dirs["hot"]),
           "XDG_CONFIG_HOME": str(dirs["config"]), "FAL_KEY": BENCH_KEY, "PYTHONUNBUFFERED": "1"}
    info_path = dirs["state"] / "daemon.json"
    with open(root / "daemon.log", "w", encoding="utf-8") as log:
        child = subprocess.Popen([sys.executable, "-m", "bridge", "run", "--service-url", service_url,
                                  "--osc-port", "0"], env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while not (info_path.exists() and json.loads(info_path.read_text()).get("pid") == child.pid):
                if child.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the daemon did not start:\n{(root / 'daemon.log').read_text()}")
                time.sleep(0.05)
            osc = json.loads(info_path.read_text())["osc"]
            yield (str(osc["host"]), int(osc["port"])), psutil.Process(child.pid)
        finally:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(10)


def message(address: str, *args: object) -> bytes:
    builder = OscMessageBuilder(address)
    for arg in args:
        builder.add_arg(arg)  # type: ignore[arg-type]
    return builder.build().dgram


def round_trips(sock: socket.socket, server: tuple[str, int], request: bytes, reply: str,
                count: int, timeout: float = 5.0) -> list[float]:
    """Milliseconds from send to the reply, one request at a time (job events in between are skipped).
    Raises TimeoutError if a reply does not come within `timeout` seconds."""
    timings = []
    for _ in range(count):
        start = time.perf_counter()
        sock.sendto(request, server)
        while OscMessage(sock.recvfrom(65535)[0]).address != reply:
            if time.perf_counter() - start > timeout:  # events keep the socket busy: recv never times out
                raise TimeoutError(f"no {reply} within {timeout:g} s")
        timings.append((time.perf_counter() - start) * 1000)
    return timings


def answered_again(sock: socket.socket, server: tuple[str, int], ping: bytes,
                   timeout: float = 30.0) -> tuple[float, int]:
    """(ms until a /sam/pong came back, pings sent): after a flood the server's receive buffer may still be
    full, so a ping can be dropped by the kernel; it is repeated every 0.5 s."""
    start = time.perf_counter()
    for attempt in range(1, int(timeout / 0.5) + 1):
        try:
            round_trips(sock, server, ping, "/sam/pong", 1, timeout=0.5)
            return (time.perf_counter() - start) * 1000, attempt
        except TimeoutError:
            continue
    raise TimeoutError(f"the server did not answer /sam/ping within {timeout:g} s after the flood")


BATCHES = 5  # the round trips are measured in this many batches: each figure is the median of the batches'


def percentiles(timings: list[float]) -> dict[str, float]:
    ordered = sorted(timings)
    return {"p50_ms": round(statistics.median(ordered), 3), "p99_ms": round(ordered[int(0.99 * (len(ordered) - 1))], 3),
            "max_ms": round(ordered[-1], 3)}


def batched(sock: socket.socket, server: tuple[str, int], request: bytes, reply: str, count: int) -> dict[str, Any]:
    """p50 and p99 of each of BATCHES batches of round trips: their medians, and every batch's figures."""
    batches = [percentiles(round_trips(sock, server, request, reply, max(1, count // BATCHES)))
               for _ in range(BATCHES)]
    return {"p50_ms": statistics.median(b["p50_ms"] for b in batches),
            "p99_ms": statistics.median(b["p99_ms"] for b in batches),
            "p50_batches": [b["p50_ms"] for b in batches], "p99_batches": [b["p99_ms"] for b in batches]}


def kernel_udp_drops() -> int | None:
    """Datagrams Linux dropped because a socket's receive buffer was full (None elsewhere)."""
    try:
        lines = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines()
                 if line.startswith("Udp:")]
        return int(dict(zip(lines[0], lines[1], strict=True))["RcvbufErrors"])
    except (OSError, KeyError, IndexError, ValueError):
        return None


def junk(rng: random.Random) -> bytes:
    kind = rng.randrange(5)
    if kind == 0:
        return rng.randbytes(rng.randrange(1, 1400))
    if kind == 1:
        return message("/sam/" + "".join(rng.choices("abcxyz/", k=12)), rng.random())
    if kind == 2:
        return message("/sam/separate", "x" * 8192, "piano")
    if kind == 3:
        return b"#bundle\x00" + rng.randbytes(rng.randrange(0, 200))
    return message("/sam/cancel", rng.randbytes(8))


def measure(server: Server, source: Path, count: int, flood: int) -> dict[str, Any]:
    address, process = server
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)  # job events pile up between reads
    sock.settimeout(5.0)
    ping = message("/sam/ping")
    separate = message("/sam/separate", str(source), "piano", "bench")
    round_trips(sock, address, ping, "/sam/pong", 50)  # warm up
    round_trips(sock, address, separate, "/sam/accepted", 10)
    results: dict[str, Any] = {
        "ping": batched(sock, address, ping, "/sam/pong", count),
        "separate": batched(sock, address, separate, "/sam/accepted", count),
        "messages": count,
    }

    rss_before = process.memory_info().rss
    drops_before = kernel_udp_drops()
    flooder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # never reads its /sam/error replies
    rng = random.Random(7)
    started = time.perf_counter()
    for _ in range(flood):
        flooder.sendto(junk(rng), address)
    sent_s = time.perf_counter() - started
    answered_ms, pings = answered_again(sock, address, ping)  # raises (timeout) if the server died
    rss_growth_mb = (process.memory_info().rss - rss_before) / 2**20
    drops_after = kernel_udp_drops()
    dropped = None if drops_before is None or drops_after is None else drops_after - drops_before
    flooder.close()
    sock.close()
    results["flood"] = {"datagrams": flood, "send_seconds": round(sent_s, 3), "alive": process.is_running(),
                        "answered_after_ms": round(answered_ms, 3), "pings_until_answered": pings,
                        "rss_growth_mb": round(rss_growth_mb, 2),
                        "dropped_by_kernel": dropped}
    results["goals_met"] = {
        "ping_p99": results["ping"]["p99_ms"] <= GOALS_MS["ping"],
        "separate_p99": results["separate"]["p99_ms"] <= GOALS_MS["separate"],
        "flood_rss": rss_growth_mb <= RSS_GOAL_MB,
        "flood_alive": process.is_running(),
    }
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--flood", type=int, default=20_000)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return 0

    logging.basicConfig(level=logging.WARNING)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        source = root / "home" / "take.wav"
        source.parent.mkdir()
        sf.write(source, np.zeros(4410), 44100)
        with LocalFalService(key=BENCH_KEY, job_time=JOB_TIME) as service, \
                daemon_server(root, service.url) as daemon:
            results["engine"] = measure(daemon, source, args.messages, args.flood)
            stats = service.stats()
        results["engine"]["jobs_queued"] = args.messages + 10
        results["engine"]["service"] = {k: stats[k] for k in ("submits", "running", "completed", "failed")}
        results["engine"]["goals_met"]["nothing_finished"] = stats["completed"] == 0 and stats["failed"] == 0
        with instant_sink_server(root / "home") as sink:
            results["instant_sink"] = measure(sink, source, args.messages, args.flood)
    print(json.dumps(results, indent=2))
    print(summary(results))
    rows = []
    for name, part in results.items():
        for kind, goal in (("ping", "ping"), ("separate", "separate")):
            rows.append({"figure": f"{name}: /sam/{kind} round trip p99 (median of {BATCHES} batches)",
                         "measured": spread(part[kind]["p99_batches"], unit=" ms"),
                         "floor": f"p50 {spread(part[kind]['p50_batches'], unit=' ms')}",
                         "goal": f"<= {GOALS_MS[goal]:g} ms"})
        rows.append({"figure": f"{name}: RSS growth over {args.flood} junk datagrams",
                     "measured": f"{part['flood']['rss_growth_mb']:.1f} MB (one flood)",
                     "goal": f"<= {RSS_GOAL_MB:g} MB, alive: {part['flood']['alive']}"})
    report("bench_osc", rows)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if all(all(part["goals_met"].values()) for part in results.values()) else 1


def summary(results: dict[str, Any]) -> str:
    lines = [f"{'':14} {'ping p50/p99 ms':>17} {'separate p50/p99 ms':>21} {'flood RSS +MB':>14}  goals"]
    for name, part in results.items():
        ping, sep = part["ping"], part["separate"]
        missed = [goal for goal, met in part["goals_met"].items() if not met]
        lines.append(f"{name:14} {ping['p50_ms']:>8.2f}/{ping['p99_ms']:<8.2f} {sep['p50_ms']:>10.2f}/"
                     f"{sep['p99_ms']:<10.2f} {part['flood']['rss_growth_mb']:>14.2f}  "
                     + ("met" if not missed else "MISSED: " + ", ".join(missed)))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
