"""The background service files: rendered per OS and checked with each format's own tools (systemd's
verifier, plistlib, an XML parser, the real /bin/sh for the LaunchAgent's start line), installed and
removed in temp home folders with the service manager's commands recorded, never run."""

from __future__ import annotations

import json
import os
import plistlib
import re
import shutil
import stat
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import pytest

from bridge.cli import main
from bridge.common.errors import ConfigError
from bridge.os_service.files import (
    LAUNCHD_LABEL,
    MARKER,
    TASK_NAME,
    UNIT_NAME,
    daemon_command,
    example_files,
    key_hint,
    make_plan,
    render_launchd_plist,
    render_systemd_unit,
    render_task_xml,
)
from bridge.os_service.manage import CommandResult, install, status, uninstall

REPO = Path(__file__).resolve().parents[2]
TASK_NS = {"t": "http://schemas.microsoft.com/windows/2004/02/mit/task"}
ODD = "Ünïcode 50% $HOME \"quoted\" & <tag>"  # characters each format must escape


class Recorder:
    """Stands in for the service manager's commands: records, never runs. launchctl is answered as launchd
    would (`LaunchdDomain`); systemctl as systemctl(1) answers a unit that is there: `is-enabled` prints
    "enabled", `is-active` "active", the rest exit 0 (and a word in `fail` fails the call as a user session
    without a bus does: "Failed to connect to bus: No medium found"); schtasks' answers are modelled by the
    Task Scheduler tests' own stand-ins."""

    def __init__(self, fail: Sequence[str] = ()) -> None:
        self.calls: list[list[str]] = []
        self.fail = set(fail)
        self.launchd = LaunchdDomain()

    def __call__(self, args: Sequence[str]) -> CommandResult:
        self.calls.append(list(args))
        if args[0] == "launchctl":
            return self.launchd(args)
        if any(word in self.fail for word in args):
            return CommandResult(1, "Failed to connect to bus: No medium found")
        return CommandResult(0, "enabled" if "is-enabled" in args else "active")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home dir"
    home.mkdir()
    for name, value in {"HOME": home, "XDG_CONFIG_HOME": home / ".config",
                        "SAM_BRIDGE_STATE_DIR": tmp_path / "state"}.items():
        monkeypatch.setenv(name, str(value))
    monkeypatch.delenv("SAM_BRIDGE_CONFIG", raising=False)
    return home


# --- the shipped examples ---------------------------------------------------------------------------


def test_examples_in_scripts_services_match_the_templates() -> None:
    rendered = example_files()
    assert set(rendered) == {UNIT_NAME, f"{LAUNCHD_LABEL}.plist", "sam-bridge-task.xml"}
    for name, data in rendered.items():
        assert (REPO / "scripts" / "services" / name).read_bytes() == data, (
            f"{name} is stale: run  python -m bridge.os_service.files scripts/services")
    readme = (REPO / "scripts" / "services" / "README.md").read_text(encoding="utf-8")
    assert all(name in readme for name in rendered)


# --- Linux: systemd user unit --------------------------------------------------------------------------


def systemd_verify(unit: Path, runtime: Path) -> subprocess.CompletedProcess[str]:
    runtime.mkdir(mode=0o700, exist_ok=True)
    return subprocess.run(["systemd-analyze", "verify", "--user", str(unit)], capture_output=True, text=True,
                          env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)}, timeout=60)


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_systemd_unit_passes_systemds_own_verifier(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "bridge", "run"]
    unit = tmp_path / UNIT_NAME
    unit.write_text(render_systemd_unit(command, PurePosixPath(tmp_path / ODD / "service.env")), encoding="utf-8")
    done = systemd_verify(unit, tmp_path / "runtime")
    assert done.returncode == 0, done.stderr
    assert str(unit) not in done.stderr and UNIT_NAME not in done.stderr, done.stderr
    # the same check does see a mistake
    unit.write_text(unit.read_text(encoding="utf-8").replace("Restart=on-failure", "Restart=sometimes"),
                    encoding="utf-8")
    assert f"{unit}:11: Failed to parse service restart" in systemd_verify(unit, tmp_path / "runtime").stderr


def test_systemd_exec_start_quotes_paths_literally() -> None:
    text = render_systemd_unit([f"/opt/{ODD}/sam-bridge", "run"], PurePosixPath("/h/100%/service.env"))
    exec_start = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    # systemd refuses `"` in an executable's path: a shell runs it (see test_systemd_runs_a_program_in_any_folder)
    assert exec_start == ('ExecStart="/bin/sh" "-c" "exec \\"$$0\\" \\"$$@\\"" '
                          '"/opt/Ünïcode 50%% $$HOME \\"quoted\\" & <tag>/sam-bridge" "run"')
    plain = render_systemd_unit(["/opt/50% $HOME/sam-bridge", "run"], PurePosixPath("/h/service.env"))
    assert 'ExecStart="/opt/50%% $HOME/sam-bridge" "run"' in plain  # no variables in the executable's path
    assert "EnvironmentFile=-/h/100%%/service.env" in text
    assert text.startswith(f"# {MARKER}\n")
    assert "WantedBy=default.target" in text and "Restart=on-failure" in text


