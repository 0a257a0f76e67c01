"""The Windows service: the task XML meets Task Scheduler's schema, `service status` reports the task's real
state (through a schtasks stand-in that keeps state as Task Scheduler does), and `service-run`, which the
task runs, restarts a crashed daemon with backoff and logs why."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path, PurePath

import pytest

from bridge.os_service.files import TASK_NAME, make_plan, render_task_xml
from bridge.os_service.manage import install, status, uninstall
from bridge.os_service.supervise import Backoff, RunResult, run_once, supervise
from tests.conftest import TEST_KEY, wait_for
from tests.os_service.task_scheduler_fake import FakeSchtasks, TaskXmlError, validate_task_xml

WINDOWS_ENV = {"USERPROFILE": "C:\\Users\\you", "LOCALAPPDATA": "C:\\Users\\you\\AppData\\Local",
               "USERDOMAIN": "PC", "USERNAME": "you"}


def windows_plan(tmp_path: Path, python: str = "C:\\Python\\pythonw.exe"):  # type: ignore[no-untyped-def]
    """The Windows plan, with its task file in tmp_path (a Windows path means nothing on this machine)."""
    plan = make_plan("windows", WINDOWS_ENV, [python, "-m", "bridge", "service-run"])
    file = tmp_path / "sam-bridge-task.xml"
    enable = [[*command[:5], str(file), *command[6:]] if "/XML" in command else command for command in plan.enable]
    return dataclasses.replace(plan, paths=dataclasses.replace(plan.paths, service_file=file), enable=enable)


def test_the_task_xml_meets_task_schedulers_schema() -> None:
    text = render_task_xml(["C:\\Python\\pythonw.exe", "-m", "bridge", "service-run"], "PC\\you",
                           PurePath("C:\\Users\\you"))
    root = validate_task_xml(text.encode("utf-16"))
    ns = "{http://schemas.microsoft.com/windows/2004/02/mit/task}"
    assert root.findtext(f"{ns}Actions/{ns}Exec/{ns}Arguments") == "-m bridge service-run"
    # the stand-in is no pushover: each of these is refused by schtasks
    for wrong, right in (("<Interval>PT1M</Interval>", "<Interval>PT30S</Interval>"),
                         ("<Count>3</Count>", ""),
                         ("<Priority>7</Priority>", "<Priority>11</Priority>"),
                         ("<Hidden>false</Hidden>", "<Hidden>no</Hidden>"),
                         ("<RunLevel>LeastPrivilege</RunLevel>", "<RunLevel>Lowest</RunLevel>"),
                         ("<Enabled>true</Enabled>\n    <Hidden>", "<Enabled>true</Enabled><KeepAlive>true</KeepAlive>"
                          "\n    <Hidden>")):
        assert wrong in text
        with pytest.raises(TaskXmlError):
            validate_task_xml(text.replace(wrong, right, 1).encode("utf-16"))


def test_the_windows_task_runs_the_supervisor() -> None:
    from bridge.os_service.files import daemon_command

    command = daemon_command("windows", "C:\\Python\\python.exe")
    assert command[-3:] == ["-m", "bridge", "service-run"]


def test_service_status_asks_task_scheduler_for_the_real_state(tmp_path: Path) -> None:
    plan = windows_plan(tmp_path)
    schtasks = FakeSchtasks()
    assert install(plan, schtasks).ok
    assert schtasks.calls[0][:2] == ["schtasks", "/Create"] and TASK_NAME in schtasks.tasks

    def state() -> str:
        return status(plan, schtasks).lines[-1].split(": ", 1)[1]

    assert state().startswith("running")
    schtasks.process_exited(TASK_NAME, 1)  # the program died
    assert state() == "not running (Ready); it last ended with code 1: see the service log"
    schtasks(["schtasks", "/Run", "/TN", TASK_NAME])
    schtasks(["schtasks", "/End", "/TN", TASK_NAME])
    assert "it was ended" in state()
    assert uninstall(plan, schtasks).lines[-1].startswith("Removed")
    assert TASK_NAME not in schtasks.tasks


def test_service_status_on_a_task_that_is_gone(tmp_path: Path) -> None:
    plan = windows_plan(tmp_path)
    schtasks = FakeSchtasks()
    install(plan, schtasks, start=False)  # the file, but the task was never registered
    assert "not registered with Task Scheduler" in status(plan, schtasks).lines[-1]


# --- the supervisor -------------------------------------------------------------------------------------

FLAKY = """
import pathlib, sys
count = pathlib.Path(sys.argv[1])
n = int(count.read_text()) + 1 if count.exists() else 1
count.write_text(str(n))
if n < 3:
    sys.stderr.write(f"Traceback: crash number {n}\\n")
    raise SystemExit(70 + n)
