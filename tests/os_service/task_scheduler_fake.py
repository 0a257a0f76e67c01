"""A stand-in for Windows' `schtasks.exe` and the Task Scheduler service behind it, as strict as they are.

Sources (Microsoft Learn):
- "Task Scheduler Schema" (windows/win32/taskschd/task-scheduler-schema) and its element pages: the task
  namespace http://schemas.microsoft.com/windows/2004/02/mit/task; which child elements each element may have
  (taskType, registrationInfoType, triggerGroup/logonTriggerType, principalType, settingsType, restartType,
  actionGroup/execType); booleans are xs:boolean; durations xs:duration; Priority 0–10;
  MultipleInstancesPolicy ∈ {Parallel, Queue, IgnoreNew, StopExisting}; LogonType ∈ {S4U, Password,
  InteractiveToken}; RunLevel ∈ {LeastPrivilege, HighestAvailable}; RestartOnFailure needs both Interval
  (PT1M–P31D) and Count (unsignedByte ≥ 1); Actions holds 1–32 actions, an Exec needs a Command.
- "schtasks commands" (windows/win32/taskschd/schtasks): /Create /TN /XML [/F] (without /F an existing task
  is an error), /Run, /End, /Delete /F, /Query /TN /FO CSV /V; the CSV's fixed column order (HostName,
  TaskName, Next Run Time, Status, Logon Mode, Last Run Time, Last Result, Author, Task To Run, Start In,
  Comment, Scheduled Task State, …).
- Task Scheduler result codes (winerror.h): SCHED_S_TASK_RUNNING 0x41301, SCHED_S_TASK_HAS_NOT_RUN 0x41303,
  SCHED_S_TASK_TERMINATED 0x41306; "Last Result" is printed in decimal.
- A running instance is a process: re-registering the task (/Create /F) changes the definition for the
  next start and leaves the instance running its old command; /Run while an instance runs starts none
  under MultipleInstancesPolicy IgnoreNew ("the new instance is not started").
What it does not do: start the program (tests call `process_exited` for what the program would do; the
instance's command is kept, `running_command`).
"""

from __future__ import annotations

import csv
import io
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bridge.os_service.manage import CommandResult

NS = "{http://schemas.microsoft.com/windows/2004/02/mit/task}"
_TRIGGER_COMMON = {"Enabled", "StartBoundary", "EndBoundary", "Repetition", "ExecutionTimeLimit"}
CHILDREN: dict[str, set[str]] = {
    "Task": {"RegistrationInfo", "Triggers", "Settings", "Data", "Principals", "Actions"},
    "RegistrationInfo": {"URI", "SecurityDescriptor", "Source", "Date", "Author", "Version", "Description",
                         "Documentation"},
    "Triggers": {"BootTrigger", "RegistrationTrigger", "IdleTrigger", "TimeTrigger", "EventTrigger",
                 "LogonTrigger", "SessionStateChangeTrigger", "CalendarTrigger"},
    "LogonTrigger": _TRIGGER_COMMON | {"UserId", "Delay"},
    "Principals": {"Principal"},
    "Principal": {"UserId", "GroupId", "LogonType", "DisplayName", "RunLevel", "ProcessTokenSidType",
                  "RequiredPrivileges"},
    "Settings": {"AllowStartOnDemand", "RestartOnFailure", "MultipleInstancesPolicy",
                 "DisallowStartIfOnBatteries", "StopIfGoingOnBatteries", "AllowHardTerminate",
                 "StartWhenAvailable", "NetworkProfileName", "RunOnlyIfNetworkAvailable", "WakeToRun", "Enabled",
                 "Hidden", "DeleteExpiredTaskAfter", "IdleSettings", "NetworkSettings", "ExecutionTimeLimit",
                 "Priority", "RunOnlyIfIdle", "UseUnifiedSchedulingEngine", "DisallowStartOnRemoteAppSession"},
    "RestartOnFailure": {"Interval", "Count"},
    "Actions": {"Exec", "ComHandler", "SendEmail", "ShowMessage"},
    "Exec": {"Command", "Arguments", "WorkingDirectory"},
}
BOOLEANS = {"Enabled", "AllowStartOnDemand", "DisallowStartIfOnBatteries", "StopIfGoingOnBatteries",
            "AllowHardTerminate", "StartWhenAvailable", "RunOnlyIfNetworkAvailable", "WakeToRun", "Hidden",
            "RunOnlyIfIdle", "UseUnifiedSchedulingEngine", "DisallowStartOnRemoteAppSession"}