def test_folders_moved_by_the_environment_go_with_the_service(tmp_path: Path) -> None:
    """SAM_BRIDGE_CONFIG / _STATE_DIR / _HOT_DIR set where `install` runs: the service must use the same
    config and state as the commands there (`config show`), or it would start a second, empty setup."""
    moved = {"SAM_BRIDGE_CONFIG": f"/opt/{ODD}/config.yaml", "SAM_BRIDGE_STATE_DIR": "/srv/state",
             "HOME": "/home/you", "XDG_CONFIG_HOME": "/home/you/.config"}
    unit = make_plan("linux", moved, [sys.executable, "-m", "bridge", "run"]).content
    assert 'Environment="SAM_BRIDGE_CONFIG=/opt/Ünïcode 50%% $HOME \\"quoted\\" & <tag>/config.yaml"' in unit
    assert 'Environment="SAM_BRIDGE_STATE_DIR=/srv/state"' in unit and "SAM_BRIDGE_HOT_DIR" not in unit
    if shutil.which("systemd-analyze"):
        path = tmp_path / UNIT_NAME
        path.write_text(unit, encoding="utf-8")
        done = systemd_verify(path, tmp_path / "runtime")
        assert done.returncode == 0 and str(path) not in done.stderr, done.stderr
    plist = plistlib.loads(make_plan("macos", {**moved, "HOME": "/Users/you"}, ["/x", "run"], uid=501).content.encode())
    assert plist["EnvironmentVariables"] == {"PYTHONUNBUFFERED": "1", "SAM_BRIDGE_CONFIG": moved["SAM_BRIDGE_CONFIG"],
                                             "SAM_BRIDGE_STATE_DIR": "/srv/state"}
    windows = make_plan("windows", {"USERPROFILE": "C:\\Users\\you", "LOCALAPPDATA": "C:\\Users\\you\\AppData\\Local",
                                    "SAM_BRIDGE_STATE_DIR": "D:\\state"}, ["C:\\py\\pythonw.exe", "run"])
    assert "setx SAM_BRIDGE_STATE_DIR" in key_hint(windows)  # a scheduled task cannot take it from here
    assert "SAM_BRIDGE" not in key_hint(make_plan("linux", moved, ["/x", "run"]))