"""


def test_service_run_restarts_a_crashed_program_with_backoff_and_says_why(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    count = tmp_path / "runs"
    waits: list[float] = []

    class Recording(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            if timeout is not None and timeout >= Backoff.first:
                waits.append(timeout)
                return False
            return super().wait(timeout)

    caplog.set_level(logging.INFO, logger="bridge.os_service.supervise")
    code = supervise([sys.executable, "-c", FLAKY, str(count)], Recording(), runner=run_once)
    assert code == 0 and count.read_text() == "3"  # crashed twice, restarted twice, then stopped cleanly
    assert waits == [1.0, 2.0]  # backoff doubles
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 4  # per crash: why, then each line the daemon left on stderr
    assert "exited with code 71" in errors[0] and errors[1] == "  daemon stderr: Traceback: crash number 1"
    assert "exited with code 72" in errors[2] and "restarting in 2 s" in errors[2]
    assert errors[3] == "  daemon stderr: Traceback: crash number 2"


def test_a_second_daemon_is_not_restarted_forever() -> None:
    calls: list[object] = []

    def already_running(*args: object) -> RunResult:
        calls.append(args)
        return RunResult(3, ["sam-bridge: sam-bridge is already running (process 42)"])

    assert supervise(["x"], threading.Event(), runner=already_running) == 3
    assert len(calls) == 1


@pytest.mark.timeout(120)
def test_service_run_brings_a_killed_daemon_back(service, user_dirs) -> None:
    """The real thing: `sam-bridge service-run` over a real daemon; the daemon is killed, a new one serves.
    About 15 s: two real daemon starts and clean stops, and the supervisor's 1 s pause between them."""
    env = {**os.environ, "FAL_KEY": TEST_KEY, "HOME": str(user_dirs["home"])}
    info_path = user_dirs["state"] / "daemon.json"
    proc = subprocess.Popen([sys.executable, "-m", "bridge", "service-run", "--", "--service-url", service.url,
                             "--osc-port", "0", "--no-hot-folder"], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(info_path.exists, what="the first daemon")
        first = json.loads(info_path.read_text())["pid"]
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: info_path.exists() and json.loads(info_path.read_text())["pid"] != first,
                 what="a restarted daemon")
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(40)
    assert proc.returncode == 0
    log = (user_dirs["state"] / "logs" / "service.log").read_text()
    assert "exited with code -9" in log and "restarting in 1 s" in log
    assert not info_path.exists()  # the second daemon stopped cleanly with the supervisor


# The supervisor's own log, written by `service-run` in a process of its own (it sets signal handlers and
# root log handlers): its "daemon" dies once with the key in its last stderr line (an uncaught exception's
# traceback, printed after the daemon's own redaction is gone), then exits cleanly.
LEAKING_SERVICE_RUN = """
import sys
import bridge.commands.service as service
from bridge.cli import main
from bridge.os_service import supervise as real

CRASH = ("import os, sys; sys.stderr.write('RuntimeError: bad header Key ' + os.environ['FAL_KEY'] + '\\\\n'); "
         "sys.exit(1)")
runs = []

def one_crash(command, stop):
    def runner(_command, stop):
        runs.append(1)
        return real.run_once([sys.executable, "-c", CRASH if len(runs) == 1 else "pass"], stop)
    return real.supervise(command, stop, backoff=real.Backoff(first=0.01), runner=runner)

service.supervise = one_crash
raise SystemExit(main(["service-run"]))
"""


