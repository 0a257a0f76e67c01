"""Workstations on one machine for the team tests and the benchmark: ONE stand-in service
(`sam-bridge local-service`, a real subprocess) that every daemon uses, and daemons with a state folder and
an instance name each, on one shared hot folder and one team database."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psycopg
import soundfile as sf

TEST_KEY = "test-key-0123456789abcdef"


class StandIn:
    """`sam-bridge local-service` with a fixed service time per job, on a free loopback port."""

    def __init__(self, log: Path, job_time: float, concurrency: int = 16) -> None:
        self.log_path = log
        self._log = open(log, "w", encoding="utf-8")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bridge", "local-service", "--port", "0", "--key", TEST_KEY, "--job-time",
             str(job_time), "--concurrency", str(concurrency)],
            stdout=subprocess.PIPE, stderr=self._log, text=True)
        assert self.proc.stdout is not None
        self.url = ""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not self.url:
            line = self.proc.stdout.readline()
            if not line:
                break
            if line.startswith("local fal service on "):
                self.url = line.split(" on ", 1)[1].strip()
        if not self.url:
            self.stop()
            raise AssertionError(f"the stand-in did not start: {log.read_text()}")

    def stats(self) -> dict[str, Any]:
        return dict(httpx.get(f"{self.url}/_local/stats", timeout=10).json())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()


def team_config(dsn: str, instance: str, hot: Path, *, concurrency: int = 4, lease: float = 3.0,
                preset: str = "piano") -> str:
    return (f"default_hot_folder: false\nhot_rescan_interval: 1\nconcurrency: {concurrency}\n"
            f"database: {dsn}\ninstance: {instance}\nlease_seconds: {lease}\n"
            f"hot_folders:\n  - path: {hot}\n    preset: {preset}\n    settle_seconds: 0.2\n")


def workstation_dirs(root: Path, name: str) -> dict[str, Path]:
    dirs = {key: root / name / key for key in ("home", "state", "config", "hot")}
    for folder in dirs.values():
        folder.mkdir(parents=True, exist_ok=True)
    return dirs


def drop_audio(path: Path, seconds: float, seed: int, rate: int = 44100) -> Path:
    """Like a DAW export: written under a temp name, then renamed into the hot folder."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    mono = 0.3 * np.sin(2 * np.pi * (110 + seed % 50) * t) + 0.1 * rng.standard_normal(n)
    temp = path.with_name(f".{path.name}.part")
    sf.write(temp, np.stack([mono, mono * 0.5], axis=1) * 0.7, rate, subtype="PCM_24", format="WAV")
    os.replace(temp, path)
    return path


def stems_for(source: Path, label: str = "piano") -> tuple[Path, Path, Path]:
    base = source.parent / "Stems" / f"{source.stem} - {label}"
    return (base.with_name(base.name + ".target.wav"), base.with_name(base.name + ".residual.wav"),
            base.with_name(base.name + ".sam.json"))


def query(dsn: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return list(conn.execute(sql, params).fetchall())  # type: ignore[arg-type]


def wait_server_up_for(dsn: str, seconds: float) -> None:
    """A daemon takes over no jobs while the server is younger than a lease (after a restart every daemon
    gets one lease to renew its own): a test run first after the cluster started waits that long."""
    up = float(query(dsn, "SELECT EXTRACT(EPOCH FROM now() - pg_postmaster_start_time())")[0][0])
    if up < seconds:
        time.sleep(seconds - up + 0.1)