def test_relative_moved_folders_are_made_absolute_where_install_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The service starts in another folder (systemd: home, launchd: /): a relative path would move."""
    monkeypatch.chdir(tmp_path)
    unit = make_plan("linux", {"HOME": "/home/you", "SAM_BRIDGE_STATE_DIR": "state",
                               "SAM_BRIDGE_HOT_DIR": "~/hot"}, ["/x", "run"]).content
    assert f'Environment="SAM_BRIDGE_STATE_DIR={tmp_path / "state"}"' in unit
    assert f'Environment="SAM_BRIDGE_HOT_DIR={Path("~/hot").expanduser()}"' in unit


# --- macOS: LaunchAgent --------------------------------------------------------------------------------


def test_launchd_plist_is_a_valid_agent(tmp_path: Path) -> None:
    command = ["/Users/you/.local/bin/sam-bridge", "run"]
    text = render_launchd_plist(command, PurePosixPath("/Users/you/x/service.env"), PurePosixPath("/Users/you/l.log"))
    agent = plistlib.loads(text.encode("utf-8"))
    assert agent["Label"] == LAUNCHD_LABEL
    assert agent["ProgramArguments"][:2] == ["/bin/sh", "-c"]
    assert agent["ProgramArguments"][3:] == ["/Users/you/x/service.env", *command]
    assert agent["RunAtLoad"] is True and agent["KeepAlive"] == {"SuccessfulExit": False}
    assert agent["StandardErrorPath"] == "/Users/you/l.log"
    assert MARKER in text


@pytest.mark.skipif(not Path("/bin/sh").exists(), reason="needs /bin/sh")
@pytest.mark.parametrize("with_env_file", [True, False])
def test_launchd_start_line_reads_the_key_file_and_runs_the_command(tmp_path: Path, with_env_file: bool) -> None:
    env_file = tmp_path / ODD / "service.env"
    env_file.parent.mkdir()
    if with_env_file:
        env_file.write_text("FAL_KEY=key-from-file\nOTHER='two words'\n", encoding="utf-8")
    probe = [sys.executable, "-c", "import os, sys; print(repr((os.environ.get('FAL_KEY'), "
             "os.environ.get('OTHER'), sys.argv[1:])))", "arg with spaces", ODD]
    agent = plistlib.loads(render_launchd_plist(probe, PurePosixPath(env_file), PurePosixPath("/l")).encode())
    env = {k: v for k, v in os.environ.items() if k not in ("FAL_KEY", "OTHER")}
    done = subprocess.run(agent["ProgramArguments"], capture_output=True, text=True, env=env, timeout=30)
    assert done.returncode == 0, done.stderr
    expected = ("key-from-file", "two words") if with_env_file else (None, None)
    assert done.stdout.strip() == repr((*expected, ["arg with spaces", ODD]))


# --- Windows: Task Scheduler ------------------------------------------------------------------------


def test_task_xml_parses_and_keeps_every_character() -> None:
    command = [f"C:\\Program Files\\{ODD}\\pythonw.exe", "-m", "bridge", "run", "a b"]
    plan = make_plan("windows", {"USERPROFILE": "C:\\Users\\you", "LOCALAPPDATA": "C:\\Users\\you\\AppData\\Local",
                                 "USERDOMAIN": "PC", "USERNAME": "you & me"}, command)
    data = plan.encoded()
    assert data[:2] in (b"\xff\xfe", b"\xfe\xff")  # UTF-16 with a byte-order mark, as schtasks expects
    root = ET.fromstring(data.decode("utf-16").split("\n", 1)[1])  # ElementTree refuses the UTF-16 declaration
    assert root.tag == f"{{{TASK_NS['t']}}}Task"
    assert root.findtext("t:Actions/t:Exec/t:Command", namespaces=TASK_NS) == command[0]
    assert root.findtext("t:Actions/t:Exec/t:Arguments", namespaces=TASK_NS) == '-m bridge run "a b"'
    assert root.findtext("t:Triggers/t:LogonTrigger/t:UserId", namespaces=TASK_NS) == "PC\\you & me"
    assert root.findtext("t:Settings/t:ExecutionTimeLimit", namespaces=TASK_NS) == "PT0S"
    assert root.findtext("t:Settings/t:MultipleInstancesPolicy", namespaces=TASK_NS) == "IgnoreNew"
    assert str(plan.paths.service_file) == "C:\\Users\\you\\AppData\\Local\\sam-bridge\\service\\sam-bridge-task.xml"
    assert plan.enable[0] == ["schtasks", "/Create", "/TN", TASK_NAME, "/XML", str(plan.paths.service_file), "/F"]


def test_task_without_a_known_user_triggers_at_any_logon() -> None:
    text = render_task_xml(["pythonw.exe", "-m", "bridge", "run"], None, PurePosixPath("/"))
    assert "<UserId>" not in text
    ET.fromstring(text.split("\n", 1)[1])


# --- which sam-bridge the service runs --------------------------------------------------------------


def test_daemon_command_prefers_the_script_beside_python(tmp_path: Path) -> None:
    python = tmp_path / "bin" / "python"
    python.parent.mkdir()
    python.write_text("")
    assert daemon_command("linux", str(python), which=lambda _: None) == [str(python), "-P", "-m", "bridge", "run"]
    assert daemon_command("linux", str(python), which=lambda _: "/usr/local/bin/sam-bridge") == [
        "/usr/local/bin/sam-bridge", "run"]
    script = tmp_path / "bin" / "sam-bridge"
    script.write_text("#!/bin/sh\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    assert daemon_command("linux", str(python), which=lambda _: "/elsewhere") == [str(script), "run"]
    (tmp_path / "bin" / "pythonw.exe").write_text("")
    assert daemon_command("windows", str(python)) == [str(tmp_path / "bin" / "pythonw.exe"), "-P", "-m", "bridge",
                                                      "service-run"]


# --- install / uninstall / status in a temp home -----------------------------------------------------


def test_install_writes_the_unit_and_enables_it(home: Path) -> None:
    plan = make_plan("linux", os.environ, ["/opt/sam-bridge", "run"])
    recorder = Recorder()
    outcome = install(plan, recorder)
    unit = home / ".config" / "systemd" / "user" / UNIT_NAME
    assert outcome.ok and unit.read_text(encoding="utf-8") == plan.content
    assert [p.name for p in unit.parent.iterdir()] == [UNIT_NAME]  # no temp file left behind
    assert recorder.calls == [["systemctl", "--user", "daemon-reload"],
                              ["systemctl", "--user", "enable", "--now", UNIT_NAME]]
    assert f"EnvironmentFile=-{home}/.config/sam-bridge/service.env" in plan.content
    again = install(plan, Recorder())
    assert again.lines[0] == f"Already up to date: {unit}"
    moved = make_plan("linux", os.environ, ["/new/place/sam-bridge", "run"])
    install(moved, Recorder())
    assert '"/new/place/sam-bridge"' in unit.read_text(encoding="utf-8")  # our own older file is replaced


def test_installing_again_from_another_place_restarts_the_running_unit(home: Path) -> None:
    """systemd's `enable --now` does nothing to a unit that runs already (systemctl(1): "start" of an active
    unit is a no-op), so after sam-bridge moved, the old daemon kept running the old program."""
    install(make_plan("linux", os.environ, ["/opt/sam-bridge", "run"]), Recorder())
    recorder = Recorder()
    outcome = install(make_plan("linux", os.environ, ["/new/place/sam-bridge", "run"]), recorder)
    assert recorder.calls[-1] == ["systemctl", "--user", "restart", UNIT_NAME] and "restarted" in outcome.lines[-1]
    unchanged = Recorder()
    install(make_plan("linux", os.environ, ["/new/place/sam-bridge", "run"]), unchanged)
    assert ["systemctl", "--user", "restart", UNIT_NAME] not in unchanged.calls  # nothing new: left running


def test_install_never_replaces_someone_elses_file(home: Path) -> None:
    plan = make_plan("linux", os.environ, ["/opt/sam-bridge", "run"])
    unit = Path(plan.paths.service_file)
    unit.parent.mkdir(parents=True)
    unit.write_text("[Service]\nExecStart=/my/own/thing\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not written by sam-bridge"):
        install(plan, Recorder())
    with pytest.raises(ConfigError, match="not written by sam-bridge"):
        uninstall(plan, Recorder())
    assert unit.read_text(encoding="utf-8") == "[Service]\nExecStart=/my/own/thing\n"


def test_install_reports_a_service_manager_that_is_not_there(home: Path) -> None:
    plan = make_plan("linux", os.environ, ["/opt/sam-bridge", "run"])
    outcome = install(plan, Recorder(fail=["daemon-reload"]))
    assert not outcome.ok
    assert "No medium found" in outcome.lines[1] and "sam-bridge run" in outcome.lines[2]


def test_macos_install_unloads_a_running_agent_first(home: Path) -> None:
    plan = make_plan("macos", os.environ, ["/opt/sam-bridge", "run"], uid=501)
    recorder = Recorder()  # not loaded yet: bootout fails, and that is fine
    assert install(plan, recorder).ok
    plist = home / "Library" / "LaunchAgents" / f"{LAUNCHD_LABEL}.plist"
    assert plistlib.loads(plist.read_bytes())["ProgramArguments"][-2:] == ["/opt/sam-bridge", "run"]
    assert (home / "Library" / "Logs" / "sam-bridge").is_dir()
    assert recorder.calls == [["launchctl", "bootout", f"gui/501/{LAUNCHD_LABEL}"],
                              ["launchctl", "print", f"gui/501/{LAUNCHD_LABEL}"],
                              ["launchctl", "bootstrap", "gui/501", str(plist)]]


class LaunchdDomain:
    """launchctl against one gui/<uid> domain, as strict as launchd: `bootstrap`, `bootout` and `print` of
    launchctl(1) (macOS 10.11+). A label can be loaded once: bootstrapping it again answers "Bootstrap failed:
    5: Input/output error". `bootout` returns while the job's process is still stopping (launchd sends SIGTERM
    and waits up to the plist's ExitTimeOut before SIGKILL; "launchctl unload returned 0. The daemon was still
    running", Nick Liu, 2025), so the label stays loaded for `stopping` more `print`s. `print` of a label not
    loaded exits 113 ("Could not find service"); `bootout` of one exits 3 ("Boot-out failed: 3: No such
    process")."""

    def __init__(self, loaded: bool = False, stopping: int = 3) -> None:
        self.loaded, self.stopping, self.left = loaded, stopping, 0
        self.calls: list[list[str]] = []

    def __call__(self, args: Sequence[str]) -> CommandResult:
        self.calls.append(list(args))
        verb = args[1]
        if verb == "print":
            if self.left:
                self.left -= 1
                self.loaded = self.left > 0
                return CommandResult(0, "state = running")
            return CommandResult(0, "state = running") if self.loaded else CommandResult(
                113, f"Could not find service \"{LAUNCHD_LABEL}\" in domain for user gui: 501")
        if verb == "bootout":
            if not self.loaded:
                return CommandResult(3, "Boot-out failed: 3: No such process")
            self.left = self.stopping  # still loaded while its daemon stops
            return CommandResult(0, "")
        if verb == "bootstrap":
            if self.loaded:
                return CommandResult(5, "Bootstrap failed: 5: Input/output error")
            self.loaded = True
            return CommandResult(0, "")
        raise AssertionError(f"launchctl has no {verb!r} here")


def test_macos_install_again_waits_for_the_running_agent_to_unload(home: Path) -> None:
    """`service install` again (after adding FAL_KEY, as scripts/services/README.md says) booted the agent out
    and bootstrapped it at once: launchd still had it loaded while its daemon stopped, and the bootstrap
    failed with "5: Input/output error", leaving sam-bridge stopped."""
    plan = make_plan("macos", os.environ, ["/opt/sam-bridge", "run"], uid=501)
    launchd = LaunchdDomain()
    assert install(plan, launchd).ok and launchd.loaded
    again = install(plan, launchd)
    assert again.ok, again.lines
    verbs = [call[1] for call in launchd.calls]
    assert verbs[-1] == "bootstrap" and launchd.loaded
    between = verbs[verbs.index("bootout", 2) + 1 : -1]
    assert between and set(between) == {"print"}, verbs  # it asked until the label was gone


def test_macos_install_says_when_the_running_agent_would_not_unload(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The wait for the old agent has an end (its daemon's stop grace and a little more): then the install
    says so, rather than a bare "Bootstrap failed: 5" and the generic hint."""
    from bridge.os_service import manage

    monkeypatch.setattr(manage, "STOP_GRACE_SECONDS", 0.0)
    monkeypatch.setattr(manage.time, "sleep", lambda _s: None)
    plan = make_plan("macos", os.environ, ["/opt/sam-bridge", "run"], uid=501)
    launchd = LaunchdDomain(stopping=10**9)
    install(plan, launchd)
    ticks = iter(range(10**9))
    monkeypatch.setattr(manage.time, "monotonic", lambda: float(next(ticks)))
    again = install(plan, launchd)
    assert not again.ok
    assert any("did not stop within" in line for line in again.lines), again.lines


def test_macos_keeps_an_edited_agent_outside_launch_agents(home: Path) -> None:
    """launchd loads what lies in ~/Library/LaunchAgents at login: an edited copy kept there, with the same
    Label, could start as a second agent after `uninstall` said it no longer starts."""
    plan = make_plan("macos", os.environ, ["/opt/sam-bridge", "run"], uid=501)
    install(plan, Recorder())
    plist = Path(plan.paths.service_file)
    plist.write_bytes(plist.read_bytes().replace(b"<key>RunAtLoad</key>", b"<!-- mine --><key>RunAtLoad</key>"))
    lines = uninstall(plan, Recorder()).lines
    assert sorted(p.name for p in plist.parent.iterdir()) == []  # nothing left for launchd to load
    assert plan.paths.env_file is not None
    kept = Path(plan.paths.env_file).parent / f"{plist.name}.edited-1"
    assert b"<!-- mine -->" in kept.read_bytes() and f"kept as {kept}" in lines[0], lines


def test_uninstall_stops_and_removes(home: Path) -> None:
    plan = make_plan("linux", os.environ, ["/opt/sam-bridge", "run"])
    install(plan, Recorder())
    recorder = Recorder()
    outcome = uninstall(plan, recorder)
    assert not Path(plan.paths.service_file).exists()
    assert recorder.calls == [["systemctl", "--user", "disable", "--now", UNIT_NAME],
                              ["systemctl", "--user", "daemon-reload"]]
    assert "no longer starts at login" in outcome.lines[0]
    assert "Nothing to remove" in uninstall(plan, Recorder()).lines[0]


def test_status_asks_the_service_manager(home: Path) -> None:
    plan = make_plan("linux", os.environ, ["/opt/sam-bridge", "run"])
    missing = status(plan, Recorder())
    assert not missing.ok and "not installed" in missing.lines[0]
    install(plan, Recorder())
    recorder = Recorder()
    found = status(plan, recorder)
    assert found.ok and found.lines[2:] == [f"systemctl --user is-enabled {UNIT_NAME}: enabled",
                                            f"systemctl --user is-active {UNIT_NAME}: active"]


# --- the command line ----------------------------------------------------------------------------------


def test_cli_dry_run_prints_everything_and_writes_nothing(home: Path, capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAL_KEY", "secret-key-do-not-print-123")
    before = sorted(home.rglob("*"))
    for platform in ("linux", "macos", "windows"):
        assert main(["service", "install", "--dry-run", "--platform", platform]) == 0
        out = capsys.readouterr().out
        assert "Would write" in out and "Would run:" in out and "FAL_KEY" in out
        assert "secret-key-do-not-print-123" not in out
    assert main(["service", "uninstall", "--dry-run"]) == 0
    assert "Would remove" in capsys.readouterr().out
    assert sorted(home.rglob("*")) == before


def test_cli_refuses_to_install_for_another_system(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = "windows" if sys.platform != "win32" else "linux"
    assert main(["service", "install", "--platform", other]) == 2
    assert "--dry-run" in capsys.readouterr().err


def test_cli_status_shows_the_daemon(home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "daemon.json").write_text(json.dumps({"pid": os.getpid(), "version": "9.9", "requests_dir": "/r"}))
    assert main(["service", "status"]) == 1  # not installed
    out = capsys.readouterr().out
    assert "not installed" in out and f"Daemon: running, pid {os.getpid()}, version 9.9" in out
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (state / "daemon.json").write_text(json.dumps({"pid": dead.pid, "version": "9.9"}))
    main(["service", "status"])
    assert f"pid {dead.pid} in" in capsys.readouterr().out


def test_service_managers_let_a_stop_wait_for_a_submits_answer() -> None:
    """A stop waits for the answer to a submit on its way (up to the client's connect + read timeouts):
    systemd's 30 s and launchd's default 20 s killed the daemon first, and the paid job was lost."""
    from bridge.fal.queue_types import Timeouts

    longest_wait = Timeouts().connect + Timeouts().read
    unit = render_systemd_unit(["/usr/bin/sam-bridge", "run"], PurePosixPath("/home/you/service.env"))
    grace = re.search(r"^TimeoutStopSec=(\d+)$", unit, re.M)
    assert grace is not None and int(grace.group(1)) > longest_wait
    agent = plistlib.loads(render_launchd_plist(["/usr/local/bin/sam-bridge", "run"], PurePosixPath("/Users/you/e"),
                                                PurePosixPath("/Users/you/l.log")).encode("utf-8"))
    assert agent["ExitTimeOut"] > longest_wait


def test_a_bridge_folder_in_the_start_folder_does_not_replace_sam_bridge(tmp_path: Path) -> None:
    """`python -m` puts the current folder first on sys.path, and the services start in the user's home
    (systemd, Task Scheduler's WorkingDirectory) or / (launchd): a folder named `bridge` there would run
    instead of sam-bridge. Each `-m` command the services run is started here in such a folder."""
    from bridge.commands.service import daemon_child_command

    impostor = tmp_path / "bridge"
    impostor.mkdir()
    (impostor / "__init__.py").write_text("")
    (impostor / "__main__.py").write_text("print('not sam-bridge')\n")
    no_script = str(tmp_path / "bin" / "python")  # no sam-bridge script beside it, none on PATH
    commands = {"linux, macOS": daemon_command("linux", no_script, which=lambda _: None),
                "the Windows task": daemon_command("windows", no_script),
                "service-run's daemon": daemon_child_command([])}
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for what, command in commands.items():
        assert "-m" in command, what
        options = command[1:command.index("-m") + 2]  # what the service runs, with this Python
        done = subprocess.run([sys.executable, *options, "--version"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.stdout.startswith("sam-bridge "), (what, command, done.stdout, done.stderr)


# --- exits a restart cannot cure -----------------------------------------------------------------------


def incurable_exits() -> set[int]:
    """Where the daemon's exit codes are declared: a bad config or command line (2), another daemon already
    running (3, the team journal's instance in use too), a damaged journal (4)."""
    from bridge.daemon import AlreadyRunning
    from bridge.engine.journal import JournalDamaged
    from bridge.engine.journal.postgres import InstanceInUse

    assert AlreadyRunning.exit_code == InstanceInUse.exit_code
    return {ConfigError.exit_code, AlreadyRunning.exit_code, JournalDamaged.exit_code}


def test_systemd_does_not_restart_an_exit_a_restart_cannot_cure() -> None:
    """systemd.service(5): RestartPreventExitStatus= takes exit codes that are not restarted even with
    Restart=on-failure; without it a config error restarted every RestartSec=5 s, forever."""
    unit = render_systemd_unit(["/usr/bin/sam-bridge", "run"], PurePosixPath("/home/you/service.env"))
    found = re.search(r"^RestartPreventExitStatus=(.*)$", unit, re.M)
    assert found is not None and {int(c) for c in found.group(1).split()} == set(incurable_exits())
    assert "Restart=on-failure" in unit


EXIT_WITH = """
import signal, sys, time
if sys.argv[1] == "term":
    signal.signal(signal.SIGTERM, lambda *_: (print("stopped on SIGTERM", flush=True), sys.exit(0)))
    print("ready", flush=True)
    time.sleep(60)
    sys.exit(9)
sys.exit(int(sys.argv[1]))
"""


@pytest.mark.skipif(not Path("/bin/sh").exists(), reason="needs /bin/sh")
def test_launchd_leaves_an_exit_a_restart_cannot_cure_alone(tmp_path: Path) -> None:
    """launchd.plist(5): KeepAlive's SuccessfulExit false restarts only a non-zero exit, and launchd has no
    list of codes to leave alone; so the start line turns those exits into 0 after saying why in the log."""
    def start_line(*args: str) -> list[str]:
        agent = plistlib.loads(render_launchd_plist([sys.executable, "-c", EXIT_WITH, *args],
                                                    PurePosixPath(tmp_path / "none.env"), PurePosixPath("/l")).encode())
        assert agent["KeepAlive"] == {"SuccessfulExit": False}
        return list(agent["ProgramArguments"])

    for code in sorted({*incurable_exits(), 0, 1, 70}):
        done = subprocess.run(start_line(str(code)), capture_output=True, text=True, timeout=30)
        restarted = code not in incurable_exits() and code != 0
        assert done.returncode == (code if restarted else 0), (code, done.stderr)
        assert f"the daemon exited with code {code}" in done.stderr
        assert ("launchd does not restart it" in done.stderr) == (not restarted and code != 0), done.stderr
    # the daemon still gets launchd's SIGTERM (a stop waits for it to finish) and its clean exit counts
    proc = subprocess.Popen(start_line("term"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        time.sleep(0.5)  # the shell is waiting for the daemon by now (a CI run once hung with the signal sent at once)
        proc.terminate()  # launchd signals the job's own process: the shell
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert out == "stopped on SIGTERM\n" and proc.returncode == 0, err


STOPS_AT_ONCE = """
import os, signal, time
signal.signal(signal.SIGTERM, lambda *_: os._exit(0))  # as the daemon: a stop, then a clean exit
time.sleep(0.05)  # the start line waits for it by now
os.kill(os.getppid(), signal.SIGTERM)  # launchd's stop, as the daemon stops at once
os._exit(0)
"""


@pytest.mark.parametrize("shell", [s for s in ("/bin/sh", "/bin/bash") if Path(s).exists()])
def test_a_stop_the_daemon_obeys_at_once_is_no_failure_whatever_the_shell(tmp_path: Path, shell: str) -> None:
    """The start line's `wait` returns >128 when launchd's SIGTERM interrupts it (POSIX); a daemon that
    stopped at once may be reaped by then, its own code lost, and 1 stop in 7 was logged as "the daemon
    exited with code 143" and ended the job with 143 (dash and bash alike; macOS's /bin/sh is bash)."""
    agent = plistlib.loads(render_launchd_plist([sys.executable, "-c", STOPS_AT_ONCE],
                                                PurePosixPath(tmp_path / "none.env"), PurePosixPath("/l")).encode())
    line = [shell, *agent["ProgramArguments"][1:]]
    for _ in range(40):
        done = subprocess.run(line, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        assert done.stderr in ("sam-bridge service: the daemon exited with code 0.\n",
                               "sam-bridge service: the daemon stopped, as launchd asked.\n"), done.stderr


class Answers:
    """The service manager's answers to status's questions, by the command's last words, as the managers
    print them: systemctl(1) `is-enabled`/`is-active` (one word: enabled, disabled, active, inactive, failed;
    exit 0 only for enabled/active), `systemctl show --property=ExecMainStatus --value` (the number alone),
    launchctl(1) `print` (a block with "state = …" and "last exit code = N" lines). A question not given an
    answer fails, as one about an unknown unit or label does."""

    def __init__(self, answers: dict[str, CommandResult]) -> None:
        self.answers = answers

    def __call__(self, args: Sequence[str]) -> CommandResult:
        for words, result in self.answers.items():
            if " ".join(args).endswith(words):
                return result
        return CommandResult(1, f"unexpected: {args}")


def test_status_says_why_the_service_stopped_for_good(home: Path) -> None:
    linux = make_plan("linux", os.environ, ["/opt/sam-bridge", "run"])
    install(linux, Recorder())
    config_code = ConfigError.exit_code
    lines = status(linux, Answers({f"is-enabled {UNIT_NAME}": CommandResult(0, "enabled"),
                                   f"is-active {UNIT_NAME}": CommandResult(3, "failed"),
                                   f"--value {UNIT_NAME}": CommandResult(0, str(config_code))})).lines
    assert lines[-1].startswith(f"Stopped: the daemon exited with code {config_code} (its configuration") and (
        "systemd does not restart it" in lines[-1]), lines
    mac = make_plan("macos", os.environ, ["/opt/sam-bridge", "run"], uid=501)
    install(mac, Recorder())
    assert mac.paths.log_file is not None
    Path(mac.paths.log_file).write_text("sam-bridge: sam-bridge is already running (process 42)\nsam-bridge service: "
                                        "the daemon exited with code 3 (another sam-bridge daemon is already running); "
                                        "launchd does not restart it.\n", encoding="utf-8")
    lines = status(mac, Answers({LAUNCHD_LABEL: CommandResult(0, "gui/501/org.sam-bridge.daemon = {\n"
                                                              "\tstate = not running\n\tlast exit code = 0\n}")})).lines
    assert lines[-1].endswith("the daemon exited with code 3 (another sam-bridge daemon is already running); "
                              "launchd does not restart it."), lines


# --- systemd: any program path ---------------------------------------------------------------------------

_C_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\", '"': '"',
              "'": "'", "s": " "}


def systemd_exec_argv(line: str) -> list[str]:
    """What systemd runs for an ExecStart= value (systemd.service(5) "Command lines", systemd.syntax(7)):
    specifiers first (only %% is ours: any other is refused here), then words split at whitespace, quoted
    with "…" or '…', C escapes undone; `$VAR`/`${VAR}` expanded in the arguments (refused here: we never
    mean one) and `$$` made `$` there, never in the executable; the executable must hold none of ' " \\
    nor a control character ("Executable name contains special characters")."""
    if re.search(r"%[^%]", line.replace("%%", "")):
        raise AssertionError(f"an unintended specifier in {line!r}")
    line = line.replace("%%", "%")
    words: list[str] = []
    i = 0
    while i < len(line):
        if line[i].isspace():
            i += 1
            continue
        word, quote = "", ""
        while i < len(line) and (quote or not line[i].isspace()):
            char = line[i]
            if char == "\\":
                nxt = line[i + 1]
                if nxt == "x":
                    word, i = word + chr(int(line[i + 2:i + 4], 16)), i + 4
                    continue
                word, i = word + _C_ESCAPES[nxt], i + 2
                continue
            if quote and char == quote:
                quote = ""
            elif not quote and char in "\"'":
                quote = char
            else:
                word += char
            i += 1
        assert not quote, f"an unclosed quote in {line!r}"
        words.append(word)
    executable, args = words[0], words[1:]
    unsafe = re.search(r"['\"\\\x00-\x1f\x7f]", executable)
    assert not unsafe, f"Executable name contains special characters: {executable}"
    for arg in args:
        assert not re.search(r"\$(?!\$)\{?\w", arg.replace("$$", "")), f"a variable would be expanded in {arg!r}"
    return [executable, *(arg.replace("$$", "$") for arg in args)]


ODD_FOLDERS = ["plain", "it's", 'say "hi"', "back\\slash", "dollar$HOME", "50%", "Ünïcode & <tag>", "new\nline",
               "tab\tand ${HOME}", ODD]


@pytest.mark.skipif(not Path("/bin/sh").exists(), reason="needs /bin/sh")
@pytest.mark.parametrize("folder", ODD_FOLDERS)
def test_systemd_runs_a_program_in_any_folder(tmp_path: Path, folder: str) -> None:
    program = tmp_path / folder / "sam-bridge"
    program.parent.mkdir()
    program.write_text('#!/bin/sh\nfor a in "$0" "$@"; do printf "[%s]" "$a"; done\n', encoding="utf-8")
    program.chmod(0o755)
    unit_text = render_systemd_unit([str(program), "run", "a $HOME b"], PurePosixPath("/h/service.env"))
    exec_start = next(line for line in unit_text.splitlines() if line.startswith("ExecStart="))
    argv = systemd_exec_argv(exec_start.removeprefix("ExecStart="))
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd="/")
    assert done.stdout == f"[{program}][run][a $HOME b]", (exec_start, argv, done.stderr)
    if shutil.which("systemd-analyze"):  # systemd's own parser agrees, and finds every program it names
        unit = tmp_path / UNIT_NAME
        unit.write_text(unit_text, encoding="utf-8")
        verified = systemd_verify(unit, tmp_path / "runtime")
        assert verified.returncode == 0 and str(unit) not in verified.stderr, verified.stderr
        assert "not executable" not in verified.stderr, verified.stderr


# --- a service file the user edited ------------------------------------------------------------------------


def test_install_keeps_a_service_file_the_user_edited(home: Path) -> None:
    plan = make_plan("linux", os.environ, ["/opt/sam-bridge", "run"])
    install(plan, Recorder())
    unit = Path(plan.paths.service_file)
    edited = unit.read_text(encoding="utf-8").replace("RestartSec=5", "RestartSec=5\nEnvironment=HTTPS_PROXY=http://proxy:3128")
    unit.write_text(edited, encoding="utf-8")
    moved = make_plan("linux", os.environ, ["/new/place/sam-bridge", "run"])  # reinstalled from a new venv
    outcome = install(moved, Recorder())
    kept = unit.with_name(f"{UNIT_NAME}.edited-1")
    assert kept.read_text(encoding="utf-8") == edited and unit.read_text(encoding="utf-8") == moved.content
    assert any(f"kept as {kept}" in line for line in outcome.lines), outcome.lines
    assert unit.read_text(encoding="utf-8") == moved.content
    unit.write_text(moved.content.replace("RestartSec=5", "RestartSec=7"), encoding="utf-8")
    install(plan, Recorder())
    assert kept.read_text(encoding="utf-8") == edited  # an earlier copy is never overwritten
    assert "RestartSec=7" in unit.with_name(f"{UNIT_NAME}.edited-2").read_text(encoding="utf-8")
    install(moved, Recorder())  # a file as sam-bridge wrote it is simply replaced
    assert sorted(p.name for p in unit.parent.iterdir()) == [UNIT_NAME, f"{UNIT_NAME}.edited-1",
                                                              f"{UNIT_NAME}.edited-2"]
    unit.write_text(moved.content + "# mine\n", encoding="utf-8")
    lines = uninstall(moved, Recorder()).lines
    assert not unit.exists() and "# mine" in unit.with_name(f"{UNIT_NAME}.edited-3").read_text(encoding="utf-8")
    assert "You had edited" in lines[0] and "Removed" in lines[-1], lines


def test_install_keeps_a_file_an_older_sam_bridge_wrote(home: Path) -> None:
    """Written before files recorded a digest: whether the user edited it cannot be told, so it is kept."""
    plan = make_plan("linux", os.environ, ["/opt/sam-bridge", "run"])
    unit = Path(plan.paths.service_file)
    unit.parent.mkdir(parents=True)
    old = render_systemd_unit(["/old/sam-bridge", "run"], PurePosixPath("/h/service.env"))
    unit.write_text(old, encoding="utf-8")
    lines = install(plan, Recorder()).lines
    assert unit.with_name(f"{UNIT_NAME}.edited-1").read_text(encoding="utf-8") == old
    assert "An older sam-bridge wrote" in lines[1], lines
