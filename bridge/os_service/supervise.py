"""`sam-bridge service-run`: keeps `sam-bridge run` going where the service manager will not.

Task Scheduler's RestartOnFailure only retries a task that failed to *start* (Microsoft's task schema,
"RestartOnFailure (settingsType) Element"); a daemon that crashes an hour later stays down. So on Windows the
task runs this supervisor, which restarts the daemon after a non-zero exit, waiting longer after each quick
crash (1 s, 2 s, 4 s … up to a minute; back to 1 s after an hour of good running), and logs why it restarted:
the exit code and the last lines the daemon wrote to stderr (its traceback).

A clean exit (0: stopped on purpose) ends the supervisor too; so does an exit a restart cannot cure
(`NOT_RESTARTED`: a bad config, another daemon already running, a damaged journal), with the daemon's code,
which Task Scheduler shows as the task's last result.
"""

from __future__ import annotations

import collections
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bridge.common.processes import SignalStop
from bridge.common.redact import redact
from bridge.os_service.files import NOT_RESTARTED

log = logging.getLogger(__name__)

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


def run_once(command: Sequence[str], stop: threading.Event | SignalStop) -> RunResult:
    """Runs the daemon once; its stderr is read line by line so the last lines can say why it died."""
    proc = subprocess.Popen(list(command), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, errors="replace")
    _ends_with_us(proc)
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:  # a traceback can quote the key (the daemon's own redaction is gone by then)
            tail.append(redact(line.rstrip("\n")))

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


def supervise(command: Sequence[str], stop: threading.Event | SignalStop, backoff: Backoff = Backoff(),
              runner: Callable[[Sequence[str], threading.Event | SignalStop], RunResult] = run_once,
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
        if result.code in NOT_RESTARTED:
            log.error("the daemon exited with code %s (%s); it is not restarted", result.code,
                      NOT_RESTARTED[result.code])
            for line in result.tail:
                log.error("  daemon stderr: %s", line)
            return result.code
        wait = backoff.next_wait(wait, ran_for)
        log.error("the daemon exited with code %s after %.0f s; restarting in %.0f s. %s", result.code, ran_for,
                  wait, "Its last words:" if result.tail else "It wrote nothing to stderr; see daemon.log.")
        for line in result.tail:  # a record each: the log filter escapes newlines inside one (no forged lines)
            log.error("  daemon stderr: %s", line)
        if stop.wait(wait):
            return 0


def _ends_with_us(proc: subprocess.Popen[str]) -> None:
    """Windows: `schtasks /End` (and `service uninstall`) terminates the supervisor; a job object with
    JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE takes the daemon with it instead of leaving it running unsupervised
    (Microsoft, "JOBOBJECT_BASIC_LIMIT_INFORMATION"). The daemon's journal makes such a stop safe: its jobs
    resume at the next start. Elsewhere systemd and launchd supervise, not this."""
    if sys.platform != "win32":
        return
    import ctypes
    from ctypes import wintypes

    class Basic(ctypes.Structure):
        _fields_ = [("PerProcessUserTimeLimit", ctypes.c_int64), ("PerJobUserTimeLimit", ctypes.c_int64),
                    ("LimitFlags", wintypes.DWORD), ("MinimumWorkingSetSize", ctypes.c_size_t),
                    ("MaximumWorkingSetSize", ctypes.c_size_t), ("ActiveProcessLimit", wintypes.DWORD),
                    ("Affinity", ctypes.c_size_t), ("PriorityClass", wintypes.DWORD),
                    ("SchedulingClass", wintypes.DWORD)]

    class Extended(ctypes.Structure):
        _fields_ = [("BasicLimitInformation", Basic), ("IoInfo", ctypes.c_uint64 * 6),
                    ("ProcessMemoryLimit", ctypes.c_size_t), ("JobMemoryLimit", ctypes.c_size_t),
                    ("PeakProcessMemoryUsed", ctypes.c_size_t), ("PeakJobMemoryUsed", ctypes.c_size_t)]

    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    kernel32.CreateJobObjectW.restype = wintypes.HANDLE
    job = kernel32.CreateJobObjectW(None, None)
    info = Extended()
    info.BasicLimitInformation.LimitFlags = 0x2000  # JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE
    job_object_extended_limit_information = 9
    if not job or not kernel32.SetInformationJobObject(job, job_object_extended_limit_information,
                                                       ctypes.byref(info), ctypes.sizeof(info)) \
            or not kernel32.AssignProcessToJobObject(job, wintypes.HANDLE(int(proc._handle))):  # type: ignore[attr-defined]
        log.warning("could not tie the daemon to the supervisor (error %s): ending the task may leave it running",
                    ctypes.get_last_error())
    # the handle stays open for the supervisor's lifetime on purpose: closing it ends the daemon
