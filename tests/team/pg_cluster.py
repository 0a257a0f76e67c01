"""A throwaway PostgreSQL cluster in a temporary folder (Debian's `postgresql` package: initdb + pg_ctl
from /usr/lib/postgresql/*/bin), on a free loopback port, TCP only. PostgreSQL refuses to run as root, so
as root (CI) the cluster belongs to `nobody`. Used by tests/team and benchmarks/bench_team.py."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg


def find_bin_dir() -> Path | None:
    """The newest installed PostgreSQL's bin folder, or None (then the team tests skip)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PgCluster:
    def __init__(self, bin_dir: Path, *, stat_statements: bool = False) -> None:
        self.bin_dir = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="sam-bridge-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = _free_port()
        self.stat_statements = stat_statements
        self._user: str | None = "nobody" if os.geteuid() == 0 else None
        self._counter = 0

    def _run(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        # cwd: its own folder, which `nobody` may enter (a checkout under /root may not be)
        try:
            return subprocess.run([str(self.bin_dir / args[0]), *args[1:]], check=True, capture_output=True,
                                  text=True, user=self._user, timeout=120, cwd=self.root, **kwargs)
        except subprocess.CalledProcessError as exc:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{args[0]} failed ({exc.returncode}): {exc.stderr}{exc.stdout}\n{log}") from None

    def start(self) -> PgCluster:
        if self._user is not None:
            shutil.chown(self.root, self._user)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync",
                  "--no-instructions")
        settings = ["listen_addresses = '127.0.0.1'", f"port = {self.port}", "unix_socket_directories = ''",
                    "fsync = off", "full_page_writes = off", "synchronous_commit = off", "max_connections = 200",
                    "shared_buffers = 32MB"]
        if self.stat_statements:
            settings.append("shared_preload_libraries = 'pg_stat_statements'")
        with open(self.data / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write("\n".join(settings) + "\n")
        self.up()
        return self

    def up(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")

    def down(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")

    def dsn(self, database: str = "postgres", user: str = "postgres", password: str | None = None) -> str:
        auth = f"{user}:{password}" if password else user
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database of its own for one test."""
        self._counter += 1
        name = f"team_{os.getpid()}_{self._counter}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self.down()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def wait_until_up(dsn: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            psycopg.connect(dsn, connect_timeout=2).close()
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