ENUMS = {"MultipleInstancesPolicy": {"Parallel", "Queue", "IgnoreNew", "StopExisting"},
         "LogonType": {"S4U", "Password", "InteractiveToken"},
         "RunLevel": {"LeastPrivilege", "HighestAvailable"}}
DURATIONS = {"ExecutionTimeLimit", "Interval", "Delay", "DeleteExpiredTaskAfter"}
_DURATION = re.compile(r"^P(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?$")


class TaskXmlError(ValueError):
    pass


def _seconds(text: str) -> float:
    match = _DURATION.match(text)
    if not match or text in ("P", "PT") or text.endswith("T"):
        raise TaskXmlError(f"'{text}' is not an xs:duration")
    years, months, days, hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    return ((years * 365 + months * 30 + days) * 24 + hours) * 3600 + minutes * 60 + seconds


def validate_task_xml(data: bytes) -> ET.Element:
    """Parses the task file as schtasks would (UTF-16 with a BOM, or UTF-8) and checks it against the schema."""
    text = data.decode("utf-16") if data[:2] in (b"\xff\xfe", b"\xfe\xff") else data.decode("utf-8")
    text = re.sub(r"^<\?xml[^>]*\?>", "", text.lstrip("\ufeff"))  # the declaration's encoding is the BOM's
    root = ET.fromstring(text)
    if root.tag != f"{NS}Task":
        raise TaskXmlError(f"the root element is {root.tag}, not the task namespace's Task")
    if root.get("version") not in ("1.1", "1.2", "1.3", "1.4"):
        raise TaskXmlError(f"Task version {root.get('version')!r} is not a schema version")
    _check(root)
    actions = root.find(f"{NS}Actions")
    if actions is None or not 1 <= len(actions) <= 32:
        raise TaskXmlError("a task needs an Actions element with 1 to 32 actions")
    for exec_ in actions.findall(f"{NS}Exec"):
        if not (exec_.findtext(f"{NS}Command") or "").strip():
            raise TaskXmlError("an Exec action needs a Command")
    return root


def _check(element: ET.Element) -> None:
    name = element.tag.removeprefix(NS)
    allowed = CHILDREN.get(name)
    seen: set[str] = set()
    for child in element:
        if not child.tag.startswith(NS):
            raise TaskXmlError(f"{child.tag} is outside the task namespace")
        child_name = child.tag.removeprefix(NS)
        if allowed is None or child_name not in allowed:
            raise TaskXmlError(f"The task XML contains an unexpected node: {child_name} in {name}")
        if child_name in seen and name not in ("Triggers", "Actions", "Principals"):
            raise TaskXmlError(f"{child_name} appears twice in {name}")
        seen.add(child_name)
        _check_value(child_name, (child.text or "").strip(), len(child) > 0)
        _check(child)
    if name == "RestartOnFailure" and seen != {"Interval", "Count"}:
        raise TaskXmlError("RestartOnFailure needs both Interval and Count")


def _check_value(name: str, text: str, has_children: bool) -> None:
    if has_children:
        return
    if name in BOOLEANS and text not in ("true", "false", "1", "0"):
        raise TaskXmlError(f"{name} must be an xs:boolean, not {text!r}")
    if name in ENUMS and text not in ENUMS[name]:
        raise TaskXmlError(f"{name} must be one of {sorted(ENUMS[name])}, not {text!r}")
    if name in DURATIONS:
        seconds = _seconds(text)
        if name == "Interval" and not 60 <= seconds <= 31 * 86400:
            raise TaskXmlError(f"RestartOnFailure's Interval must be PT1M to P31D, not {text}")
    if name == "Priority" and not (text.isdigit() and 0 <= int(text) <= 10):
        raise TaskXmlError(f"Priority must be 0 to 10, not {text!r}")
    if name == "Count" and not (text.isdigit() and 1 <= int(text) <= 255):
        raise TaskXmlError(f"Count must be an unsignedByte of at least 1, not {text!r}")


SCHED_S_TASK_RUNNING, SCHED_S_TASK_HAS_NOT_RUN, SCHED_S_TASK_TERMINATED = 0x41301, 0x41303, 0x41306
CSV_HEADER = ["HostName", "TaskName", "Next Run Time", "Status", "Logon Mode", "Last Run Time", "Last Result",
              "Author", "Task To Run", "Start In", "Comment", "Scheduled Task State"]


@dataclass
class Task:
    xml: ET.Element
    status: str = "Ready"
    last_result: int = SCHED_S_TASK_HAS_NOT_RUN
    running_command: str | None = None  # what the running instance was started with

    @property
    def command(self) -> str:
        action = f"{NS}Actions/{NS}Exec/"
        return " ".join(filter(None, (self.xml.findtext(action + f"{NS}Command"),
                                      self.xml.findtext(action + f"{NS}Arguments"))))


