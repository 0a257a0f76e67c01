"""Runs the DAW-side scripts under test: the REAPER Lua on `lua5.4` with a stand-in REAPER host, and the
Max for Live JavaScript on `node` with stand-ins for Max and the Live Object Model. (The daemon tests use
the real daemon through tests/conftest.py's `daemon_factory`.)
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
REAPER_DIR = REPO / "scripts" / "reaper"
ABLETON_DIR = REPO / "scripts" / "ableton"
DAW_DIR = Path(__file__).resolve().parent

LUA = shutil.which("lua5.4")
LUAC = shutil.which("luac5.4")
NODE = shutil.which("node")

SEPARATE_SCRIPT = REAPER_DIR / "sam-bridge - Separate selected items.lua"
CANCEL_SCRIPT = REAPER_DIR / "sam-bridge - Cancel.lua"
COLLECT_SCRIPT = REAPER_DIR / "sam-bridge - Collect finished stems.lua"
AUDITION_SCRIPT = REAPER_DIR / "sam-bridge - Audition prompt on selection.lua"
LUA_VERSIONS = [lua for lua in (shutil.which("lua5.4"), shutil.which("lua5.3")) if lua]


def write_heartbeat(state_dir: Path, age: float = 0.0, interval: float = 1.0) -> None:
    """heartbeat.json as the daemon keeps it; `age` seconds old (a negative age keeps it fresh for as long
    as a test takes)."""
    path = state_dir / "heartbeat.json"
    tmp = state_dir / "heartbeat.json.tmp"
    tmp.write_text(json.dumps({"pid": 4242, "time": time.time() - age, "interval": interval}), encoding="utf-8")
    os.replace(tmp, path)


def exchange(process: subprocess.Popen[str], command: Mapping[str, Any], who: str) -> dict[str, Any]:
    """One command to a driver process as a JSON line on its stdin, its answer as a JSON line back."""
    assert process.stdin and process.stdout
    process.stdin.write(json.dumps(command) + "\n")
    process.stdin.flush()
    line = process.stdout.readline()
    if not line:
        stderr = process.stderr.read() if process.stderr else ""
        raise AssertionError(f"{who} stopped: {stderr}")
    answer: dict[str, Any] = json.loads(line)
    return answer


def _without_none(value: Any) -> Any:
    """JSON null reaches Lua as a truthy sentinel; scenarios leave such keys out instead."""
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value]
    return value


def lua_eval(code: str, timeout: float = 20) -> Any:
    """Runs Lua `code` (a chunk that `return`s a value) with sam_bridge_core loaded as `core`."""
    assert LUA, "lua5.4 is not installed"
    runner = (
        f"package.path = {json.dumps(str(REAPER_DIR) + '/?.lua;')} .. package.path\n"
        "local core = require('sam_bridge_core')\n"
        "local chunk = assert(load(io.read('a'), 'test', 't', setmetatable({core = core}, {__index = _G})))\n"
        "io.write(core.json_encode({value = chunk()}))\n"
    )
    done = subprocess.run(
        [LUA, "-e", runner], input=code, capture_output=True, text=True, encoding="utf-8", timeout=timeout
    )
    if done.returncode != 0:
        raise AssertionError(f"lua failed ({done.returncode}): {done.stderr}")
    return json.loads(done.stdout).get("value")


ESTIMATE_SUFFIX = ".estimate.json"


def estimate(cost: float = 0.05, seconds: float = 4.0, confirm_above: float = 1.0, requests: int = 1,
             whole_cost: float | None = None, whole_seconds: float | None = None) -> dict[str, Any]:
    """The `estimate` object of a status file, as bridge/request_files/folder.py writes it."""
    return {"source": "x.wav", "seconds": seconds, "requests": requests, "estimated_cost": cost, "currency": "USD",
            "whole_seconds": whole_seconds, "whole_cost": whole_cost, "confirm_above": confirm_above,
            "needs_confirmation": cost > confirm_above}


def answer_estimates(requests_dir: Path, found: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Answers every unanswered `"estimate_only"` request file the way the daemon does (state `done`,
    `job_id` null, the estimate in `estimate`; nothing sent). Returns the requests it answered."""
    answered = []
    for path in sorted(requests_dir.glob("*" + ESTIMATE_SUFFIX)):
        name = path.name.removesuffix(".json")
        if (requests_dir / f"{name}.status.json").exists():
            continue
        request = json.loads(path.read_text(encoding="utf-8"))
        assert request.get("estimate_only") is True, request
        write_status(requests_dir, name, job_id=None, tag=request.get("tag", ""), state="done", progress=1.0,
                     message="Estimate (nothing was sent)", estimate=dict(found or estimate()))
        answered.append(request)
    return answered


