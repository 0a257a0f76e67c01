"""Configuration: a commented default, the resolved view with secrets redacted, errors with file:line."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.cli import main
from bridge.common.config import Config, load_config
from bridge.common.errors import ConfigError


def test_init_writes_a_valid_commented_default_and_never_overwrites(user_dirs, capsys) -> None:
    path = user_dirs["config"] / "config.yaml"
    assert main(["config", "init"]) == 0
    text = path.read_text()
    assert text.startswith("# sam-bridge configuration") and "FAL_KEY" in text
    assert load_config(path) == Config()  # the commented default is exactly the built-in default
    path.write_text(text + "\nconcurrency: 2\n")
    assert main(["config", "init"]) == 1
    assert "concurrency: 2" in path.read_text()  # left untouched
    assert "already exists" in capsys.readouterr().out


def test_init_writes_the_config_private(user_dirs) -> None:
    """It is where `database:` (with a password) and `osc.token` go; `allow` creates it 0600 too."""
    previous = os.umask(0o022)
    try:
        assert main(["config", "init"]) == 0
    finally:
        os.umask(previous)
    assert stat.S_IMODE(os.stat(user_dirs["config"] / "config.yaml").st_mode) == 0o600


def test_show_redacts_the_key_and_the_osc_token(user_dirs, capsys, monkeypatch) -> None:
    (user_dirs["config"] / "config.yaml").write_text("osc:\n  token: hunter2-shared-secret\n")
    monkeypatch.setenv("FAL_KEY", "very-secret-fal-key-123")
    assert main(["config", "show"]) == 0
    out = capsys.readouterr().out
    assert "hunter2-shared-secret" not in out and "very-secret-fal-key-123" not in out
    assert "FAL_KEY: set (<redacted>)" in out and "token: <redacted>" in out


def test_show_prints_the_requests_folder_run_uses(user_dirs, capsys) -> None:
    assert main(["config", "show"]) == 0
    assert f"requests_dir: {user_dirs['state'] / 'requests'}" in capsys.readouterr().out


def test_status_with_no_jobs_yet_is_an_empty_list_not_an_error(user_dirs, capsys) -> None:
    assert main(["status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["status"]) == 0
    assert "No jobs yet" in capsys.readouterr().out


@pytest.mark.parametrize(("text", "expected"), [
    ("concurrency: 0\n", ":1: concurrency: must be at least 1 (got 0)"),
    ("concurrency: true\n", ":1: concurrency: should be a number, got true"),
    ("daily_budget: .nan\n", ":1: daily_budget: should be a finite number, got nan"),
    ("osc:\n  port: 9010\n  colour: red\n", ":3: osc.colour: unknown setting"),
    ("hot_folders:\n  - path: /x\n    after_success: delete\n", ":3: hot_folders.0.after_success: must be one of"),
    ("concurrency: 4\nservice: [1, 2\n", ":3: not valid YAML"),
    ("osc:\n  prefix: sam\n", ":2: osc.prefix: is not written as expected (got 'sam'"),  # pydantic's own words
    # a relative folder depends on where the daemon starts (a service starts elsewhere): refused with its line;
    # it used to pass `config show` and end `run` with OSC's wording and no line
    ("hot_folders:\n  - path: relative/dir\n", ":2: hot_folders.0.path: should be a full path"),
    ("allowed_source_roots:\n  - /music\n  - samples\n", ":3: allowed_source_roots.1: should be a full path"),
    # YAML keeps the last of two keys silently: refused, as the presets loader does
    ("osc:\n  port: 9010\nconcurrency: 2\nosc:\n  port: 9011\n", ":4: osc: is written twice; keep one"),
])
def test_config_errors_name_file_line_and_field(user_dirs, text: str, expected: str) -> None:
    path = user_dirs["config"] / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) + expected in str(err.value)


@pytest.mark.parametrize(("system", "wording"), [("posix", "starting with / or ~,"),
                                                  ("nt", "starting with a drive letter like C:\\ (or ~),")])
def test_the_full_path_message_names_this_systems_kind_of_full_path(
    user_dirs, monkeypatch: pytest.MonkeyPatch, system: str, wording: str
) -> None:
    """On Windows a path starting with / is not a full one: telling a Windows user to start with / led them
    to another refusal. Only the module's view of the system changes (pathlib's own must stay POSIX here)."""
    from types import SimpleNamespace

    import bridge.common.config as config_module

    monkeypatch.setattr(config_module, "os", SimpleNamespace(**{**vars(os), "name": system}))
    path = user_dirs["config"] / "config.yaml"
    path.write_text("hot_folders:\n  - path: stems/in\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert f"hot_folders.0.path: should be a full path, {wording} got 'stems/in'" in str(err.value)
    if system == "nt":
        assert "starting with /" not in str(err.value)


def test_run_with_a_bad_config_exits_with_the_message(user_dirs) -> None:
    path = user_dirs["config"] / "config.yaml"
    path.write_text("daily_budget: -5\n")
    result = subprocess.run([sys.executable, "-m", "bridge", "run", "--local"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    assert f"{path}:1: daily_budget" in result.stderr
    assert not (user_dirs["state"] / "daemon.json").exists()


def test_a_folder_under_the_home_folder_may_start_with_a_tilde(user_dirs) -> None:
    path = user_dirs["config"] / "config.yaml"
    path.write_text("hot_folders:\n  - path: ~/hot/drums\n    preset: drums\n")
    assert load_config(path).hot_folders[0].path == Path.home() / "hot" / "drums"


def test_show_warns_of_a_hot_folder_naming_a_preset_that_does_not_exist(user_dirs, capsys) -> None:
    """It started without a word, and every file dropped there then failed with its own error file."""
    (user_dirs["config"] / "config.yaml").write_text(
        f"hot_folders:\n  - path: {user_dirs['home'] / 'hot-x'}\n    preset: vocalz\n"
        f"  - path: {user_dirs['home'] / 'hot-y'}\n    preset: vocals\n")
    assert main(["config", "show"]) == 0
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("# warning:")]
    assert len(warnings) == 1 and "'vocalz'" in warnings[0] and "hot-x" in warnings[0]


@pytest.mark.parametrize(("data", "line"), [
    ("concurrency: 2\n# café, from an old editor\n".encode("latin-1"), 2),
    ("concurrency: 2\n".encode("utf-16"), 1),  # Notepad's "Unicode"
])
def test_a_config_that_is_not_utf8_is_named_with_its_line(user_dirs, data: bytes, line: int) -> None:
    """It ended `sam-bridge run` and `config show` in a UnicodeDecodeError traceback, naming no file."""
    path = user_dirs["config"] / "config.yaml"
    path.write_bytes(data)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert f"{path}:{line}: not UTF-8 text; save the file as UTF-8" in str(err.value)
    result = subprocess.run([sys.executable, "-m", "bridge", "run", "--local"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{path}:{line}: not UTF-8 text" in result.stderr


def test_a_config_saved_with_a_byte_order_mark_is_read(user_dirs) -> None:
    path = user_dirs["config"] / "config.yaml"
    path.write_bytes("concurrency: 3\n".encode("utf-8-sig"))
    assert load_config(path).concurrency == 3


def test_run_with_a_config_file_that_does_not_exist_refuses_to_start(user_dirs) -> None:
    """A misspelt --config ran on the defaults without a word: the budget, concurrency and hot folders the
    user set were silently not in force."""
    missing = user_dirs["config"] / "confg.yaml"
    result = subprocess.run([sys.executable, "-m", "bridge", "run", "--local", "--config", str(missing)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert f"The config file {missing} does not exist." in result.stderr
    assert not (user_dirs["state"] / "daemon.json").exists()


@pytest.mark.parametrize("written", [True, False])
def test_the_daemon_says_which_config_file_it_runs_on(user_dirs, written: bool) -> None:
    path = user_dirs["config"] / "config.yaml"
    if written:
        path.write_text("concurrency: 2\n")
    proc = subprocess.Popen([sys.executable, "-m", "bridge", "run", "--local", "--no-osc", "--no-hot-folder"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith("Press Ctrl-C"):
                break
        proc.terminate()
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
    said = [line for line in lines if line.strip().startswith("config:")]
    # where it looked, and whether the file was there (SAM_BRIDGE_CONFIG naming a file moved away: the defaults)
    assert said == [f"  config:          {path}{'' if written else ' (not there: the defaults)'}"], lines


def test_a_config_file_in_a_folder_this_user_may_not_read_is_said_so(
        user_dirs, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A --config in a folder the user may not enter ended in a PermissionError traceback from exists()
    (or, where exists() says False, "does not exist"): reading it says why it cannot be read."""
    import errno

    locked = user_dirs["home"] / "locked" / "config.yaml"
    real_stat = Path.stat

    def stat(self: Path, *args: object, **kwargs: object) -> os.stat_result:
        if self == locked:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_stat(self, *args, **kwargs)  # type: ignore[arg-type]

    def read_bytes(self: Path) -> bytes:
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "stat", stat)
    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    assert main(["run", "--local", "--config", str(locked)]) == 2
    err = capsys.readouterr().err
    assert f"{locked}: cannot read it: Permission denied" in err and "does not exist" not in err
