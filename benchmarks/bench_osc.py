"""OSC server benchmark: loopback round trips and a junk flood.

    python benchmarks/bench_osc.py [--messages 1000] [--flood 20000] [--json results.json]

The server runs in a child process (as the daemon would), so the client's work does not share its GIL
and the RSS measured is the server's own. Goals (from the issue):
  /sam/ping → /sam/pong          p99 <= 5 ms
  /sam/separate → /sam/accepted  p99 <= 20 ms
  20,000 junk datagrams          server alive, RSS growth <= 20 MB, /sam/ping answered after
The sink accepts instantly: this measures the OSC way in, not the engine.
(The lead will switch it to the real engine.)
Exit status 1 if a goal is missed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

try:
    import bridge  # noqa: F401
except ModuleNotFoundError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import psutil
import soundfile as sf
from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import OscMessageBuilder

from bridge import __version__
from bridge.jobs import JobEvent, JobView
from bridge.osc_server import OscServer, OscSettings
from bridge.request import SeparationRequest

GOALS_MS = {"ping": 5.0, "separate": 20.0}
RSS_GOAL_MB = 20.0


class InstantSink:
    """A JobSink that accepts every request at once and never emits events."""

    def __init__(self) -> None:
        self.count = 0

    def submit(self, request: SeparationRequest) -> str:
        self.count += 1
        return f"job-{self.count}"

    def cancel(self, job_id: str) -> bool:
        return False

    def get(self, job_id: str) -> JobView | None:
        return None

    def jobs(self, active_only: bool = False) -> list[JobView]:
        return []

    def subscribe(self, listener: Callable[[JobEvent], None]) -> Callable[[], None]:
        return lambda: None

    def preset_names(self) -> list[str]:
        return ["piano", "vocals", "drums"]


def serve(root: Path) -> None:
    """Child process: run the server until stdin closes."""
    logging.basicConfig(level=logging.ERROR)  # the flood's (throttled) warnings are not the result
    settings = OscSettings(port=0, rate_limit=(10**9, 1.0), source_roots=(root,), output_roots=(root,))
    server = OscServer(InstantSink(), settings, __version__)
    server.start()
    print(server.address[1], flush=True)
    sys.stdin.read()
    server.stop()


def message(address: str, *args: object) -> bytes:
    builder = OscMessageBuilder(address)
    for arg in args:
        builder.add_arg(arg)  # type: ignore[arg-type]
    return builder.build().dgram


def round_trips(sock: socket.socket, server: tuple[str, int], request: bytes, reply: str,
                count: int) -> list[float]:
    """Milliseconds from send to the reply, one request at a time."""
    timings = []
    for _ in range(count):
        start = time.perf_counter()
        sock.sendto(request, server)
        while OscMessage(sock.recvfrom(65535)[0]).address != reply:
            pass
        timings.append((time.perf_counter() - start) * 1000)
    return timings


def percentiles(timings: list[float]) -> dict[str, float]:
    ordered = sorted(timings)
    return {"p50_ms": statistics.median(ordered), "p99_ms": ordered[int(0.99 * (len(ordered) - 1))],
            "max_ms": ordered[-1]}


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--flood", type=int, default=20_000)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        source = root / "take.wav"
        sf.write(source, np.zeros(4410), 44100)
        child = subprocess.Popen([sys.executable, __file__, "--serve", str(root)], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True,
                                 env={**os.environ, "PYTHONUNBUFFERED": "1"})
        assert child.stdout is not None and child.stdin is not None
        try:
            server = ("127.0.0.1", int(child.stdout.readline()))
            results = run(server, source, psutil.Process(child.pid), args.messages, args.flood)
        finally:
            child.stdin.close()
            child.wait(timeout=10)
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    goals: dict[str, bool] = results["goals_met"]  # type: ignore[assignment]
    return 0 if all(goals.values()) else 1


def run(server: tuple[str, int], source: Path, process: psutil.Process, count: int,
        flood: int) -> dict[str, object]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5.0)
    ping = message("/sam/ping")
    separate = message("/sam/separate", str(source), "piano", "bench")
    round_trips(sock, server, ping, "/sam/pong", 50)  # warm up
    results: dict[str, object] = {
        "ping": percentiles(round_trips(sock, server, ping, "/sam/pong", count)),
        "separate": percentiles(round_trips(sock, server, separate, "/sam/accepted", count)),
        "messages": count,
    }

    rss_before = process.memory_info().rss
    drops_before = kernel_udp_drops()
    flooder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # never reads its /sam/error replies
    rng = random.Random(7)
    started = time.perf_counter()
    for _ in range(flood):
        flooder.sendto(junk(rng), server)
    sent_s = time.perf_counter() - started
    alive = round_trips(sock, server, ping, "/sam/pong", 1)  # raises (timeout) if the server died
    rss_growth_mb = (process.memory_info().rss - rss_before) / 2**20
    drops_after = kernel_udp_drops()
    dropped = None if drops_before is None or drops_after is None else drops_after - drops_before
    flooder.close()
    sock.close()
    results["flood"] = {"datagrams": flood, "send_seconds": round(sent_s, 3), "alive": process.is_running(),
                        "ping_after_ms": round(alive[0], 3), "rss_growth_mb": round(rss_growth_mb, 2),
                        "dropped_by_kernel": dropped}
    ping_p99 = results["ping"]["p99_ms"]  # type: ignore[index]
    separate_p99 = results["separate"]["p99_ms"]  # type: ignore[index]
    results["goals_met"] = {
        "ping_p99": ping_p99 <= GOALS_MS["ping"],
        "separate_p99": separate_p99 <= GOALS_MS["separate"],
        "flood_rss": rss_growth_mb <= RSS_GOAL_MB,
        "flood_alive": process.is_running(),
    }
    return results


if __name__ == "__main__":
    sys.exit(main())
