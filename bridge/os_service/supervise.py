"""`sam-bridge service-run`: keeps `sam-bridge run` going where the service manager will not.

Task Scheduler's RestartOnFailure only retries a task that failed to *start* (Microsoft's task schema,
"RestartOnFailure (settingsType) Element"); a daemon that crashes an hour later stays down. So on Windows the
task runs this supervisor, which restarts the daemon after a non-zero exit, waiting longer after each quick
crash (1 s, 2 s, 4 s … up to a minute; back to 1 s after an hour of good running), and logs why it restarted:
the exit code and the last lines the daemon wrote to stderr (its traceback).

A clean exit (0: stopped on purpose) ends the supervisor too; so does exit code 3 (another daemon already
runs: restarting could never succeed).
"""

from __future__ import annotations

import collections
import logging
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

ALREADY_RUNNING = 3  # bridge.daemon.AlreadyRunning.exit_code
TAIL_LINES = 20


@dataclass(frozen=True)
class Backoff:
    first: float = 1.0
    longest: float = 60.0
    healthy_after: float = 3600.0  # a run this long resets the wait to `first`

    def next_wait(self, previous: float, ran_for: float) -> float:
        if ran_for >= self.healthy_after or previous <= 0:
            return self.first
        return min(previous * 2, self.longest)


@dataclass(frozen=True)
class RunResult:
    code: int
    tail: list[str]


def run_once(command: Sequence[str], stop: threading.Event) -> RunResult:
    """Runs the daemon once; its stderr is read line by line so the last lines can say why it died."""
    proc = subprocess.Popen(list(command), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, errors="replace")
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            tail.append(line.rstrip("\n"))

    reader = threading.Thread(target=read, name="daemon-stderr", daemon=True)
    reader.start()
    while proc.poll() is None:
        if stop.wait(0.5):
            proc.terminate()  # the daemon stops cleanly on SIGTERM / TerminateProcess ends it
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
    reader.join(5)
    return RunResult(proc.returncode, list(tail))


def supervise(command: Sequence[str], stop: threading.Event, backoff: Backoff = Backoff(),
              runner: Callable[[Sequence[str], threading.Event], RunResult] = run_once,
              clock: Callable[[], float] = time.monotonic) -> int:
    """Restarts `command` after each failure until it exits cleanly or `stop` is set; returns its last code."""
    wait = 0.0
    while True:
        started = clock()
        log.info("starting the daemon: %s", " ".join(command))
        result = runner(command, stop)
        ran_for = clock() - started
        if stop.is_set():
            log.info("stopped on request (the daemon exited with %s)", result.code)
            return 0
        if result.code == 0:
            log.info("the daemon stopped cleanly after %.0f s; not restarting it", ran_for)
            return 0
        if result.code == ALREADY_RUNNING:
            log.warning("another sam-bridge daemon is already running; this one is not restarted")
            return result.code
        wait = backoff.next_wait(wait, ran_for)
        why = "\n    ".join(result.tail) if result.tail else "(it wrote nothing to stderr; see daemon.log)"
        log.error("the daemon exited with code %s after %.0f s; restarting in %.0f s. Its last words:\n    %s",
                  result.code, ran_for, wait, why)
        if stop.wait(wait):
            return 0