class FakeSchtasks:
    """`schtasks` as a `Runner`: keeps registered tasks and their state like the Task Scheduler service."""

    def __init__(self, end_takes_queries: int = 0) -> None:
        self.tasks: dict[str, Task] = {}
        self.calls: list[list[str]] = []
        # /End returns before the instance's process is gone: it still shows Running for this many /Query calls
        # (and a /Run meanwhile starts none, IgnoreNew)
        self.end_takes_queries = end_takes_queries
        self._ending: dict[str, int] = {}

    def __call__(self, args: Sequence[str]) -> CommandResult:
        self.calls.append(list(args))
        if args[0] != "schtasks" or len(args) < 2:
            return CommandResult(127, f"{args[0]} was not found")
        verb, options = args[1].lower(), _options(args[2:])
        name = options.get("/tn", "")
        task = self.tasks.get(name)
        missing = CommandResult(1, "ERROR: The system cannot find the file specified.")
        if verb == "/create":
            if task is not None and "/f" not in options:
                return CommandResult(1, f'WARNING: The task name "{name}" already exists.')
            try:
                fresh = Task(validate_task_xml(Path(options["/xml"]).read_bytes()))
            except (TaskXmlError, ET.ParseError, KeyError, UnicodeDecodeError) as err:
                return CommandResult(1, f"ERROR: The task XML is malformed. {err}")
            if task is not None:  # an instance still running goes on running its old command
                fresh.status, fresh.last_result, fresh.running_command = (
                    task.status, task.last_result, task.running_command)
            self.tasks[name] = fresh
            return CommandResult(0, f'SUCCESS: The scheduled task "{name}" has successfully been created.')
        if task is None:
            return missing
        if verb == "/run":
            policy = task.xml.findtext(f"{NS}Settings/{NS}MultipleInstancesPolicy") or "IgnoreNew"
            if task.status != "Running" or policy != "IgnoreNew":
                task.running_command = task.command
            task.status, task.last_result = "Running", SCHED_S_TASK_RUNNING
            return CommandResult(0, f'SUCCESS: Attempted to run the scheduled task "{name}".')
        if verb == "/end":
            if task.status == "Running" and self.end_takes_queries:
                self._ending[name] = self.end_takes_queries
            elif task.status == "Running":
                task.status, task.last_result = "Ready", SCHED_S_TASK_TERMINATED
                task.running_command = None
            return CommandResult(0, f'SUCCESS: The scheduled task "{name}" has been terminated successfully.')
        if verb == "/delete":
            if "/f" not in options:
                return CommandResult(1, "ERROR: a confirmation is needed (no console to ask on); pass /F")
            del self.tasks[name]
            return CommandResult(0, f'SUCCESS: The scheduled task "{name}" was successfully deleted.')
        if verb == "/query" and name in self._ending:
            self._ending[name] -= 1
            if self._ending[name] < 0:  # the instance's process has ended now
                del self._ending[name]
                task.status, task.last_result, task.running_command = "Ready", SCHED_S_TASK_TERMINATED, None
        if verb == "/query" and options.get("/fo", "").upper() == "CSV" and "/v" in options:
            out = io.StringIO()
            writer = csv.writer(out, quoting=csv.QUOTE_ALL, lineterminator="\r\n")
            command = task.xml.findtext(f"{NS}Actions/{NS}Exec/{NS}Command") or ""
            writer.writerow(CSV_HEADER)
            writer.writerow(["STUDIO-PC", f"\\{name}", "N/A", task.status, "Interactive only", "N/A",
                             str(task.last_result), "STUDIO-PC\\you", command, "N/A", "N/A", "Enabled"])
            return CommandResult(0, out.getvalue().strip())
        return CommandResult(1, f"ERROR: Invalid argument/option - '{' '.join(args[1:])}'.")

    def process_exited(self, name: str, code: int) -> None:
        """What Task Scheduler records when the task's program ends on its own."""
        task = self.tasks[name]
        task.status, task.last_result, task.running_command = "Ready", code, None


def _options(args: Sequence[str]) -> dict[str, str]:
    options: dict[str, str] = {}
    i = 0
    while i < len(args):
        key = args[i].lower()
        takes_value = key in ("/tn", "/xml", "/fo", "/s", "/u", "/p")
        options[key] = args[i + 1] if takes_value and i + 1 < len(args) else ""
        i += 2 if takes_value else 1
    return options
