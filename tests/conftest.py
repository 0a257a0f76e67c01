"""Shared fixtures: the local fal service on 127.0.0.1, isolated user folders, a real daemon process, a
guard that fails any test leaking threads (as watchdog's own suite does), and one that refuses any socket
or name lookup off 127.0.0.0/8 (tests/loopback_guard.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from bridge.fal.auth import ApiKey
from bridge.fal.client import FalClient
from bridge.fal.retry import RetryPolicy

if TYPE_CHECKING:
    from bridge.local_service import LocalFalService

TEST_KEY = "test-key-0123456789abcdef"
FAST_RETRY = RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.05, max_retry_after=2.0)


@pytest.fixture(autouse=True, scope="session")
def only_loopback() -> Iterator[None]:
    from tests.loopback_guard import loopback_only

    with loopback_only():
        yield


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5.0
    while True:
        leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()
                  and not t.name.startswith(("asyncio", "ThreadPoolExecutor"))]
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not leaked, f"threads left running: {[t.name for t in leaked]}"


@pytest.fixture
def service() -> Iterator[LocalFalService]:
    from bridge.local_service import LocalFalService

    with LocalFalService(key=TEST_KEY) as svc:
        yield svc


@pytest.fixture
def client(service: LocalFalService) -> Iterator[FalClient]:
    with FalClient(ApiKey(TEST_KEY), queue_url=service.url, rest_url=service.url, retry=FAST_RETRY) as c:
        yield c


@pytest.fixture
def user_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Every per-user folder sam-bridge touches, inside tmp_path."""
    dirs = {name: tmp_path / name for name in ("home", "state", "config", "hot")}
    for folder in dirs.values():
        folder.mkdir()
    monkeypatch.setenv("HOME", str(dirs["home"]))
    monkeypatch.setenv("SAM_BRIDGE_STATE_DIR", str(dirs["state"]))
    monkeypatch.setenv("SAM_BRIDGE_CONFIG", str(dirs["config"] / "config.yaml"))
    monkeypatch.setenv("SAM_BRIDGE_HOT_DIR", str(dirs["hot"]))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(dirs["config"]))
    monkeypatch.delenv("FAL_KEY", raising=False)
    return dirs


class DaemonProcess:
    """`sam-bridge run` as a real subprocess, against a given service URL."""

    def __init__(self, dirs: dict[str, Path], service_url: str, extra: list[str] | None = None,
                 config: str | None = None) -> None:
        self.dirs, self.service_url, self.extra = dirs, service_url, extra or []
        self.config = config
        self.proc: subprocess.Popen[str] | None = None
        self.log = dirs["state"].parent / f"daemon-{time.monotonic_ns()}.log"

    @property
    def info_path(self) -> Path:
        return self.dirs["state"] / "daemon.json"

    def start(self, timeout: float = 30.0, **popen: Any) -> dict[str, object]:
        if self.config is not None:
            (self.dirs["config"] / "config.yaml").write_text(self.config, encoding="utf-8")
        env = {**os.environ, "FAL_KEY": TEST_KEY, "PYTHONUNBUFFERED": "1", "HOME": str(self.dirs["home"]),
               "SAM_BRIDGE_STATE_DIR": str(self.dirs["state"]),
               "SAM_BRIDGE_CONFIG": str(self.dirs["config"] / "config.yaml"),
               "SAM_BRIDGE_HOT_DIR": str(self.dirs["hot"])}
        self.info_path.unlink(missing_ok=True)
        self._log_handle = open(self.log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bridge", "run", "--service-url", self.service_url, "--osc-port", "0",
             *self.extra], env=env, stdout=self._log_handle, stderr=subprocess.STDOUT, text=True, **popen)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited early ({self.proc.returncode}):\n{self.output()}")
            if self.info_path.exists():
                info = json.loads(self.info_path.read_text())
                if info.get("pid") == self.proc.pid:
                    return dict(info)
            time.sleep(0.05)
        raise AssertionError(f"daemon did not start:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)
        self._log_handle.close()

    def stop(self, timeout: float = 10.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log_handle.close()
        return self.proc.returncode


@pytest.fixture
def daemon_factory(user_dirs: dict[str, Path]) -> Iterator[type[DaemonProcess]]:
    started: list[DaemonProcess] = []

    class Factory(DaemonProcess):
        def __init__(self, service_url: str, extra: list[str] | None = None, config: str | None = None,
                     dirs: dict[str, Path] | None = None) -> None:
            super().__init__(dirs or user_dirs, service_url, extra, config)
            started.append(self)

    yield Factory
    for proc in started:
        if proc.proc is not None and proc.proc.poll() is None:
            proc.stop()


def wait_for(predicate: object, timeout: float = 30.0, interval: float = 0.05, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")