class ReaperHost:
    """The REAPER stand-in in a `lua5.4` process, driven one JSON command at a time. With `estimates_in`
    (a requests folder), a stand-in for the daemon answers the scripts' estimate requests (a cost below
    `confirm_above`) after each command, and the script gets one more UI cycle to read them."""

    def __init__(self, scenario: Mapping[str, Any], workdir: Path, env: Mapping[str, str],
                 lua: str | None = None, estimates_in: Path | None = None) -> None:
        self.estimates_in = estimates_in
        lua = lua or LUA
        assert lua, "lua5.4 is not installed"
        scenario_path = workdir / "scenario.json"
        scenario_path.write_text(json.dumps(_without_none(dict(scenario))), encoding="utf-8")
        self._process = subprocess.Popen(
            [lua, str(DAW_DIR / "reaper_driver.lua"), str(REAPER_DIR), str(scenario_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            env={**os.environ, **env},
            cwd=workdir,
        )

    def send(self, **command: Any) -> dict[str, Any]:
        return exchange(self._process, command, "the Lua driver")

    def _answer_estimates(self) -> None:
        if self.estimates_in is not None and answer_estimates(self.estimates_in):
            answer = self.send(cmd="tick", n=1, dt=0.05)
            assert answer["ok"], answer.get("error")

    def run(self, script: Path) -> dict[str, Any]:
        answer = self.send(cmd="run", script=str(script))
        assert answer["ok"], answer.get("error")
        self._answer_estimates()
        return answer

    def tick(self, n: int = 1, dt: float = 0.05) -> dict[str, Any]:
        answer = self.send(cmd="tick", n=n, dt=dt)
        assert answer["ok"], answer.get("error")
        self._answer_estimates()
        return answer

    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = self.send(cmd="state")["state"]
        return state

    def close(self) -> None:
        process = self._process
        if process.stdin:
            process.stdin.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        for stream in (process.stdout, process.stderr):
            if stream:
                stream.close()


def write_status(requests_dir: Path, name: str, **fields: Any) -> None:
    """Writes a status file the way the contract says the daemon does (atomically): `warnings` and
    `flag_words` made from `flags` as the daemon makes them, unless given (None: a daemon from before them)."""
    from bridge.request_files.folder import flag_fields

    status = {
        "schema": 1, "request": f"{name}.json", "job_id": "job-1", "tag": "", "state": "queued",
        "progress": 0.0, "message": "", "updated_at": "2025-01-01T00:00:00+00:00", "stems": {},
        "manifest": None, "error": None, "flags": [],
    }
    status.update(fields)
    for key, value in flag_fields(tuple(status["flags"])).items():
        status.setdefault(key, value)
    final = requests_dir / f"{name}.status.json"
    tmp = requests_dir / f"{name}.status.json.tmp"
    tmp.write_text(json.dumps(status), encoding="utf-8")
    os.replace(tmp, final)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class MaxDevice:
    """The Max for Live device's JavaScript in a `node` process with stand-ins for Max and Live."""

    def __init__(self, scenario: Mapping[str, Any], workdir: Path) -> None:
        assert NODE, "node is not installed"
        scenario_path = workdir / "max-scenario.json"
        scenario_path.write_text(json.dumps(dict(scenario)), encoding="utf-8")
        self._process = subprocess.Popen(
            [NODE, str(DAW_DIR / "max_harness.js"), str(ABLETON_DIR / "sam_bridge_device.js"), str(scenario_path)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8",
            cwd=workdir,
        )

    def send(self, **command: Any) -> dict[str, Any]:
        answer = exchange(self._process, command, "the node harness")
        assert answer["ok"], answer.get("error")
        return answer

    def msg(self, name: str, *args: Any) -> list[list[Any]]:
        """Sends a Max message to the [js] object; returns what came out of its outlets."""
        outlets: list[list[Any]] = self.send(cmd="msg", name=name, args=list(args))["outlets"]
        return outlets

    def state(self) -> dict[str, Any]:
        return self.send(cmd="state")

    def close(self) -> None:
        process = self._process
        if process.poll() is None:
            with contextlib.suppress(AssertionError, OSError, ValueError):
                self.send(cmd="close")
        if process.stdin:
            process.stdin.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        for stream in (process.stdout, process.stderr):
            if stream:
                stream.close()


def osc_out(outlets: list[list[Any]]) -> list[list[Any]]:
    """The messages the device sent to [udpsend] (outlet 0)."""
    return [o[1:] for o in outlets if o[0] == 0]


def status_texts(outlets: list[list[Any]]) -> list[str]:
    """What the device showed in its status line (outlet 3, `set <text>`)."""
    return [str(o[2]) for o in outlets if o[0] == 3 and o[1] == "set"]
