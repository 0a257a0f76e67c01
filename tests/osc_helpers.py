"""Shared pieces of the OSC tests: a stand-in for the job engine's interface and a real UDP client."""

from __future__ import annotations

import itertools
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import OscMessageBuilder

from bridge.common.jobs import JobEvent, JobState, JobView
from bridge.common.request import SeparationRequest
from bridge.osc.server import OscServer, OscSettings

TEST_VERSION = "9.9.9-test"
WAIT = 5.0  # seconds a test waits for an expected datagram before it fails (a guard, not a measurement)


class RecordingSink:
    """Implements bridge.common.jobs.JobSink: records what the OSC server asks, lets a test emit job events."""

    def __init__(self, presets: tuple[str, ...] = ("piano", "Vocals", "drums"),
                 reject: Exception | None = None) -> None:
        self.presets = list(presets)
        self.reject = reject
        self.requests: list[SeparationRequest] = []
        self.cancelled: list[str] = []
        self.views: dict[str, JobView] = {}
        self._listeners: list[Callable[[JobEvent], None]] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def submit(self, request: SeparationRequest) -> str:
        if self.reject is not None:
            raise self.reject
        with self._lock:
            job_id = f"job-{next(self._ids)}"
            self.requests.append(request)
            now = time.time()
            self.views[job_id] = JobView(job_id, request.tag, str(request.source),
                                         request.preset or request.prompt or "", JobState.queued, 0.0,
                                         "queued", now, now, request.origin.value)
        return job_id

    def cancel(self, job_id: str) -> bool:
        view = self.views.get(job_id)
        if view is None or view.state.finished:
            return False
        self.cancelled.append(job_id)
        return True

    def get(self, job_id: str) -> JobView | None:
        return self.views.get(job_id)

    def jobs(self, active_only: bool = False) -> list[JobView]:
        return [v for v in self.views.values() if not (active_only and v.state.finished)]

    def subscribe(self, listener: Callable[[JobEvent], None]) -> Callable[[], None]:
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                self._listeners.remove(listener)
        return unsubscribe

    def preset_names(self, project_dir: Path | None = None, include_broken: bool = False) -> list[str]:
        return list(self.presets)

    @property
    def listener_count(self) -> int:
        return len(self._listeners)

    def emit(self, event: JobEvent) -> None:
        """What the engine does on its own thread: call every listener."""
        for listener in list(self._listeners):
            listener(event)


@dataclass
class Received:
    address: str
    args: list[Any]
    size: int
    sender: tuple[str, int] = field(default=("", 0))


class OscClient:
    """A DAW device stand-in: a real UDP socket on loopback, messages built and read with python-osc."""

    def __init__(self, server: tuple[str, int], host: str = "127.0.0.1") -> None:
        self.server = server
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.settimeout(WAIT)

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def send(self, address: str, *args: Any) -> None:
        builder = OscMessageBuilder(address)
        for arg in args:
            builder.add_arg(arg)
        self.send_raw(builder.build().dgram)

    def send_raw(self, data: bytes) -> None:
        self.sock.sendto(data, self.server)

    def receive(self) -> Received:
        data, sender = self.sock.recvfrom(65535)
        message = OscMessage(data)
        return Received(message.address, message.params, len(data), sender)

    def expect(self, address: str) -> Received:
        """The next datagram, which must be `address` (fails on anything else or after WAIT seconds)."""
        got = self.receive()
        assert got.address == address, f"expected {address}, got {got.address} {got.args}"
        return got

    def request(self, address: str, *args: Any, reply: str) -> list[Any]:
        self.send(address, *args)
        return self.expect(reply).args

    def nothing_waiting(self) -> bool:
        """True if no datagram has arrived (looked at without waiting)."""
        self.sock.setblocking(False)
        try:
            self.sock.recvfrom(65535)
            return False
        except BlockingIOError:
            return True
        finally:
            self.sock.settimeout(WAIT)

    def close(self) -> None:
        self.sock.close()


def osc_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("osc-")]


@contextmanager
def running_server(sink: RecordingSink, **settings: Any) -> Iterator[OscServer]:
    """A started server on a free loopback port; stopped afterwards, leaving no thread or listener."""
    server = OscServer(sink, OscSettings(port=0, **settings), version=TEST_VERSION)
    server.start()
    try:
        yield server
    finally:
        server.stop()
    assert osc_threads() == [], "the OSC server left threads running"
    assert sink.listener_count == 0, "the OSC server stayed subscribed to the sink"


def write_wav(path: Path, seconds: float = 0.5, rate: int = 44100) -> Path:
    """A real little WAV file (a sine), so that a source path names actual audio."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    sf.write(path, 0.25 * np.sin(2 * np.pi * 440 * t), rate, subtype="PCM_16")
    return path


def done_event(job_id: str, stems: dict[str, str], manifest: str, tag: str = "") -> JobEvent:
    return JobEvent(job_id, tag, JobState.done, 1.0, "done", stems=stems, manifest=manifest)