def test_service_run_never_writes_the_key_to_its_log(user_dirs: dict[str, Path]) -> None:
    env = {**os.environ, "FAL_KEY": TEST_KEY, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run([sys.executable, "-c", LEAKING_SERVICE_RUN], env=env, capture_output=True, text=True,
                          timeout=60, cwd=Path(__file__).resolve().parents[2])
    log = (user_dirs["state"] / "logs" / "service.log").read_text(encoding="utf-8")
    assert done.returncode == 0, done.stderr
    assert "exited with code 1" in log and "RuntimeError: bad header Key <redacted>" in log, log
    for half in (TEST_KEY, *TEST_KEY.split("-")[-1:]):
        assert half not in log and half not in done.stderr


@pytest.mark.parametrize("code", [2, 3, 4])  # a bad config, another daemon running, a damaged journal
def test_service_run_does_not_restart_an_exit_a_restart_cannot_cure(code: int) -> None:
    calls: list[object] = []
    stop = threading.Event()

    def incurable(*args: object) -> RunResult:
        calls.append(args)
        if len(calls) == 3:  # restarted over and over: enough to tell
            stop.set()
        return RunResult(code, ["sam-bridge: something a restart cannot change"])

    assert supervise(["x"], stop, backoff=Backoff(first=0.01, longest=0.01), runner=incurable) == code
    assert len(calls) == 1


def test_windows_status_says_why_the_supervisor_gave_up(tmp_path: Path) -> None:
    plan = windows_plan(tmp_path)
    schtasks = FakeSchtasks()
    install(plan, schtasks)
    schtasks.process_exited(TASK_NAME, 3)  # service-run ends with the daemon's code
    assert status(plan, schtasks).lines[-1].endswith(
        "not running (Ready); the daemon exited with code 3 (another sam-bridge daemon is already running); "
        "it is not restarted")


def test_a_task_whose_file_is_gone_is_still_seen_and_removed(tmp_path: Path) -> None:
    """The task lives in Task Scheduler, not in its XML file (schtasks /Create imports it): deleting the
    sam-bridge folder leaves the task starting at every logon, so status and uninstall ask schtasks."""
    plan = windows_plan(tmp_path)
    schtasks = FakeSchtasks()
    install(plan, schtasks)
    Path(plan.paths.service_file).unlink()
    found = status(plan, schtasks)
    assert found.ok and "still registered with Task Scheduler" in found.lines[0], found.lines
    assert found.lines[-1].split(": ", 1)[1].startswith("running"), found.lines
    removed = uninstall(plan, schtasks)
    assert TASK_NAME not in schtasks.tasks and "no longer starts at login" in removed.lines[-1], removed.lines
    assert "Nothing to remove" in uninstall(plan, schtasks).lines[0]
    assert not status(plan, schtasks).ok


@pytest.mark.parametrize("end_takes_queries", [0, 3])
def test_installing_again_from_another_place_restarts_the_running_task(tmp_path: Path, end_takes_queries: int) -> None:
    """sam-bridge moved (a new venv): /Create /F changes the task for its next start, and /Run leaves the
    running instance alone (IgnoreNew), so the old daemon kept running until the next logon. /End returns
    before the instance is gone: the /Run waits until it is, or it would start nothing."""
    schtasks = FakeSchtasks(end_takes_queries)
    assert install(windows_plan(tmp_path), schtasks).ok
    old = schtasks.tasks[TASK_NAME].running_command
    assert old and "service-run" in old
    moved = windows_plan(tmp_path, "C:\\new venv\\Scripts\\pythonw.exe")
    calls_before = len(schtasks.calls)
    outcome = install(moved, schtasks)
    assert outcome.ok and "restarted" in outcome.lines[-1], outcome.lines
    queries = [c for c in schtasks.calls[calls_before:] if c[1] == "/Query"]
    assert len(queries) <= end_takes_queries + 1  # it waits for the ended instance, and for nothing else
    running = schtasks.tasks[TASK_NAME].running_command
    assert running is not None and "new venv" in running
    again = install(moved, schtasks)  # nothing changed: the running daemon is left alone
    assert "restarted" not in again.lines[-1] and ["schtasks", "/End", "/TN", TASK_NAME] not in schtasks.calls[-2:]
